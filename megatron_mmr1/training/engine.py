"""The training engine, shared by every loop: model chunks in megatron DDP, megatron's optimizer and
LR/WD scheduler, and one optimizer step through megatron's schedule with exact per-token loss scaling.

    chunks = build_policy(cfg)                       # DDP-wrapped Qwen2.5-VL chunks of this rank
    optimizer = build_optimizer(cfg, chunks)         # get_megatron_optimizer (distributed on GPU)
    scheduler = build_scheduler(cfg, optimizer, total_steps)
    result = train_step(cfg, chunks, optimizer, scheduler, forward_step, micro_batches)

Loss normalisation follows megatron's per-token path (``calculate_per_token_loss``): a loss function
returns (loss sum, token count, metrics), DDP sums gradients over DP, and ``finalize_model_grads``
divides by the token count all-reduced over the whole global batch, so 1, 2 or 7 micro-batches, on
one or two DP ranks, give the same gradient (slime#987, AReaL#1273 are the bugs this avoids).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Callable, Iterable, Optional

import torch
import torch.distributed as dist

from megatron_mmr1.config import RunConfig
from megatron_mmr1.models import unwrap
from megatron_mmr1.training import micro_batches as mbs
from megatron_mmr1.utils.logging import get_logger

logger = get_logger(__name__)


def on_gpu() -> bool:
    return torch.cuda.is_available()


def wrap_ddp(cfg: RunConfig, chunks: list, per_token_loss: bool = True,
             overlap_grad_reduce: Optional[bool] = None) -> list:
    """megatron DDP around each chunk; the model config gets the per-token-loss path and megatron's
    ``finalize_model_grads`` (DP reduce, tied-embedding reduce over PP, 1/num_tokens scaling).
    ``overlap_grad_reduce``: reduce buckets during the last backward (default: on GPU)."""
    from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads

    for c in chunks:  # read by DDP's constructor and by the schedule
        config = unwrap(c).config
        config.calculate_per_token_loss = per_token_loss
        config.finalize_model_grads_func = finalize_model_grads
        config.variable_seq_lengths = True  # packed micro-batches vary in length; PP exchanges shapes
    overlap = on_gpu() if overlap_grad_reduce is None else overlap_grad_reduce
    ddp_cfg = DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=overlap,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer and on_gpu(),
        average_in_collective=False,  # per-token loss: sum over DP, divide by the global token count
    )
    wrapped = [DistributedDataParallel(config=unwrap(c).config, ddp_config=ddp_cfg, module=c) for c in chunks]
    if overlap:
        set_grad_sync_funcs(wrapped)
    return wrapped


def set_grad_sync_funcs(chunks: list) -> None:
    """What megatron's training loop sets for ``overlap_grad_reduce``: ``no_sync_func`` keeps the grad
    hooks of all but the last micro-batch from counting towards a bucket's reduce (otherwise the
    buckets take step 1's micro-batch count as the trigger: fewer micro-batches later never reduce,
    more reduce mid-step), and ``grad_sync_func`` lets PP stages other than the first launch their
    reduce after the last backward (align_grad_reduce). One chunk: plain callables, as the
    non-interleaved schedules call them; several: one per chunk."""
    no_sync = [c.no_sync for c in chunks]
    grad_sync = [c.start_grad_sync for c in chunks]
    for c in chunks:
        config = unwrap(c).config
        config.no_sync_func = no_sync[0] if len(chunks) == 1 else no_sync
        config.grad_sync_func = grad_sync[0] if len(chunks) == 1 else grad_sync


def build_policy(cfg: RunConfig, load_hf: bool = True, per_token_loss: bool = True) -> list:
    """This rank's Qwen2.5-VL chunks (HF weights from ``model.hf_path`` when set), wrapped in DDP."""
    from megatron_mmr1.models.qwen2_5_vl import build_model

    chunks = build_model(cfg, load_hf=load_hf)
    return wrap_ddp(cfg, chunks, per_token_loss)


