"""Sequence packing for SFT micro-batches: several conversations in one row, boundaries in cu_seqlens.

Packing removes padding (long-CoT traces vary from hundreds to thousands of tokens); attention stays
within each conversation through ``cu_seqlens`` (megatron ``PackedSeqParams`` / flash-attn varlen),
and the loss is computed per conversation from :meth:`PackedBatch.next_token_labels`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch

from megatron_mmr1.data.chat import IGNORE_INDEX


def plan_packs(lengths: Sequence[int], order: Sequence[int], seq_length: int) -> list[list[int]]:
    """Greedy packing in ``order`` (already shuffled): a pack closes when the next item does not fit.

    Order-preserving rather than best-fit, so that a resumed loader replays the same packs from the
    same (seed, epoch) and every item is seen once per epoch.
    """
    packs: list[list[int]] = []
    cur: list[int] = []
    used = 0
    for i in order:
        n = int(lengths[i])
        if n > seq_length:
            raise ValueError(f"item {i} has {n} tokens, more than seq_length={seq_length}")
        if cur and used + n > seq_length:
            packs.append(cur)
            cur, used = [], 0
        cur.append(int(i))
        used += n
    if cur:
        packs.append(cur)
    return packs


@dataclass
class PackedBatch:
    """One packed row: tokens of several conversations back to back."""

    input_ids: torch.Tensor
    """[T] int64."""
    labels: torch.Tensor
    """[T] int64 aligned with input_ids (HF convention); -100 where no loss."""
    cu_seqlens: torch.Tensor
    """[num_seqs + 1] int32 cumulative boundaries (a trailing padding segment, if any, is the last)."""
    max_seqlen: int
    pixel_values: Optional[torch.Tensor] = None
    """[num_patches, 1176] for all images of the pack, in order."""
    image_grid_thw: Optional[torch.Tensor] = None
    """[num_images, 3]."""
    indices: list[int] = field(default_factory=list)
    """Dataset indices of the packed conversations."""
    metadata: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[Any] = field(default_factory=list)
    """BadRecordErrors of items left out of this pack (on_bad_record=skip)."""

    @property
    def num_seqs(self) -> int:
        return len(self.indices)

    def next_token_labels(self) -> torch.Tensor:
        """Megatron convention: target[t] = labels[t + 1] inside a conversation, -100 at its last token."""
        out = torch.full_like(self.labels, IGNORE_INDEX)
        out[:-1] = self.labels[1:]
        ends = self.cu_seqlens[1:].long() - 1
        out[ends[ends >= 0]] = IGNORE_INDEX
        return out

    def position_ids(self) -> torch.Tensor:
        """1-D positions restarting at each conversation (text-only models; M-RoPE is the model's)."""
        lens = (self.cu_seqlens[1:] - self.cu_seqlens[:-1]).long()
        starts = torch.repeat_interleave(self.cu_seqlens[:-1].long(), lens)
        return torch.arange(len(self.input_ids)) - starts


def collate_packed(examples: Sequence[Any], pad_id: int = 0, pad_to_multiple_of: int = 1) -> PackedBatch:
    """Concatenate SFTExamples; optional padding to a multiple (TP sequence parallel needs one)."""
    ids = [torch.as_tensor(e.input_ids, dtype=torch.long) for e in examples]
    labels = [torch.as_tensor(e.labels, dtype=torch.long) for e in examples]
    lens = [len(x) for x in ids]
    total = sum(lens)
    pad = (-total) % pad_to_multiple_of
    if pad:
        ids.append(torch.full((pad,), pad_id, dtype=torch.long))
        labels.append(torch.full((pad,), IGNORE_INDEX, dtype=torch.long))
        lens.append(pad)
    cu = torch.zeros(len(lens) + 1, dtype=torch.int32)
    cu[1:] = torch.cumsum(torch.as_tensor(lens), 0)
    pv = [e.pixel_values for e in examples if e.pixel_values is not None]
    grid = [e.image_grid_thw for e in examples if e.image_grid_thw is not None]
    return PackedBatch(
        input_ids=torch.cat(ids) if ids else torch.zeros(0, dtype=torch.long),
        labels=torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long),
        cu_seqlens=cu,
        max_seqlen=max(lens, default=0),
        pixel_values=torch.cat(pv) if pv else None,
        image_grid_thw=torch.cat(grid) if grid else None,
        indices=[e.index for e in examples],
        metadata=[e.metadata for e in examples],
    )


def pack_samples(samples: Sequence[Any], pad_id: int = 0, pad_to_multiple_of: int = 1) -> PackedBatch:
    """GRPO micro-batch: each Sample's prompt_ids + response_ids back to back.

    ``labels`` hold the response tokens whose ``loss_mask`` is 1 (all response tokens when the mask is
    empty) and -100 elsewhere; ``next_token_labels()`` gives the shifted targets. Images follow the
    sample order, so ``image_grid_thw`` lines up with the ``<|image_pad|>`` runs in ``input_ids``.
    """
    from types import SimpleNamespace

    rows = []
    for s in samples:
        mask = s.loss_mask or [1] * len(s.response_ids)
        if len(mask) != len(s.response_ids):
            raise ValueError(f"sample {s.index}: loss_mask has {len(mask)} entries for {len(s.response_ids)} tokens")
        labels = [IGNORE_INDEX] * len(s.prompt_ids) + [t if m else IGNORE_INDEX for t, m in zip(s.response_ids, mask)]
        rows.append(SimpleNamespace(index=s.index, input_ids=s.prompt_ids + s.response_ids, labels=labels,
                                    pixel_values=s.pixel_values, image_grid_thw=s.image_grid_thw,
                                    metadata=dict(s.metadata, group_index=s.group_index)))
    return collate_packed(rows, pad_id, pad_to_multiple_of)
