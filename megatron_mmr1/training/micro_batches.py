"""From a global batch of sequences to each DP rank's micro-batches, and from one micro-batch to the
model's inputs.

Planning works on token counts only, so every rank computes the same plan from the same lengths and
then materialises just its own sequences:

    plan = plan_micro_batches(lengths, dp=2, max_tokens=4096)      # plan[dp_rank] = [[seq ids], ...]
    mbs = [pack(seqs[i] for i in ids) for ids in plan[dp_rank]]     # packed rows (padded to tp under SP)
    position_ids, mask, packed = model_inputs(mb, chunk)            # THD on TE, block mask on CPU

Invariants (megatron's PP schedule and exact token-mean need them): every DP rank gets the same
number of micro-batches (empty ones are padding-only rows with no loss tokens), no micro-batch exceeds
the token budget unless a single sequence does, and the split never changes the loss (the loss
function returns sums; megatron divides by the global token count).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Optional, Sequence

import torch
from torch import Tensor

IGNORE_INDEX = -100


@dataclass
class TrainSequence:
    """One training sequence: prompt + response (GRPO) or a whole conversation (SFT)."""

    input_ids: Tensor
    """[L] int64."""
    targets: Tensor
    """[L] int64 next-token targets (targets[t] = input_ids[t + 1]); -100 where no loss."""
    pixel_values: Optional[Tensor] = None
    """[num_patches, 1176] of the sequence's images."""
    image_grid_thw: Optional[Tensor] = None
    """[num_images, 3]."""
    token_data: dict[str, Tensor] = field(default_factory=dict)
    """Per-token float tensors aligned with ``targets`` ([L]): advantages, old/ref/rollout log-probs."""
    loss_weight: Optional[Tensor] = None
    """[L] per-token weight of the loss sum (None: 1 on every target token)."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def next_token_targets(labels: Sequence[int] | Tensor) -> Tensor:
    """HF-aligned labels (loss where labels != -100) -> megatron-aligned targets: target[t] = labels[t + 1]."""
    labels = torch.as_tensor(labels, dtype=torch.long)
    out = torch.full_like(labels, IGNORE_INDEX)
    out[:-1] = labels[1:]
    return out


@dataclass
class MicroBatch:
    """Sequences packed back to back in one row (b = 1), or padded rows (b > 1) when ``packed`` is False."""

    input_ids: Tensor  # (b, T)
    targets: Tensor  # (b, T), -100 where no loss (padding included)
    loss_weight: Tensor  # (b, T) float, 0 where no loss
    cu_seqlens: Optional[Tensor]  # [n + 1] int32 (packed only; a trailing padding segment is the last)
    max_seqlen: int
    token_data: dict[str, Tensor]  # each (b, T)
    pixel_values: Optional[Tensor] = None
    image_grid_thw: Optional[Tensor] = None
    seq_ids: list[int] = field(default_factory=list)
    """Positions of the sequences in the step's list (for scattering per-token outputs back)."""
    seq_lens: list[int] = field(default_factory=list)

    @property
    def packed(self) -> bool:
        return self.cu_seqlens is not None

    @property
    def num_tokens(self) -> int:
        """Real tokens computed (padding excluded)."""
        return int(sum(self.seq_lens))

    def loss_tokens(self) -> int:
        return int((self.targets != IGNORE_INDEX).sum())

    def to(self, device: torch.device) -> "MicroBatch":
        mv = lambda t: None if t is None else t.to(device, non_blocking=True)  # noqa: E731
        return MicroBatch(mv(self.input_ids), mv(self.targets), mv(self.loss_weight), mv(self.cu_seqlens),
                          self.max_seqlen, {k: mv(v) for k, v in self.token_data.items()}, mv(self.pixel_values),
                          mv(self.image_grid_thw), list(self.seq_ids), list(self.seq_lens))

    def unpack(self, values: Tensor) -> list[Tensor]:
        """(b, T) per-token values -> one [L_i] tensor per sequence (in ``seq_ids`` order)."""
        if self.packed:
            flat = values.reshape(-1)
            cu = self.cu_seqlens.tolist()
            return [flat[cu[i]:cu[i] + n] for i, n in enumerate(self.seq_lens)]
        return [values[i, :n] for i, n in enumerate(self.seq_lens)]


def _weights(seq: TrainSequence) -> Tensor:
    if seq.loss_weight is not None:
        return seq.loss_weight.float()
    return (seq.targets != IGNORE_INDEX).float()


def _cat_images(seqs: Sequence[TrainSequence]) -> tuple[Optional[Tensor], Optional[Tensor]]:
    pv = [s.pixel_values for s in seqs if s.pixel_values is not None]
    grid = [s.image_grid_thw for s in seqs if s.image_grid_thw is not None]
    return (torch.cat(pv) if pv else None), (torch.cat(grid) if grid else None)


