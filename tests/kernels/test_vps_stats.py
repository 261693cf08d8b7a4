"""VPS statistics vs straightforward Python references (NLTK sentence_bleu for self-BLEU, a plain
dynamic-programming Levenshtein, Python sets for distinct-n). Exact to 1e-6 (float64 both sides)."""

from __future__ import annotations

import random

import pytest
import torch

from mmr1_kernels.vps_stats import distinct_n, edit_distance, pack_groups, pass_rate_variance, self_bleu

nltk_bleu = pytest.importorskip("nltk.translate.bleu_score")


# ---------------------------------------------------------------- references (the definitions)


def ref_distinct_n(groups, n):
    out = []
    for g in groups:
        grams = [tuple(s[i : i + n]) for s in g for i in range(len(s) - n + 1)]
        out.append(len(set(grams)) / len(grams) if grams else 0.0)
    return out


def ref_self_bleu(groups, max_n):
    sm = nltk_bleu.SmoothingFunction().method1
    w = tuple([1.0 / max_n] * max_n)
    out = []
    for g in groups:
        if len(g) < 2:
            out.append(1.0)  # documented: no diversity within a group of one
            continue
        scores = [
            nltk_bleu.sentence_bleu([list(r) for j, r in enumerate(g) if j != i], list(h), weights=w, smoothing_function=sm)
            for i, h in enumerate(g)
        ]
        out.append(sum(scores) / len(scores))
    return out


def levenshtein_dp(a, b):
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1]


def ref_edit_distance(groups):
    out = []
    for g in groups:
        ds = []
        for i in range(len(g)):
            for j in range(i + 1, len(g)):
                m = max(len(g[i]), len(g[j]))
                ds.append(levenshtein_dp(g[i], g[j]) / m if m else 0.0)
        out.append(sum(ds) / len(ds) if ds else 0.0)
    return out


# ---------------------------------------------------------------- inputs


def random_groups(seed, G=6, N=4, max_len=40, vocab=6, ragged_n=False):
    rng = random.Random(seed)
    groups = []
    for _ in range(G):
        n = rng.randint(1, N) if ragged_n else N
        base = [rng.randrange(vocab) for _ in range(max_len)]
        g = []
        for _ in range(n):
            L = rng.randint(0, max_len)
            # mix of near-copies of a shared base and fresh tokens: many shared n-grams
            g.append([base[i] if rng.random() < 0.7 else rng.randrange(vocab) for i in range(L)])
        groups.append(g)
    return groups


EDGE = [
    [[], []],  # two empty sequences
    [[1, 2, 3]],  # N = 1
    [[5], [5], [5]],  # length 1 < n
    [[1, 2], [1, 2, 3, 4, 5, 6]],  # shorter than max_n
    [[7, 7, 7, 7], [7, 7, 7, 7]],  # identical
    [[], [1, 2, 3, 4]],  # one empty
    [[1, 2, 3, 4], [4, 3, 2, 1], [1, 2, 3, 4]],
    [[100000, 152063, 3], [152063, 3, 100000]],  # large ids
]


def _close(got, want):
    assert got.dtype == torch.float64
    torch.testing.assert_close(got, torch.tensor(want, dtype=torch.float64), rtol=0, atol=1e-6)


@pytest.mark.parametrize("n", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1])
def test_distinct_n_matches_reference(n, seed):
    groups = random_groups(seed, ragged_n=bool(seed)) + EDGE
    _close(distinct_n(groups, n), ref_distinct_n(groups, n))


@pytest.mark.parametrize("max_n", [1, 2, 3, 4])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_self_bleu_matches_nltk(max_n, seed):
    groups = random_groups(seed, vocab=4 + seed, ragged_n=seed == 2) + EDGE
    _close(self_bleu(groups, max_n), ref_self_bleu(groups, max_n))


