"""GRPO group advantages, their token broadcast, and DAPO-style dynamic filtering.

Matches verl's ``compute_grpo_outcome_advantage`` (the reference MMR1 trains with):
A_i = (r_i - mean_g) / (std_g + eps), std the unbiased (N-1) sample std of the group, and a group
of one gets mean 0 / std 1. ``norm_by_std=False`` is Dr.GRPO's r_i - mean_g.

Rewards come either as a dense [G, N] tensor (G prompts, N responses each) or flat [S] with a
group id per sample (ragged groups, e.g. after a rollout dropped an aborted response).
"""

from __future__ import annotations

from typing import Optional

import torch


def _group_inverse(group_ids: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Map arbitrary group ids to 0..K-1 (order of first appearance is not needed, only identity)."""
    if group_ids.dim() != 1:
        raise ValueError(f"group_ids must be 1-D, got shape {tuple(group_ids.shape)}")
    _, inverse = torch.unique(group_ids, return_inverse=True)
    return inverse, int(inverse.max().item()) + 1 if inverse.numel() else 0


def group_mean_std(rewards: torch.Tensor, group_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample (mean, unbiased std) of its group; groups of one get (0, 1) as in verl."""
    rewards = rewards.to(torch.float32)
    inverse, k = _group_inverse(group_ids)
    count = torch.zeros(k, dtype=torch.float32).index_add_(0, inverse, torch.ones_like(rewards))
    total = torch.zeros(k, dtype=torch.float32).index_add_(0, inverse, rewards)
    mean = total / count
    dev2 = (rewards - mean[inverse]).square()
    sq = torch.zeros(k, dtype=torch.float32).index_add_(0, inverse, dev2)
    std = torch.sqrt(sq / (count - 1).clamp(min=1.0))
    single = count == 1
    mean = torch.where(single, torch.zeros_like(mean), mean)
    std = torch.where(single, torch.ones_like(std), std)
    return mean[inverse], std[inverse]


def compute_grpo_advantages(
    rewards: torch.Tensor,
    group_ids: Optional[torch.Tensor] = None,
    norm_by_std: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """Outcome advantages, one per response, same shape as ``rewards``.

    rewards: [G, N] (each row one prompt's group) or [S] with ``group_ids`` [S].
    """
    if rewards.dim() == 2:
        if group_ids is not None:
            raise ValueError("pass group_ids only with flat [S] rewards; [G, N] rows are the groups")
        g, n = rewards.shape
        flat = rewards.reshape(-1)  # [G*N]
        ids = torch.arange(g).repeat_interleave(n)
        return compute_grpo_advantages(flat, ids, norm_by_std, eps).reshape(g, n)
    if rewards.dim() != 1 or group_ids is None:
        raise ValueError(f"rewards must be [G, N], or [S] with group_ids; got shape {tuple(rewards.shape)}")
    if group_ids.shape != rewards.shape:
        raise ValueError(f"group_ids shape {tuple(group_ids.shape)} != rewards shape {tuple(rewards.shape)}")
    mean, std = group_mean_std(rewards, group_ids)
    centred = rewards.to(torch.float32) - mean
    return centred / (std + eps) if norm_by_std else centred


def token_advantages(advantages: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Broadcast per-sequence advantages [S] over response tokens [S, L]; zero where mask is 0."""
    if advantages.dim() != 1 or loss_mask.dim() != 2 or loss_mask.shape[0] != advantages.shape[0]:
        raise ValueError(
            f"need advantages [S] and loss_mask [S, L], got {tuple(advantages.shape)} and {tuple(loss_mask.shape)}"
        )
    return advantages[:, None] * loss_mask.to(advantages.dtype)  # [S, L]


def packed_token_advantages(advantages: torch.Tensor, lengths: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Same for packed sequences: [S] advantages, [S] token counts, [T] mask with T = sum(lengths)."""
    if int(lengths.sum()) != loss_mask.numel():
        raise ValueError(f"sum(lengths)={int(lengths.sum())} != loss_mask tokens {loss_mask.numel()}")
    per_token = torch.repeat_interleave(advantages, lengths.to(torch.long))  # [T]
    return per_token * loss_mask.to(per_token.dtype)


def zero_variance_groups(rewards: torch.Tensor, tol: float = 0.0) -> torch.Tensor:
    """[G] bool: groups whose N rewards all agree (max - min <= tol): they give no GRPO gradient."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [G, N], got shape {tuple(rewards.shape)}")
    spread = rewards.max(dim=1).values - rewards.min(dim=1).values
    return spread <= tol


def dynamic_filter(
    rewards: torch.Tensor, group_ids: Optional[torch.Tensor] = None, tol: float = 0.0
) -> tuple[torch.Tensor, int]:
    """DAPO-style dynamic sampling filter: keep groups whose rewards differ.

    [G, N] rewards -> (keep [G] bool over groups, number kept);
    flat [S] rewards + group_ids -> (keep [S] bool over samples, number of kept groups).
    """
    if rewards.dim() == 2:
        keep = ~zero_variance_groups(rewards, tol)
        return keep, int(keep.sum())
    if group_ids is None or group_ids.shape != rewards.shape:
        raise ValueError("flat rewards need group_ids of the same shape")
    inverse, k = _group_inverse(group_ids)
    big = torch.finfo(torch.float32).max
    r = rewards.to(torch.float32)
    gmax = torch.full((k,), -big).scatter_reduce(0, inverse, r, reduce="amax")
    gmin = torch.full((k,), big).scatter_reduce(0, inverse, r, reduce="amin")
    keep_group = (gmax - gmin) > tol
    return keep_group[inverse], int(keep_group.sum())


def reward_variance_stats(rewards: torch.Tensor, tol: float = 0.0) -> dict[str, float]:
    """Per-step batch statistics: zero-variance group fraction and mean (unbiased) group variance."""
    if rewards.dim() != 2 or rewards.shape[0] == 0:
        raise ValueError(f"rewards must be a non-empty [G, N], got shape {tuple(rewards.shape)}")
    r = rewards.to(torch.float32)
    var = r.var(dim=1, unbiased=True) if r.shape[1] > 1 else torch.zeros(r.shape[0])
    return {
        "zero_variance_frac": float(zero_variance_groups(r, tol).float().mean()),
        "reward_variance_mean": float(var.mean()),
        "reward_mean": float(r.mean()),
    }
