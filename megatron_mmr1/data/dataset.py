"""Random-access RL and SFT datasets over MMR1 records.

``RLDataset[i] -> Sample`` (prompt text, prompt ids with expanded image pads, answer, raw images,
pixel_values, image_grid_thw, metadata with the source file/line). The GRPO trainer picks indices with
the VAS sampler and calls :meth:`RLDataset.get_batch`; the epoch loader in
:mod:`megatron_mmr1.data.loader` serves the same datasets through worker processes.

Cheap checks run once at construction (fields, image headers: readable, pixel limit, aspect ratio;
prompt length with the image-token counts the headers imply), so that with ``on_bad_record=skip``
most bad records never get an index. A truncated image body shows only on decoding: then
``get_batch`` skips the record and reports it (``SampleBatch.skipped``), and ``dataset[i]`` raises.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch

from megatron_mmr1.data.chat import ChatFormatter, PromptError
from megatron_mmr1.data.records import BadRecordError, BadRecords, Record, read_records
from megatron_mmr1.data.sample import Sample
from megatron_mmr1.data.vision import (
    ImageError,
    ImageProcessor,
    ProcessedImages,
    VisionSpec,
    build_image_processor,
    describe,
    header_size,
)

logger = logging.getLogger(__name__)


@dataclass
class SampleBatch:
    """What a batch fetch returns: the good samples plus the records skipped on the way."""

    samples: list[Any]
    skipped: list[BadRecordError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)


@dataclass
class SFTExample:
    """One tokenised SFT conversation (labels aligned with input_ids; -100 outside assistant turns)."""

    index: int
    input_ids: list[int]
    labels: list[int]
    pixel_values: Optional[torch.Tensor]
    image_grid_thw: Optional[torch.Tensor]
    metadata: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)


def _image_token_counts(rec: Record, spec: VisionSpec) -> list[int]:
    """Image-token counts from the headers only (no decoding); raises ImageError."""
    return [spec.num_image_tokens(*header_size(src, spec)) for src in rec.images]


class _RecordDataset(torch.utils.data.Dataset):
    """Shared parts: reading, up-front validation, image processing with record-named errors."""

    kind = "rl"

    def __init__(
        self,
        cfg: Any,
        tokenizer: Any,
        files: Optional[Sequence[str]] = None,
        image_processor: Optional[ImageProcessor] = None,
        formatter: Optional[ChatFormatter] = None,
        bad: Optional[BadRecords] = None,
        scan_workers: Optional[int] = None,
    ):
        """``scan_workers``: processes for the up-front checks of large datasets (default data.num_workers)."""
        self.cfg = cfg
        self.tokenizer = tokenizer
        # data.image_decoder picks the decoder (Pillow, or DALI batched over get_batch) unless one is given
        self.image_processor = image_processor or build_image_processor(cfg)
        self.spec = self.image_processor.spec
        self.formatter = formatter or ChatFormatter.from_config(tokenizer, cfg, merge_size=self.spec.merge_size)
        self.bad = bad or BadRecords(cfg.on_bad_record)
        files = list(files if files is not None else cfg.train_files)
        records = read_records(files, self.kind, cfg, self.bad)
        self.records: list[Record] = []
        self._lengths: list[int] = []
        self._image_tokens: list[list[int]] = []
        self._prompts: list[str] = []
        workers = cfg.num_workers if scan_workers is None else scan_workers
        for rec, res in zip(records, _scan(self, records, workers)):
            if isinstance(res, BadRecordError):
                self.bad.handle(res)
                continue
            self.records.append(rec)
            self._lengths.append(res[0])
            self._image_tokens.append(res[1])
            self._prompts.append(res[2])
        if self.bad.total:
            logger.warning("%s dataset: skipped %d bad records %s", self.kind, self.bad.total, self.bad.summary())
        if not self.records:
            raise ValueError(f"no usable {self.kind} records in {files} (skipped: {self.bad.summary()})")

    def _prepare(self, rec: Record) -> tuple[int, list[int], str]:
        """(token count, image-token counts, prompt text) or BadRecordError; no pixel decoding."""
        raise NotImplementedError

    def _counts(self, rec: Record) -> list[int]:
        try:
            return _image_token_counts(rec, self.spec)
        except ImageError as e:
            raise BadRecordError(rec.source, str(e), "image") from None

    def __len__(self) -> int:
        return len(self.records)

    @property
    def lengths(self) -> np.ndarray:
        """Token count of each item (image tokens included), known without decoding images."""
        return np.asarray(self._lengths, dtype=np.int64)

    def _check_length(self, index: int, n: int) -> None:
        if n != self._lengths[index]:  # the tokenizer changed under us, or a bug
            raise RuntimeError(f"{self.records[index].source}: {n} tokens now, {self._lengths[index]} at construction")

    def process_images(self, i: int, out: Optional[ProcessedImages] = None) -> ProcessedImages:
        """Images of item ``i`` (or check ``out``, processed in a batch) against the header token counts."""
        rec = self.records[i]
        if out is None:
            try:
                out = self.image_processor(rec.images)
            except ImageError as e:
                raise BadRecordError(rec.source, str(e), "image") from None
        got = out.num_image_tokens(self.spec.merge_size)
        if got != self._image_tokens[i]:  # header size disagreed with the decoded image
            raise BadRecordError(rec.source, f"decoded images give {got} image tokens, headers said "
                                             f"{self._image_tokens[i]} ({[describe(s) for s in rec.images]})",
                                 "image")
        return out

    def metadata(self, i: int) -> dict[str, Any]:
        src = self.records[i].source
        return {"source_file": src.file, "source_line": src.line, "source": str(src), **self.records[i].extra}

    def _build(self, index: int, proc: ProcessedImages) -> Any:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Any:
        return self._build(index, self.process_images(index))

    def _fetch(self, indices: Sequence[int]) -> SampleBatch:
        indices = [int(i) for i in indices]
        pre: list[Optional[ProcessedImages]] = [None] * len(indices)
        if hasattr(self.image_processor, "process_many"):  # DALI: all images of the batch in one go
            try:
                pre = list(self.image_processor.process_many([self.records[i].images for i in indices]))
            except ImageError:  # redo one by one below, so that the bad record gets named
                pass
        out, skipped = [], []
        for i, proc in zip(indices, pre):
            try:
                out.append(self._build(i, self.process_images(i, proc)))
            except BadRecordError as e:
                if self.bad.policy == "error":
                    raise
                skipped.append(e)
        return SampleBatch(out, skipped)

    def get_batch(self, indices: Sequence[int]) -> SampleBatch:
        """Items for ``indices`` in order (the GRPO trainer's call, with indices from the VAS sampler).

        With on_bad_record=skip, records failing to decode are left out, returned in ``skipped`` and
        counted in ``self.bad``; with error, the first one raises."""
        batch = self._fetch(indices)
        self.bad.merge(batch.skipped)
        return batch

    def __getitems__(self, indices: Sequence[int]) -> list[SampleBatch]:
        """torch's map-style fetcher calls this with a whole batch (auto-collation): skipping happens in
        the worker, with the record's name, and the main process counts it (see loader.py)."""
        return [self._fetch(indices)]


class RLDataset(_RecordDataset):
    """RL prompts: problem + answer + images -> :class:`Sample`."""

    kind = "rl"

    def _prepare(self, rec: Record):
        counts = self._counts(rec)
        try:
            prompt = self.formatter.rl_prompt(rec.text, len(rec.images))
            ids = self.formatter.encode_prompt(prompt, counts)
        except PromptError as e:
            raise BadRecordError(rec.source, str(e), "prompt") from None
        if len(ids) > self.cfg.max_prompt_length:
            raise BadRecordError(rec.source, f"prompt has {len(ids)} tokens ({sum(counts)} image tokens), over "
                                             f"data.max_prompt_length={self.cfg.max_prompt_length}", "too_long")
        return len(ids), counts, prompt

    def _build(self, index: int, proc: ProcessedImages) -> Sample:
        rec = self.records[index]
        ids = self.formatter.encode_prompt(self._prompts[index], self._image_tokens[index])
        self._check_length(index, len(ids))
        return Sample(
            index=index,
            prompt=self._prompts[index],
            prompt_ids=ids,
            answer=rec.answer,
            images=list(rec.images),
            pixel_values=proc.pixel_values if rec.images else None,
            image_grid_thw=proc.image_grid_thw if rec.images else None,
            metadata=self.metadata(index),
        )


class SFTDataset(_RecordDataset):
    """SFT conversations -> :class:`SFTExample` (labels masked to assistant turns)."""

    kind = "sft"

    def _prepare(self, rec: Record):
        n_placeholders = _count_placeholders(rec.text)
        if n_placeholders != len(rec.images):
            raise BadRecordError(rec.source, f"messages have {n_placeholders} <image> placeholders but "
                                             f"{len(rec.images)} images", "prompt")
        counts = self._counts(rec)
        try:
            ids, labels = self.formatter.encode_sft(self.formatter.sft_messages(rec.text), counts)
        except PromptError as e:
            raise BadRecordError(rec.source, str(e), "prompt") from None
        if len(ids) > self.cfg.seq_length:
            raise BadRecordError(rec.source, f"conversation has {len(ids)} tokens ({sum(counts)} image tokens), "
                                             f"over data.seq_length={self.cfg.seq_length}", "too_long")
        return len(ids), counts, ""

    def _build(self, index: int, proc: ProcessedImages) -> SFTExample:
        rec = self.records[index]
        ids, labels = self.formatter.encode_sft(self.formatter.sft_messages(rec.text), self._image_tokens[index])
        self._check_length(index, len(ids))
        return SFTExample(
            index=index,
            input_ids=ids,
            labels=labels,
            pixel_values=proc.pixel_values if rec.images else None,
            image_grid_thw=proc.image_grid_thw if rec.images else None,
            metadata=self.metadata(index),
        )


_SCAN: Optional[tuple] = None  # (dataset, records) inherited by forked scan workers
SCAN_CHUNK = 512


def _scan_range(bounds: tuple[int, int]) -> list:
    ds, records = _SCAN
    out = []
    for rec in records[bounds[0] : bounds[1]]:
        try:
            out.append(ds._prepare(rec))
        except BadRecordError as e:
            out.append(e)
    return out


def _scan(ds: "_RecordDataset", records: list[Record], workers: int) -> list:
    """Run ``_prepare`` over all records, in forked processes when there are many (results in order).

    MMR1-SFT has ~1.6M long conversations: one process checks ~100-300 records/s, so big datasets
    are split over ``workers`` processes (fork: the records and the tokenizer are inherited, only
    small results travel back).
    """
    global _SCAN
    from tqdm import tqdm

    chunks = [(i, min(i + SCAN_CHUNK, len(records))) for i in range(0, len(records), SCAN_CHUNK)]
    progress = dict(total=len(chunks), desc=f"checking {ds.kind} records", unit="chunk",
                    disable=len(chunks) < 8, leave=False)
    _SCAN = (ds, records)
    try:
        if workers > 1 and len(chunks) > 1:
            import multiprocessing as mp
            import os

            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            with mp.get_context("fork").Pool(min(workers, len(chunks))) as pool:
                parts = list(tqdm(pool.imap(_scan_range, chunks), **progress))
        else:
            parts = [_scan_range(c) for c in tqdm(chunks, **progress)]
    finally:
        _SCAN = None
    return [r for part in parts for r in part]


def _count_placeholders(messages: list[dict]) -> int:
    from megatron_mmr1.data.chat import count_images

    return count_images(messages)


def build_dataset(cfg: Any, tokenizer: Any, files: Optional[Sequence[str]] = None, **kw) -> _RecordDataset:
    """``data.kind`` picks RLDataset or SFTDataset."""
    return (RLDataset if cfg.kind == "rl" else SFTDataset)(cfg, tokenizer, files, **kw)
