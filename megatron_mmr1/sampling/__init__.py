"""Prompt selection: VPS score store, VAS / uniform batch samplers, and the refresh controller."""

from megatron_mmr1.sampling.controller import PromptSampler
from megatron_mmr1.sampling.vas import UniformSampler, VASSampler, build_sampler, mixture_counts, rank_slice
from megatron_mmr1.sampling.vps import VPSStore, min_max_normalise, outcome_variance_score, weight_entropy

__all__ = [
    "PromptSampler", "UniformSampler", "VASSampler", "VPSStore", "build_sampler", "min_max_normalise",
    "mixture_counts", "outcome_variance_score", "rank_slice", "weight_entropy",
]
