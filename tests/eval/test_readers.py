"""Benchmark readers: each published layout (tests/eval/fixtures.py), detection, bad records."""

from __future__ import annotations

import json
import os

import pytest

from megatron_mmr1.config import DataConfig
from megatron_mmr1.data.records import BadRecordError, BadRecords
from megatron_mmr1.eval.readers import (
    VISION_ONLY_PROMPT,
    LayoutError,
    gold_letters,
    inline_options,
    load_benchmarks,
    read_benchmark_file,
)
from tests.eval import fixtures as fx


def _read(path, **kw):
    bad = BadRecords(kw.pop("policy", "error"))
    layout, items = read_benchmark_file(str(path), DataConfig(), bad, **kw)
    return layout.name, items, bad


def test_mathvista_parquet_hub_layout(tmp_path):
    name, items, _ = _read(fx.write_mathvista(tmp_path, "parquet"))
    assert name == "mathvista" and [it.id for it in items] == ["1", "2", "3"]
    mc, integer, flt = items
    # The gold is given as option text ("35°"): it becomes its letter; the options are appended.
    assert (mc.kind, mc.answer, mc.options) == ("choice", "B", ["145°", "35°", "55°"])
    assert mc.question.endswith("Choices:\n(A) 145°\n(B) 35°\n(C) 55°")
    assert mc.categories == {"question_type": "multi_choice", "task": "geometry problem solving"}
    assert (integer.kind, integer.answer) == ("integer", "7")
    assert (flt.kind, flt.answer, flt.precision) == ("float", "1.2", 1)
    # decoded_image (embedded bytes) wins over the image path column.
    assert list(mc.images) == [fx.png_bytes()]
    assert mc.source.endswith("row 0")


def test_mathvista_github_json_document(tmp_path):
    name, items, _ = _read(fx.write_mathvista(tmp_path, "json"))
    assert name == "mathvista" and [it.kind for it in items] == ["choice", "integer", "float"]
    img = items[0].images[0]
    assert isinstance(img, str) and os.path.isfile(img) and img.endswith(os.path.join("images", "1.png"))


def test_mathverse_versions_and_inline_choices(tmp_path):
    name, items, _ = _read(fx.write_mathverse(tmp_path))
    assert name == "mathverse"
    text, vision_only, free = items
    assert (text.kind, text.answer, text.options) == ("choice", "B", ["40°", "140°", "50°", "130°"])
    assert text.categories == {"version": "Text Dominant", "subject": "Plane Geometry"}
    # Vision Only: the question is in the image; the options are unknown as text (letters only).
    assert (vision_only.question, vision_only.options, vision_only.answer) == (VISION_ONLY_PROMPT, [], "B")
    assert (free.kind, free.answer, free.categories["subject"]) == ("free", "\\frac{8}{3}\\pi", "Solid Geometry")


def test_mathvision_options_levels_and_image_markers(tmp_path):
    name, items, _ = _read(fx.write_mathvision(tmp_path))
    assert name == "mathvision"
    mc, free = items
    assert "<image1>" not in mc.question and mc.question.startswith("Which shape comes next?")
    assert (mc.kind, mc.answer, len(mc.options)) == ("choice", "C", 5)
    assert (free.kind, free.answer) == ("free", "12")
    assert mc.categories == {"subject": "logic", "level": "2"} and free.categories["level"] == "4"


def test_logicvista_dataset_json_with_images_dir(tmp_path):
    name, items, _ = _read(fx.write_logicvista(tmp_path))
    assert name == "logicvista" and [it.id for it in items] == ["1", "2"]
    multi = items[0]
    assert (multi.kind, multi.answer) == ("choice", "AC")  # "A, C": both letters
    assert multi.options == ["the first", "the second", "the third", "the fourth"]
    # imagename "1.png" lives in data/images/, not next to dataset.json.
    assert multi.images[0].endswith(os.path.join("data", "images", "1.png")) and os.path.isfile(multi.images[0])
    assert multi.categories == {"skill": "spatial", "capability": "diagram"}


def test_chartqa_label_list_and_source(tmp_path):
    name, items, _ = _read(fx.write_chartqa(tmp_path))
    assert name == "chartqa"
    assert [(it.kind, it.answer, it.categories["source"]) for it in items] == [
        ("relaxed", "62.5", "human"), ("relaxed", "Peru", "augmented")]
    assert isinstance(items[0].images[0], bytes)


def test_project_rl_records(tmp_path):
    name, items, _ = _read(fx.write_rl(tmp_path))
    assert name == "rl"
    assert [(it.id, it.kind, it.answer) for it in items] == [("0", "free", "3"), ("1", "free", "17")]
    assert items[1].categories == {"task": "digits", "difficulty": "3"}
    assert items[0].question == "<image>How many red circles are there?"


def test_unrecognised_layout_is_one_line_naming_missing_fields(tmp_path):
    path = tmp_path / "other.jsonl"
    path.write_text(json.dumps({"prompt": "q", "solution": "1"}) + "\n")
    with pytest.raises(LayoutError) as e:
        _read(path)
    msg = str(e.value)
    assert "\n" not in msg and str(path) in msg and "layout not recognised" in msg
    assert "fields: prompt, solution" in msg and "misses" in msg and "problem" in msg  # rl misses problem, answer


def test_forced_layout_names_missing_fields(tmp_path):
    with pytest.raises(LayoutError, match="layout chartqa needs field.*query, label"):
        read_benchmark_file(str(fx.write_rl(tmp_path)), DataConfig(), BadRecords(), layout="chartqa")


def test_bad_record_named_then_skipped_and_counted(tmp_path):
    rows = fx.mathvista_rows(embed=True)
    rows[1] = dict(rows[1], question_type="multi_choice", choices=["1", "2"], answer="9")  # gold not an option
    path = fx._parquet(tmp_path / "mv.parquet", rows)
    with pytest.raises(BadRecordError, match=r"mv\.parquet row 1: multiple-choice answer '9'"):
        _read(path)
    _, items, bad = _read(path, policy="skip")
    assert [it.id for it in items] == ["1", "3"] and bad.total == 1


def test_load_benchmarks_names_merges_and_limits(tmp_path):
    a = fx.write_mathverse(tmp_path)
    b = fx.write_mathverse(tmp_path / "copy")
    rl = fx.write_rl(tmp_path)
    benches = load_benchmarks([f"mathverse={a}", f"mathverse={b}", str(rl), str(fx.write_chartqa(tmp_path))],
                              DataConfig(), max_samples=2)
    assert [(x.name, x.layout, len(x.items)) for x in benches] == [
        ("mathverse", "mathverse", 4), ("rl_val", "rl", 2), ("chartqa", "chartqa", 2)]
    assert benches[0].files == [str(a), str(b)]


def test_choice_helpers():
    assert gold_letters("(B)") == "B" and gold_letters("A, C") == "AC" and gold_letters("C and A") == "AC"
    assert gold_letters("12") is None and gold_letters("Peru") is None and gold_letters("Band") is None
    assert inline_options("Q?\nChoices:\n(A) 1\n(B) 2\n(C) 3") == ["1", "2", "3"]
    assert inline_options("Q? Answer A or B.") == []
