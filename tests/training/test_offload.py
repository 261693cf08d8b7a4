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


@pytest.mark.parametrize("overrides, needle", [
    (["rollout.offload_trainer=true"], "rollout.offload_trainer=true needs rollout.colocate=true"),
    (["optim.offload_fraction=1.5"], r"optim.offload_fraction=1.5 must be in \[0, 1\]"),
    (["optim.offload_fraction=-0.1"], r"optim.offload_fraction=-0.1 must be in \[0, 1\]"),
    (["optim.cpu_offload=true", "parallel.use_distributed_optimizer=false"],
     "optim.cpu_offload=true needs parallel.use_distributed_optimizer=true"),
    (["optim.cpu_offload=true", "parallel.backend=gloo"], "optim.cpu_offload=true needs CUDA"),
])
def test_offload_keys_are_refused_with_one_line_naming_the_key(overrides, needle):
    from megatron_mmr1.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=needle) as e:
        load_config(None, overrides, launch=True)
    assert "\n" not in str(e.value)


def test_offload_keys_accepted_where_they_can_run():
    from megatron_mmr1.config import load_config

    cfg = load_config(None, ["rollout.colocate=true", "rollout.offload_trainer=true", "optim.offload_fraction=0.5",
                             "parallel.backend=gloo"])
    assert cfg.rollout.offload_trainer and cfg.optim.offload_fraction == 0.5


@pytest.mark.skipif(torch.cuda.is_available(), reason="the CPU refusal; CUDA runs it (next test)")
def test_optimizer_cpu_offload_is_refused_without_cuda():
    from megatron_mmr1.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="optim.cpu_offload=true needs CUDA"):
        load_config(None, ["optim.cpu_offload=true"], launch=True)
    assert load_config(None, ["optim.cpu_offload=true"]).optim.cpu_offload  # planned / printed on any machine


def test_optimizer_cpu_offload_reaches_megatrons_optimizer_config(monkeypatch):
    """engine.build_optimizer hands optim.cpu_offload / offload_fraction to megatron-core as Megatron-LM's
    --optimizer-cpu-offload --use-precision-aware-optimizer --overlap-cpu-optimizer-d2h-h2d (the config is
    made here without validation: on CPU it is refused)."""
    import dataclasses
    from types import SimpleNamespace

    import megatron.core.optimizer as mopt
    from megatron.core.optimizer import optimizer_config

    from megatron_mmr1.config import load_config
    from megatron_mmr1.training import engine

    base = load_config(None)
    seen = []
    monkeypatch.setattr(mopt, "get_megatron_optimizer", lambda opt_cfg, chunks: seen.append(opt_cfg))
    monkeypatch.setattr(engine, "on_gpu", lambda: True)  # the GPU path (distributed optimizer), forced on
    monkeypatch.setattr(optimizer_config, "is_te_min_version", lambda *a, **k: True)  # reads TE's version
    monkeypatch.setattr(engine, "unwrap", lambda c: SimpleNamespace(
        config=SimpleNamespace(bf16=True, params_dtype=torch.bfloat16)))
    for on in (False, True):
        cfg = dataclasses.replace(base, optim=dataclasses.replace(base.optim, cpu_offload=on, offload_fraction=0.25))
        engine.build_optimizer(cfg, [None])
    plain, offloaded = seen
    assert not plain.optimizer_cpu_offload and not plain.use_precision_aware_optimizer
    assert offloaded.optimizer_cpu_offload and offloaded.optimizer_offload_fraction == 0.25
    assert offloaded.use_precision_aware_optimizer and offloaded.overlap_cpu_optimizer_d2h_h2d


def test_optimizer_cpu_offload_steps_like_the_plain_optimizer_on_cuda(task, tmp_path):
    """optim.cpu_offload (CUDA + transformer-engine): the Adam state lives on the host and two steps give the
    plain optimizer's losses and params (host AdamW vs the device Adam: fp32 rounding, then bf16 params)."""
    import importlib.util

    from tests.dist_utils import require_gpus
    from tests.training.offload_workers import optimizer_steps

    require_gpus(1)
    if importlib.util.find_spec("transformer_engine") is None:
        pytest.skip("optim.cpu_offload needs transformer-engine")
    runs = {on: spawn(optimizer_steps, 1, _overrides(task, tmp_path / str(on), f"optim.cpu_offload={on}".lower(),
                                                     "optim.offload_fraction=1.0"))[0] for on in (False, True)}
    plain, off = runs[False], runs[True]
    assert off["state_devices"] == ["cpu"] and plain["state_devices"] == ["cuda"]
    assert off["losses"] == pytest.approx(plain["losses"], rel=1e-3)
    for n, p in plain["params"].items():
        torch.testing.assert_close(off["params"][n], p, rtol=1e-2, atol=1e-3, msg=n)
