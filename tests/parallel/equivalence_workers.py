"""Rank functions for the TP/PP equivalence tests (module-level so spawned ranks can import them).

Weights and gradients travel through megatron dist checkpoints, so the comparison goes through
megatron's own resharding instead of hand-written gather code.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from megatron_mmr1.config import load_config

MICRO_BATCH, NUM_MICRO, SEQ = 2, 2, 16


def _cfg(tp: int, pp: int, world_size: int):
    return load_config(None, [
        f"parallel.tp={tp}", f"parallel.pp={pp}", "training.micro_batch_size=2",
        f"training.global_batch_size={MICRO_BATCH * NUM_MICRO}", "training.rollout_batch_size=4", "rollout.n=1",
        "logging.progress=false",
    ], world_size=world_size)


def _grads_as_params(model) -> None:
    model.finish_grad_sync()
    with torch.no_grad():
        for p in model.module.parameters():
            p.copy_(p.main_grad)


def step_and_save(tp: int, pp: int, weights_dir: str, grads_dir: str, save_weights: bool) -> float | None:
    """Build at (tp, pp), load (or create and save) the weights, run one global batch through megatron's
    schedule, save the gradients as a dist checkpoint; returns the loss (last stage) or None."""
    from megatron.core import dist_checkpointing
    from megatron.core import parallel_state as mpu

    from megatron_mmr1 import parallel
    from megatron_mmr1.models.presets import resolve_model_dims
    from megatron_mmr1.training import lm_smoke

    cfg = _cfg(tp, pp, int(os.environ["WORLD_SIZE"]))
    info = parallel.initialize(cfg.parallel)
    model = lm_smoke.build_model(cfg)
    for d in (weights_dir, grads_dir):
        Path(d).mkdir(parents=True, exist_ok=True)
    if save_weights:
        dist_checkpointing.save(model.module.sharded_state_dict(), weights_dir)
    else:
        state = dist_checkpointing.load(model.module.sharded_state_dict(), weights_dir)
        model.module.load_state_dict(state)
    vocab = resolve_model_dims(cfg.model)["vocab_size"]
    batches = lm_smoke.synthetic_batches(7, NUM_MICRO, MICRO_BATCH, SEQ, vocab, info.device)
    model.zero_grad_buffer()
    loss = lm_smoke.forward_backward(model, batches)
    _grads_as_params(model)
    dist_checkpointing.save(model.module.sharded_state_dict(), grads_dir)
    return loss if mpu.get_tensor_model_parallel_rank() == 0 else None


def load_full(ckpt_dirs: list[str]) -> list[dict[str, torch.Tensor]]:
    """Load each checkpoint into an unsharded (TP=1, PP=1) model; returns plain state dicts."""
    from megatron.core import dist_checkpointing

    from megatron_mmr1 import parallel
    from megatron_mmr1.training import lm_smoke

    cfg = _cfg(1, 1, 1)
    parallel.initialize(cfg.parallel)
    model = lm_smoke.build_model(cfg, wrap_ddp=False)
    out = []
    for d in ckpt_dirs:
        state = dist_checkpointing.load(model.sharded_state_dict(), d)
        model.load_state_dict(state)
        out.append({k: v.detach().clone() for k, v in model.state_dict().items() if v is not None and torch.is_tensor(v)})
    return out


RECOMPUTE_CASES = ((None, None), ("full", None), ("selective", None), ("selective", ["mlp"]),
                   ("selective", ["core_attn", "mlp"]))
"""(model.recompute, model.recompute_modules); the first is the reference (no recompute). ``layernorm`` is
refused without Transformer Engine (config.validate)."""


def recompute_losses() -> list[tuple[float, float, int]]:
    """Loss, max |grad - reference grad| and the number of MLP forward calls (a recomputed MLP runs twice) of
    one global batch under each of RECOMPUTE_CASES (same weights)."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.models.presets import resolve_model_dims
    from megatron_mmr1.training import lm_smoke

    out = []
    for recompute, modules in RECOMPUTE_CASES:
        cfg = _cfg(1, 1, 1)
        cfg.model.recompute, cfg.model.recompute_modules = recompute, modules
        info = parallel.initialize(cfg.parallel)
        model = lm_smoke.build_model(cfg)  # same seed -> same weights
        batches = lm_smoke.synthetic_batches(7, NUM_MICRO, MICRO_BATCH, SEQ, resolve_model_dims(cfg.model)["vocab_size"], info.device)
        calls = [0]
        for layer in model.module.decoder.layers:
            layer.mlp.register_forward_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        model.zero_grad_buffer()
        loss = lm_smoke.forward_backward(model, batches)
        grad = torch.cat([p.main_grad.flatten() for p in model.module.parameters()])
        out.append((loss, grad, calls[0]))
        parallel.destroy()
    return [(l, float((g - out[0][1]).abs().max()), n) for l, g, n in out]
