"""GRPO math: group advantages, dynamic filtering, per-token losses (torch reference path)."""

from megatron_mmr1.algorithms.advantages import (
    compute_grpo_advantages,
    dynamic_filter,
    packed_token_advantages,
    reward_variance_stats,
    token_advantages,
    zero_variance_groups,
)
from megatron_mmr1.algorithms.grpo import grpo_loss
from megatron_mmr1.algorithms.losses import aggregate_loss, clipped_surrogate, kl_penalty

__all__ = [
    "aggregate_loss", "clipped_surrogate", "compute_grpo_advantages", "dynamic_filter", "grpo_loss", "kl_penalty",
    "packed_token_advantages", "reward_variance_stats", "token_advantages", "zero_variance_groups",
]
