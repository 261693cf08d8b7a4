"""megatron-mmr1: Megatron-core trainer for MMR1 (long-CoT SFT + GRPO with Variance-Aware Sampling)."""

__version__ = "0.1.0"
