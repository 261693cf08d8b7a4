"""RL/SFT datasets: Sample contents, and every kind of bad input named by file and line."""

from __future__ import annotations

import logging

import pytest
import torch

from megatron_mmr1.config import DataConfig
from megatron_mmr1.data.chat import IGNORE_INDEX
from megatron_mmr1.data.dataset import RLDataset, SFTDataset, build_dataset
from megatron_mmr1.data.records import BadRecordError, write_jsonl
from megatron_mmr1.data.sample import Sample
from megatron_mmr1.data.vision import PillowImageProcessor, VisionSpec
from tests.data.images import encode, photo


def test_rl_sample_contents(rl_cfg, tokenizer, hf_image_processor):
    ds = RLDataset(rl_cfg, tokenizer)
    s = ds[3]
    assert isinstance(s, Sample) and s.index == 3
    assert s.metadata["source"] == f"{rl_cfg.train_files[0]}:4" and s.metadata["task"] in ("count", "sides", "digits", "chart")
    from PIL import Image

    ref = hf_image_processor(images=[Image.open(s.images[0])], return_tensors="pt")
    assert torch.equal(s.image_grid_thw, ref["image_grid_thw"])
    assert (s.pixel_values - ref["pixel_values"]).abs().max() <= 1e-6
    n_img = int(s.image_grid_thw.prod()) // 4
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert s.prompt_ids.count(pad) == n_img and s.prompt.count("<|image_pad|>") == 1
    assert s.prompt.endswith("<|im_start|>assistant\n") and s.answer.isdigit()
    assert len(s.prompt_ids) == ds.lengths[3] <= rl_cfg.max_prompt_length


def test_sft_example_contents(sft_cfg, tokenizer):
    ds = build_dataset(sft_cfg, tokenizer)
    assert isinstance(ds, SFTDataset)
    e = ds[0]
    trained = tokenizer.decode([t for t, l in zip(e.input_ids, e.labels) if l != IGNORE_INDEX])
    assert trained.startswith("<think>") and trained.endswith("</answer><|im_end|>")
    assert "\\boxed{" in trained and e.pixel_values.shape[1] == 1176


