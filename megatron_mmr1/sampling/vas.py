"""Variance-Aware Sampling (MMR1 Algorithm 1): the batch sampler.

Each batch of B prompts holds floor(lambda * B) prompts drawn by VPS weight (with replacement) and
B - floor(lambda * B) drawn uniformly without replacement from a shuffled pool, interleaved
(weighted, uniform, weighted, ...) as in the reference ``MixedCurriculumSampler``. Setting new weights
does not touch the pool. All randomness comes from one private ``torch.Generator``, and
``state_dict()`` holds everything (weights, pool, position, epoch, consumed batches, RNG state), so a
resumed run draws exactly the batches an uninterrupted run would.

Differences from the reference, on purpose: weighted draws are made per batch from the current
weights (the reference pre-draws an epoch of them); when the pool runs out, the remainder is used and
a fresh permutation continues the batch (the reference wraps to the start of the *same* permutation,
skipping the tail), so every prompt is drawn once per uniform epoch.

Data parallel: every DP rank builds the sampler with the same seed and weights, draws the same global
batch, and keeps ``rank_slice(batch, dp_rank, dp_size)``.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from megatron_mmr1.config import SamplerConfig


def mixture_counts(batch_size: int, lam: float) -> tuple[int, int]:
    """(weighted, uniform) draws per batch: (floor(lambda * B), B - floor(lambda * B)).

    A 1e-9 guard keeps float products such as 0.29 * 100 = 28.999999999999996 on the right integer.
    """
    if batch_size < 1:
        raise ValueError(f"batch size must be >= 1, got {batch_size}")
    if not 0.0 <= lam <= 1.0:
        raise ValueError(f"sampler.lam={lam} must be in [0, 1]")
    n_weighted = min(batch_size, int(math.floor(lam * batch_size + 1e-9)))
    return n_weighted, batch_size - n_weighted


def interleave(weighted: Sequence, uniform: Sequence) -> list:
    """w0, u0, w1, u1, ... then the rest of the longer list."""
    out = []
    for i in range(max(len(weighted), len(uniform))):
        if i < len(weighted):
            out.append(weighted[i])
        if i < len(uniform):
            out.append(uniform[i])
    return out


def rank_slice(batch: Sequence[int], dp_rank: int, dp_size: int) -> list[int]:
    """This DP rank's contiguous share of a global batch (B must be divisible by dp_size)."""
    if not 0 <= dp_rank < dp_size:
        raise ValueError(f"dp_rank={dp_rank} not in [0, dp_size={dp_size})")
    if len(batch) % dp_size:
        raise ValueError(f"batch of {len(batch)} prompts does not split evenly over {dp_size} DP ranks")
    per = len(batch) // dp_size
    return list(batch[dp_rank * per:(dp_rank + 1) * per])


class VASSampler:
    """Weighted + uniform mixture batch sampler over ``num_prompts`` dataset indices."""

    kind = "vas"

    def __init__(
        self,
        num_prompts: int,
        batch_size: int,
        cfg: SamplerConfig,
        weights: Optional[torch.Tensor] = None,
    ):
        if num_prompts < 1:
            raise ValueError(f"sampler needs at least one prompt, got num_prompts={num_prompts}")
        self.num_prompts = num_prompts
        self.batch_size = batch_size
        self.lam = cfg.lam if self.kind == "vas" else 0.0
        self.n_weighted, self.n_uniform = mixture_counts(batch_size, self.lam)
        self.seed = cfg.seed
        self.generator = torch.Generator().manual_seed(cfg.seed)
        self.weights = torch.ones(num_prompts, dtype=torch.float64)
        self.uniform_fallbacks = 0
        """Times set_weights got an all-zero vector and fell back to uniform weights."""
        if weights is not None:
            self.set_weights(weights)
        self.pool = torch.randperm(num_prompts, generator=self.generator)
        self.pos = 0
        self.epoch = 0
        self.consumed_batches = 0
        self.last_weighted_mask: list[bool] = []

    # ------------------------------------------------------------------ weights
    def set_weights(self, weights: torch.Tensor) -> None:
        w = torch.as_tensor(weights, dtype=torch.float64).reshape(-1)
        if w.numel() != self.num_prompts:
            raise ValueError(f"got {w.numel()} weights for {self.num_prompts} prompts")
        if not bool(torch.isfinite(w).all()) or bool((w < 0).any()):
            raise ValueError("sampling weights must be finite and non-negative")
        if not bool(w.sum() > 0):
            self.uniform_fallbacks += 1
            w = torch.ones_like(w)
        self.weights = w.clone()

    # ------------------------------------------------------------------ drawing
    def _take_uniform(self, n: int) -> list[int]:
        out: list[int] = []
        while len(out) < n:
            if self.pos >= self.num_prompts:
                self.pool = torch.randperm(self.num_prompts, generator=self.generator)
                self.pos = 0
                self.epoch += 1
            take = min(n - len(out), self.num_prompts - self.pos)
            out.extend(self.pool[self.pos:self.pos + take].tolist())
            self.pos += take
        return out

    def next_batch(self) -> list[int]:
        """The next global batch of B dataset indices (identical on every rank)."""
        weighted: list[int] = []
        if self.n_weighted:
            weighted = torch.multinomial(
                self.weights, self.n_weighted, replacement=True, generator=self.generator
            ).tolist()
        uniform = self._take_uniform(self.n_uniform)
        batch = [int(i) for i in interleave(weighted, uniform)]
        self.last_weighted_mask = interleave([True] * len(weighted), [False] * len(uniform))
        self.consumed_batches += 1
        return batch

    rank_slice = staticmethod(rank_slice)

    def metrics(self) -> dict[str, float]:
        return {
            "sampler/weighted_share": self.n_weighted / self.batch_size,
            "sampler/consumed_batches": float(self.consumed_batches),
            "sampler/epoch": float(self.epoch),
        }

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "kind": self.kind,
            "num_prompts": self.num_prompts,
            "batch_size": self.batch_size,
            "lam": self.lam,
            "seed": self.seed,
            "weights": self.weights.clone(),
            "pool": self.pool.clone(),
            "pos": self.pos,
            "epoch": self.epoch,
            "consumed_batches": self.consumed_batches,
            "uniform_fallbacks": self.uniform_fallbacks,
            "rng_state": self.generator.get_state(),
        }

    def load_state_dict(self, state: dict) -> None:
        for key in ("kind", "num_prompts", "batch_size", "lam"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler checkpoint has {key}={state[key]!r}, this run has {getattr(self, key)!r}"
                )
        self.weights = state["weights"].clone()
        self.pool = state["pool"].clone()
        self.pos = int(state["pos"])
        self.epoch = int(state["epoch"])
        self.consumed_batches = int(state["consumed_batches"])
        self.uniform_fallbacks = int(state["uniform_fallbacks"])
        self.generator.set_state(state["rng_state"])


class UniformSampler(VASSampler):
    """Plain shuffled-epoch sampling (sampler.type=uniform): the VAS sampler with lambda = 0."""

    kind = "uniform"

    def set_weights(self, weights: torch.Tensor) -> None:  # weights are irrelevant here
        return None


def build_sampler(num_prompts: int, batch_size: int, cfg: SamplerConfig) -> VASSampler:
    if cfg.type == "vas":
        return VASSampler(num_prompts, batch_size, cfg)
    if cfg.type == "uniform":
        return UniformSampler(num_prompts, batch_size, cfg)
    raise ValueError(f"sampler.type: unknown sampler '{cfg.type}'")
