"""grpo_loss against hand-computed PPO/GRPO values (the formulas of docs/method.md / verl's
compute_policy_loss with dual clip, k3 KL, token-mean aggregation)."""

import math

import pytest
import torch

from megatron_mmr1.algorithms.grpo import grpo_loss
from megatron_mmr1.config import AlgorithmConfig


def _t(*xs):
    return torch.tensor(xs, dtype=torch.float64)


def test_clipping_hand_values():
    # one token per case, old_logp = 0 so ratio = exp(logp)
    logp = torch.log(_t(1.5, 1.5, 0.5, 4.0))
    adv = _t(1.0, -1.0, 1.0, -1.0)
    cfg = AlgorithmConfig(use_kl_loss=False)
    loss, m = grpo_loss(logp, torch.zeros(4, dtype=torch.float64), None, adv, torch.ones(4), cfg)
    # A=+1, r=1.5: max(-1.5, -1.2) = -1.2; A=-1, r=1.5: max(1.5, 1.2) = 1.5
    # A=+1, r=0.5: max(-0.5, -0.8) = -0.5; A=-1, r=4: max(4, 1.2) = 4
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 4.0) / 4)
    assert m["pg_clipfrac"] == pytest.approx(1 / 4)  # only the first token took the clipped branch


def test_dual_clip_and_clip_higher():
    logp = torch.log(_t(4.0, 1.5))
    cfg = AlgorithmConfig(use_kl_loss=False, clip_ratio_c=3.0, clip_ratio_high=0.28)
    loss, m = grpo_loss(logp, torch.zeros(2, dtype=torch.float64), None, _t(-1.0, 1.0), torch.ones(2), cfg)
    # A=-1, r=4: min(max(4, 1.28), 3) = 3; A=+1, r=1.5: max(-1.5, -1.28) = -1.28
    assert loss.item() == pytest.approx((3.0 - 1.28) / 2)
    assert m["pg_clipfrac_lower"] == pytest.approx(0.5)


def test_kl_and_entropy_terms_token_mean():
    logp = _t(-1.0, -2.0, -0.5)
    ref = _t(-1.5, -2.0, -0.1)
    mask = _t(1, 1, 0)
    ent = _t(0.3, 0.7, 9.0)
    cfg = AlgorithmConfig(kl_coef=0.1, entropy_coef=0.01)
    loss, m = grpo_loss(logp, logp.clone(), ref, _t(0.5, -2.0, 1.0), mask, cfg, entropy=ent)
    pg = (-0.5 + 2.0) / 2  # ratio 1 on the two unmasked tokens
    k3 = lambda d: math.exp(d) - d - 1  # noqa: E731, d = ref - logp
    kl = (k3(-0.5) + k3(0.0)) / 2
    assert m["kl_loss"] == pytest.approx(kl)
    assert loss.item() == pytest.approx(pg + 0.1 * kl - 0.01 * (0.3 + 0.7) / 2)


def test_sequence_advantages_broadcast_and_gradient():
    logp = torch.zeros(2, 3, dtype=torch.float64, requires_grad=True)
    mask = _t(1, 1, 0, 1, 0, 0).reshape(2, 3)
    cfg = AlgorithmConfig(use_kl_loss=False)
    loss, _ = grpo_loss(logp, logp.detach(), None, _t(1.0, -2.0), mask, cfg)
    loss.backward()
    # token-mean over 3 tokens, ratio 1 (unclipped): d/dlogp = -A * ratio / 3
    expected = torch.tensor([[-1 / 3, -1 / 3, 0.0], [2 / 3, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(logp.grad, expected)


def test_seq_mean_token_sum_mode():
    logp = torch.zeros(2, 3, dtype=torch.float64)
    mask = _t(1, 1, 0, 1, 0, 0).reshape(2, 3)
    cfg = AlgorithmConfig(use_kl_loss=False, loss_agg_mode="seq-mean-token-sum")
    loss, _ = grpo_loss(logp, logp, None, _t(1.0, -2.0), mask, cfg)
    assert loss.item() == pytest.approx((-2.0 + 2.0) / 2)


def test_errors_name_the_problem():
    x = torch.zeros(3)
    with pytest.raises(ValueError, match="ref_logp"):
        grpo_loss(x, x, None, x, torch.ones(3), AlgorithmConfig())
    with pytest.raises(ValueError, match="entropy"):
        grpo_loss(x, x, x, x, torch.ones(3), AlgorithmConfig(entropy_coef=0.1))
    with pytest.raises(ValueError, match="mask"):
        grpo_loss(x, x, x, x, torch.ones(4), AlgorithmConfig())
