"""Variance Promotion Score statistics for G groups of N rollouts (ragged token-id sequences).

Public functions (all return float64 tensors of shape [G] on the input device, CPU for Python lists):

- ``pass_rate_variance(rewards [G, N])``: p (1 - p), p = mean of the 0/1 accuracies of a group (OVS).
- ``distinct_n(groups, n)``: unique n-grams / all n-grams over the N sequences of a group, n in 1..4.
- ``self_bleu(groups, max_n)``: mean over the N sequences of NLTK ``sentence_bleu(others, seq,
  weights=(1/max_n,)*max_n, smoothing_function=SmoothingFunction().method1)``, computed exactly.
- ``edit_distance(groups)``: mean over pairs i < j of Levenshtein(seq_i, seq_j) / max(len_i, len_j).

Edge cases (documented in docs/kernels.md):
- a group with fewer than 2 sequences has no diversity between rollouts: self_bleu = 1.0,
  edit_distance = 0.0; distinct_n is still defined over its single sequence.
- a group with no n-gram at all (all sequences shorter than n) has distinct_n = 0.0.
- empty sequences follow NLTK: an empty hypothesis scores BLEU 0; two empty sequences are at edit
  distance 0 (normalised 0/0 := 0).

Implementation: all sequences are packed into one flat token tensor. n-gram ids are exact (packed token
ranks, or rank compression of (id_{k-1}, token) pairs when those would overflow int64): no hash
collisions for any vocabulary. Counting is one sort per order plus segment reductions in torch (CPU or
GPU; numpy's sort on CPU). Edit distance is Hyyro's bit-parallel Levenshtein: a Triton kernel on CUDA
(kernels/mmr1_kernels/levenshtein.py), rapidfuzz's C++ implementation on CPU (all pairs in one multi-threaded ``cpdist``
call), else torch vectorised over all pairs and 64-bit words (carry look-ahead as a Kogge-Stone scan).
"""

from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import Sequence, Union

import numpy as np
import torch

from ._dispatch import HAS_TRITON, use_triton

_MIN64 = -(2**63)
_PACK_LIMIT = 2**62  # bound on packed n-gram keys (tests lower it to exercise rank compression)


@dataclass
class PackedGroups:
    """Flat view of ragged groups: tokens of all sequences back to back."""

    tokens: torch.Tensor  # [M] int64, all sequences concatenated
    seq_lens: torch.Tensor  # [S] int64
    seq_group: torch.Tensor  # [S] int64, group index of each sequence
    group_sizes: torch.Tensor  # [G] int64, N of each group (ragged N allowed)

    @property
    def num_groups(self) -> int:
        return int(self.group_sizes.numel())

    @property
    def device(self) -> torch.device:
        return self.tokens.device


GroupsLike = Union[PackedGroups, Sequence[Sequence[Sequence[int]]]]


def pack_groups(groups: GroupsLike, device: torch.device | str | None = None) -> PackedGroups:
    """Pack a list (G) of lists (N) of token-id sequences (lists, numpy arrays or 1-D tensors)."""
    if isinstance(groups, PackedGroups):
        return groups if device is None else PackedGroups(*(t.to(device) for t in _fields(groups)))
    group_sizes = [len(g) for g in groups]
    seqs = [s for g in groups for s in g]
    if seqs and isinstance(seqs[0], torch.Tensor):
        dev = seqs[0].device if device is None else device
        lens = torch.tensor([int(s.numel()) for s in seqs], dtype=torch.int64)
        tokens = torch.cat([s.reshape(-1).to(torch.int64) for s in seqs]).to(dev)
    else:
        dev = "cpu" if device is None else device
        lens_np = np.fromiter((len(s) for s in seqs), dtype=np.int64, count=len(seqs))
        tokens_np = np.fromiter(itertools.chain.from_iterable(seqs), dtype=np.int64, count=int(lens_np.sum()))
        lens, tokens = torch.from_numpy(lens_np), torch.from_numpy(tokens_np).to(dev)
    sizes = torch.tensor(group_sizes, dtype=torch.int64)
    seq_group = torch.repeat_interleave(torch.arange(len(group_sizes)), sizes)
    if tokens.numel() and int(tokens.min()) < 0:
        raise ValueError("token ids must be >= 0")
    return PackedGroups(tokens, lens.to(tokens.device), seq_group.to(tokens.device), sizes.to(tokens.device))


