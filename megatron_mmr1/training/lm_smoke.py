"""A few megatron training steps of the language model on synthetic tokens.

Exercises the whole megatron stack this project relies on (parallel_state, GPTModel with M-RoPE,
DDP, ``get_forward_backward_func`` schedules, optimizer) under any TP/PP, on GPU or on CPU over gloo.
It is the Foundation demo and the harness of the TP/PP equivalence tests; the SFT and GRPO
trainers replace it as the demo once they land.
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
from megatron_mmr1.training.engine import build_optimizer, clip_grad_norm_cpu
from megatron_mmr1.utils.logging import TensorBoardWriter, get_logger, progress

logger = get_logger(__name__)


@dataclass
class SmokeBatch:
    tokens: torch.Tensor  # (b, s)
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
            tokens=seq[:, :-1].to(device), labels=seq[:, 1:].to(device),
            position_ids=pos.contiguous().to(device),
            loss_mask=torch.ones(micro_batch_size, seq_length, device=device),
        ))
    return out


def _loss_func(loss_mask: torch.Tensor, output_tensor: torch.Tensor):
    loss = (output_tensor.float() * loss_mask).sum() / loss_mask.sum()
    return loss, {"lm loss": loss.detach().clone()}


def forward_step(data_iterator: Iterator[SmokeBatch], model: torch.nn.Module):
    batch = next(data_iterator)
    output = model(batch.tokens, batch.position_ids, None, labels=batch.labels)  # (b, s) per-token loss
    return output, partial(_loss_func, batch.loss_mask)


def build_model(cfg: RunConfig, wrap_ddp: bool = True) -> torch.nn.Module:
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig

    model = build_language_model(cfg.model, cfg.parallel)
    if torch.cuda.is_available():
        model.cuda()
    if not wrap_ddp:
        return model
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True, overlap_grad_reduce=False,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer and torch.cuda.is_available(),
    )
    return DistributedDataParallel(config=model.config, ddp_config=ddp_cfg, module=model)


def forward_backward(model, batches: list[SmokeBatch], seq_length: int, micro_batch_size: int,
                     forward_only: bool = False) -> Optional[float]:
    """One global batch through megatron's schedule; returns the mean loss on the last stage."""
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    losses = get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=iter(batches),
        model=[model],
        num_microbatches=len(batches),
        seq_length=seq_length,
        micro_batch_size=micro_batch_size,
        forward_only=forward_only,
    )
    if not mpu.is_pipeline_last_stage():
        return None
    return float(torch.stack([d["lm loss"] for d in losses]).mean())


def train_step(cfg: RunConfig, model, optimizer, batches: list[SmokeBatch], seq_length: int) -> tuple[Optional[float], float]:
    model.zero_grad_buffer()
    optimizer.zero_grad()
    loss = forward_backward(model, batches, seq_length, cfg.training.micro_batch_size)
    if torch.cuda.is_available():
        _, grad_norm, _ = optimizer.step()
    else:
        model.finish_grad_sync()
        grad_norm = clip_grad_norm_cpu([model], cfg.optim.clip_grad)
        optimizer.step()
    return loss, float(grad_norm or 0.0)


def loss_for_logging(loss: Optional[float], device: torch.device) -> float:
    """The last pipeline stage's loss, averaged over DP, on every rank (so rank 0 can log it)."""
    import torch.distributed as dist
    from megatron.core import parallel_state as mpu

    t = torch.tensor([loss if loss is not None else 0.0], device=device)
    dist.broadcast(t, src=mpu.get_pipeline_model_parallel_last_rank(), group=mpu.get_pipeline_model_parallel_group())
    dist.all_reduce(t, group=mpu.get_data_parallel_group())
    return float(t) / mpu.get_data_parallel_world_size()


def run(cfg: RunConfig, dist_info: DistInfo, steps: int, seq_length: int = 32) -> list[float]:
    """Train ``steps`` steps; returns the loss per step (the same list on every rank)."""
    dims = resolve_model_dims(cfg.model)
    model = build_model(cfg)
    optimizer = build_optimizer(cfg, [model])
    num_micro = cfg.training.global_batch_size // (cfg.training.micro_batch_size * dist_info.dp)
    n_params = sum(p.numel() for p in model.parameters())
    logger.info("model: %s, %.2fM params on this rank, tp=%d pp=%d dp=%d, %d micro-batches/step",
                cfg.model.preset, n_params / 1e6, dist_info.tp, dist_info.pp, dist_info.dp, num_micro)
    tb = TensorBoardWriter(cfg.logging.tensorboard_dir or f"{cfg.output_dir}/tensorboard")
    losses = []
    for step in progress(range(steps), desc="lm smoke", enabled=cfg.logging.progress and dist_info.rank == 0):
        batches = synthetic_batches(cfg.parallel.seed + 1000 * step + dist_info.dp_rank, num_micro,
                                    cfg.training.micro_batch_size, seq_length, dims["vocab_size"], dist_info.device)
        loss, grad_norm = train_step(cfg, model, optimizer, batches, seq_length)
        loss = loss_for_logging(loss, dist_info.device)
        losses.append(loss)
        logger.info("step %d | loss %.4f | grad norm %.3f", step + 1, loss, grad_norm)
        tb.add_scalars({"loss": loss, "grad_norm": grad_norm}, step + 1, prefix="train/")
    tb.close()
    return losses
