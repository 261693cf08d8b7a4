"""Benchmark files -> :class:`EvalItem` lists, in the layouts the benchmarks publish.

Layouts are told apart by their field names (``--layout`` forces one):

| layout | fields used | categories |
|---|---|---|
| mathvista | question, choices, answer, question_type, answer_type, precision, (decoded_)image, metadata.task | question_type, task |
| mathverse | question, answer, question_type, problem_version, image, metadata.subject | version, subject |
| mathvision | question, options, answer, (decoded_)image, level, subject | subject, level |
| logicvista | question, answer, skill, imagename/image, broad_capability | skill, capability |
| chartqa | query, label, image/imgname, human_or_machine | source |
| rl | data.prompt_key, data.answer_key, data.image_key (the project's RL records) | task, difficulty, category, subject, level |

Files: JSONL, Parquet (images as bytes, ``{"bytes","path"}`` structs or paths), or one JSON document
(a list of records, or an object of id -> record, as the benchmarks' GitHub releases ship). Rows go
through :func:`megatron_mmr1.data.records.parse_row`, so images resolve exactly as for training data and
a bad record is named by file and line/row (raised, or skipped + counted with ``on_bad_record=skip``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from megatron_mmr1.config import DataConfig
from megatron_mmr1.data.records import BadRecordError, BadRecords, Record, RecordSource, iter_rows, parse_row
from megatron_mmr1.rewards import choice_letter

logger = logging.getLogger(__name__)

LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_IMAGE_REF_RE = re.compile(r"<image\d+>")
# Options written into a question: "A: 40°" / "A. 40" / "(A) 40" / "A) 40" at line starts.
_INLINE_OPTION_RE = re.compile(r"^\s*\(?([A-J])\s*[:.)]\s*(.+?)\s*$", re.MULTILINE)
VISION_ONLY_PROMPT = "Answer the question shown in the image."


class LayoutError(ValueError):
    """A file whose fields match no known benchmark layout (one line naming the missing fields)."""


@dataclass
class EvalItem:
    """One benchmark question, ready for the MMR1 prompt and the scorer."""

    id: str
    question: str
    """Problem text (``<image>`` placeholders or none) with the options appended when the record lists them."""
    answer: str
    """Reference answer: a letter (or letters) for multiple choice, else the answer text."""
    images: Sequence[Any] = field(default_factory=list)
    kind: str = "free"
    """How it is scored: choice | integer | float | relaxed | free (see scoring.py)."""
    options: list[str] = field(default_factory=list)
    """Option texts in letter order (A, B, ...); empty when the options are not known as text."""
    precision: Optional[int] = None
    """Decimal places of a float answer (MathVista)."""
    categories: dict[str, str] = field(default_factory=dict)
    source: str = ""
    """file:line or file row N."""


@dataclass
class Benchmark:
    name: str
    layout: str
    files: list[str]
    items: list[EvalItem]
    skipped: int = 0
    """Records left out (on_bad_record=skip), counted and logged."""


# --------------------------------------------------------------------------------------------------
# Field helpers
# --------------------------------------------------------------------------------------------------


def format_options(options: Sequence[str]) -> str:
    """The options block appended to a question: "Choices:\\n(A) x\\n(B) y"."""
    return "Choices:\n" + "\n".join(f"({LETTERS[i]}) {o}" for i, o in enumerate(options))


def inline_options(text: str) -> list[str]:
    """Option texts written into a question ("A: 40°" lines), when they run A, B, C, ... in order."""
    found = _INLINE_OPTION_RE.findall(text)
    out: list[str] = []
    for letter, body in found:
        if letter == LETTERS[len(out)]:
            out.append(body)
        elif letter == "A":  # a new list starts: keep the last one
            out = [body]
    return out if len(out) >= 2 else []


def gold_letters(answer: str) -> Optional[str]:
    """"B", "(B)", "A, C", "AC" -> the letters ("B", "AC"); None when the answer is not letters."""
    s = answer.strip()
    one = choice_letter(s) if len(s) <= 3 else None
    if one is not None:
        return one
    parts = [p for p in re.split(r"[\s,;/&]+|\band\b", s) if p]
    if parts and all(re.fullmatch(r"\(?[A-J]\)?", p) for p in parts):
        return "".join(sorted({p.strip("()") for p in parts}))
    return None


def _text(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value).strip()


def _options(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):  # some copies store the list as a JSON string
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            return []
    return [_text(v) for v in value] if isinstance(value, (list, tuple)) else []


def _meta(row: dict) -> dict:
    m = row.get("metadata")
    return m if isinstance(m, dict) else {}


def _choice_item(rec: Record, options: list[str], question: str, src: RecordSource) -> tuple[str, str, list[str]]:
    """(question with options, gold letter(s), options) of a multiple-choice record; the gold may be
    given as a letter or as one of the option texts (MathVista)."""
    gold = gold_letters(rec.answer)
    if gold is None and options:
        norm = [o.strip().lower() for o in options]
        if rec.answer.strip().lower() in norm:
            gold = LETTERS[norm.index(rec.answer.strip().lower())]
    if gold is None:
        raise BadRecordError(src, f"multiple-choice answer {rec.answer!r} is neither a letter nor one of the options "
                                  f"{options}", "field")
    if options and max(LETTERS.index(g) for g in gold) >= len(options):
        raise BadRecordError(src, f"answer {gold} but only {len(options)} options", "field")
    return question, gold, options


def _item_id(row: dict, keys: Sequence[str], src: RecordSource) -> str:
    for k in keys:
        if row.get(k) not in (None, ""):
            return _text(row[k])
    return str(src)


# --------------------------------------------------------------------------------------------------
# Layouts
# --------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    name: str
    required: tuple[str, ...]
    prompt_key: str
    answer_key: str
    image_keys: tuple[str, ...]
    """Candidate image fields, first present wins (embedded bytes before paths)."""
    build: Callable[[Record, dict], EvalItem]
    image_dirs: tuple[str, ...] = ()
    """Sub-directories (next to the file) where bare image names live in the GitHub releases."""


def _mathvista(rec: Record, row: dict) -> EvalItem:
    src, meta = rec.source, _meta(row)
    qtype = _text(row.get("question_type"))
    cats = {"question_type": qtype, "task": _text(meta.get("task"))}
    item = EvalItem(_item_id(row, ("pid", "id"), src), rec.text, rec.answer, rec.images, categories=cats)
    if qtype == "multi_choice":
        options = _options(row.get("choices"))
        q, item.answer, item.options = _choice_item(rec, options, rec.text, src)
        item.question, item.kind = f"{q}\n{format_options(options)}" if options else q, "choice"
        return item
    atype = _text(row.get("answer_type"))
    precision = row.get("precision")
    if atype == "integer":
        item.kind = "integer"
    elif atype == "float":
        item.kind = "float"
        item.precision = int(precision) if isinstance(precision, (int, float)) and not math.isnan(precision) else 2
    return item


def _mathverse(rec: Record, row: dict) -> EvalItem:
    src, meta = rec.source, _meta(row)
    question = rec.text if rec.text.strip() else VISION_ONLY_PROMPT
    cats = {"version": _text(row.get("problem_version")), "subject": _text(meta.get("subject"))}
    item = EvalItem(_item_id(row, ("sample_index", "id"), src), question, rec.answer, rec.images, categories=cats)
    if _text(row.get("question_type")).replace("_", "-") == "multi-choice":
        item.question, item.answer, item.options = _choice_item(rec, inline_options(question), question, src)
        item.kind = "choice"
    return item


def _mathvision(rec: Record, row: dict) -> EvalItem:
    src = rec.source
    question = _IMAGE_REF_RE.sub("", rec.text).strip()  # "<image1>" marks where the figure was; it goes first
    cats = {"subject": _text(row.get("subject")), "level": _text(row.get("level"))}
    item = EvalItem(_item_id(row, ("id",), src), question, rec.answer, rec.images, categories=cats)
    options = _options(row.get("options"))
    if options or gold_letters(rec.answer) is not None and len(rec.answer.strip()) <= 3:
        q, item.answer, item.options = _choice_item(rec, options, question, src)
        item.question, item.kind = f"{q}\n{format_options(options)}" if options else q, "choice"
    return item


def _joined(value: Any) -> str:
    return ", ".join(_text(v) for v in value) if isinstance(value, (list, tuple)) else _text(value)


def _logicvista(rec: Record, row: dict) -> EvalItem:
    src = rec.source
    cats = {"skill": _joined(row.get("skill")), "capability": _joined(row.get("broad_capability"))}
    item = EvalItem(_item_id(row, ("id", "_key"), src), rec.text, rec.answer, rec.images, categories=cats)
    item.question, item.answer, item.options = _choice_item(rec, inline_options(rec.text), rec.text, src)
    item.kind = "choice"
    return item


def _chartqa(rec: Record, row: dict) -> EvalItem:
    hm = row.get("human_or_machine")
    cats = {"source": {0: "human", 1: "augmented"}.get(hm, _text(hm))} if hm is not None else {}
    return EvalItem(_item_id(row, ("id", "imgname"), rec.source), rec.text, rec.answer, rec.images, "relaxed",
                    categories=cats)


RL_CATEGORY_KEYS = ("task", "difficulty", "category", "subject", "level")


def _rl(rec: Record, row: dict) -> EvalItem:
    src = rec.source
    cats = {k: _text(rec.extra[k]) for k in RL_CATEGORY_KEYS if rec.extra.get(k) not in (None, "")}
    item = EvalItem(_item_id(row, ("id",), src), rec.text, rec.answer, rec.images, categories=cats)
    if len(rec.answer.strip()) <= 3 and choice_letter(rec.answer) is not None:
        item.question, item.answer, item.options = _choice_item(rec, inline_options(rec.text), rec.text, src)
        item.kind = "choice"
    return item


def layouts(data_cfg: DataConfig) -> list[Layout]:
    """Known layouts, most specific first (detection takes the first whose fields are all present)."""
    return [
        Layout("mathverse", ("question", "answer", "question_type", "problem_version"), "question", "answer",
               ("image",), _mathverse),
        Layout("mathvista", ("question", "answer", "question_type", "answer_type"), "question", "answer",
               ("decoded_image", "image"), _mathvista),
        Layout("mathvision", ("question", "answer", "options"), "question", "answer", ("decoded_image", "image"),
               _mathvision),
        Layout("logicvista", ("question", "answer", "skill"), "question", "answer", ("image", "imagename"),
               _logicvista, ("images",)),
        Layout("chartqa", ("query", "label"), "query", "label", ("image", "imgname"), _chartqa, ("png",)),
        Layout("rl", (data_cfg.prompt_key, data_cfg.answer_key), data_cfg.prompt_key, data_cfg.answer_key,
               (data_cfg.image_key,), _rl),
    ]


def detect_layout(path: str, fields: Iterable[str], data_cfg: DataConfig, force: Optional[str] = None) -> Layout:
    """The layout of a file from its field names; LayoutError names what is missing when none fits."""
    known = layouts(data_cfg)
    fields = set(fields)
    if force is not None:
        by_name = {l.name: l for l in known}
        if force not in by_name:
            raise LayoutError(f"--layout {force}: unknown (one of {', '.join(by_name)})")
        chosen = by_name[force]
        missing = [k for k in chosen.required if k not in fields]
        if missing:
            raise LayoutError(f"{path}: layout {force} needs field(s) {', '.join(missing)}; the file has "
                              f"{', '.join(sorted(fields)) or 'no fields'}")
        return chosen
    for layout in known:
        if all(k in fields for k in layout.required):
            return layout
    ranked = sorted(known, key=lambda l: sum(k not in fields for k in l.required))
    wants = "; ".join(f"{l.name} misses {', '.join(k for k in l.required if k not in fields)}" for l in ranked[:3])
    raise LayoutError(f"{path}: layout not recognised (fields: {', '.join(sorted(fields)) or 'none'}); closest: {wants}")


# --------------------------------------------------------------------------------------------------
# Reading
# --------------------------------------------------------------------------------------------------


def _json_document(path: str) -> Optional[list[tuple[RecordSource, Any]]]:
    """A .json file holding one document (list, or id -> record); None when it is JSON Lines."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    try:
        doc = json.loads(text)
    except json.JSONDecodeError:
        return None  # several documents: JSON Lines
    if isinstance(doc, list):
        return [(RecordSource(path, i, is_row=True), row) for i, row in enumerate(doc)]
    if isinstance(doc, dict) and doc and all(isinstance(v, dict) for v in doc.values()):
        return [(RecordSource(path, i, is_row=True), {"_key": k, **v}) for i, (k, v) in enumerate(doc.items())]
    if isinstance(doc, dict):  # a one-line JSONL file
        return [(RecordSource(path, 1), doc)]
    raise LayoutError(f"{path}: a JSON document must be a list of records or an object of id -> record")