def build_optimizer(cfg: RunConfig, chunks: list):
    """megatron's optimizer: AdamW with fp32 main params/grads for bf16 models, the distributed optimizer
    on GPU; on CPU the plain path (megatron's clipping and distributed optimizer assert CUDA tensors)."""
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    model_cfg = unwrap(chunks[0]).config
    o = cfg.optim
    opt_cfg = OptimizerConfig(
        optimizer="adam", lr=o.lr, min_lr=o.min_lr, weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1, adam_beta2=o.adam_beta2, adam_eps=o.adam_eps,
        clip_grad=o.clip_grad if on_gpu() else 0.0,  # CPU: clipped in torch by clip_grad_norm_cpu
        bf16=model_cfg.bf16, params_dtype=model_cfg.params_dtype,
        use_distributed_optimizer=cfg.parallel.use_distributed_optimizer and on_gpu(),
        **cpu_offload_kwargs(cfg),
    )
    return get_megatron_optimizer(opt_cfg, chunks)


def cpu_offload_kwargs(cfg: RunConfig) -> dict[str, Any]:
    """``optim.cpu_offload``: megatron-core's HybridDeviceOptimizer keeps the Adam state and step of
    ``optim.offload_fraction`` of the params on the host (torch AdamW there, the device Adam for the rest),
    configured as Megatron-LM's ``--optimizer-cpu-offload --use-precision-aware-optimizer
    --overlap-cpu-optimizer-d2h-h2d`` (what verl and slime set). config.validate refuses it without CUDA and the
    distributed optimizer."""
    o = cfg.optim
    if not o.cpu_offload:
        return {}
    return dict(optimizer_cpu_offload=True, optimizer_offload_fraction=o.offload_fraction,
                use_precision_aware_optimizer=True, overlap_cpu_optimizer_d2h_h2d=True)


def build_scheduler(cfg: RunConfig, optimizer, total_steps: int):
    """megatron's OptimizerParamScheduler, counted in optimizer steps: linear warm-up over
    ``optim.lr_warmup_fraction`` of the run, then constant / cosine / linear decay to ``optim.min_lr``;
    weight decay constant."""
    from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    o = cfg.optim
    total_steps = max(1, int(total_steps))
    warmup = int(round(o.lr_warmup_fraction * total_steps))
    return OptimizerParamScheduler(
        optimizer, init_lr=0.0 if warmup else o.lr, max_lr=o.lr, min_lr=o.min_lr,
        lr_warmup_steps=warmup, lr_decay_steps=total_steps, lr_decay_style=o.lr_decay_style,
        start_wd=o.weight_decay, end_wd=o.weight_decay, wd_incr_steps=total_steps, wd_incr_style="constant",
        use_checkpoint_opt_param_scheduler=True, override_opt_param_scheduler=False,
    )


def current_lr(optimizer) -> float:
    return float(optimizer.param_groups[0]["lr"])


def clip_grad_norm_cpu(chunks: list, max_norm: float) -> float:
    """Global grad norm over TP/PP (megatron's rule: TP-duplicated params counted once), then clip."""
    from megatron.core import parallel_state as mpu
    from megatron.core.tensor_parallel import param_is_not_tensor_parallel_duplicate

    params = [p for c in chunks for p in c.parameters() if p.requires_grad]
    grads = [p.main_grad for p in params if param_is_not_tensor_parallel_duplicate(p)]
    sq = torch.stack([g.float().square().sum() for g in grads]).sum() if grads else torch.zeros(())
    dist.all_reduce(sq, group=mpu.get_model_parallel_group())
    norm = float(sq.sqrt())
    if max_norm > 0 and math.isfinite(norm) and norm > max_norm:
        for p in params:
            p.main_grad.mul_(max_norm / (norm + 1e-6))
    return norm


def clip_grad_norm_gpu(optimizer, max_norm: float) -> float:
    """megatron's clip with one norm computation (the GPU collective over all grads): the global norm of
    all (chained) optimizers, then every optimizer's grads clipped by it, as ``ChainedOptimizer.step``
    does. Not ``optimizer.step()``: a bf16 step would apply non-finite grads instead of skipping."""
    from megatron.core.optimizer import clip_grads

    grad_norm = float(optimizer.get_grad_norm())
    if max_norm > 0 and math.isfinite(grad_norm):
        for opt in getattr(optimizer, "chained_optimizers", [optimizer]):
            params = opt.get_parameters()
            if params:
                clip_grads.clip_grad_by_total_norm_fp32(
                    params, max_norm, grad_norm, opt.config.use_precision_aware_optimizer_no_fp8_or_ds_fp8)
    return grad_norm


@dataclass
class StepResult:
    """One optimizer step, reduced over the whole global batch (the same on every rank)."""

    loss: float
    """Loss sum / loss-token count over the global batch (the value whose gradient was taken)."""
    num_tokens: int
    """Loss tokens (the per-token normaliser)."""
    grad_norm: float
    skipped: bool
    metrics: dict[str, float] = field(default_factory=dict)
    """Other per-token metric sums divided by ``num_tokens`` (clip fraction, KL, entropy, ...)."""