@pytest.fixture
def mixed(tmp_path):
    """A JSONL file whose lines 2.. are each bad in one way; line 1 and the last line are good."""
    img = tmp_path / "img"
    img.mkdir()
    (img / "ok.png").write_bytes(encode(photo(60, 80)))
    full = encode(photo(300, 300, seed=2), "PNG")
    (img / "trunc.png").write_bytes(full[: len(full) // 2])
    (img / "junk.png").write_bytes(b"GIF89a but not really")
    (img / "big.png").write_bytes(encode(photo(400, 400)))
    rows = [
        {"problem": "<image>good", "answer": "1", "images": ["img/ok.png"]},
        {"problem": "<image>truncated", "answer": "1", "images": ["img/trunc.png"]},
        {"problem": "<image>junk", "answer": "1", "images": ["img/junk.png"]},
        {"problem": "<image>missing", "answer": "1", "images": ["img/missing.png"]},
        {"problem": "<image>big", "answer": "1", "images": ["img/big.png"]},
        {"problem": "<image>long " + "word " * 3000, "answer": "1", "images": ["img/ok.png"]},
        {"problem": "<image><image>two placeholders", "answer": "1", "images": ["img/ok.png"]},
        {"problem": "<image>good too", "answer": "2", "images": ["img/ok.png"]},
    ]
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, rows)
    return str(path)


def _ds(path, tokenizer, policy, **kw):
    cfg = DataConfig(train_files=[path], on_bad_record=policy, max_prompt_length=1024)
    return RLDataset(cfg, tokenizer, image_processor=PillowImageProcessor(VisionSpec(max_decode_pixels=300 * 300)), **kw)


def test_skip_counts_and_logs_each_kind(mixed, tokenizer, caplog):
    import re

    with caplog.at_level(logging.WARNING):
        ds = _ds(mixed, tokenizer, "skip")
    # header checks drop junk, missing, big, long and placeholder-mismatch lines at construction
    assert ds.bad.summary() == {"image": 3, "too_long": 1, "prompt": 1}
    for line, what in [(3, "cannot open image .*junk.png"), (4, "cannot read image .*missing.png"),
                       (5, "image .*big.png has 400x400 = 160000 pixels, over the limit"),
                       (6, "prompt has \\d+ tokens .* over data.max_prompt_length=1024"),
                       (7, "problem has 2 <image> placeholders but 1 images")]:
        assert re.search(f"{re.escape(mixed)}:{line}: {what}", caplog.text), (line, what)
    assert [r.source.line for r in ds.records] == [1, 2, 8]
    # the truncated body only shows when decoded: get_batch leaves it out and reports it
    batch = ds.get_batch([0, 1, 2])
    assert [s.answer for s in batch] == ["1", "2"]
    assert len(batch.skipped) == 1 and re.match(f"{re.escape(mixed)}:2: cannot decode image .*trunc.png",
                                                str(batch.skipped[0]))
    assert ds.bad.summary()["image"] == 4
    with pytest.raises(BadRecordError, match=f"{re.escape(mixed)}:2: cannot decode"):
        ds[1]


@pytest.mark.parametrize("line,pattern", [(2, "cannot decode image .*trunc.png"), (3, "cannot open image .*junk.png"),
                                          (4, "cannot read image .*missing.png"), (5, "image .*big.png has .* 160000 pixels, over the limit"),
                                          (6, "prompt has \\d+ tokens .* over data.max_prompt_length"),
                                          (7, "problem has 2 <image> placeholders but 1 images")])
def test_error_policy_names_file_and_line(mixed, tokenizer, tmp_path, line, pattern):
    lines = open(mixed).read().splitlines()
    one = tmp_path / f"one_{line}.jsonl"  # same folder as mixed.jsonl, so img/ resolves
    one.write_text(lines[0] + "\n" + lines[line - 1] + "\n")
    with pytest.raises(BadRecordError, match=f"{one}:2: {pattern}"):
        ds = _ds(str(one), tokenizer, "error")
        ds[1]  # truncated images fail only when decoded


def test_decoded_size_disagreeing_with_header_is_caught(rl_cfg, tokenizer):
    ds = RLDataset(rl_cfg, tokenizer)
    ds._image_tokens[0] = [ds._image_tokens[0][0] + 1]
    with pytest.raises(BadRecordError, match="headers said"):
        ds[0]


def test_parallel_scan_equals_serial(mixed, synth, tokenizer, monkeypatch):
    from megatron_mmr1.data import dataset as dataset_mod

    monkeypatch.setattr(dataset_mod, "SCAN_CHUNK", 3)
    serial = _ds(mixed, tokenizer, "skip", scan_workers=0)
    forked = _ds(mixed, tokenizer, "skip", scan_workers=2)
    assert [r.source for r in forked.records] == [r.source for r in serial.records]
    assert forked.bad.summary() == serial.bad.summary() and forked.bad.examples == serial.bad.examples
    cfg = DataConfig(kind="sft", train_files=[str(synth["sft_train"])], seq_length=4096)
    a, b = SFTDataset(cfg, tokenizer, scan_workers=0), SFTDataset(cfg, tokenizer, scan_workers=2)
    assert a.lengths.tolist() == b.lengths.tolist() and a[2].labels == b[2].labels


def test_sft_too_long_and_placeholder_mismatch(synth, tokenizer, tmp_path, caplog):
    import json

    rows = [json.loads(line) for line in open(synth["sft_train"])][:3]
    rows[1]["messages"][1]["content"] += " word" * 3000
    rows[2]["images"] = rows[2]["images"] * 2
    path = tmp_path / "sft.jsonl"
    write_jsonl(path, [dict(r, images=[str(synth["sft_train"].parent / p) for p in r["images"]]) for r in rows])
    cfg = DataConfig(kind="sft", train_files=[str(path)], seq_length=2048)
    with pytest.raises(BadRecordError, match=f"{path}:2: conversation has \\d+ tokens .* over data.seq_length=2048"):
        SFTDataset(cfg, tokenizer)
    with caplog.at_level(logging.WARNING):
        ds = SFTDataset(DataConfig(kind="sft", train_files=[str(path)], seq_length=2048, on_bad_record="skip"), tokenizer)
    assert len(ds) == 1 and ds.bad.summary() == {"too_long": 1, "prompt": 1}
    assert f"{path}:3: messages have 1 <image> placeholders but 2 images" in caplog.text
