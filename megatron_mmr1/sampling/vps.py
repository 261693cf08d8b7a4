"""Variance Promotion Score (MMR1 section 3 / appendix A.3): a per-prompt score store.

For each prompt x, from a group of N rollouts:
    OVS(x) = p (1 - p),  p = pass rate of the N accuracy rewards (reference: ``learnability``);
    TDS(x) = mean of the configured diversity metrics, each in [0, 1], higher = more diverse:
             self_bleu -> 1 - self-BLEU-123, distinct_n -> distinct-3, edit_distance -> mean
             pairwise normalised token edit distance (statistics from ``mmr1_kernels.vps_stats``);
    VPS(x) = alpha * OVS + beta * TDS   (``cfg.tds_gate``: beta * TDS only where OVS > 0).
Sampling weights are VPS min-max normalised over all scored prompts, blended with the previous
weights by momentum m (w = m * w_old + (1 - m) * w_new); prompts never scored get ``cfg.prior``.

Note: the released MMR1 code adds *raw* self-BLEU with a positive weight, which favours prompts with
*less* diverse responses; we follow the paper (1 - self-BLEU). See docs/vas.md.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence

import torch

from megatron_mmr1.config import VPSConfig

TokenGroups = Sequence[Sequence[Sequence[int]]]  # [G][N] token-id lists (ragged)


def outcome_variance_score(acc_rewards: torch.Tensor) -> torch.Tensor:
    """OVS = p(1-p) per group, p = mean accuracy over the group's N rollouts. [G, N] -> [G]."""
    if acc_rewards.dim() != 2:
        raise ValueError(f"accuracy rewards must be [G, N], got shape {tuple(acc_rewards.shape)}")
    p = acc_rewards.to(torch.float64).mean(dim=1)
    return (p * (1.0 - p)).to(torch.float32)


def trajectory_diversity_score(groups: TokenGroups, metrics: Sequence[str]) -> torch.Tensor:
    """TDS per group: mean of the configured diversity metrics, each oriented so higher = more diverse."""
    from mmr1_kernels import vps_stats  # owned by kernels/ (issue 8)

    parts = []
    for name in metrics:
        if name == "self_bleu":
            parts.append(1.0 - vps_stats.self_bleu(groups, max_n=3))
        elif name == "distinct_n":
            parts.append(vps_stats.distinct_n(groups, n=3))
        elif name == "edit_distance":
            parts.append(vps_stats.edit_distance(groups))
        else:
            raise ValueError(f"vps.tds_metrics: unknown metric '{name}'")
    stacked = torch.stack([torch.as_tensor(p, dtype=torch.float32).reshape(-1) for p in parts])  # [M, G]
    return stacked.mean(dim=0).clamp(0.0, 1.0)


def min_max_normalise(x: torch.Tensor) -> torch.Tensor:
    """(x - min) / (max - min); a constant vector (no information) maps to all ones (uniform draws)."""
    if x.numel() == 0:
        return x.clone()
    lo, hi = x.min(), x.max()
    if not bool(hi > lo):
        return torch.ones_like(x)
    return (x - lo) / (hi - lo)


