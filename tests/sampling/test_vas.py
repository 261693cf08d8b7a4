"""VAS sampler (MMR1 Algorithm 1 / the reference MixedCurriculumSampler): mixture counts,
interleaving, weighted draws with replacement, uniform epochs without replacement, DP slices."""

import pytest
import torch

from megatron_mmr1.config import SamplerConfig
from megatron_mmr1.sampling.vas import UniformSampler, VASSampler, interleave, mixture_counts, rank_slice


@pytest.mark.parametrize(
    "batch,lam,expected",
    [
        (8, 0.5, (4, 4)),
        (7, 0.5, (3, 4)),  # odd B: floor(3.5) = 3 weighted
        (1, 0.5, (0, 1)),
        (5, 0.0, (0, 5)),
        (5, 1.0, (5, 0)),
        (9, 1.0, (9, 0)),
        (100, 0.29, (29, 71)),  # 0.29 * 100 = 28.999999999999996 in floating point
        (512, 0.5, (256, 256)),
    ],
)
def test_mixture_counts(batch, lam, expected):
    assert mixture_counts(batch, lam) == expected


def test_mixture_counts_rejects_bad_lambda():
    with pytest.raises(ValueError):
        mixture_counts(4, 1.5)


@pytest.mark.parametrize("batch,lam", [(7, 0.5), (8, 0.5), (5, 0.0), (5, 1.0)])
def test_batch_composition(batch, lam):
    s = VASSampler(30, batch, SamplerConfig(lam=lam, seed=3))
    w = torch.zeros(30)
    w[17] = 1.0  # every weighted draw must be prompt 17
    s.set_weights(w)
    n_w, n_u = mixture_counts(batch, lam)
    b = s.next_batch()
    assert len(b) == batch
    assert s.last_weighted_mask == interleave([True] * n_w, [False] * n_u)
    assert [i for i, m in zip(b, s.last_weighted_mask) if m] == [17] * n_w


def test_uniform_part_is_without_replacement_per_epoch():
    s = VASSampler(12, 6, SamplerConfig(lam=0.5, seed=0))  # 3 uniform per batch -> 4 batches per epoch
    seen = []
    for _ in range(4):
        b = s.next_batch()
        seen += [i for i, m in zip(b, s.last_weighted_mask) if not m]
    assert sorted(seen) == list(range(12))
    assert s.epoch == 0
    s.next_batch()
    assert s.epoch == 1


def test_weighted_draw_frequencies_follow_weights():
    s = VASSampler(3, 200, SamplerConfig(lam=1.0, seed=1))
    s.set_weights(torch.tensor([1.0, 3.0, 0.0]))
    draws = torch.tensor([i for _ in range(20) for i in s.next_batch()])
    frac = torch.bincount(draws, minlength=3).double() / draws.numel()
    assert frac[2] == 0
    assert frac[1].item() == pytest.approx(0.75, abs=0.02)  # 4000 draws: std ~0.007


def test_uniform_sampler_is_lambda_zero_and_ignores_weights():
    s = UniformSampler(10, 5, SamplerConfig(type="uniform", lam=0.9, seed=0))
    s.set_weights(torch.zeros(10))
    assert sorted(s.next_batch() + s.next_batch()) == list(range(10))
    assert s.metrics()["sampler/weighted_share"] == 0.0


def test_set_weights_validation_and_fallback():
    s = VASSampler(4, 2, SamplerConfig())
    with pytest.raises(ValueError, match="weights for 4"):
        s.set_weights(torch.ones(3))
    with pytest.raises(ValueError, match="non-negative"):
        s.set_weights(torch.tensor([1.0, -1.0, 0.0, 0.0]))
    s.set_weights(torch.zeros(4))
    assert s.uniform_fallbacks == 1 and torch.equal(s.weights, torch.ones(4, dtype=torch.float64))


def test_rank_slice_partitions_the_batch():
    batch = list(range(10, 22))
    parts = [rank_slice(batch, r, 4) for r in range(4)]
    assert sum(parts, []) == batch
    with pytest.raises(ValueError, match="evenly"):
        rank_slice(batch, 0, 5)


def test_load_state_checks_shape():
    a = VASSampler(10, 4, SamplerConfig())
    with pytest.raises(ValueError, match="batch_size"):
        VASSampler(10, 5, SamplerConfig()).load_state_dict(a.state_dict())