def _rows(path: str, lazy_images: Optional[str]) -> Iterator[tuple[RecordSource, Any]]:
    if path.endswith(".json"):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"data file {path} does not exist")
        doc = _json_document(path)
        if doc is not None:
            return iter(doc)
    return iter_rows(path, lazy_images=lazy_images)


def _field_names(path: str) -> list[str]:
    """Field names of a file: the Parquet schema, or the keys of its first good record."""
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        try:
            return list(pq.read_schema(path).names)
        except Exception as e:
            raise LayoutError(f"{path}: not a readable Parquet file ({e})") from None
    for _, row in _rows(path, None):
        if isinstance(row, dict):
            return list(row)
    raise LayoutError(f"{path}: no records")


def _fix_image_dirs(images: Any, row_images: Any, base: Path, dirs: Sequence[str]) -> Any:
    """Bare file names of the GitHub releases (LogicVista's imagename, ChartQA's imgname) live in a
    sub-directory; use it when the name does not resolve next to the file."""
    if not dirs or not isinstance(images, list):
        return images
    out = []
    for img, raw in zip(images, row_images if isinstance(row_images, list) else [row_images]):
        if isinstance(img, str) and not os.path.exists(img) and isinstance(raw, str) and not os.path.isabs(raw):
            for d in dirs:
                if (base / d / raw).exists():
                    img = str(base / d / raw)
                    break
        out.append(img)
    return out


