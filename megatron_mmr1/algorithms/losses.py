"""Per-token GRPO loss math in plain torch: the single reference used by the trainer's fallback path
and by the torch references of the fused kernels in ``mmr1_kernels``.

All inputs are per-token tensors of the same shape (e.g. [T] packed or [B, S] padded).
"""

from __future__ import annotations

import math

import torch

KL_ESTIMATORS = ("k1", "k2", "k3", "low_var_kl", "mse")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str = "low_var_kl") -> torch.Tensor:
    """KL(pi || ref) estimate per token (Schulman's k1/k2/k3); k3 is clamped to [-10, 10] as in verl."""
    log_ratio = logp - ref_logp
    if estimator == "k1":
        return log_ratio
    if estimator in ("k2", "mse"):
        return 0.5 * log_ratio.square()
    if estimator in ("k3", "low_var_kl"):
        kl = ref_logp - logp
        kl = torch.clamp(kl, min=-20.0, max=20.0)  # exp overflow guard before the estimator
        return torch.clamp(torch.exp(kl) - kl - 1.0, min=-10.0, max=10.0)
    raise ValueError(f"unknown KL estimator '{estimator}' (known: {', '.join(KL_ESTIMATORS)})")


def clipped_surrogate(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    clip_low: float = 0.2,
    clip_high: float = 0.2,
    clip_c: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO/GRPO clipped surrogate per token, clip applied to the log-ratio before exp.

    Returns (loss, clipped) where ``clipped`` is 1.0 where the clipped branch was taken.
    Dual clip (clip_c > 1) bounds the loss of negative advantages by -A * clip_c.
    """
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio)
    clipped_ratio = torch.exp(torch.clamp(log_ratio, min=math.log1p(-clip_low), max=math.log1p(clip_high)))
    loss_unclipped = -advantages * ratio
    loss_clipped = -advantages * clipped_ratio
    loss = torch.maximum(loss_unclipped, loss_clipped)
    clipped = (loss_clipped > loss_unclipped).to(logp.dtype)
    if clip_c is not None:
        dual = torch.minimum(loss, -advantages * clip_c)
        loss = torch.where(advantages < 0, dual, loss)
    return loss, clipped


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``x`` over the tokens where ``mask`` is set (0 when none is), in ``x``'s dtype."""
    mask = mask.to(x.dtype)
    return (x * mask).sum() / mask.sum().clamp(min=1.0)


def aggregate_loss(per_token: torch.Tensor, mask: torch.Tensor, mode: str = "token-mean") -> torch.Tensor:
    """Reduce per-token losses [B, S] (or [T] with one sequence) under ``mask``.

    token-mean: sum over all unmasked tokens / their count (MMR1/verl default);
    seq-mean-token-sum: per-sequence sum, then mean over sequences (Dr.GRPO);
    seq-mean-token-mean: per-sequence mean, then mean over sequences (original GRPO).
    """
    if mode == "token-mean":
        return masked_mean(per_token, mask)
    mask = mask.to(per_token.dtype)
    if per_token.dim() == 1:
        per_token, mask = per_token[None], mask[None]
    seq_sum = (per_token * mask).sum(-1)
    seq_has = (mask.sum(-1) > 0).to(per_token.dtype)
    if mode == "seq-mean-token-sum":
        per_seq = seq_sum
    elif mode == "seq-mean-token-mean":
        per_seq = seq_sum / mask.sum(-1).clamp(min=1.0)
    else:
        raise ValueError(f"unknown loss_agg_mode '{mode}'")
    return (per_seq * seq_has).sum() / seq_has.sum().clamp(min=1.0)
