"""Context parallelism's sequence split (megatron's load-balanced rule), as pure functions.

A causal sequence cut into cp contiguous pieces would give the last CP rank most of the attention work,
so megatron (``megatron.core.utils.get_batch_on_this_cp_rank``) cuts it into 2 * cp chunks and gives CP rank
r chunks r and 2cp-1-r. Packed (THD) rows are split the same way sequence by sequence (what Transformer
Engine's ``thd_get_partitioned_indices`` does), so every sequence keeps its own balance.

    piece = split_for_cp_rank(tokens, cp=2, cp_rank=0)              # (b, s) -> (b, s/2): chunks 0 and 3
    row = split_packed_for_cp_rank(tokens, cu_seqlens, 2, 1)       # each sequence's chunks 1 and 2
    tokens == merge_cp_pieces([split_for_cp_rank(tokens, 2, r) for r in range(2)])

Not wired into training yet: config.validate refuses ``parallel.cp`` > 1 (docs/training.md).
"""

from __future__ import annotations

import torch
from torch import Tensor


def cp_chunk_ids(cp: int, cp_rank: int) -> tuple[int, int]:
    """The two of the 2 * cp chunks that CP rank ``cp_rank`` holds, in sequence order."""
    if not 0 <= cp_rank < cp:
        raise ValueError(f"cp_rank={cp_rank} is not in [0, cp={cp})")
    return cp_rank, 2 * cp - 1 - cp_rank


def split_for_cp_rank(t: Tensor, cp: int, cp_rank: int, dim: int = 1) -> Tensor:
    """Rank ``cp_rank``'s half-chunks of ``t`` along ``dim`` (length divisible by 2 * cp), concatenated."""
    n = t.shape[dim]
    if n % (2 * cp):
        raise ValueError(f"sequence length {n} is not divisible by 2*cp={2 * cp}")
    chunks = t.chunk(2 * cp, dim=dim)  # 2cp pieces of n / 2cp along dim
    a, b = cp_chunk_ids(cp, cp_rank)
    return torch.cat([chunks[a], chunks[b]], dim=dim)


def split_packed_for_cp_rank(t: Tensor, cu_seqlens: Tensor, cp: int, cp_rank: int, dim: int = 1) -> Tensor:
    """Packed row(s): each sequence [cu[i], cu[i+1]) along ``dim`` split by :func:`split_for_cp_rank`; every
    sequence length must be divisible by 2 * cp (pad each sequence, as megatron's THD path requires)."""
    bounds = [int(x) for x in cu_seqlens.tolist()]
    if bounds[0] != 0 or bounds[-1] != t.shape[dim]:
        raise ValueError(f"cu_seqlens {bounds} does not cover the {t.shape[dim]} tokens along dim {dim}")
    pieces = [split_for_cp_rank(t.narrow(dim, s, e - s), cp, cp_rank, dim) for s, e in zip(bounds, bounds[1:])]
    return torch.cat(pieces, dim=dim)


def merge_cp_pieces(pieces: list[Tensor], dim: int = 1) -> Tensor:
    """Inverse of :func:`split_for_cp_rank`: the CP ranks' pieces (in rank order) -> the whole sequence."""
    cp = len(pieces)
    halves = [p.chunk(2, dim=dim) for p in pieces]  # rank r: (chunk r, chunk 2cp-1-r)
    order = [halves[r][0] for r in range(cp)] + [halves[r][1] for r in reversed(range(cp))]
    return torch.cat(order, dim=dim)


def merge_packed_cp_pieces(pieces: list[Tensor], cu_seqlens: Tensor, dim: int = 1) -> Tensor:
    """Inverse of :func:`split_packed_for_cp_rank` (``cu_seqlens`` of the whole row)."""
    cp = len(pieces)
    bounds = [int(x) for x in cu_seqlens.tolist()]
    out, start = [], 0
    for s, e in zip(bounds, bounds[1:]):
        n = (e - s) // cp  # this sequence's tokens on each CP rank
        out.append(merge_cp_pieces([p.narrow(dim, start, n) for p in pieces], dim))
        start += n
    return torch.cat(out, dim=dim)