def read_benchmark_file(path: str, data_cfg: DataConfig, bad: BadRecords, max_samples: Optional[int] = None,
                        layout: Optional[str] = None) -> tuple[Layout, list[EvalItem]]:
    """Items of one file (the first ``max_samples`` good records); bad records go through ``bad``."""
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data file {path} does not exist")
    fields = _field_names(path)
    lay = detect_layout(path, fields, data_cfg, layout)
    image_key = next((k for k in lay.image_keys if k in fields), lay.image_keys[0])
    cfg = dataclasses.replace(data_cfg, prompt_key=lay.prompt_key, answer_key=lay.answer_key, image_key=image_key)
    base = Path(path).resolve().parent
    items: list[EvalItem] = []
    for src, row in _rows(path, image_key):
        if max_samples is not None and len(items) >= max_samples:
            break
        try:
            if isinstance(row, BadRecordError):
                raise row
            if not isinstance(row, dict):
                raise BadRecordError(src, f"expected a record object, got {type(row).__name__}", "json")
            row = dict(row)
            if row.get(image_key) in ("", []):  # text-only versions store an empty image
                row[image_key] = None
            if isinstance(row.get(lay.answer_key), list):  # ChartQA: label is a list of one answer
                row[lay.answer_key] = row[lay.answer_key][0] if row[lay.answer_key] else None
            rec = parse_row(row, src, "rl", cfg)
            rec.images = _fix_image_dirs(rec.images, row.get(image_key), base, lay.image_dirs)
            item = lay.build(rec, row)
            item.source = str(src)
            if not item.answer.strip():
                raise BadRecordError(src, f"empty answer in field '{lay.answer_key}'", "field")
            items.append(item)
        except BadRecordError as e:
            bad.handle(e)
    return lay, items


