"""The CPU compatibility layer redirects megatron's CUDA assumptions, and only while enabled."""

import pytest
import torch

from megatron_mmr1.parallel import cpu_compat

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="the layer is for CPU-only machines")


@pytest.fixture
def layer():
    was = cpu_compat.is_enabled()
    cpu_compat.enable()
    yield
    if not was:
        cpu_compat.disable()


def test_cuda_factories_land_on_cpu(layer):
    assert torch.empty(3, device="cuda").device.type == "cpu"
    assert torch.zeros(2, device=torch.cuda.current_device()).device.type == "cpu"
    t = torch.ones(2)
    assert t.cuda() is t and t.to("cuda").device.type == "cpu"
    with torch.cuda.stream(torch.cuda.Stream()):
        torch.cuda.current_stream().wait_stream(torch.cuda.Stream())


def test_cuda_rng_maps_to_cpu_generator(layer):
    torch.cuda.manual_seed(123)
    a = torch.rand(4)
    state = torch.cuda.get_rng_state()
    b = torch.rand(4)
    torch.cuda.set_rng_state(state)
    assert torch.equal(torch.rand(4), b)
    torch.manual_seed(123)
    assert torch.equal(torch.rand(4), a)


def test_megatron_rng_tracker_forks_on_cpu(layer):
    from megatron.core import tensor_parallel

    tensor_parallel.random.initialize_rng_tracker(force_reset=True)
    tracker = tensor_parallel.get_cuda_rng_tracker()
    tracker.add("model-parallel-rng", 7)
    torch.manual_seed(0)
    outside = torch.rand(1)
    expected_next = torch.rand(1)
    torch.manual_seed(0)
    torch.rand(1)
    with tracker.fork():
        inside = torch.rand(1)
    assert torch.equal(torch.rand(1), expected_next)  # the fork left the default stream where it was
    assert not torch.equal(inside, outside)


def test_disable_restores_torch():
    was = cpu_compat.is_enabled()
    cpu_compat.enable()
    cpu_compat.disable()
    with pytest.raises((RuntimeError, AssertionError, AttributeError)):
        torch.empty(1, device="cuda")
    if was:
        cpu_compat.enable()


def test_activation_recompute_runs_on_cpu_and_changes_nothing():
    """Recompute re-runs forward inside autograd (outside the torch-function mode): still CPU, same numbers.
    Reference: the same batch without recompute. The MLP call counts prove the recompute ran: full recompute
    and recompute_modules=[mlp] run every layer's MLP twice, megatron's default selective ([core_attn]) once."""
    from tests.dist_utils import spawn
    from tests.parallel.equivalence_workers import RECOMPUTE_CASES, recompute_losses

    (results,) = spawn(recompute_losses, 1)
    (loss_ref, _, calls_ref), *others = results
    for (recompute, modules), (loss, grad_diff, calls) in zip(RECOMPUTE_CASES[1:], others):
        assert loss == pytest.approx(loss_ref, rel=1e-6)
        assert grad_diff <= 1e-6
        twice = recompute == "full" or "mlp" in (modules or [])
        assert calls == (2 * calls_ref if twice else calls_ref), (recompute, modules, calls, calls_ref)
