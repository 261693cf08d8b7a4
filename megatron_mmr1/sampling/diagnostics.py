"""How well VPS weights steer draws away from zero-variance groups, measured on a fixed set of rollouts.

Given M rollouts per prompt of one policy (accuracy [P, M] and token ids), each split scores every prompt
from ``score_n`` of its rollouts (``VPSStore``, as a full refresh would) and judges the resulting weights
against the other M - score_n rollouts, which the scoring never saw:

    q(x) = P(a training group of n rollouts has equal accuracy rewards)
         = (C(k, n) + C(m - k, n)) / C(m, n)      k successes in the m held-back rollouts,

the unbiased estimate of p^n + (1 - p)^n (a U-statistic: drawing n of the m without replacement). The
weighted half of a VAS batch then holds zero-variance groups at the rate sum_x w_x q(x) / sum_x w_x, the
uniform half at mean_x q(x). ``tools/vps_score_quality.py`` generates the rollouts; docs/vas.md has the
numbers.
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Optional, Sequence

import torch

from megatron_mmr1.config import VPSConfig
from megatron_mmr1.sampling.vps import TokenGroups, VPSStore, weight_entropy


def zero_variance_prob(successes: torch.Tensor, trials: int, n: int) -> torch.Tensor:
    """Unbiased estimate of p^n + (1 - p)^n from ``successes`` of ``trials`` Bernoulli(p) draws (trials >= n)."""
    if n < 1 or trials < n:
        raise ValueError(f"need 1 <= n <= trials, got n={n}, trials={trials}")
    k = [int(s) for s in torch.as_tensor(successes).reshape(-1)]
    total = math.comb(trials, n)
    return torch.tensor([(math.comb(s, n) + math.comb(trials - s, n)) / total for s in k], dtype=torch.float64)


def split_quality(acc: torch.Tensor, tokens: Optional[TokenGroups], cfg: VPSConfig, score_n: int, n: int,
                  lam: float, order: torch.Tensor) -> dict[str, float]:
    """One split: score on the rollouts ``order[:, :score_n]`` of each prompt, judge on the rest.

    acc [P, M] accuracy rewards, tokens [P][M] token ids (needed when cfg.beta > 0), order [P, M] a
    permutation of 0..M-1 per prompt."""
    p, m = acc.shape
    if m - score_n < n:
        raise ValueError(f"{m} rollouts per prompt: {score_n} to score and {n} to judge do not fit")
    scored = torch.gather(acc, 1, order[:, :score_n])
    held = torch.gather(acc, 1, order[:, score_n:])
    toks = None
    if cfg.beta > 0:
        if tokens is None:
            raise ValueError("vps.beta > 0 needs token ids (TDS)")
        toks = [[tokens[i][j] for j in order[i, :score_n].tolist()] for i in range(p)]
    store = VPSStore(p, replace(cfg, momentum=0.0))
    store.update(list(range(p)), scored, toks)
    w = store.recompute_weights().to(torch.float64)
    q = zero_variance_prob(held.sum(1), m - score_n, n)
    mass = w / w.sum()
    weighted_zv = float((mass * q).sum())
    uniform_zv = float(q.mean())
    ovs_zero = store.ovs == 0
    return {
        "uniform_zero_var": uniform_zv,
        "weighted_zero_var": weighted_zv,
        "batch_zero_var": lam * weighted_zv + (1.0 - lam) * uniform_zv,
        "mass_on_ovs0": float(mass[ovs_zero].sum()),
        "ovs0_frac": float(ovs_zero.double().mean()),
        "ovs0_q": float(q[ovs_zero].mean()) if bool(ovs_zero.any()) else float("nan"),
        "ovs_pos_q": float(q[~ovs_zero].mean()) if bool((~ovs_zero).any()) else float("nan"),
        "weight_entropy": weight_entropy(w),
    }


def score_quality(acc: torch.Tensor, tokens: Optional[TokenGroups], cfg: VPSConfig, score_n: int, n: int,
                  lam: float = 0.5, splits: int = 20, seed: int = 0) -> dict[str, float]:
    """Mean of :func:`split_quality` over ``splits`` random splits of each prompt's rollouts."""
    gen = torch.Generator().manual_seed(seed)
    p, m = acc.shape
    rows = [split_quality(acc, tokens, cfg, score_n, n, lam, torch.argsort(torch.rand(p, m, generator=gen), dim=1))
            for _ in range(splits)]
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


def quality_table(rows: Sequence[tuple[str, dict[str, float]]]) -> str:
    """Markdown: one row per (label, score_quality result)."""
    head = ("| scoring | uniform draws: zero-var | weighted draws: zero-var | batch at lambda: zero-var "
            "| weight on OVS = 0 prompts | prompts with OVS = 0 | their q | q of the others | weight entropy |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for label, r in rows:
        lines.append(f"| {label} | {r['uniform_zero_var']:.3f} | {r['weighted_zero_var']:.3f} | {r['batch_zero_var']:.3f} "
                     f"| {r['mass_on_ovs0']:.3f} | {r['ovs0_frac']:.3f} | {r['ovs0_q']:.3f} | {r['ovs_pos_q']:.3f} "
                     f"| {r['weight_entropy']:.3f} |")
    return "\n".join(lines) + "\n"
