"""Epoch data loader: worker processes + prefetch, deterministic under a seed, resumable.

The order of an epoch is a pure function of (seed, epoch) (and of the item lengths when packing), so a
resumed run replays exactly the batches it had not consumed yet: the state is (epoch, batches
consumed in it), counted where the batches are *handed out*, not where workers prefetch them.

    loader = DataLoaderState.build(dataset, cfg, batch_size=8)
    for batch in loader:          # one epoch from the current position
        ...
    ckpt["data"] = loader.state_dict()
"""

from __future__ import annotations

import logging
from typing import Any, Iterator, Optional, Sequence

import numpy as np
import torch

from megatron_mmr1.data.dataset import SampleBatch
from megatron_mmr1.data.packing import collate_packed, plan_packs

logger = logging.getLogger(__name__)


class ResumableBatchSampler(torch.utils.data.Sampler):
    """Index batches of one epoch, optionally packed to ``pack_seq_length`` tokens."""

    def __init__(
        self,
        num_items: int,
        batch_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
        lengths: Optional[Sequence[int]] = None,
        pack_seq_length: Optional[int] = None,
    ):
        if pack_seq_length is not None and lengths is None:
            raise ValueError("packing needs the item lengths")
        self.num_items, self.batch_size, self.shuffle, self.seed = num_items, batch_size, shuffle, seed
        self.drop_last, self.lengths, self.pack_seq_length = drop_last, lengths, pack_seq_length
        self.epoch = 0
        self.start = 0  # batches of this epoch already handed out

    def order(self, epoch: int) -> np.ndarray:
        if not self.shuffle:
            return np.arange(self.num_items)
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_items)

    def batches(self, epoch: int) -> list[list[int]]:
        order = self.order(epoch)
        if self.pack_seq_length is not None:
            return plan_packs(self.lengths, order, self.pack_seq_length)
        bs = self.batch_size
        out = [order[i : i + bs].tolist() for i in range(0, len(order), bs)]
        if self.drop_last and out and len(out[-1]) < bs:
            out.pop()
        return out

    def __iter__(self) -> Iterator[list[int]]:
        yield from self.batches(self.epoch)[self.start :]

    def __len__(self) -> int:
        return len(self.batches(self.epoch)) - self.start


class _Collate:
    """Runs in the worker: SampleBatch (from ``__getitems__``) -> the batch type of the loader."""

    def __init__(self, packed: bool, pad_id: int, pad_to_multiple_of: int):
        self.packed, self.pad_id, self.pad_to_multiple_of = packed, pad_id, pad_to_multiple_of

    def __call__(self, items: list[Any]) -> Any:
        batch = items[0] if len(items) == 1 and isinstance(items[0], SampleBatch) else SampleBatch(list(items))
        if not self.packed:
            return batch
        out = collate_packed(batch.samples, self.pad_id, self.pad_to_multiple_of)
        out.skipped = batch.skipped
        return out


class DataLoaderState:
    """A torch DataLoader per epoch over a resumable batch sampler, with consumed-batch accounting."""

    def __init__(
        self,
        dataset: Any,
        batch_size: int = 1,
        shuffle: bool = True,
        seed: int = 1234,
        num_workers: int = 0,
        prefetch_factor: int = 2,
        drop_last: bool = False,
        pack_seq_length: Optional[int] = None,
        pad_to_multiple_of: int = 1,
    ):
        self.dataset = dataset
        self.sampler = ResumableBatchSampler(
            len(dataset), batch_size, shuffle, seed, drop_last,
            lengths=dataset.lengths if pack_seq_length else None, pack_seq_length=pack_seq_length,
        )
        pad_id = getattr(getattr(dataset, "formatter", None), "endoftext_id", 0) or 0
        self.collate = _Collate(pack_seq_length is not None, pad_id, pad_to_multiple_of)
        proc = getattr(dataset, "image_processor", None)
        if num_workers and getattr(proc, "name", "") == "dali" and getattr(proc, "device", "") == "gpu":
            logger.warning("DALI decodes on the GPU in the main process: data.num_workers=%d -> 0", num_workers)
            num_workers = 0
        self.num_workers, self.prefetch_factor = num_workers, prefetch_factor

    @classmethod
    def build(cls, dataset: Any, cfg: Any, batch_size: int = 1, shuffle: bool = True, **kw) -> "DataLoaderState":
        """From ``DataConfig``: seed, workers, prefetch; SFT data packs to ``seq_length`` when ``packing``."""
        pack = cfg.seq_length if (cfg.kind == "sft" and cfg.packing) else None
        kw.setdefault("pack_seq_length", pack)
        return cls(dataset, batch_size, shuffle, cfg.seed, cfg.num_workers, cfg.prefetch_factor, **kw)

    @property
    def epoch(self) -> int:
        return self.sampler.epoch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[Any]:
        """The rest of the current epoch; afterwards the state points at the next epoch."""
        kw: dict[str, Any] = dict(batch_sampler=self.sampler, collate_fn=self.collate, num_workers=self.num_workers)
        if self.num_workers > 0:
            kw["prefetch_factor"] = self.prefetch_factor
        it = iter(torch.utils.data.DataLoader(self.dataset, **kw))
        try:
            for batch in it:
                self.sampler.start += 1
                if batch.skipped:
                    self.dataset.bad.merge(batch.skipped)
                yield batch
        finally:  # a loop left early: stop the workers now, not whenever the iterator is collected
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
        self.sampler.epoch += 1
        self.sampler.start = 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches_consumed": self.sampler.start, "seed": self.sampler.seed,
                "num_items": self.sampler.num_items}

    def load_state_dict(self, state: dict[str, int]) -> None:
        if state.get("num_items", self.sampler.num_items) != self.sampler.num_items:
            raise ValueError(f"data loader state is for {state['num_items']} items, the dataset has "
                             f"{self.sampler.num_items}: the data files or on_bad_record changed")
        self.sampler.seed = state["seed"]
        self.sampler.epoch = state["epoch"]
        self.sampler.start = state["batches_consumed"]
