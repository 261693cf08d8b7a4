"""GRPO policy loss in plain torch (the trainer's reference path; ``mmr1_kernels.fused_grpo_loss`` is the
fused path computing the same math from hidden states).

loss = agg(clipped surrogate) + kl_coef * agg(KL(pi || ref)) - entropy_coef * agg(entropy),
each ``agg`` the configured reduction over unmasked tokens (verl's ``compute_policy_loss`` +
``kl_loss`` + entropy bonus, which is what the MMR1 reference trains with).
"""

from __future__ import annotations

import math
from typing import Optional

import torch

from megatron_mmr1.algorithms.losses import aggregate_loss, clipped_surrogate, kl_penalty, masked_mean
from megatron_mmr1.config import AlgorithmConfig


def grpo_loss(
    logp: torch.Tensor,
    old_logp: torch.Tensor,
    ref_logp: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    cfg: AlgorithmConfig,
    entropy: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Scalar loss and detached metrics for one micro-batch.

    logp/old_logp/ref_logp/mask/entropy: per-token, same shape ([S, L] padded or [T] packed);
    advantages: per-token of that shape, or [S] per sequence (broadcast over L for [S, L] inputs).
    """
    if advantages.dim() == logp.dim() - 1 and logp.dim() == 2:
        advantages = advantages[:, None].expand_as(logp)  # [S] -> [S, L]
    for name, t in (("old_logp", old_logp), ("advantages", advantages), ("mask", mask)):
        if t.shape != logp.shape:
            raise ValueError(f"grpo_loss: {name} shape {tuple(t.shape)} != logp shape {tuple(logp.shape)}")
    advantages = advantages.to(logp.dtype)
    mode = cfg.loss_agg_mode

    pg, clipped = clipped_surrogate(
        logp, old_logp, advantages, cfg.clip_ratio_low, cfg.clip_ratio_high, cfg.clip_ratio_c
    )
    loss = aggregate_loss(pg, mask, mode)
    with torch.no_grad():
        log_ratio = logp - old_logp
        metrics = {
            "pg_loss": float(loss.detach()),
            "pg_clipfrac": float(masked_mean(clipped, mask)),
            "ppo_kl": float(masked_mean(-log_ratio, mask)),
        }
        if cfg.clip_ratio_c is not None:
            # Tokens whose loss the dual clip bounded (verl's pg_clipfrac_lower).
            clip_lr = torch.clamp(log_ratio, min=math.log1p(-cfg.clip_ratio_low), max=math.log1p(cfg.clip_ratio_high))
            pre = torch.maximum(-advantages * torch.exp(log_ratio), -advantages * torch.exp(clip_lr))
            dual = (advantages < 0) & (pre > -advantages * cfg.clip_ratio_c)
            metrics["pg_clipfrac_lower"] = float(masked_mean(dual.to(logp.dtype), mask))

    if cfg.use_kl_loss:
        if ref_logp is None:
            raise ValueError("grpo_loss: algorithm.use_kl_loss is set but ref_logp is None")
        if ref_logp.shape != logp.shape:
            raise ValueError(f"grpo_loss: ref_logp shape {tuple(ref_logp.shape)} != logp shape {tuple(logp.shape)}")
        kl = aggregate_loss(kl_penalty(logp, ref_logp, cfg.kl_estimator), mask, mode)
        loss = loss + cfg.kl_coef * kl
        metrics["kl_loss"] = float(kl.detach())

    if cfg.entropy_coef != 0.0:
        if entropy is None:
            raise ValueError("grpo_loss: algorithm.entropy_coef != 0 needs the per-token entropy")
        ent = aggregate_loss(entropy, mask, mode)
        loss = loss - cfg.entropy_coef * ent
        metrics["entropy"] = float(ent.detach())
    elif entropy is not None:
        metrics["entropy"] = float(aggregate_loss(entropy.detach(), mask, mode))

    metrics["loss"] = float(loss.detach())
    return loss, metrics


def fused_loss_kwargs(cfg: AlgorithmConfig) -> dict:
    """The keyword arguments of ``mmr1_kernels.fused_grpo_loss`` that give the same loss as
    :func:`grpo_loss` under ``cfg`` (the trainer's switch between the two paths)."""
    return dict(
        eps_low=cfg.clip_ratio_low,
        eps_high=cfg.clip_ratio_high,
        clip_c=cfg.clip_ratio_c,
        kl_coef=cfg.kl_coef if cfg.use_kl_loss else 0.0,
        kl_estimator=cfg.kl_estimator,
        entropy_coef=cfg.entropy_coef,
        loss_agg_mode=cfg.loss_agg_mode,
        chunk_size=cfg.fused_chunk_size,
        backend=cfg.kernel_backend,
    )