def parse_data_spec(spec: str) -> tuple[Optional[str], str]:
    """"NAME=PATH" -> (NAME, PATH); "PATH" -> (None, PATH)."""
    name, sep, path = spec.partition("=")
    if sep and name and "/" not in name and not os.path.exists(spec):
        return name, path
    return None, spec


def load_benchmarks(specs: Sequence[str], data_cfg: Optional[DataConfig] = None, max_samples: Optional[int] = None,
                    on_bad_record: Optional[str] = None, layout: Optional[str] = None) -> list[Benchmark]:
    """Benchmarks from ``[NAME=]PATH`` specs, in order. A file is named after its layout (``rl`` files after
    their stem); files with the same name are one benchmark (e.g. MathVerse's per-version Parquet files)."""
    data_cfg = data_cfg or DataConfig()
    if not specs:
        raise ValueError("no evaluation files given")
    out: dict[str, Benchmark] = {}
    for spec in specs:
        name, path = parse_data_spec(spec)
        bad = BadRecords(on_bad_record or data_cfg.on_bad_record, logger)
        lay, items = read_benchmark_file(path, data_cfg, bad, max_samples, layout)
        name = name or (Path(path).stem if lay.name == "rl" else lay.name)
        if bad.total:
            logger.warning("%s: skipped %d bad records %s", path, bad.total, bad.summary())
        bench = out.setdefault(name, Benchmark(name, lay.name, [], []))
        if bench.layout != lay.name:
            raise LayoutError(f"{path}: layout {lay.name}, but benchmark '{name}' already holds {bench.layout} files")
        bench.files.append(path)
        bench.items.extend(items)
        bench.skipped += bad.total
    for b in out.values():
        if not b.items:
            raise ValueError(f"benchmark '{b.name}' ({', '.join(b.files)}): no usable records ({b.skipped} skipped)")
    return list(out.values())
