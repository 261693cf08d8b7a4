"""Fused Triton kernels (GRPO loss, log-probs, VPS statistics) with torch references; imported as mmr1_kernels.

Dispatch: Triton on CUDA tensors (and on CPU under TRITON_INTERPRET=1), torch otherwise; every entry
point takes ``backend="auto" | "triton" | "torch"`` (fused ops also ``"reference"``).
"""

from .fused_grpo_loss import GRPOLossOutput, fused_grpo_loss, reference_grpo_loss
from .fused_logprobs import fused_logprobs, reference_logprobs
from .vps_stats import distinct_n, edit_distance, pack_groups, pass_rate_variance, self_bleu

__all__ = [
    "GRPOLossOutput",
    "fused_grpo_loss",
    "reference_grpo_loss",
    "fused_logprobs",
    "reference_logprobs",
    "distinct_n",
    "edit_distance",
    "pack_groups",
    "pass_rate_variance",
    "self_bleu",
]
