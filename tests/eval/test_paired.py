"""Paired comparison of two evals of the same questions (first vs last eval of a run)."""

from __future__ import annotations

import math
import random

import pytest

from megatron_mmr1.eval.results import paired_difference, summarize


def _bench(correct: dict[str, list[float]], source: str = "val.jsonl"):
    groups = [[{"id": q, "source": source, "correct": c, "format": 1.0, "extracted": "1", "how": "boxed",
                "finish": "stop", "response_tokens": 5} for c in cs] for q, cs in correct.items()]
    return summarize("val", "rl", [source], len(next(iter(correct.values()))), groups)


def test_paired_difference_matches_the_textbook_formula():
    rng = random.Random(0)
    qs = [f"q{i}" for i in range(200)]
    a = {q: [float(rng.random() < 0.3)] for q in qs}
    b = {q: [float(rng.random() < 0.4)] if rng.random() < 0.5 else a[q] for q in qs}
    d = [b[q][0] - a[q][0] for q in qs]
    mean = sum(d) / len(d)
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / (len(d) - 1) / len(d))  # SE of a paired mean
    got = paired_difference(_bench(a), _bench(b))
    assert got.n == 200
    assert got.delta == pytest.approx(mean)
    assert got.delta == pytest.approx(_bench(b).accuracy - _bench(a).accuracy)
    assert got.se == pytest.approx(se)
    assert (got.gained, got.lost) == (sum(x > 0 for x in d), sum(x < 0 for x in d))


def test_pairing_uses_question_ids_not_order_and_mean_at_k():
    a = _bench({"x": [1.0, 0.0], "y": [0.0, 0.0], "z": [1.0, 1.0]})
    b = _bench({"z": [1.0, 1.0], "y": [1.0, 1.0], "x": [0.0, 0.0], "extra": [1.0, 1.0]})  # 'extra' has no pair
    got = paired_difference(a, b)
    assert got.n == 3
    assert got.delta == pytest.approx((-0.5 + 1.0 + 0.0) / 3)
    assert (got.gained, got.lost) == (1, 1)


def test_unchanged_answers_have_zero_paired_se():
    a = _bench({f"q{i}": [float(i % 3 == 0)] for i in range(30)})
    got = paired_difference(a, a)
    assert (got.delta, got.se, got.gained, got.lost) == (0.0, 0.0, 0, 0)


def test_disjoint_benchmarks_are_an_error():
    with pytest.raises(ValueError, match="share no question ids"):
        paired_difference(_bench({"a": [1.0]}), _bench({"b": [1.0]}))