def pack(seqs: Sequence[TrainSequence], seq_ids: Sequence[int], pad_id: int = 0, pad_to_multiple_of: int = 1,
         min_tokens: int = 1) -> MicroBatch:
    """Concatenate sequences into one row; pad to a multiple (sequence parallel) and to ``min_tokens``
    (an empty micro-batch becomes a padding-only row that carries no loss)."""
    keys = sorted({k for s in seqs for k in s.token_data})
    total = sum(len(s) for s in seqs)
    pad = max((-total) % pad_to_multiple_of, min_tokens - total, 0)
    if pad and (total + pad) % pad_to_multiple_of:
        pad += (-(total + pad)) % pad_to_multiple_of
    ids = [s.input_ids for s in seqs] + [torch.full((pad,), pad_id, dtype=torch.long)]
    tgt = [s.targets for s in seqs] + [torch.full((pad,), IGNORE_INDEX, dtype=torch.long)]
    w = [_weights(s) for s in seqs] + [torch.zeros(pad)]
    data = {k: torch.cat([s.token_data.get(k, torch.zeros(len(s))).float() for s in seqs] + [torch.zeros(pad)])[None]
            for k in keys}
    lens = [len(s) for s in seqs]
    seg = lens + ([pad] if pad else [])
    cu = torch.zeros(len(seg) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.tensor(seg, dtype=torch.int64), 0).to(torch.int32)
    pv, grid = _cat_images(seqs)
    return MicroBatch(torch.cat(ids)[None], torch.cat(tgt)[None], torch.cat(w)[None], cu, max(seg, default=0), data,
                      pv, grid, list(seq_ids), lens)


def pad_rows(seqs: Sequence[TrainSequence], seq_ids: Sequence[int], pad_id: int = 0, min_tokens: int = 1,
             pad_to_multiple_of: int = 1) -> MicroBatch:
    """One right-padded row per sequence (the no-packing path): (b, max_len), the width rounded up to a
    multiple (sequence parallel)."""
    keys = sorted({k for s in seqs for k in s.token_data})
    lens = [len(s) for s in seqs]
    width = max(lens + [min_tokens])
    width += (-width) % pad_to_multiple_of
    rows = max(len(seqs), 1)
    ids = torch.full((rows, width), pad_id, dtype=torch.long)
    tgt = torch.full((rows, width), IGNORE_INDEX, dtype=torch.long)
    w = torch.zeros(rows, width)
    data = {k: torch.zeros(rows, width) for k in keys}
    for i, s in enumerate(seqs):
        n = len(s)
        ids[i, :n], tgt[i, :n], w[i, :n] = s.input_ids, s.targets, _weights(s)
        for k in keys:
            if k in s.token_data:
                data[k][i, :n] = s.token_data[k].float()
    pv, grid = _cat_images(seqs)
    return MicroBatch(ids, tgt, w, None, width, data, pv, grid, list(seq_ids), lens)


def build_micro_batch(seqs: Sequence[TrainSequence], seq_ids: Sequence[int], packed: bool, pad_id: int = 0,
                      pad_to_multiple_of: int = 1) -> MicroBatch:
    """One planned micro-batch: a packed row (token-budget plans) or padded rows, each row's length a
    multiple of ``pad_to_multiple_of`` (megatron's sequence parallel splits the sequence over TP ranks)."""
    if packed:
        return pack(seqs, seq_ids, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)
    return pad_rows(seqs, seq_ids, pad_id=pad_id, pad_to_multiple_of=pad_to_multiple_of)


# ---- planning ---------------------------------------------------------------------------------------