def _fields(p: PackedGroups):
    return p.tokens, p.seq_lens, p.seq_group, p.group_sizes


_MULTI_THREAD_MIN_TOKENS = 1 << 20


def _cpu_single_thread(fn):
    """Small inputs run on one intra-op thread on CPU: they are many short memory-bound ops, where
    OpenMP hand-offs cost more than they give, badly so on shared or oversubscribed cores (measured:
    20x slower with 2 threads on a busy 2-core machine at 130k tokens). From 2^20 tokens on, the
    caller's thread count is kept (1.2x faster with 2 threads at 3M tokens on a quiet machine).
    The caller's setting is always restored."""

    @functools.wraps(fn)
    def wrapper(groups, *args, **kwargs):
        n = torch.get_num_threads()
        if n == 1 or _num_tokens(groups) >= _MULTI_THREAD_MIN_TOKENS:
            return fn(groups, *args, **kwargs)
        torch.set_num_threads(1)
        try:
            return fn(groups, *args, **kwargs)
        finally:
            torch.set_num_threads(n)

    return wrapper


def _num_tokens(groups) -> int:
    if isinstance(groups, PackedGroups):
        return int(groups.tokens.numel())
    return sum(len(s) for g in groups for s in g)


# ---------------------------------------------------------------------------------------------
# n-gram ids
# ---------------------------------------------------------------------------------------------


def _ngram_ids(p: PackedGroups, max_n: int, mult: int):
    """Yields (k, ids [M-k+1], K) for k = 1..max_n: ids[i] is an exact id in [0, K) of the k-gram that
    starts at flat position i, or the sentinel K where none starts (too close to its sequence's end).
    Ids are packed token ranks while (K + 1) * mult fits in int64, else dense ranks of
    (id_{k-1}, token) pairs: exact for any vocabulary, never hashes."""
    dev, M = p.device, p.tokens.numel()
    ends = torch.cumsum(p.seq_lens, 0)  # [S]
    remaining = torch.repeat_interleave(ends, p.seq_lens) - torch.arange(M, device=dev)  # [M] tokens to seq end
    if M and int(p.tokens.max()) < 4 * M + 2**20:  # dense-ish ids: rank by a presence table
        present = torch.bincount(p.tokens) > 0  # [V]
        rank = torch.cumsum(present.to(torch.int64), 0) - 1
        id1, k1 = rank[p.tokens], int(present.sum())  # [M] rank of each token among those used
    else:
        uni, id1 = torch.unique(p.tokens, return_inverse=True)
        k1 = int(uni.numel())
    k1 = max(k1, 1)
    ids, K = id1, k1
    limit = _PACK_LIMIT // max(mult, 1)
    for k in range(1, max_n + 1):
        if k > 1:
            Mk = M - k + 1
            cand = ids[:Mk] * k1 + id1[k - 1 :]  # (id_{k-1}, token k-1 ahead); garbage where not valid
            valid = remaining[:Mk] >= k  # [Mk] a k-gram starts here
            if (K * k1 + 1) <= limit:  # packed: id_k = id_{k-1} * k1 + token
                K = K * k1
                ids = torch.where(valid, cand, torch.full_like(cand, K))
            else:  # rank-compress the valid pairs
                if K * k1 < 2**62:
                    uk, inv = torch.unique(cand[valid], return_inverse=True)
                else:
                    pairs = torch.stack([ids[:Mk], id1[k - 1 :]], 1)[valid]
                    uk, inv = torch.unique(pairs, dim=0, return_inverse=True)
                K = max(int(uk.shape[0]), 1)
                ids = torch.full_like(cand, K)
                ids[valid] = inv
        yield k, ids, K


def _sort(x: torch.Tensor) -> torch.Tensor:
    """Sorted values; numpy's sort is several times faster than torch's on CPU int64."""
    if x.device.type == "cpu":
        return torch.from_numpy(np.sort(x.numpy()))
    return torch.sort(x).values


def _sorted_valid(keys: torch.Tensor, bound: int) -> torch.Tensor:
    """Sort and drop the sentinel keys (>= bound), which sort last."""
    keys = _sort(keys)
    cut = int(torch.searchsorted(keys, torch.tensor([bound], device=keys.device, dtype=keys.dtype)))
    return keys[:cut]


