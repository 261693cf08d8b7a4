"""A few megatron training steps of the language model on synthetic tokens (``training.mode=lm_smoke``).

Checks the megatron stack this project relies on (parallel_state, GPTModel with M-RoPE, DDP,
``get_forward_backward_func`` schedules, optimizer) under any TP/PP, on GPU or on CPU over gloo, with
no data or checkpoint; the harness of the TP/PP equivalence tests. The steps go through the engine
(``engine.train_step``), as SFT and GRPO do; only the model (a bare GPTModel) and the data differ.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from typing import Iterator, Optional

import torch

from megatron_mmr1.config import RunConfig
from megatron_mmr1.models.language import build_language_model
from megatron_mmr1.models.presets import resolve_model_dims
from megatron_mmr1.parallel import DistInfo
from megatron_mmr1.training import engine
from megatron_mmr1.utils.logging import TensorBoardWriter, get_logger, progress, tensorboard_dir

logger = get_logger(__name__)


@dataclass
class SmokeBatch:
    input_ids: torch.Tensor  # (b, s)
    labels: torch.Tensor  # (b, s)
    position_ids: torch.Tensor  # (3, b, s): text-only M-RoPE positions (t = h = w)
    loss_mask: torch.Tensor  # (b, s)


def synthetic_batches(
    seed: int, num: int, micro_batch_size: int, seq_length: int, vocab_size: int, device: torch.device
) -> list[SmokeBatch]:
    """Deterministic token streams with a learnable pattern (next token = token + 1 mod 97)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(num):
        start = torch.randint(0, min(vocab_size, 97), (micro_batch_size, 1), generator=gen)
        seq = (start + torch.arange(seq_length + 1)[None]) % min(vocab_size, 97)  # (b, s+1)
        pos = torch.arange(seq_length)[None, None].expand(3, micro_batch_size, seq_length)  # (3, b, s)
        out.append(SmokeBatch(
            input_ids=seq[:, :-1].to(device), labels=seq[:, 1:].to(device),
            position_ids=pos.contiguous().to(device),
            loss_mask=torch.ones(micro_batch_size, seq_length, device=device),
        ))
    return out


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    """Mean over the micro-batch (megatron's default contract), reported as (sum, count) for the engine."""
    loss_sum = (output_tensor.float() * loss_mask).sum()
    count = loss_mask.sum()
    return loss_sum / count, {"loss": engine.sum_metric(loss_sum, count)}


def forward_step(data_iterator: Iterator[SmokeBatch], model: torch.nn.Module):
    batch = next(data_iterator)
    output = model(batch.input_ids, batch.position_ids, None, labels=batch.labels)  # (b, s) per-token loss
    return output, partial(_loss_func, batch.loss_mask)


def build_model(cfg: RunConfig, wrap_ddp: bool = True) -> torch.nn.Module:
    """The bare language model of ``model.*`` (random init), in megatron DDP unless ``wrap_ddp=False``."""
    model = build_language_model(cfg.model, cfg.parallel)
    if torch.cuda.is_available():
        model.cuda()
    return engine.wrap_ddp(cfg, [model], per_token_loss=False)[0] if wrap_ddp else model


def forward_backward(model, batches: list[SmokeBatch], forward_only: bool = False) -> Optional[float]:
    """One global batch through megatron's schedule; the mean loss on the last stage (None elsewhere)."""
    from megatron.core import parallel_state as mpu

    outputs = engine.forward_backward([model], forward_step, batches, forward_only=forward_only)
    if not mpu.is_pipeline_last_stage():
        return None
    total = torch.stack([d["loss"] for d in outputs]).sum(0)
    return float(total[0] / total[1])


def run(cfg: RunConfig, dist_info: DistInfo, seq_length: int = 32) -> list[float]:
    """Train ``training.train_iters`` steps; returns the loss per step (the same list on every rank)."""
    steps = cfg.training.train_iters
    dims = resolve_model_dims(cfg.model)
    chunks = [build_model(cfg)]
    optimizer = engine.build_optimizer(cfg, chunks)
    scheduler = engine.build_scheduler(cfg, optimizer, steps)
    num_micro = cfg.training.global_batch_size // (cfg.training.micro_batch_size * dist_info.dp)
    logger.info("model: %s, %.2fM params on this rank, tp=%d pp=%d dp=%d, %d micro-batches/step",
                cfg.model.preset, engine.count_params(chunks) / 1e6, dist_info.tp, dist_info.pp, dist_info.dp,
                num_micro)
    tb = TensorBoardWriter(tensorboard_dir(cfg))
    losses = []
    for step in progress(range(steps), desc="lm smoke", enabled=cfg.logging.progress and dist_info.rank == 0):
        batches = synthetic_batches(cfg.parallel.seed + 1000 * step + dist_info.dp_rank, num_micro,
                                    cfg.training.micro_batch_size, seq_length, dims["vocab_size"], dist_info.device)
        result = engine.train_step(cfg, chunks, optimizer, scheduler, forward_step, batches, dist_info.device)
        losses.append(result.loss)
        logger.info("step %d | loss %.4f | grad norm %.3f", step + 1, result.loss, result.grad_norm)
        tb.add_scalars({"loss": result.loss, "grad_norm": result.grad_norm}, step + 1, prefix="train/")
    tb.close()
    return losses