def balance_across_ranks(lengths: Sequence[int], dp: int) -> list[list[int]]:
    """Longest-processing-time greedy: each sequence (longest first) to the rank with the fewest tokens,
    ties to the rank with fewer sequences. Returns per-rank sequence ids, each list in ascending order."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    heap = [(0, 0, r) for r in range(dp)]  # (tokens, count, rank)
    out: list[list[int]] = [[] for _ in range(dp)]
    for i in order:
        tokens, count, r = heapq.heappop(heap)
        out[r].append(i)
        heapq.heappush(heap, (tokens + int(lengths[i]), count + 1, r))
    return [sorted(x) for x in out]


def first_fit_decreasing(ids: Sequence[int], lengths: Sequence[int], max_tokens: int) -> list[list[int]]:
    """Bins of at most ``max_tokens`` (a longer sequence gets a bin of its own)."""
    bins: list[list[int]] = []
    used: list[int] = []
    for i in sorted(ids, key=lambda i: (-lengths[i], i)):
        n = int(lengths[i])
        for b, u in enumerate(used):
            if u + n <= max_tokens:
                bins[b].append(i)
                used[b] += n
                break
        else:
            bins.append([i])
            used.append(n)
    return [sorted(b) for b in bins]


def _split_to(bins: list[list[int]], lengths: Sequence[int], count: int) -> list[list[int]]:
    """Split the largest multi-sequence bins until there are ``count`` bins (empty bins when it cannot)."""
    bins = [list(b) for b in bins]
    while len(bins) < count:
        splittable = [b for b in bins if len(b) > 1]
        if not splittable:
            bins.append([])
            continue
        big = max(splittable, key=lambda b: sum(lengths[i] for i in b))
        bins.remove(big)
        half, acc, total = [], 0, sum(lengths[i] for i in big)
        for i in big:
            if acc + lengths[i] > total / 2 and half:
                break
            half.append(i)
            acc += lengths[i]
        rest = [i for i in big if i not in half]
        bins += [half, rest]
    return bins


def plan_micro_batches(lengths: Sequence[int], dp: int, max_tokens: Optional[int] = None,
                       micro_batch_size: Optional[int] = None, balance: bool = True,
                       min_count: int = 1) -> list[list[list[int]]]:
    """Per DP rank, the sequence ids of each micro-batch; every rank gets the same micro-batch count.

    ``max_tokens``: token budget per micro-batch (dynamic batching); otherwise ``micro_batch_size``
    sequences per micro-batch. ``balance``: LPT over ranks by tokens; otherwise contiguous slices
    (rank r takes the r-th 1/dp of the batch, as a plain DP sampler would). ``min_count``: at least this
    many micro-batches per rank (bins split, then empty ones; the interleaved PP schedule needs pp).
    """
    n = len(lengths)
    if dp < 1:
        raise ValueError(f"dp={dp} must be >= 1")
    if max_tokens is None and not micro_batch_size:
        raise ValueError("plan_micro_batches needs max_tokens or micro_batch_size")
    if balance:
        per_rank = balance_across_ranks(lengths, dp)
    else:
        size = -(-n // dp)
        per_rank = [list(range(r * size, min(n, (r + 1) * size))) for r in range(dp)]
    if max_tokens is not None:
        bins = [first_fit_decreasing(ids, lengths, max_tokens) for ids in per_rank]
    else:
        bins = [[ids[i:i + micro_batch_size] for i in range(0, len(ids), micro_batch_size)] for ids in per_rank]
    count = max(1, min_count, max(len(b) for b in bins))
    return [_split_to(b, lengths, count) for b in bins]


def padding_ratio(plan: list[list[list[int]]], lengths: Sequence[int], packed: bool) -> float:
    """Tokens computed / real tokens of a plan: packed rows compute only real tokens (plus empty-row
    padding); padded rows compute rows x the longest sequence of their micro-batch."""
    real = sum(int(x) for x in lengths) or 1
    computed = 0
    for rank in plan:
        for mb in rank:
            if not mb:
                computed += 1
            elif packed:
                computed += sum(int(lengths[i]) for i in mb)
            else:
                computed += len(mb) * max(int(lengths[i]) for i in mb)
    return computed / real


# ---- model inputs ------------------------------------------------------------------------------------

def block_causal_mask(cu_seqlens: Tensor, total: int, device: torch.device) -> Tensor:
    """(1, 1, T, T) bool, True = masked: causal inside each packed sequence, nothing across them
    (megatron's local attention takes this mask; TE takes cu_seqlens instead)."""
    lens = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
    seg = torch.repeat_interleave(torch.arange(len(lens), device=device), lens.to(device))  # [T]
    causal = torch.ones(total, total, dtype=torch.bool, device=device).triu(1)
    return (causal | (seg[:, None] != seg[None, :]))[None, None]


def packed_seq_params(mb: MicroBatch) -> Any:
    from megatron.core.packed_seq_params import PackedSeqParams

    cu = mb.cu_seqlens.to(mb.input_ids.device)
    return PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=mb.max_seqlen,
                           max_seqlen_kv=mb.max_seqlen)


def model_inputs(mb: MicroBatch, chunk: Any, varlen_attention: bool) -> tuple[Tensor, Optional[Tensor], Any]:
    """(position_ids (3, b, T), attention_mask, packed_seq_params) for ``chunk`` (a Qwen25VLModel).

    Packed rows: M-RoPE positions restart per sequence; attention stays inside each sequence through
    THD ``PackedSeqParams`` when the attention backend takes them (TE, or the SDPA core attention), otherwise
    through a block-diagonal causal mask (megatron's own local attention, ``model.attention_backend=local``). Padded rows: causal + right padding.
    """
    if mb.packed:
        cu = mb.cu_seqlens.to(mb.input_ids.device)
        pos = chunk.position_ids(mb.input_ids, mb.image_grid_thw, None, SimpleNamespace(cu_seqlens_q=cu))
        if varlen_attention:
            return pos, None, packed_seq_params(mb)
        return pos, block_causal_mask(cu, mb.input_ids.shape[1], mb.input_ids.device), None
    pad_mask = torch.zeros_like(mb.input_ids)
    for i, n in enumerate(mb.seq_lens):
        pad_mask[i, :n] = 1
    pos = chunk.position_ids(mb.input_ids, mb.image_grid_thw, pad_mask)
    return pos, pad_mask, None
