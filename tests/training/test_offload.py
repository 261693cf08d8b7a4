"""rollout.offload_trainer: the trainer's params, grad buffers and optimizer state leave the device and come
back bitwise (TrainerOffload). Storage resize works on CPU tensors too, so the very code the GPU runs frees
and restores host storage here; a step after offload + reload equals a step without."""

import pytest
import torch

from tests.dist_utils import spawn
from tests.training.conftest import sft_overrides
from tests.training.offload_workers import offload_round_trip, two_steps


def _overrides(task, tmp_path, *extra):
    return sft_overrides(task, tmp_path, "training.global_batch_size=4", "training.max_tokens_per_micro_batch=null",
                         "data.packing=false", "optim.clip_grad=1.0", *extra)


@pytest.mark.parametrize("param_buffer", [False, True], ids=["own_storage", "ddp_param_buffer"])
def test_offload_frees_every_storage_and_reload_restores_it_bitwise(task, tmp_path, param_buffer):
    """After a step (Adam state exists): every param (in its own storage, or in DDP's ``param_data`` buffer as
    with the distributed optimizer), grad buffer and optimizer state tensor is freed, comes back equal (grads:
    zero), and the next step (loss, grad norm, params) equals the run without the round trip."""
    overrides = _overrides(task, tmp_path)
    (got,) = spawn(offload_round_trip, 1, overrides, param_buffer)
    (want,) = spawn(two_steps, 1, overrides, param_buffer)
    assert got["freed"] and got["n_storages"] > 0
    assert got["equal"] and all(got["equal"].values()), [k for k, v in got["equal"].items() if not v]
    assert got["zero_grads"] and all(got["zero_grads"].values())
    assert got["sizes_back"]
    assert {"param", "exp_avg", "exp_avg_sq"} <= set(got["state_kinds"]), got["state_kinds"]
    assert param_buffer == any(".param_data." in k for k in got["equal"])
    m = got["metrics"]
    assert m["memory/offloaded_gib"] > m["memory/offload_copied_gib"] > 0  # grads dropped, not copied
    assert got["loss"] == want["loss"] and got["grad_norm"] == want["grad_norm"]
    for n, p in want["params"].items():
        assert torch.equal(got["params"][n], p), n


def test_disabled_offload_moves_nothing():
    from megatron_mmr1.training.offload import TrainerOffload

    model = torch.nn.Linear(3, 2)
    off = TrainerOffload([model], optimizer=None, enabled=False)
    off.offload()
    assert not off.offloaded and model.weight.untyped_storage().nbytes() > 0 and off.metrics() == {}


def test_shared_memory_storage_stays_resident():
    """A gloo trainer's weights in shared memory (the CPU stand-in's tensor sync maps them) cannot be resized
    (resizing one back crashes the process): they stay, the rest moves."""
    from megatron_mmr1.training.offload import TrainerOffload

    model = torch.nn.Linear(3, 2)
    model.weight.data.share_memory_()
    before = model.weight.detach().clone(), model.bias.detach().clone()
    off = TrainerOffload([model], optimizer=None)
    off.offload()
    assert model.weight.untyped_storage().nbytes() > 0 and model.bias.untyped_storage().nbytes() == 0
    off.reload()
    assert torch.equal(model.weight, before[0]) and torch.equal(model.bias, before[1])


def test_mixed_precision_optimizer_main_params_and_state_move_too():
    """megatron's mixed-precision optimizers (not constructible on CPU: they assert CUDA tensor types) step fp32
    main params that are not the model's bf16 params; a chained optimizer holds several. Shaped alike here:
    the main params, their Adam state and their ``.grad`` are found through ``chained_optimizers[i].optimizer``."""
    from types import SimpleNamespace

    from megatron_mmr1.training.offload import TrainerOffload

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.Linear(3, 2)).to(torch.bfloat16)
    parts = []
    for layer in model:
        main = [p.detach().float().clone().requires_grad_() for p in layer.parameters()]
        adam = torch.optim.AdamW(main, lr=0.1)
        for p in main:
            p.grad = torch.randn_like(p)
        adam.step()
        parts.append(SimpleNamespace(optimizer=adam))
    optimizer = SimpleNamespace(chained_optimizers=parts)
    tensors = [t for part in parts for p in part.optimizer.param_groups[0]["params"]
               for t in (p, *part.optimizer.state[p].values())] + list(model.parameters())
    before = [t.detach().clone() for t in tensors]
    grads = [p.grad for part in parts for p in part.optimizer.param_groups[0]["params"]]
    off = TrainerOffload([model], optimizer)
    off.offload()
    assert all(t.untyped_storage().nbytes() == 0 for t in tensors + grads)
    assert off.last_bytes["dropped"] == sum(g.numel() * 4 for g in grads)
    off.reload()
    assert all(torch.equal(a, b) for a, b in zip(before, tensors))
    assert all(bool((g == 0).all()) for g in grads)