class VPSStore:
    """Scores and sampling weights for every prompt of the dataset (the VAS sampler's input)."""

    def __init__(self, num_prompts: int, cfg: VPSConfig):
        if num_prompts < 1:
            raise ValueError(f"VPSStore needs at least one prompt, got num_prompts={num_prompts}")
        self.num_prompts = num_prompts
        self.cfg = cfg
        nan = float("nan")
        self.ovs = torch.full((num_prompts,), nan)
        """Latest OVS per prompt (nan = never scored)."""
        self.tds = torch.full((num_prompts,), nan)
        """Latest TDS per prompt (nan = never scored or beta == 0)."""
        self.vps = torch.full((num_prompts,), nan)
        """Latest raw VPS = alpha * OVS + beta * TDS (before normalisation)."""
        self.scored_at = torch.full((num_prompts,), -1, dtype=torch.long)
        """Refresh round in which each prompt was last scored (-1 = never)."""
        self.weights = torch.full((num_prompts,), float(cfg.prior))
        """Sampling weights (normalised, momentum-blended)."""
        self.has_weight = torch.zeros(num_prompts, dtype=torch.bool)
        """Weight comes from a score (not the prior): momentum blends only these."""
        self.round = 0
        """Completed refreshes (weight recomputations)."""

    # ------------------------------------------------------------------ scoring
    @property
    def uses_tds(self) -> bool:
        return self.cfg.beta > 0 and len(self.cfg.tds_metrics) > 0

    def score_groups(
        self, acc_rewards: torch.Tensor, response_token_ids: Optional[TokenGroups] = None
    ) -> dict[str, torch.Tensor]:
        """OVS, TDS and raw VPS of G groups (pure: the store is not touched)."""
        ovs = outcome_variance_score(acc_rewards)
        if self.uses_tds:
            if response_token_ids is None or len(response_token_ids) != ovs.numel():
                got = None if response_token_ids is None else len(response_token_ids)
                raise ValueError(f"vps.beta > 0 needs response token ids for each of the {ovs.numel()} groups, got {got}")
            tds = trajectory_diversity_score(response_token_ids, self.cfg.tds_metrics)
            counted = tds * (ovs > 0) if self.cfg.tds_gate else tds
            vps = self.cfg.alpha * ovs + self.cfg.beta * counted
        else:
            tds = torch.full_like(ovs, float("nan"))
            vps = self.cfg.alpha * ovs
        return {"ovs": ovs, "tds": tds, "vps": vps}

    def update(
        self,
        prompt_indices: Sequence[int] | torch.Tensor,
        acc_rewards: torch.Tensor,
        response_token_ids: Optional[TokenGroups] = None,
    ) -> dict[str, torch.Tensor]:
        """Score G groups and store them; a prompt present several times gets the mean of its groups."""
        idx = torch.as_tensor(prompt_indices, dtype=torch.long).reshape(-1)
        if idx.numel() != acc_rewards.shape[0]:
            raise ValueError(f"{idx.numel()} prompt indices for {acc_rewards.shape[0]} reward groups")
        if idx.numel() and (int(idx.min()) < 0 or int(idx.max()) >= self.num_prompts):
            raise ValueError(f"prompt index out of range [0, {self.num_prompts}): {idx.tolist()}")
        scores = self.score_groups(acc_rewards, response_token_ids)
        uniq, inverse = torch.unique(idx, return_inverse=True)
        count = torch.zeros(uniq.numel()).index_add_(0, inverse, torch.ones(idx.numel()))
        for name in ("ovs", "tds", "vps"):
            mean = torch.zeros(uniq.numel()).index_add_(0, inverse, scores[name]) / count
            getattr(self, name)[uniq] = mean
        self.scored_at[uniq] = self.round
        return scores

    # ------------------------------------------------------------------ weights
    def stale(self, stale_after: Optional[int] = None) -> torch.Tensor:
        """Indices of prompts scored, but more than ``stale_after`` refreshes ago."""
        k = self.cfg.stale_after if stale_after is None else stale_after
        scored = self.scored_at >= 0
        return torch.nonzero(scored & (self.round - self.scored_at > k)).reshape(-1)

    def recompute_weights(self) -> torch.Tensor:
        """Min-max normalise VPS over scored prompts, prior for the rest, momentum blend; new round."""
        scored = self.scored_at >= 0
        new = torch.full((self.num_prompts,), float(self.cfg.prior))
        new[scored] = min_max_normalise(self.vps[scored])
        m = self.cfg.momentum
        blend = scored & self.has_weight
        new[blend] = m * self.weights[blend] + (1.0 - m) * new[blend]
        self.weights = new
        self.has_weight |= scored
        self.round += 1
        return self.weights

    # ------------------------------------------------------------------ logging, state
    def metrics(self) -> dict[str, float]:
        scored = self.scored_at >= 0
        out = {"vps/scored_frac": float(scored.float().mean()), "vps/round": float(self.round)}
        for name in ("ovs", "tds", "vps"):
            vals = getattr(self, name)[scored]
            vals = vals[~torch.isnan(vals)]
            out[f"vps/{name}_mean"] = float(vals.mean()) if vals.numel() else float("nan")
        out["vps/weight_entropy"] = weight_entropy(self.weights)
        return out

    def state_dict(self) -> dict:
        return {
            "num_prompts": self.num_prompts,
            "ovs": self.ovs.clone(),
            "tds": self.tds.clone(),
            "vps": self.vps.clone(),
            "scored_at": self.scored_at.clone(),
            "weights": self.weights.clone(),
            "has_weight": self.has_weight.clone(),
            "round": self.round,
        }

    def load_state_dict(self, state: dict) -> None:
        if state["num_prompts"] != self.num_prompts:
            raise ValueError(
                f"VPS state has {state['num_prompts']} prompts, this dataset has {self.num_prompts}"
            )
        for name in ("ovs", "tds", "vps", "scored_at", "weights", "has_weight"):
            setattr(self, name, state[name].clone())
        self.round = int(state["round"])


def weight_entropy(weights: torch.Tensor) -> float:
    """Entropy of the weight distribution divided by log(P): 1 = uniform, 0 = one prompt."""
    w = weights.to(torch.float64).clamp(min=0)
    total = w.sum()
    if w.numel() < 2 or not bool(total > 0):
        return 0.0
    p = w / total
    h = -(p[p > 0] * p[p > 0].log()).sum()
    return float(h / math.log(w.numel()))