@pytest.mark.parametrize("backend", ["torch", "rapidfuzz", "auto"])
@pytest.mark.parametrize("seed", [0, 1])
def test_edit_distance_matches_dp(backend, seed):
    groups = random_groups(seed, max_len=30, ragged_n=bool(seed)) + EDGE
    _close(edit_distance(groups, backend=backend), ref_edit_distance(groups))


def test_edit_distance_multiword_patterns():
    # sequences longer than 64 and 128 tokens exercise the carries between 64-bit words
    rng = random.Random(3)
    base = [rng.randrange(3) for _ in range(200)]
    g = [[t if rng.random() < 0.8 else rng.randrange(3) for t in base[: rng.randint(60, 200)]] for _ in range(3)]
    g.append([1] * 130)
    _close(edit_distance([g], backend="torch"), ref_edit_distance([g]))


@pytest.mark.parametrize("offset", [0xD7FE, 0x10F000, 2**40])
@pytest.mark.parametrize("workers", [1, 2])
def test_edit_distance_rapidfuzz_any_token_id(offset, workers):
    # token ids become code points for rapidfuzz: ids at the surrogate block, past the code-point range
    # (rank-compressed), and with more distinct ids than code points (lists of ints) all give DP's distances
    import mmr1_kernels.vps_stats as vs

    groups = [[[offset + t for t in s] for s in g] for g in random_groups(8, max_len=70, vocab=5)]
    want = ref_edit_distance(groups)
    _close(edit_distance(groups, backend="rapidfuzz", workers=workers), want)
    if offset == 2**40:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(vs, "_SURROGATES", (0xD800, 0xD800 + 0x110000 - 3))  # leaves room for 3 ranks only
            assert isinstance(vs._as_strings(pack_groups(groups))[0], list)
            _close(edit_distance(groups, backend="rapidfuzz"), want)


def test_accepts_tensors_and_packed():
    groups = random_groups(4)
    as_tensors = [[torch.tensor(s, dtype=torch.int32) for s in g] for g in groups]
    packed = pack_groups(groups)
    want = ref_self_bleu(groups, 3)
    _close(self_bleu(as_tensors, 3), want)
    _close(self_bleu(packed, 3), want)


def test_pass_rate_variance():
    r = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 1]], dtype=torch.float32)
    _close(pass_rate_variance(r), [0.25, 0.0, 0.25 * 0.75])
    with pytest.raises(ValueError):
        pass_rate_variance(r[0])


def test_distinct_n_rejects_bad_n():
    with pytest.raises(ValueError):
        distinct_n([[[1, 2]]], 5)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_gpu_matches_cpu():
    groups = random_groups(5, G=16, N=8, max_len=300, vocab=50)
    packed = pack_groups(groups, device="cuda")
    for got, want in [
        (self_bleu(packed, 3), self_bleu(groups, 3)),
        (distinct_n(packed, 3), distinct_n(groups, 3)),
        (edit_distance(packed), edit_distance(groups, backend="torch")),
    ]:
        torch.testing.assert_close(got.cpu(), want, rtol=0, atol=1e-9)


def test_rank_compression_path(monkeypatch):
    # force the exact rank-compression of n-gram ids (used when packed ids would overflow int64)
    import mmr1_kernels.vps_stats as vs

    monkeypatch.setattr(vs, "_PACK_LIMIT", 64)
    groups = random_groups(6, vocab=9) + EDGE
    _close(vs.self_bleu(groups, 4), ref_self_bleu(groups, 4))
    _close(vs.distinct_n(groups, 4), ref_distinct_n(groups, 4))


def test_edit_distance_triton_kernel():
    # the Triton bit-parallel kernel (interpreter on CPU): empty, short, exactly one word, one word + 1
    from ._common import backend_or_skip, device

    backend_or_skip("triton")
    rng = random.Random(7)
    g = [[rng.randrange(3) for _ in range(n)] for n in (0, 3, 64, 65, 70)]
    groups = [g, [[1, 2, 3], [3, 2, 1]]]
    packed = pack_groups(groups, device=device())
    _close(edit_distance(packed, backend="triton").cpu(), ref_edit_distance(groups))
