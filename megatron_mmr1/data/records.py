"""Readers and writers for MMR1's two record kinds, in JSONL and Parquet.

RL records (like MMR1-RL): ``problem`` (text with ``<image>`` placeholders or none), ``answer``,
``images`` (paths relative to the data file in JSONL; bytes, ``{"bytes","path"}`` structs or paths in
Parquet). SFT records (like MMR1-SFT): ``messages`` (system/user/assistant turns, string contents with
``<image>`` placeholders or content-part lists) and ``images``. Field names come from ``DataConfig``.

Every record carries its :class:`RecordSource` (file and line/row), so that any later failure -- in a
worker process, in the image decoder, in the tokenizer -- is reported against the record that caused
it. :class:`BadRecords` applies ``data.on_bad_record``: raise, or skip + count + log.
"""

from __future__ import annotations

import collections.abc
import functools
import json
import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal, Optional

logger = logging.getLogger(__name__)

Kind = Literal["rl", "sft"]


@dataclass(frozen=True)
class RecordSource:
    file: str
    line: int
    """1-based line of a JSONL file, 0-based row of a Parquet file."""
    is_row: bool = False

    def __str__(self) -> str:
        return f"{self.file} row {self.line}" if self.is_row else f"{self.file}:{self.line}"


class BadRecordError(ValueError):
    """One bad record; the message starts with its file and line/row."""

    def __init__(self, source: Any, reason: Optional[str] = None, kind: str = "invalid"):
        # One-argument form: torch's DataLoader re-raises worker errors as ``type(err)(message)``.
        super().__init__(str(source) if reason is None else f"{source}: {reason}")
        self.source, self.reason, self.kind = str(source), reason or "", kind

    def __reduce__(self):  # survives the trip back from a DataLoader worker
        return (BadRecordError, (self.source, self.reason or None, self.kind))


class BadRecords:
    """``data.on_bad_record``: error raises the first bad record; skip counts, logs and goes on."""

    def __init__(self, policy: str = "error", log: Optional[logging.Logger] = None):
        if policy not in ("error", "skip"):
            raise ValueError(f"data.on_bad_record={policy!r} is not one of error, skip")
        self.policy = policy
        self.counts: Counter = Counter()
        self.examples: list[str] = []
        self._log = log or logger

    def handle(self, err: BadRecordError) -> None:
        if self.policy == "error":
            raise err
        self.counts[err.kind] += 1
        if len(self.examples) < 100:
            self.examples.append(str(err))
        self._log.warning("skipping bad record (%s): %s", err.kind, err)

    def merge(self, errors: Iterable[BadRecordError]) -> None:
        """Count errors that were caught in worker processes."""
        for e in errors:
            self.handle(e)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> dict[str, int]:
        return dict(self.counts)


@dataclass
class Record:
    """One parsed record: its fields (keys already mapped) and images resolved to paths or bytes
    (a lazy :class:`ParquetImages` sequence for Parquet files)."""

    source: RecordSource
    text: Any
    """RL: the problem string; SFT: the list of messages."""
    answer: str = ""
    images: Any = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    """Other fields of the record (kept as metadata)."""


# --------------------------------------------------------------------------------------------------
# Raw rows
# --------------------------------------------------------------------------------------------------


def _iter_jsonl(path: str) -> Iterator[tuple[RecordSource, Any]]:
    """(source, dict) per non-empty line; a malformed line yields a BadRecordError instead."""
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            src = RecordSource(path, lineno)
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                yield src, BadRecordError(src, f"malformed JSON ({e.msg} at column {e.colno})", "json")
                continue
            if not isinstance(row, dict):
                yield src, BadRecordError(src, f"expected a JSON object, got {type(row).__name__}", "json")
                continue
            yield src, row