def _slot_bits(p: PackedGroups) -> tuple[int, int]:
    """Bits of a sequence's slot (group << bn | index in group): (bits of the group, bits of the index)."""
    bg = max(p.num_groups - 1, 1).bit_length()
    bn = max(int(p.group_sizes.max()) - 1 if p.num_groups else 1, 1).bit_length()
    return bg, bn


def _runs(ids: torch.Tensor, K: int, tok_slot: torch.Tensor, bg: int, bn: int):
    """Count each n-gram per sequence with one sort of key = id << slot_bits | slot, where a sequence's
    slot is group << bn | index in group (shifts, not divisions; groups own contiguous slots).
    Returns per run (n-gram u, sequence): slot [R], count [R], and seg [R]: index of the (u, group)
    segment of the run (runs of one n-gram within one group are contiguous)."""
    b = bg + bn
    keys = _sorted_valid((ids << b) | tok_slot[: ids.numel()], K << b)
    run_key, cnt = torch.unique_consecutive(keys, return_counts=True)  # [R] sorted by (u, group, index)
    seg_key = run_key >> bn  # (u, group)
    new = torch.ones_like(seg_key, dtype=torch.bool)
    new[1:] = seg_key[1:] != seg_key[:-1]
    seg = torch.cumsum(new, 0) - 1  # [R]
    slot = run_key & ((1 << b) - 1)
    return slot, cnt, seg


# ---------------------------------------------------------------------------------------------
# public statistics
# ---------------------------------------------------------------------------------------------


def pass_rate_variance(rewards: torch.Tensor) -> torch.Tensor:
    """OVS: p (1 - p) with p the mean 0/1 accuracy of each group. rewards: [G, N] -> [G] float64."""
    if rewards.dim() != 2:
        raise ValueError(f"rewards must be [G, N], got shape {tuple(rewards.shape)}")
    p = rewards.to(torch.float64).mean(dim=1)
    return p * (1.0 - p)


@_cpu_single_thread
def distinct_n(groups: GroupsLike, n: int = 3) -> torch.Tensor:
    """Unique n-grams / all n-grams, pooled over the sequences of each group. -> [G] float64."""
    if not 1 <= n <= 4:
        raise ValueError(f"distinct_n supports n in 1..4, got {n}")
    p = pack_groups(groups)
    G = p.num_groups
    for k, ids, K in _ngram_ids(p, n, G):
        pass
    per_seq = (p.seq_lens - n + 1).clamp(min=0).to(torch.float64)  # n-grams of each sequence
    total = torch.zeros(G, dtype=torch.float64, device=p.device).index_add_(0, p.seq_group, per_seq)
    tok_group = torch.repeat_interleave(p.seq_group, p.seq_lens)[: ids.numel()]  # [M-n+1]
    keys = torch.unique_consecutive(_sorted_valid(ids * G + tok_group, K * G))  # distinct (u, group)
    uniq = torch.bincount(keys % G, minlength=G).to(torch.float64)  # [G]
    return torch.where(total > 0, uniq / total.clamp(min=1.0), torch.zeros_like(total))


