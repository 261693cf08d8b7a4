"""megatron_mmr1.sampling.diagnostics: the unbiased zero-variance probability (a U-statistic of the held-back
rollouts) and how much weight a scoring pass puts on prompts whose groups will have equal rewards."""

import math

import pytest
import torch

from megatron_mmr1.config import VPSConfig
from megatron_mmr1.sampling.diagnostics import quality_table, score_quality, split_quality, zero_variance_prob


@pytest.mark.parametrize("p", [0.0, 0.1, 0.37, 0.5, 0.9])
def test_zero_variance_prob_is_unbiased(p):
    """E over k ~ Binomial(m, p) of (C(k, n) + C(m - k, n)) / C(m, n) equals p^n + (1 - p)^n exactly."""
    m, n = 12, 8
    expect = sum(math.comb(m, k) * p ** k * (1 - p) ** (m - k) * float(zero_variance_prob(torch.tensor([k]), m, n)[0])
                 for k in range(m + 1))
    assert expect == pytest.approx(p ** n + (1 - p) ** n, abs=1e-12)
    assert zero_variance_prob(torch.tensor([0, 12, 6]), 12, 8).tolist() == [1.0, 1.0, 0.0]  # 6 of 12: no 8 agree
    with pytest.raises(ValueError, match="n <= trials"):
        zero_variance_prob(torch.tensor([1]), 4, 8)


def _data():
    """Prompts 0-3 never solved, with diverse responses; prompts 4-7 solved half the time, with repetitive
    responses (so self-BLEU diversity ranks the never-solved prompts first)."""
    acc = torch.zeros(8, 12)
    acc[4:, ::2] = 1.0
    tokens = [[[100 * i + 10 * j + t for t in range(6)] if i < 4 else [1, 2, 3, 4, 5, 6 + j % 2] for j in range(12)]
              for i in range(8)]
    return acc, tokens


def test_ovs_only_weights_skip_never_solved_prompts():
    acc, tokens = _data()
    order = torch.arange(12).repeat(8, 1)  # score on rollouts 0-3 (2 of 4 solved for prompts 4-7), judge on 4-11
    r = split_quality(acc, tokens, VPSConfig(alpha=1.0, beta=0.0), 4, 8, 0.5, order)
    assert r["ovs0_frac"] == 0.5 and r["mass_on_ovs0"] == 0.0  # OVS = p(1-p) = 0 -> min-max weight 0
    assert r["ovs0_q"] == 1.0 and r["ovs_pos_q"] == 0.0  # 8 of 6-right-6-wrong can never all agree
    assert r["uniform_zero_var"] == 0.5 and r["weighted_zero_var"] == 0.0 and r["batch_zero_var"] == 0.25


def test_tds_keeps_weight_on_never_solved_prompts():
    """VPS = alpha OVS + beta TDS (MMR1 section 3), min-max normalised: with beta > 0 a prompt with OVS = 0 but
    diverse responses keeps a weight, so weighted draws land on zero-variance groups."""
    acc, tokens = _data()
    order = torch.arange(12).repeat(8, 1)
    r = split_quality(acc, tokens, VPSConfig(alpha=0.8, beta=0.2, tds_metrics=["self_bleu"]), 4, 8, 0.5, order)
    assert 0.0 < r["mass_on_ovs0"] < 1.0
    assert r["weighted_zero_var"] == pytest.approx(r["mass_on_ovs0"])  # their q is 1, the others' 0
    avg = score_quality(acc, tokens, VPSConfig(alpha=1.0, beta=0.0), 4, 8, splits=3)
    assert avg["mass_on_ovs0"] <= 0.5 and 0.0 <= avg["weighted_zero_var"] <= avg["uniform_zero_var"]
    table = quality_table([("a", r), ("b", avg)])
    assert table.count("\n") == 4 and "| a | 0.500 |" in table