def _iter_parquet(path: str, lazy_key: Optional[str] = None) -> Iterator[tuple[RecordSource, Any]]:
    """(source, dict) per row, one row group at a time. With ``lazy_key``, that column (the images)
    is not kept: the row gets a :class:`ParquetImages` that reads it back from its row group when used."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(path)
    except Exception as e:
        raise BadRecordError(path, f"not a readable Parquet file ({e})", "file") from None
    names = pf.schema_arrow.names
    lazy = lazy_key if lazy_key in names else None
    others = [n for n in names if n != lazy]
    row = 0
    for g in range(pf.num_row_groups):
        table = pf.read_row_group(g, columns=others)
        counts = None
        if lazy is not None:  # only the image counts of this group stay in memory
            col = pf.read_row_group(g, columns=[lazy]).column(0)
            if hasattr(col.type, "value_type"):  # list of images
                counts = pc.fill_null(pc.list_value_length(col), 0).to_pylist()
            else:  # one image per row
                counts = [0 if null else 1 for null in col.is_null().to_pylist()]
            del col
        for offset, rec in enumerate(table.to_pylist()):
            src = RecordSource(path, row, is_row=True)
            if lazy is not None:
                rec[lazy] = ParquetImages(src, lazy, g, offset, counts[offset]) if counts[offset] else None
            yield src, rec
            row += 1


@functools.lru_cache(maxsize=2)
def _row_group_column(path: str, group: int, key: str) -> list:
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).read_row_group(group, columns=[key]).column(0).to_pylist()


class ParquetImages(collections.abc.Sequence):
    """The images of one Parquet row, read from their row group on first use (two groups cached per
    process), so a dataset of embedded images is never held in memory as a whole."""

    def __init__(self, source: RecordSource, key: str, group: int, offset: int, n: int):
        self.source, self.key, self.group, self.offset, self.n = source, key, group, offset, n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, k):
        if isinstance(k, slice):
            return [self[i] for i in range(*k.indices(self.n))]
        if not -self.n <= k < self.n:
            raise IndexError(k)
        value = _row_group_column(self.source.file, self.group, self.key)[self.offset]
        items = value if isinstance(value, list) else [value]
        return _resolve_image(items[k], Path(self.source.file).resolve().parent, self.source)

    def __repr__(self) -> str:
        return f"ParquetImages({self.source}, {self.n} images)"


def iter_rows(path: str | os.PathLike, lazy_images: Optional[str] = None) -> Iterator[tuple[RecordSource, Any]]:
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    if path.endswith(".parquet"):
        return _iter_parquet(path, lazy_images)
    if path.endswith((".jsonl", ".json")):
        return _iter_jsonl(path)
    raise ValueError(f"data file {path}: unknown format (expected .jsonl or .parquet)")


# --------------------------------------------------------------------------------------------------
# Field checks
# --------------------------------------------------------------------------------------------------


def _resolve_image(item: Any, base: Path, src: RecordSource) -> Any:
    if isinstance(item, str):
        return item if os.path.isabs(item) else str(base / item)
    if isinstance(item, (bytes, bytearray)):
        return bytes(item)
    if isinstance(item, dict) and (item.get("bytes") or item.get("path")):
        if item.get("bytes"):
            return bytes(item["bytes"])
        return _resolve_image(item["path"], base, src)
    raise BadRecordError(src, f"image entry of type {type(item).__name__} is not a path, bytes or "
                              "{bytes, path} struct", "field")


def _images(row: dict, key: str, src: RecordSource) -> Any:
    value = row.get(key)
    if value is None:
        return []
    if isinstance(value, ParquetImages):
        return value
    if isinstance(value, (str, bytes, dict)):
        value = [value]
    if not isinstance(value, list):
        raise BadRecordError(src, f"field '{key}' must be a list of images, got {type(value).__name__}", "field")
    base = Path(src.file).resolve().parent
    return [_resolve_image(v, base, src) for v in value]


def _require(row: dict, key: str, src: RecordSource, what: str) -> Any:
    if key not in row or row[key] is None:
        present = ", ".join(sorted(map(str, row))) or "none"
        raise BadRecordError(src, f"missing field '{key}' ({what}); fields present: {present}", "field")
    return row[key]


def _check_messages(messages: Any, src: RecordSource) -> list[dict]:
    if not isinstance(messages, list) or not messages:
        raise BadRecordError(src, "messages must be a non-empty list of {role, content}", "field")
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise BadRecordError(src, f"message {i} is not a {{role, content}} object", "field")
        if m["role"] not in ("system", "user", "assistant"):
            raise BadRecordError(src, f"message {i} has role {m['role']!r}", "field")
        out.append({"role": m["role"], "content": m["content"]})
    return out


def parse_row(row: dict, src: RecordSource, kind: Kind, cfg: Any) -> Record:
    """Raw dict -> Record, or BadRecordError naming the field."""
    images = _images(row, cfg.image_key, src)
    if kind == "rl":
        problem = _require(row, cfg.prompt_key, src, "data.prompt_key")
        answer = _require(row, cfg.answer_key, src, "data.answer_key")
        if not isinstance(problem, str):
            raise BadRecordError(src, f"field '{cfg.prompt_key}' must be text, got {type(problem).__name__}", "field")
        if isinstance(answer, bool) or not isinstance(answer, (str, int, float)):
            raise BadRecordError(src, f"field '{cfg.answer_key}' must be text or a number", "field")
        used = {cfg.prompt_key, cfg.answer_key, cfg.image_key}
        extra = {k: v for k, v in row.items() if k not in used and not isinstance(v, (bytes, bytearray))}
        return Record(src, problem, str(answer), images, extra)
    messages = _check_messages(_require(row, cfg.messages_key, src, "data.messages_key"), src)
    used = {cfg.messages_key, cfg.image_key}
    extra = {k: v for k, v in row.items() if k not in used and not isinstance(v, (bytes, bytearray))}
    return Record(src, messages, str(row.get(cfg.answer_key, "") or ""), images, extra)


def read_records(files: Iterable[str], kind: Kind, cfg: Any, bad: Optional[BadRecords] = None) -> list[Record]:
    """All good records of ``files`` in order; bad ones go through ``bad`` (raise or skip+count)."""
    bad = bad or BadRecords(cfg.on_bad_record)
    out: list[Record] = []
    files = list(files)
    if not files:
        raise ValueError(f"no data files given (data.train_files is empty) for {kind} records")
    for path in files:
        for src, row in iter_rows(path, lazy_images=cfg.image_key):
            try:
                if isinstance(row, BadRecordError):
                    raise row
                out.append(parse_row(row, src, kind, cfg))
            except BadRecordError as e:
                bad.handle(e)
    return out


# --------------------------------------------------------------------------------------------------
# Writers (synthetic data, JSONL <-> Parquet conversion)
# --------------------------------------------------------------------------------------------------


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def jsonl_to_parquet(src: str | os.PathLike, dst: str | os.PathLike, image_key: str = "images") -> int:
    """Embed images as ``list<struct<bytes, path>>`` (the Hugging Face datasets Image layout)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    base = Path(src).resolve().parent
    rows = []
    for s, row in _iter_jsonl(str(src)):
        if isinstance(row, BadRecordError):
            raise row
        imgs = row.get(image_key) or []
        if isinstance(imgs, str):
            imgs = [imgs]
        embedded = []
        for p in imgs:
            full = p if os.path.isabs(p) else base / p
            embedded.append({"bytes": Path(full).read_bytes(), "path": str(p)})
        row = dict(row)
        row[image_key] = embedded
        rows.append(row)
    table = pa.Table.from_pylist(rows)
    Path(dst).parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, str(dst))
    return len(rows)


def parquet_to_jsonl(src: str | os.PathLike, dst: str | os.PathLike, image_key: str = "images") -> int:
    """Write embedded image bytes next to ``dst`` (under their stored relative paths) and the rows as JSONL."""
    dst = Path(dst)
    out_rows = []
    for s, row in _iter_parquet(str(src)):
        paths = []
        for j, item in enumerate(row.get(image_key) or []):
            if isinstance(item, dict) and item.get("bytes"):
                rel = item.get("path") or f"images/{s.line}_{j}.bin"
                if os.path.isabs(rel) or ".." in Path(rel).parts:
                    rel = f"images/{s.line}_{j}{Path(rel).suffix}"
                (dst.parent / rel).parent.mkdir(parents=True, exist_ok=True)
                (dst.parent / rel).write_bytes(item["bytes"])
                paths.append(rel)
            elif isinstance(item, dict):
                paths.append(item.get("path"))
            else:
                paths.append(item)
        row = dict(row)
        row[image_key] = paths
        out_rows.append(row)
    return write_jsonl(dst, out_rows)
