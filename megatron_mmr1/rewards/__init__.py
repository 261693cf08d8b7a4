"""Verifiable rewards: r = format_weight * format + accuracy_weight * accuracy (MMR1 table 6: 1 and 1).

    with reward_pool(cfg.reward) as pool:                 # the caller owns the worker processes
        samples = compute_rewards(samples, cfg.reward, pool)  # fills sample.reward and sample.reward_info

Accuracy grades the last ``\\boxed{}`` of the ``<answer>`` block with math-verify; format checks
the ``<think>...</think><answer>...\\boxed{}...</answer>`` template. Scoring runs in worker
processes with a per-item time limit; a timed-out item gets reward 0 and
``reward_info["timeout"] = 1``, and is counted in ``pool.stats``.
"""

from __future__ import annotations

import logging
from typing import Optional

from megatron_mmr1.config import RewardConfig
from megatron_mmr1.data.sample import Sample
from megatron_mmr1.rewards.extract import answer_block, extract_final_answer, format_score, last_boxed
from megatron_mmr1.rewards.math_reward import accuracy_score, choice_letter, score_response
from megatron_mmr1.rewards.pool import ItemResult, PoolStats, RewardPool

logger = logging.getLogger(__name__)

__all__ = [
    "WARMUP",
    "compute_rewards", "reward_pool", "combine",
    "RewardPool", "ItemResult", "PoolStats",
    "answer_block", "extract_final_answer", "format_score", "last_boxed",
    "accuracy_score", "choice_letter", "score_response",
]

WARMUP = ("<think>x</think><answer>\\boxed{\\frac{1}{2}}</answer>", "0.5")


def reward_pool(cfg: RewardConfig) -> RewardPool:
    """A worker pool for ``cfg``, owned (and closed) by the caller: keep one for a whole run, since
    workers take ~1 s to import sympy. Usable as a context manager."""
    return RewardPool(score_response, num_workers=cfg.num_workers, timeout_s=cfg.timeout_s,
                      grace_s=cfg.grace_s, warmup_args=WARMUP)


def combine(result: ItemResult, cfg: RewardConfig) -> tuple[float, dict[str, float]]:
    """Weighted reward and its parts for one scored item; a timeout or error scores 0."""
    fmt = float(result.parts.get("format", 0.0))
    acc = float(result.parts.get("accuracy", 0.0))
    info = {
        "format": fmt,
        "accuracy": acc,
        "timeout": 1.0 if result.timeout else 0.0,
        "error": 1.0 if result.error else 0.0,
    }
    return cfg.format_weight * fmt + cfg.accuracy_weight * acc, info


def compute_rewards(
    samples: list[Sample], cfg: RewardConfig, pool: Optional[RewardPool] = None
) -> list[Sample]:
    """Score ``samples`` in place (``reward``, ``reward_info``) and return them.

    Aborted generations (empty response) are scored like any other text and get 0.
    """
    if pool is None:  # one-off call: a pool just for these samples
        with reward_pool(cfg) as own:
            return compute_rewards(samples, cfg, own)
    results = pool.map([(s.response, s.answer) for s in samples])
    timeouts = errors = 0
    for s, r in zip(samples, results):
        s.reward, s.reward_info = combine(r, cfg)
        timeouts += r.timeout
        errors += r.error is not None
    if timeouts or errors:
        logger.warning(
            "rewards: %d of %d items timed out (limit %.1fs), %d raised; they score 0",
            timeouts, len(samples), cfg.timeout_s, errors,
        )
    return samples
