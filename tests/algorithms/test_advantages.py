"""GRPO advantages against hand-computed values and a literal transcription of verl's
``compute_grpo_outcome_advantage`` loop (the reference MMR1/EasyR1 trains with)."""

from collections import defaultdict

import pytest
import torch

from megatron_mmr1.algorithms.advantages import (
    compute_grpo_advantages,
    dynamic_filter,
    packed_token_advantages,
    reward_variance_stats,
    token_advantages,
    zero_variance_groups,
)


def verl_grpo_reference(scores, index, eps=1e-6, norm_by_std=True):
    """verl's per-sample loop: group of one -> mean 0, std 1; torch.std is the unbiased std."""
    id2score = defaultdict(list)
    for s, i in zip(scores.tolist(), index):
        id2score[i].append(s)
    mean, std = {}, {}
    for i, vals in id2score.items():
        if len(vals) == 1:
            mean[i], std[i] = torch.tensor(0.0), torch.tensor(1.0)
        else:
            mean[i], std[i] = torch.mean(torch.tensor(vals)), torch.std(torch.tensor(vals))
    out = []
    for s, i in zip(scores.tolist(), index):
        out.append((s - mean[i]) / (std[i] + eps) if norm_by_std else s - mean[i])
    return torch.stack([torch.as_tensor(o, dtype=torch.float32) for o in out])


def test_hand_computed_group():
    # mean 0.75, unbiased std sqrt((3 * 0.25^2 + 0.75^2) / 3) = 0.5
    adv = compute_grpo_advantages(torch.tensor([[1.0, 0.0, 1.0, 1.0]]))
    expected = torch.tensor([[0.25, -0.75, 0.25, 0.25]]) / (0.5 + 1e-6)
    torch.testing.assert_close(adv, expected)


def test_zero_variance_group_gives_zero_advantage():
    adv = compute_grpo_advantages(torch.tensor([[2.0, 2.0, 2.0], [0.0, 0.0, 0.0]]))
    assert torch.equal(adv, torch.zeros(2, 3))


def test_group_of_one_uses_mean_0_std_1():
    adv = compute_grpo_advantages(torch.tensor([3.0, 1.0, 2.0]), torch.tensor([7, 8, 8]))
    assert adv[0].item() == pytest.approx(3.0 / (1.0 + 1e-6))
    # pair: mean 1.5, unbiased std sqrt(0.5)
    assert adv[1].item() == pytest.approx(-0.5 / (0.5**0.5 + 1e-6))


def test_drgrpo_no_std():
    adv = compute_grpo_advantages(torch.tensor([[1.0, 0.0, 0.0, 0.0]]), norm_by_std=False)
    torch.testing.assert_close(adv, torch.tensor([[0.75, -0.25, -0.25, -0.25]]))


@pytest.mark.parametrize("norm", [True, False])
def test_flat_ragged_matches_verl_loop(norm):
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 3, (23,), generator=g).float()
    index = torch.randint(0, 6, (23,), generator=g).tolist()  # ragged, interleaved groups
    index[5] = 99  # a group of one
    adv = compute_grpo_advantages(scores, torch.tensor(index), norm_by_std=norm)
    torch.testing.assert_close(adv, verl_grpo_reference(scores, index, norm_by_std=norm))


def test_dense_equals_flat():
    r = torch.rand(4, 5, generator=torch.Generator().manual_seed(1))
    dense = compute_grpo_advantages(r)
    flat = compute_grpo_advantages(r.reshape(-1), torch.arange(4).repeat_interleave(5))
    torch.testing.assert_close(dense.reshape(-1), flat)


def test_token_broadcast_respects_mask():
    mask = torch.tensor([[1, 1, 0], [0, 1, 1]])
    out = token_advantages(torch.tensor([2.0, -1.0]), mask)
    assert torch.equal(out, torch.tensor([[2.0, 2.0, 0.0], [0.0, -1.0, -1.0]]))
    packed = packed_token_advantages(torch.tensor([2.0, -1.0]), torch.tensor([2, 3]), torch.tensor([1, 0, 1, 1, 0]))
    assert torch.equal(packed, torch.tensor([2.0, 0.0, -1.0, -1.0, 0.0]))
    with pytest.raises(ValueError):
        token_advantages(torch.tensor([1.0]), mask)


def test_dynamic_filter_dense_and_flat():
    r = torch.tensor([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [0.0, 2.0]])
    keep, n = dynamic_filter(r)
    assert keep.tolist() == [True, False, False, True] and n == 2
    assert zero_variance_groups(r).tolist() == [False, True, True, False]
    ids = torch.tensor([3, 3, 1, 1, 5, 5, 0, 0])  # same groups, arbitrary ids
    keep_s, n_s = dynamic_filter(r.reshape(-1), ids)
    assert keep_s.tolist() == [True, True, False, False, False, False, True, True] and n_s == 2


def test_reward_variance_stats_hand_values():
    stats = reward_variance_stats(torch.tensor([[1.0, 0.0], [1.0, 1.0]]))
    assert stats["zero_variance_frac"] == 0.5
    assert stats["reward_variance_mean"] == pytest.approx((0.5 + 0.0) / 2)  # unbiased var of (1, 0) = 0.5
    assert stats["reward_mean"] == pytest.approx(0.75)