def reduce_loss_dicts(outputs: list[dict], device: torch.device) -> dict[str, float]:
    """Per-micro-batch {name: (sum, count)} from the last PP stage -> global means on every rank
    (broadcast over PP from the last stage, summed over DP). Names ending in ``_max`` carry (max, 1)
    and are max-reduced instead."""
    from megatron.core import parallel_state as mpu

    names = sorted({k for d in outputs for k in d})
    # Every last-stage rank sees the same names (same loss function); other stages learn them by broadcast.
    obj = [names]
    dist.broadcast_object_list(obj, src=mpu.get_pipeline_model_parallel_last_rank(),
                               group=mpu.get_pipeline_model_parallel_group())
    names = obj[0]
    is_max = torch.tensor([k.endswith("_max") for k in names], dtype=torch.bool, device=device)
    sums = torch.zeros(len(names), 2, dtype=torch.float64, device=device)
    sums[is_max, 0] = -float("inf")
    if mpu.is_pipeline_last_stage():
        for d in outputs:
            for j, k in enumerate(names):
                if k not in d:
                    continue
                v = d[k].to(device=device, dtype=torch.float64).reshape(2)
                sums[j] = torch.stack([torch.maximum(sums[j, 0], v[0]), v[1]]) if is_max[j] else sums[j] + v
    dist.broadcast(sums, src=mpu.get_pipeline_model_parallel_last_rank(), group=mpu.get_pipeline_model_parallel_group())
    maxes = sums[:, 0].clone()
    dist.all_reduce(maxes, op=dist.ReduceOp.MAX, group=mpu.get_data_parallel_group())
    dist.all_reduce(sums, group=mpu.get_data_parallel_group())
    out: dict[str, float] = {}
    for j, k in enumerate(names):
        out[k] = float(maxes[j]) if is_max[j] else float(sums[j, 0] / sums[j, 1].clamp(min=1.0))
        out[f"{k}__count"] = float(sums[j, 1])
    return out


def min_micro_batches(cfg: RunConfig) -> int:
    """Fewest micro-batches a step may have: megatron's interleaved schedule (``parallel.vpp`` > 1) needs
    at least pp of them (plans pad with empty ones, :func:`micro_batches.plan_micro_batches`)."""
    return cfg.parallel.pp if cfg.parallel.vpp > 1 else 1


def set_vp_group_size(chunks: list, num_micro_batches: int) -> None:
    """megatron's interleaved schedule runs micro-batches through each virtual stage in groups of
    ``microbatch_group_size_per_vp_stage`` (default pp) and refuses a last group smaller than pp; packed
    steps vary in count, so a count that pp does not divide runs as one group (same result, less overlap)."""
    from megatron.core import parallel_state as mpu

    pp = mpu.get_pipeline_model_parallel_world_size()
    if num_micro_batches < pp:
        raise ValueError(f"{num_micro_batches} micro-batches for parallel.pp={pp} with parallel.vpp={len(chunks)}: "
                         f"the interleaved schedule needs at least pp (plan with engine.min_micro_batches)")
    group = pp if num_micro_batches % pp == 0 else num_micro_batches
    for c in chunks:
        unwrap(c).config.microbatch_group_size_per_vp_stage = group


def forward_backward(chunks: list, forward_step: Callable, micro_batches: list, forward_only: bool = False) -> list:
    """All micro-batches through megatron's schedule (1F1B with PP; interleaved 1F1B over several chunks,
    each virtual stage reading every micro-batch from its own iterator); returns the last stage's loss dicts."""
    from megatron.core.pipeline_parallel import get_forward_backward_func

    seq = max(int(mb.input_ids.shape[1]) for mb in micro_batches)
    mbs = max(int(mb.input_ids.shape[0]) for mb in micro_batches)
    data: Any = iter(micro_batches)
    if len(chunks) > 1:
        set_vp_group_size(chunks, len(micro_batches))
        data = [iter(micro_batches) for _ in chunks]
    return get_forward_backward_func()(
        forward_step_func=forward_step,
        data_iterator=data,
        model=chunks,
        num_microbatches=len(micro_batches),
        seq_length=seq,  # shapes travel with the tensors (variable_seq_lengths)
        micro_batch_size=mbs,
        forward_only=forward_only,
    )


