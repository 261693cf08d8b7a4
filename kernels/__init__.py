"""Fused Triton kernels (GRPO loss, VPS statistics) with torch references; imported as mmr1_kernels."""