@_cpu_single_thread
def self_bleu(groups: GroupsLike, max_n: int = 3) -> torch.Tensor:
    """Mean NLTK sentence-BLEU (uniform weights over 1..max_n, smoothing method1, epsilon 0.1) of each
    sequence against the other sequences of its group. -> [G] float64."""
    if max_n < 1:
        raise ValueError("max_n must be >= 1")
    p = pack_groups(groups)
    dev, G, S = p.device, p.num_groups, int(p.seq_lens.numel())
    lens = p.seq_lens
    starts = torch.cumsum(p.group_sizes, 0) - p.group_sizes  # [G]
    idx_in_group = torch.arange(S, device=dev) - starts[p.seq_group]  # [S]
    bg, bn = _slot_bits(p)
    slot_of_seq = (p.seq_group << bn) | idx_in_group  # [S]
    tok_slot = torch.repeat_interleave(slot_of_seq, lens)  # [M]
    num = torch.zeros(max_n, max(G, 1) << bn, dtype=torch.float64, device=dev)  # clipped matches per order, slot
    for k1, ids, K in _ngram_ids(p, max_n, 1 << (bg + bn)):
        slot, c, seg = _runs(ids, K, tok_slot, bg, bn)  # c = count of n-gram u in the sequence at slot
        nseg = int(seg[-1]) + 1 if seg.numel() else 0
        # per (u, group): the largest count, how many sequences reach it, and the largest count below it
        max1 = torch.zeros(nseg, dtype=c.dtype, device=dev).scatter_reduce_(0, seg, c, "amax")
        at_max = c == max1[seg]
        n_at_max = torch.zeros(nseg, dtype=c.dtype, device=dev).index_add_(0, seg, at_max.to(c.dtype))
        below = torch.where(at_max, torch.zeros_like(c), c)
        max2 = torch.zeros(nseg, dtype=c.dtype, device=dev).scatter_reduce_(0, seg, below, "amax")
        # clipped count min(c, max over the *other* sequences) (NLTK max_counts over references): c itself,
        # except for the single sequence holding the strict maximum, which is clipped to the runner-up
        cut = torch.where(n_at_max == 1, max1 - max2, torch.zeros_like(max1))  # [nseg]
        clipped = c - at_max * cut[seg]
        num[k1 - 1].index_add_(0, slot, clipped.to(torch.float64))
    num = num[:, slot_of_seq]  # [max_n, S]
    orders = torch.arange(1, max_n + 1, device=dev, dtype=torch.int64)[:, None]  # [max_n, 1]
    den = (lens[None, :] - orders + 1).clamp(min=1).to(torch.float64)  # [max_n, S]
    prec = torch.where(num > 0, num / den, 0.1 / den)  # smoothing method1
    log_mean = torch.log(prec).sum(0) / max_n  # [S]
    # brevity penalty against the closest other length (ties -> the shorter reference)
    Nmax = int(p.group_sizes.max()) if G else 0
    L = torch.full((G, max(Nmax, 1)), -1, dtype=torch.int64, device=dev)  # [G, Nmax], -1 = pad
    L[p.seq_group, idx_in_group] = lens
    Lo = L[p.seq_group]  # [S, Nmax] lengths of the group's sequences
    bad = (Lo < 0) | (torch.arange(Lo.shape[1], device=dev)[None, :] == idx_in_group[:, None])
    key = (Lo - lens[:, None]).abs() * (2**31) + Lo
    key = torch.where(bad, torch.full_like(key, 2**62), key)
    ref = Lo.gather(1, key.argmin(1, keepdim=True)).squeeze(1).to(torch.float64)  # [S]
    c = lens.to(torch.float64)
    bp = torch.where(c > ref, torch.ones_like(c), torch.exp(1.0 - ref / c.clamp(min=1.0)))
    bp = torch.where(c == 0, torch.zeros_like(c), bp)
    bleu = torch.where(num[0] > 0, bp * torch.exp(log_mean), torch.zeros_like(c))  # [S]
    per_group = torch.zeros(G, dtype=torch.float64, device=dev).index_add_(0, p.seq_group, bleu)
    sizes = p.group_sizes.to(torch.float64)
    return torch.where(p.group_sizes >= 2, per_group / sizes.clamp(min=1.0), torch.ones_like(sizes))


