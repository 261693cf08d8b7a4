"""VPS store against hand-computed values of the paper's formulas (MMR1 section 3, appendix A.3):
OVS = p(1-p), VPS = alpha*OVS + beta*TDS, min-max normalisation, momentum, prior, staleness."""

import pytest
import torch
from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

from megatron_mmr1.config import VPSConfig
from megatron_mmr1.sampling.vps import VPSStore, min_max_normalise, outcome_variance_score, weight_entropy


def test_ovs_hand_values():
    acc = torch.tensor([[1.0, 1.0, 0.0, 0.0], [1.0, 1.0, 1.0, 0.0], [0.0, 0.0, 0.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    torch.testing.assert_close(outcome_variance_score(acc), torch.tensor([0.25, 0.1875, 0.0, 0.0]))


def test_vps_two_metrics_hand_values():
    # group A: two identical sequences -> distinct-3 = 2 unique / 4 trigrams = 0.5, edit distance 0
    # group B: disjoint sequences -> distinct-3 = 2 / 2 = 1.0, edit distance 3/3 = 1.0
    cfg = VPSConfig(alpha=0.5, beta=0.5, tds_metrics=["distinct_n", "edit_distance"])
    store = VPSStore(3, cfg)
    tokens = [[[1, 2, 3, 4], [1, 2, 3, 4]], [[1, 2, 3], [4, 5, 6]]]
    s = store.update([0, 2], torch.tensor([[1.0, 0.0], [1.0, 1.0]]), tokens)
    torch.testing.assert_close(s["ovs"], torch.tensor([0.25, 0.0]))
    torch.testing.assert_close(s["tds"], torch.tensor([0.25, 1.0]))  # mean(0.5, 0) and mean(1, 1)
    torch.testing.assert_close(s["vps"], torch.tensor([0.5 * 0.25 + 0.5 * 0.25, 0.5 * 1.0]))
    w = store.recompute_weights()
    # min-max over the scored prompts {0.25, 0.5} -> {0, 1}; prompt 1 never scored -> prior 1.0
    torch.testing.assert_close(w, torch.tensor([0.0, 1.0, 1.0]))


def test_tds_gate_counts_diversity_only_where_outcomes_vary():
    """vps.tds_gate: VPS = alpha*OVS + beta*TDS*[OVS > 0]. The same groups as above: group B's rewards all agree
    (OVS 0), so its TDS of 1.0 no longer makes it the top prompt; min-max then gives it weight 0."""
    cfg = VPSConfig(alpha=0.5, beta=0.5, tds_metrics=["distinct_n", "edit_distance"], tds_gate=True)
    store = VPSStore(3, cfg)
    tokens = [[[1, 2, 3, 4], [1, 2, 3, 4]], [[1, 2, 3], [4, 5, 6]]]
    s = store.update([0, 2], torch.tensor([[1.0, 0.0], [1.0, 1.0]]), tokens)
    torch.testing.assert_close(s["tds"], torch.tensor([0.25, 1.0]))  # TDS itself is still measured and logged
    torch.testing.assert_close(s["vps"], torch.tensor([0.5 * 0.25 + 0.5 * 0.25, 0.0]))
    torch.testing.assert_close(store.recompute_weights(), torch.tensor([1.0, 1.0, 0.0]))


def test_self_bleu_tds_follows_the_paper_direction():
    """TDS = 1 - self-BLEU-123 (NLTK method1): identical responses score 0, diverse ones more."""
    same = [[5, 6, 7, 8, 9]] * 3
    diverse = [[1, 2, 3, 4, 5], [1, 9, 3, 8, 5], [7, 2, 6, 4, 0]]
    store = VPSStore(2, VPSConfig(alpha=0.0, beta=1.0, tds_metrics=["self_bleu"]))
    s = store.update([0, 1], torch.ones(2, 3), [same, diverse])
    w = (1 / 3, 1 / 3, 1 / 3)
    nltk_bleu = sum(
        sentence_bleu(diverse[:i] + diverse[i + 1:], diverse[i], weights=w, smoothing_function=SmoothingFunction().method1)
        for i in range(3)
    ) / 3
    assert s["tds"][0].item() == pytest.approx(0.0, abs=1e-6)
    assert s["tds"][1].item() == pytest.approx(1.0 - nltk_bleu, rel=1e-5)
    assert s["tds"][1] > s["tds"][0]


def test_min_max_and_constant():
    torch.testing.assert_close(min_max_normalise(torch.tensor([0.1, 0.3, 0.2])), torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(min_max_normalise(torch.tensor([0.2, 0.2])), torch.ones(2))


def test_momentum_blend_and_prior():
    cfg = VPSConfig(alpha=1.0, beta=0.0, tds_metrics=[], momentum=0.5, prior=0.7)
    store = VPSStore(4, cfg)
    # pass rates 0.5, 1.0, 0.25 -> OVS 0.25, 0, 0.1875 -> min-max 1, 0, 0.75; prompt 3 unscored
    store.update([0, 1, 2], torch.tensor([[1.0, 0, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]]))
    torch.testing.assert_close(store.recompute_weights(), torch.tensor([1.0, 0.0, 0.75, 0.7]))
    # re-score: OVS 0, 0.25, 0.25, and prompt 3 first scored with OVS 0.1875
    store.update([0, 1, 2, 3], torch.tensor([[1.0, 1, 1, 1], [1, 0, 1, 0], [0, 1, 0, 1], [0, 0, 0, 1]]))
    # new min-max: 0, 1, 1, 0.75; blend 0.5*old + 0.5*new for prompts that had a weight, prompt 3 takes new
    torch.testing.assert_close(store.recompute_weights(), torch.tensor([0.5, 0.5, 0.875, 0.75]))


def test_duplicates_are_averaged_and_staleness():
    store = VPSStore(3, VPSConfig(alpha=1.0, beta=0.0, tds_metrics=[], stale_after=1))
    store.update([1, 1], torch.tensor([[1.0, 0.0], [1.0, 1.0]]))  # OVS 0.25 and 0 -> mean 0.125
    assert store.ovs[1].item() == pytest.approx(0.125)
    assert store.stale().tolist() == []
    store.recompute_weights()
    store.recompute_weights()  # prompt 1 scored in round 0; now round 2: age 2 > 1
    assert store.stale().tolist() == [1]
    with pytest.raises(ValueError, match="out of range"):
        store.update([3], torch.ones(1, 2))


def test_tds_requires_tokens_and_state_roundtrip():
    store = VPSStore(2, VPSConfig())  # paper default: beta 0.2, self-BLEU
    with pytest.raises(ValueError, match="token ids"):
        store.update([0], torch.ones(1, 4))
    store.update([0], torch.tensor([[1.0, 0.0]]), [[[1, 2, 3], [3, 2, 1]]])
    store.recompute_weights()
    other = VPSStore(2, VPSConfig())
    other.load_state_dict(store.state_dict())
    assert torch.equal(other.weights, store.weights) and other.round == 1
    with pytest.raises(ValueError, match="prompts"):
        VPSStore(3, VPSConfig()).load_state_dict(store.state_dict())


def test_weight_entropy():
    assert weight_entropy(torch.ones(8)) == pytest.approx(1.0)
    assert weight_entropy(torch.tensor([0.0, 0.0, 5.0])) == pytest.approx(0.0)