def train_step(cfg: RunConfig, chunks: list, optimizer, scheduler, forward_step: Callable, micro_batches: list,
               device: torch.device, loss_key: str = "loss") -> StepResult:
    """Zero grads, forward/backward all micro-batches, then step unless the loss or grad norm is not
    finite (the step is skipped: no update, no scheduler advance; the caller counts it)."""
    for c in chunks:
        c.zero_grad_buffer()
    optimizer.zero_grad()
    outputs = forward_backward(chunks, forward_step, micro_batches)
    reduced = reduce_loss_dicts(outputs, device)
    loss = reduced.get(loss_key, float("nan"))
    if on_gpu():
        found_inf = optimizer.prepare_grads()  # fp16 loss scaling only; bf16 says False
        grad_norm = clip_grad_norm_gpu(optimizer, cfg.optim.clip_grad)
        ok = math.isfinite(loss) and math.isfinite(grad_norm) and not found_inf
        if ok:
            optimizer.step_with_ready_grads()
    else:
        grad_norm = clip_grad_norm_cpu(chunks, cfg.optim.clip_grad)
        ok = math.isfinite(loss) and math.isfinite(grad_norm)
        if ok:
            optimizer.step()
    if ok:
        scheduler.step(increment=1)
    metrics = {k: v for k, v in reduced.items() if not k.endswith("__count") and k != loss_key}
    return StepResult(loss=loss, num_tokens=int(reduced.get(f"{loss_key}__count", 0)), grad_norm=grad_norm,
                      skipped=not ok, metrics=metrics)


# ---- one micro-batch through the policy --------------------------------------------------------------

def token_logprobs(cfg: RunConfig, chunk: Any, hidden: torch.Tensor, targets: torch.Tensor,
                   with_entropy: bool = False, temperature: float = 1.0):
    """log p(targets) from the last hidden states and the vocab-parallel head (no [T, V] logits)."""
    from megatron.core import parallel_state as mpu
    from mmr1_kernels import fused_logprobs

    return fused_logprobs(hidden, chunk.output_layer_weight(), targets.clamp(min=0), temperature=temperature,
                          tp_group=mpu.get_tensor_model_parallel_group(), with_entropy=with_entropy,
                          chunk_size=cfg.algorithm.fused_chunk_size, backend=cfg.algorithm.kernel_backend)


def make_forward_step(cfg: RunConfig, loss_fn, varlen: bool):
    """megatron ``forward_step_func`` over :class:`MicroBatch` items; ``loss_fn(cfg, chunk, mb, hidden)``."""

    def forward_step(data_iterator, model):
        mb = next(data_iterator)
        chunk = unwrap(model)
        position_ids, mask, packed = mbs.model_inputs(mb, chunk, varlen)
        out = model(mb.input_ids, position_ids, mask, pixel_values=mb.pixel_values, image_grid_thw=mb.image_grid_thw,
                    return_hidden=True, packed_seq_params=packed)
        return out, partial(loss_fn, cfg, chunk, mb)

    return forward_step


def varlen_attention(cfg: RunConfig) -> bool:
    from megatron_mmr1.models.language import has_varlen_attention

    return has_varlen_attention(cfg.model)


def token_budget(cfg: RunConfig) -> Optional[int]:
    """Packed micro-batches of this many tokens, or None (micro_batch_size padded rows)."""
    if cfg.training.max_tokens_per_micro_batch:
        return cfg.training.max_tokens_per_micro_batch
    return cfg.data.seq_length if cfg.data.packing else None


def seq_pad_multiple(cfg: RunConfig) -> int:
    """Row lengths must be a multiple of this: tp under sequence parallelism (megatron reduce-scatters the
    [s, b, h] embeddings over TP ranks along s), else 1."""
    from megatron_mmr1.models.language import uses_sequence_parallel

    return cfg.parallel.tp if uses_sequence_parallel(cfg.model, cfg.parallel) else 1


def sum_metric(value: torch.Tensor, count: torch.Tensor | float) -> torch.Tensor:
    """A (sum, count) pair as loss functions report metrics: reduced to global means by reduce_loss_dicts."""
    count = torch.as_tensor(count, dtype=torch.float64)
    return torch.stack([value.detach().to(torch.float64).reshape(()), count.reshape(()).to(value.device)])


def count_params(chunks: Iterable) -> int:
    return sum(p.numel() for c in chunks for p in c.parameters())