def edit_distance(groups: GroupsLike, backend: str = "auto", workers: int | None = None) -> torch.Tensor:
    """Mean over pairs i < j of Levenshtein(seq_i, seq_j) / max(len_i, len_j). -> [G] float64.

    backend: "auto" (Triton on CUDA; rapidfuzz on CPU when installed; else torch), "triton", "torch",
    "rapidfuzz". workers: CPU threads of the rapidfuzz path (default: ``torch.get_num_threads()``); each
    pair is an independent, compute-bound job, so it scales with cores unlike the memory-bound n-gram ops.
    """
    p = pack_groups(groups)
    G, dev = p.num_groups, p.device
    starts = torch.cumsum(p.group_sizes, 0) - p.group_sizes
    pi, pj, pg = [], [], []
    for g, (s0, n) in enumerate(zip(starts.tolist(), p.group_sizes.tolist())):
        if n >= 2:
            a, b = torch.triu_indices(n, n, offset=1)
            pi.append(a + s0), pj.append(b + s0), pg.append(torch.full_like(a, g))
    out = torch.zeros(G, dtype=torch.float64, device=dev)
    if not pi:
        return out
    pi, pj, pg = (torch.cat(x).to(dev) for x in (pi, pj, pg))
    if backend == "auto":
        if dev.type == "cuda" and HAS_TRITON:
            backend = "triton"
        else:
            backend = "rapidfuzz" if dev.type == "cpu" and _has_rapidfuzz() else "torch"
    if backend == "triton" and use_triton("triton", p.tokens):
        dist = _pairs_levenshtein_triton(p, pi, pj)
    elif backend == "rapidfuzz":
        dist = _pairs_levenshtein_rapidfuzz(p, pi, pj, workers or torch.get_num_threads())
    elif backend == "torch":
        dist = _pairs_levenshtein_torch(p, pi, pj)
    else:
        raise ValueError(f"unknown edit_distance backend '{backend}'")
    norm = torch.maximum(p.seq_lens[pi], p.seq_lens[pj]).to(torch.float64)
    d = torch.where(norm > 0, dist.to(torch.float64) / norm.clamp(min=1.0), torch.zeros_like(norm))
    out.index_add_(0, pg, d)
    npairs = (p.group_sizes * (p.group_sizes - 1) // 2).to(torch.float64)
    return torch.where(npairs > 0, out / npairs.clamp(min=1.0), out)


# ---------------------------------------------------------------------------------------------
# Levenshtein of many pairs
# ---------------------------------------------------------------------------------------------


def _pairs_levenshtein_triton(p: PackedGroups, pi: torch.Tensor, pj: torch.Tensor) -> torch.Tensor:
    """Triton kernel (kernels/mmr1_kernels/levenshtein.py) with the shorter sequence of each pair as the pattern;
    pairs whose shorter side exceeds the kernel's register budget go to the torch path."""
    from .levenshtein import MAX_WORDS, pairs_levenshtein_triton

    starts = torch.cumsum(p.seq_lens, 0) - p.seq_lens
    swap = p.seq_lens[pi] > p.seq_lens[pj]
    a, b = torch.where(swap, pj, pi), torch.where(swap, pi, pj)
    fits = p.seq_lens[a] <= 64 * MAX_WORDS
    out = torch.empty(pi.numel(), dtype=torch.int64, device=p.device)
    if bool(fits.any()):
        fa, fb = a[fits], b[fits]
        out[fits] = pairs_levenshtein_triton(p.tokens, starts[fa], p.seq_lens[fa], starts[fb], p.seq_lens[fb])
    if not bool(fits.all()):
        out[~fits] = _pairs_levenshtein_torch(p, a[~fits], b[~fits])
    return out


def _has_rapidfuzz() -> bool:
    try:
        import rapidfuzz  # noqa: F401
    except ImportError:
        return False
    return True


_SURROGATES = (0xD800, 0xE000)  # code points a str cannot hold


def _as_strings(p: PackedGroups) -> list:
    """Each sequence as a Python str with one code point per token, so that rapidfuzz converts every
    sequence once, in C, instead of once per pair from a list of ints. Token ids map to code points
    around the surrogate block; ids beyond the code-point range are rank-compressed first, and when
    even the ranks do not fit, sequences stay lists of ints (slower, same distances)."""
    tok = p.tokens.cpu()
    room = 0x110000 - (_SURROGATES[1] - _SURROGATES[0])
    if tok.numel() and int(tok.max()) >= room:
        _, tok = torch.unique(tok, return_inverse=True)
    bounds = torch.cumsum(p.seq_lens.cpu(), 0).tolist()
    if tok.numel() and int(tok.max()) >= room:
        flat = tok.tolist()
        return [flat[e - n : e] for e, n in zip(bounds, p.seq_lens.tolist())]
    cp = torch.where(tok >= _SURROGATES[0], tok + (_SURROGATES[1] - _SURROGATES[0]), tok)
    buf = cp.to(torch.int32).numpy().astype("<u4").tobytes()
    starts = [0] + bounds[:-1]
    return [buf[4 * s : 4 * e].decode("utf-32-le") for s, e in zip(starts, bounds)]


def _pairs_levenshtein_rapidfuzz(p: PackedGroups, pi: torch.Tensor, pj: torch.Tensor, workers: int) -> torch.Tensor:
    """rapidfuzz runs the same bit-parallel algorithm per pair in C++; ``cpdist`` takes all pairs in one
    call and spreads them over ``workers`` threads without the GIL."""
    from rapidfuzz import process
    from rapidfuzz.distance import Levenshtein

    seqs = _as_strings(p)
    d = process.cpdist([seqs[i] for i in pi.tolist()], [seqs[j] for j in pj.tolist()],
                       scorer=Levenshtein.distance, dtype=np.int64, workers=workers)
    return torch.from_numpy(np.asarray(d, dtype=np.int64)).to(p.device)


def _add_multiword(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(x + y) over little-endian multiword integers [P, W] of int64 words (two's complement = the
    unsigned bits), carries by a Kogge-Stone scan over the words."""
    s = x + y  # wraps
    gen = (s ^ _MIN64) < (x ^ _MIN64)  # unsigned overflow of the word
    prop = s == -1  # all ones: an incoming carry passes through
    W = x.shape[1]
    d = 1
    while d < W:
        gen = gen.clone()
        gen[:, d:] = gen[:, d:] | (prop[:, d:] & gen[:, :-d])
        prop = prop.clone()
        prop[:, d:] = prop[:, d:] & prop[:, :-d]
        prop[:, :d] = False
        d *= 2
    carry = torch.zeros_like(s)
    carry[:, 1:] = gen[:, :-1].to(s.dtype)  # carry into word w = prefix generate of words < w
    return s + carry


def _shl1(x: torch.Tensor, fill: int) -> torch.Tensor:
    """Shift a multiword integer [P, W] left by one bit; ``fill`` enters bit 0 of word 0."""
    top = (x < 0).to(x.dtype)  # bit 63 of each word
    out = x << 1
    out[:, 1:] |= top[:, :-1]
    out[:, 0] |= fill
    return out


@_cpu_single_thread
def _pairs_levenshtein_torch(
    p: PackedGroups, pi: torch.Tensor, pj: torch.Tensor, max_elems: int = 1 << 24
) -> torch.Tensor:
    """Hyyro's bit-parallel Levenshtein (pattern seq_i, text seq_j), vectorised over pairs and words."""
    dev = p.device
    starts = torch.cumsum(p.seq_lens, 0) - p.seq_lens
    m_all, n_all = p.seq_lens[pi], p.seq_lens[pj]
    out = torch.empty(pi.numel(), dtype=torch.int64, device=dev)
    Lm = int(m_all.max()) if pi.numel() else 0
    W = max(1, -(-Lm // 64))
    chunk = max(1, max_elems // (W * 64))
    shifts = torch.arange(64, device=dev, dtype=torch.int64)
    for c0 in range(0, pi.numel(), chunk):
        sl = slice(c0, c0 + chunk)
        a_idx, b_idx, m, n = pi[sl], pj[sl], m_all[sl], n_all[sl]
        P = a_idx.numel()
        col = torch.arange(W * 64, device=dev)
        pat = torch.full((P, W * 64), -1, dtype=torch.int64, device=dev)  # [P, W*64], -1 = pad
        mask = col[None, :] < m[:, None]
        pat[mask] = p.tokens[(starts[a_idx][:, None] + col[None, :])[mask]]
        Ln = int(n.max())
        txt_col = torch.arange(max(Ln, 1), device=dev)
        txt = torch.full((P, max(Ln, 1)), -2, dtype=torch.int64, device=dev)  # [P, Ln], -2 = pad
        tmask = txt_col[None, :] < n[:, None]
        txt[tmask] = p.tokens[(starts[b_idx][:, None] + txt_col[None, :])[tmask]]
        pv = torch.full((P, W), -1, dtype=torch.int64, device=dev)
        mv = torch.zeros((P, W), dtype=torch.int64, device=dev)
        score = m.clone()
        last_w = ((m - 1).clamp(min=0) // 64)[:, None]  # word of bit m-1
        last_b = ((m - 1).clamp(min=0) % 64)
        rows = torch.arange(P, device=dev)
        for j in range(Ln):
            eq_bits = (pat == txt[:, j : j + 1]).view(P, W, 64).to(torch.int64) << shifts
            eq = eq_bits.sum(-1)  # [P, W] packed equality mask (distinct bits: sum == or)
            xv = eq | mv
            xh = (_add_multiword(eq & pv, pv) ^ pv) | eq
            ph = mv | ~(xh | pv)
            mh = pv & xh
            ph_last = (ph[rows, last_w[:, 0]] >> last_b) & 1
            mh_last = (mh[rows, last_w[:, 0]] >> last_b) & 1
            active = (j < n) & (m > 0)
            score = score + torch.where(active, ph_last - mh_last, torch.zeros_like(score))
            ph = _shl1(ph, 1)
            mh = _shl1(mh, 0)
            pv = mh | ~(xv | ph)
            mv = ph & xv
        out[sl] = torch.where(m == 0, n, score)
    return out
