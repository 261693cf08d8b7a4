"""Levenshtein distance of many token-sequence pairs on the GPU: one Triton program per pair, running
Hyyro's bit-parallel algorithm in its block form (Hyyro 2003; the block step of edlib), 64 pattern
rows per 64-bit word, up to MAX_WORDS words (64 * MAX_WORDS tokens) held in registers.

Per text token: the match masks of all pattern words are built at once from the [W, 64] pattern tile;
then the words are advanced in order, each passing its bottom horizontal delta (+1 / 0 / -1) to the
next, which replaces the carry of the multi-word addition. The distance is tracked at pattern row m.
"""

from __future__ import annotations

import torch

from ._dispatch import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

MAX_WORDS = 32  # patterns up to 2048 tokens in the production build; longer ones fall back to torch
NUM_WARPS = 2

if HAS_TRITON:

    @triton.jit
    def _levenshtein_kernel(
        tokens_ptr,  # [M] int64 all sequences back to back
        a_start_ptr,  # [P] int64 first token of the pattern sequence of each pair
        a_len_ptr,  # [P] int64 pattern length m (<= 64 * W)
        b_start_ptr,  # [P] int64 first token of the text sequence
        b_len_ptr,  # [P] int64 text length n
        out_ptr,  # [P] int64 distance
        W: tl.constexpr,  # words per pattern (power of two)
    ):
        pid = tl.program_id(0)
        a0 = tl.load(a_start_ptr + pid)
        m = tl.load(a_len_ptr + pid)
        b0 = tl.load(b_start_ptr + pid)
        n = tl.load(b_len_ptr + pid)
        widx = tl.arange(0, W)  # [W]
        lane = tl.arange(0, 64)  # [64]
        offs = widx[:, None] * 64 + lane[None, :]  # [W, 64] pattern row of each bit
        pat = tl.load(tokens_ptr + a0 + offs, mask=offs < m, other=-1)  # [W, 64], -1 = past the end
        # words are int64 (two's complement: +, <<, &, |, ^, ~ act on the same bits as on uint64)
        one = tl.full((64,), 1, tl.int64)
        bits = one << lane.to(tl.int64)  # [64] 1 << lane
        zero_w = tl.zeros((W,), dtype=tl.int64)
        pv = ~zero_w  # vertical +1 deltas: column 0 is 0, 1, 2, ... down the pattern
        mv = zero_w  # vertical -1 deltas
        last_w = (tl.maximum(m, 1) - 1) // 64  # word and bit of pattern row m
        last_b = (tl.maximum(m, 1) - 1) % 64
        score = m
        for j in range(0, n):
            c = tl.load(tokens_ptr + b0 + j)
            eq_all = tl.sum(tl.where(pat == c, bits[None, :], tl.zeros((W, 64), dtype=tl.int64)), axis=1)  # [W]
            hin = tl.full([], 1, tl.int64)  # top row of the DP matrix grows by one per text token
            for w in range(0, last_w + 1):
                sel = widx == w
                Pv = tl.sum(tl.where(sel, pv, zero_w), axis=0)
                Mv = tl.sum(tl.where(sel, mv, zero_w), axis=0)
                Eq = tl.sum(tl.where(sel, eq_all, zero_w), axis=0)
                hin_neg = tl.where(hin < 0, 1, 0).to(tl.int64)
                hin_pos = tl.where(hin > 0, 1, 0).to(tl.int64)
                Xv = Eq | Mv
                Eq = Eq | hin_neg
                Xh = (((Eq & Pv) + Pv) ^ Pv) | Eq
                Ph = Mv | ~(Xh | Pv)
                Mh = Pv & Xh
                ph_top = (Ph >> 63) & 1  # (arithmetic shift: & 1 keeps the bit)
                mh_top = (Mh >> 63) & 1
                if w == last_w:  # horizontal delta at pattern row m: the distance's change
                    score += ((Ph >> last_b) & 1) - ((Mh >> last_b) & 1)
                hin = ph_top - mh_top
                Ph = (Ph << 1) | hin_pos
                Mh = (Mh << 1) | hin_neg
                pv = tl.where(sel, Mh | ~(Xv | Ph), pv)
                mv = tl.where(sel, Ph & Xv, mv)
        tl.store(out_ptr + pid, tl.where(m == 0, n, score))


def words_for(max_len: int) -> int:
    """Power-of-two number of 64-bit words holding a pattern of max_len tokens."""
    w = max(1, -(-max_len // 64))
    return 1 << (w - 1).bit_length()


def pairs_levenshtein_triton(tokens: torch.Tensor, a_start, a_len, b_start, b_len) -> torch.Tensor:
    """Distances [P] int64 of the pairs (tokens[a_start : a_start + a_len], tokens[b_start : ...]).
    Patterns (the a side) must be at most 64 * MAX_WORDS tokens: pass the shorter sequence as a."""
    P = a_len.numel()
    out = torch.empty(P, dtype=torch.int64, device=tokens.device)
    if P:
        W = words_for(int(a_len.max()))
        if W > MAX_WORDS:
            raise ValueError(f"pattern of {int(a_len.max())} tokens exceeds {64 * MAX_WORDS}")
        _levenshtein_kernel[(P,)](tokens, a_start, a_len, b_start, b_len, out, W=W, num_warps=NUM_WARPS)
    return out


def aot_specs() -> list[dict]:
    """Production launch (largest word count) for the sm_90 compile check."""
    sig = {"tokens_ptr": "*i64", "a_start_ptr": "*i64", "a_len_ptr": "*i64", "b_start_ptr": "*i64",
           "b_len_ptr": "*i64", "out_ptr": "*i64", "W": "constexpr"}
    return [dict(kernel=_levenshtein_kernel, signature=sig, constexprs={"W": w}, num_warps=NUM_WARPS)
            for w in (16, MAX_WORDS)]
