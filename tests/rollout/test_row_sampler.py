"""The stand-in engine's per-row sampler against the distribution it must draw from: softmax(logits / T)
restricted by top-k then top-p and renormalised (SGLang's sampler order), each row from its own generator."""

import torch

from megatron_mmr1.rollout.engine import _RowSampler


def target_probs(logits: torch.Tensor, temperature: float, top_k: int, top_p: float) -> torch.Tensor:
    """The textbook restriction, written independently: keep the top-k tokens, then the smallest prefix
    of the sorted rest whose mass reaches top_p (the token that crosses it included)."""
    p = torch.softmax(logits.double() / temperature, -1)
    order = p.argsort(descending=True)
    keep = torch.zeros_like(p, dtype=torch.bool)
    mass = 0.0
    kept_p = p.clone()
    kept_p[order[top_k:]] = 0.0
    kept_p = kept_p / kept_p.sum()
    for i in order[:top_k].tolist():
        keep[i] = True
        mass += float(kept_p[i])
        if mass >= top_p:
            break
    q = torch.where(keep, p, torch.zeros_like(p))
    return q / q.sum()


def draw(sampler: _RowSampler, logits: torch.Tensor, n: int) -> torch.Tensor:
    """n steps of the sampler on the same logits: (rows, n) chosen token ids."""
    picks = []
    for _ in range(n):
        out = sampler(None, logits.clone())
        assert torch.isfinite(out).sum(-1).eq(1).all()  # exactly one finite logit per row
        picks.append(out.argmax(-1))
    return torch.stack(picks, 1)


def test_row_sampler_draws_the_restricted_softmax():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 12, generator=g) * 1.5
    temperature, top_k, top_p, n = 0.8, 8, 0.9, 6000
    sampler = _RowSampler([torch.Generator().manual_seed(s) for s in (1, 2)], temperature, top_p, top_k)
    picks = draw(sampler, logits, n)
    for row in range(2):
        want = target_probs(logits[row], temperature, top_k, top_p)
        counts = torch.bincount(picks[row], minlength=12).double()
        assert counts[want == 0].sum() == 0  # never a token outside top-k / top-p
        expected = want * n
        chi2 = float(((counts - expected)[want > 0] ** 2 / expected[want > 0]).sum())
        dof = int((want > 0).sum()) - 1
        assert chi2 < dof + 6 * (2 * dof) ** 0.5, (chi2, dof)  # ~6 sigma of a chi-square with dof degrees


def test_row_sampler_rows_follow_their_own_generator():
    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(3))
    a = draw(_RowSampler([torch.Generator().manual_seed(s) for s in (7, 8, 9)], 1.0, 1.0, None), logits, 20)
    b = draw(_RowSampler([torch.Generator().manual_seed(s) for s in (9, 8, 7)], 1.0, 1.0, None), logits.flip(0), 20)
    assert torch.equal(a, b.flip(0))  # the same seed and logits give the same tokens, whatever the row
    assert not torch.equal(a[0], a[1])
