"""Rank functions of the trainer-offload tests (module level, so spawned ranks can import them)."""

from __future__ import annotations

import os

import torch


def _setup(overrides: list[str], param_buffer: bool = False):
    """``param_buffer``: megatron DDP keeps the params in its ``param_data`` buffer, as with the distributed
    optimizer on GPU (forced on here; the optimizer stays the plain one, the CPU path)."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.config import load_config
    from megatron_mmr1.data.dataset import build_dataset
    from megatron_mmr1.data.tokenizer import load_tokenizer
    from megatron_mmr1.training import engine, sft

    cfg = load_config("examples/configs/tiny_cpu_sft.yaml", overrides, world_size=int(os.environ["WORLD_SIZE"]))
    info = parallel.initialize(cfg.parallel)
    dataset = build_dataset(cfg.data, load_tokenizer(cfg.model.tokenizer_path))
    torch.manual_seed(0)
    if param_buffer:
        real_on_gpu = engine.on_gpu
        engine.on_gpu = lambda: True
        try:
            from megatron_mmr1.models.qwen2_5_vl import build_model

            chunks = engine.wrap_ddp(cfg, build_model(cfg, load_hf=True), overlap_grad_reduce=False)
        finally:
            engine.on_gpu = real_on_gpu
        assert all(b.param_data is not None for c in chunks for b in c.buffers)
    else:
        chunks = engine.build_policy(cfg)
    optimizer = engine.build_optimizer(cfg, chunks)
    scheduler = engine.build_scheduler(cfg, optimizer, 10)
    forward_step = engine.make_forward_step(cfg, sft.sft_loss_func, varlen=False)
    gbs = cfg.training.global_batch_size
    batches = [sft.build_micro_batches(cfg, dataset, list(range(i * gbs, (i + 1) * gbs)), info, pad_id=0)[0]
               for i in range(2)]

    def step(i: int):
        return engine.train_step(cfg, chunks, optimizer, scheduler, forward_step, batches[i], info.device)

    return chunks, optimizer, step


def _state(chunks: list, optimizer) -> dict[str, torch.Tensor]:
    """Every value the offload must keep or zero, by a stable name: params, grad buffers, optimizer params
    (fp32 main params) and optimizer state."""
    from megatron_mmr1.training.offload import ddp_buffers, optimizer_parts

    out = {}
    for i, c in enumerate(chunks):
        out.update({f"{i}.param.{n}": p.detach().clone() for n, p in c.named_parameters()})
        for j, buf in enumerate(ddp_buffers(c)):
            out[f"{i}.grad_data.{j}"] = buf.grad_data.clone()
            if buf.param_data is not None:
                out[f"{i}.param_data.{j}"] = buf.param_data.clone()
    for k, part in enumerate(optimizer_parts(optimizer)):
        inner = part.optimizer
        for g, group in enumerate(inner.param_groups):
            for j, p in enumerate(group["params"]):
                out[f"opt{k}.{g}.{j}.param"] = p.detach().clone()
                for name, v in inner.state.get(p, {}).items():
                    if torch.is_tensor(v):
                        out[f"opt{k}.{g}.{j}.{name}"] = v.clone()
    return out


def offload_round_trip(overrides: list[str], param_buffer: bool = False) -> dict:
    """One step (optimizer state exists), offload, reload, then a second step. Returns what was freed, whether
    the state came back bitwise, the kinds of optimizer state seen, and the second step's loss and params."""
    from megatron_mmr1.training.offload import TrainerOffload

    chunks, optimizer, step = _setup(overrides, param_buffer)
    step(0)
    before = _state(chunks, optimizer)
    offload = TrainerOffload(chunks, optimizer)
    nbytes_before = {k: v.untyped_storage().nbytes() for k, v in before.items()}
    offload.offload()
    live = _state_storages(chunks, optimizer)
    freed = all(n == 0 for n in live)
    offload.offload()  # idempotent
    seconds_off = offload.last_seconds["offload"]
    metrics = offload.metrics()
    offload.reload()
    offload.reload()  # idempotent
    after = _state(chunks, optimizer)
    zero_grads = {k: bool((v == 0).all()) for k, v in after.items() if ".grad_data." in k}
    equal = {k: torch.equal(before[k], after[k]) for k in before if ".grad_data." not in k}
    result = step(1)
    return {"freed": freed, "n_storages": len(live), "equal": equal, "zero_grads": zero_grads,
            "sizes_back": all(after[k].untyped_storage().nbytes() >= 0 for k in after) and
            {k: after[k].untyped_storage().nbytes() for k in after} == nbytes_before,
            "state_kinds": sorted({k.rsplit(".", 1)[1] for k in before if k.startswith("opt")}),
            "metrics": metrics, "offload_s": seconds_off, "reload_s": offload.last_seconds["reload"],
            "loss": result.loss, "grad_norm": result.grad_norm,
            "params": {n: p.detach().clone() for n, p in chunks[0].named_parameters()}}


def _state_storages(chunks: list, optimizer) -> list[int]:
    from megatron_mmr1.training.offload import dropped_tensors, kept_tensors

    return [t.untyped_storage().nbytes() for t in [*kept_tensors(chunks, optimizer),
                                                    *dropped_tensors(chunks, optimizer)]]


def two_steps(overrides: list[str], param_buffer: bool = False) -> dict:
    """The same two steps without an offload in between."""
    chunks, optimizer, step = _setup(overrides, param_buffer)
    step(0)
    result = step(1)
    return {"loss": result.loss, "grad_norm": result.grad_norm,
            "params": {n: p.detach().clone() for n, p in chunks[0].named_parameters()}}


def optimizer_steps(overrides: list[str]) -> dict:
    """Two SFT steps (CUDA): losses, the params after, and the devices the Adam state lives on."""
    from megatron_mmr1.training.offload import optimizer_parts

    chunks, optimizer, step = _setup(overrides)
    losses = [step(i).loss for i in range(2)]
    devices = sorted({v.device.type for part in optimizer_parts(optimizer) for s in part.optimizer.state.values()
                      for k, v in s.items() if torch.is_tensor(v) and k.startswith("exp_avg")})
    return {"losses": losses, "state_devices": devices,
            "params": {n: p.detach().float().cpu() for n, p in chunks[0].named_parameters()}}
