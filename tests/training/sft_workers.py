"""Rank functions of the SFT trainer tests (module level, so spawned ranks can import them)."""

from __future__ import annotations

import os

import torch

SFT_CONFIG = "examples/configs/tiny_cpu_sft.yaml"


def _cfg(overrides: list[str]):
    from megatron_mmr1.config import load_config

    return load_config(SFT_CONFIG, overrides, world_size=int(os.environ["WORLD_SIZE"]))


def run_sft(overrides: list[str], nan_steps: tuple[int, ...] = (), crash_saving_step: int | None = None) -> dict:
    """The SFT loop as torchrun would run it. ``nan_steps``: steps whose loss is made NaN (1-based);
    ``crash_saving_step``: the save of that step dies after writing its model files (a crash mid-save)."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.training import checkpointing, sft

    cfg = _cfg(overrides)
    info = parallel.initialize(cfg.parallel)
    if nan_steps:
        real_step, calls = sft.train_step, [0]

        def nan_train_step(cfg_, chunks, opt, sched, forward_step, micro, device, **kw):
            calls[0] += 1
            if calls[0] not in nan_steps:
                return real_step(cfg_, chunks, opt, sched, forward_step, micro, device, **kw)

            def poisoned(it, model):
                out, loss_fn = forward_step(it, model)
                return out, lambda hidden: _poison(loss_fn(hidden))

            return real_step(cfg_, chunks, opt, sched, poisoned, micro, device, **kw)

        sft.train_step = nan_train_step
    if crash_saving_step is not None:
        real_meta = checkpointing.write_meta

        def crashing_meta(ckpt, *a, **kw):
            if ckpt.name == f".tmp_{checkpointing.iter_name(crash_saving_step)}":
                raise OSError("injected crash mid-save")
            return real_meta(ckpt, *a, **kw)

        checkpointing.write_meta = crashing_meta
    return sft.run(cfg, info)


def _poison(out):
    loss, n, metrics = out
    nan = torch.tensor(float("nan"))
    return loss * nan, n, {k: v * torch.tensor([float("nan"), 1.0], dtype=v.dtype) for k, v in metrics.items()}


def split_gradients(overrides: list[str], plans: dict[str, dict]) -> dict[str, dict[str, torch.Tensor]]:
    """One global batch, gradients (no update) under several micro-batch plans, each plan a dict of
    config overrides of training.*/data.* read by build_micro_batches. Returns plan -> param -> grad."""
    import dataclasses

    from megatron_mmr1 import parallel
    from megatron_mmr1.data.dataset import build_dataset
    from megatron_mmr1.data.tokenizer import load_tokenizer
    from megatron_mmr1.training import engine, sft

    cfg = _cfg(overrides)
    info = parallel.initialize(cfg.parallel)
    tok = load_tokenizer(cfg.model.tokenizer_path)
    ds = build_dataset(cfg.data, tok)
    chunks = engine.build_policy(cfg)
    indices = list(range(cfg.training.global_batch_size))
    out: dict[str, dict[str, torch.Tensor]] = {}
    for name, plan in plans.items():
        pcfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **plan.get("training", {})),
                                   data=dataclasses.replace(cfg.data, **plan.get("data", {})))
        micro, _ = sft.build_micro_batches(pcfg, ds, indices, info, pad_id=0)
        for c in chunks:
            c.zero_grad_buffer()
        step = engine.make_forward_step(pcfg, sft.sft_loss_func, varlen=False)
        outputs = engine.forward_backward(chunks, step, micro)
        loss = engine.reduce_loss_dicts(outputs, info.device)
        out[name] = {"__num_micro_batches": torch.tensor(len(micro)), "__loss": torch.tensor(loss["loss"]),
                     **{n: p.main_grad.detach().clone() for n, p in chunks[0].module.named_parameters()}}
    return out
