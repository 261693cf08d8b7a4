"""Readers for RL/SFT JSONL and Parquet; JSONL <-> Parquet round trip gives identical samples."""

from __future__ import annotations

import json
import logging

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from megatron_mmr1.config import DataConfig
from megatron_mmr1.data.dataset import RLDataset, SFTDataset
from megatron_mmr1.data.records import (
    BadRecordError,
    BadRecords,
    jsonl_to_parquet,
    parquet_to_jsonl,
    read_records,
    write_jsonl,
)


def _same_samples(a, b):
    assert len(a) == len(b)
    for i in range(len(a)):
        x, y = a[i], b[i]
        assert (x.prompt, x.prompt_ids, x.answer) == (y.prompt, y.prompt_ids, y.answer)
        assert torch.equal(x.pixel_values, y.pixel_values) and torch.equal(x.image_grid_thw, y.image_grid_thw)
        assert {k: v for k, v in x.metadata.items() if not k.startswith("source")} == \
               {k: v for k, v in y.metadata.items() if not k.startswith("source")}


def test_rl_round_trip_jsonl_parquet_jsonl(synth, tokenizer, tmp_path):
    cfg = DataConfig(train_files=[str(synth["rl_train"])])
    pq_path = tmp_path / "rl.parquet"
    n = jsonl_to_parquet(synth["rl_train"], pq_path)
    back = tmp_path / "back" / "rl.jsonl"
    assert parquet_to_jsonl(pq_path, back) == n
    a = RLDataset(cfg, tokenizer)
    b = RLDataset(cfg, tokenizer, files=[str(pq_path)])
    c = RLDataset(cfg, tokenizer, files=[str(back)])
    _same_samples(a, b)
    _same_samples(a, c)
    assert isinstance(b[0].images[0], bytes) and b[0].metadata["source"] == f"{pq_path} row 0"
    assert open(a[0].images[0], "rb").read() == b[0].images[0]
    assert pq.read_schema(pq_path).field("images").type == pa.list_(pa.struct([("bytes", pa.binary()),
                                                                               ("path", pa.string())]))


def test_sft_round_trip(synth, tokenizer, tmp_path):
    cfg = DataConfig(kind="sft", train_files=[str(synth["sft_train"])], seq_length=4096)
    jsonl_to_parquet(synth["sft_train"], tmp_path / "sft.parquet")
    a = SFTDataset(cfg, tokenizer)
    b = SFTDataset(cfg, tokenizer, files=[str(tmp_path / "sft.parquet")])
    for i in range(len(a)):
        assert a[i].input_ids == b[i].input_ids and a[i].labels == b[i].labels
        assert torch.equal(a[i].pixel_values, b[i].pixel_values)


def test_configurable_keys_and_plain_parquet_images(tmp_path, tokenizer):
    from tests.data.images import encode, photo

    table = pa.Table.from_pylist([
        {"question": "<image>Q1", "gt": 3, "pics": [encode(photo(40, 60))]},
        {"question": "Q2 no image", "gt": 7, "pics": None},
    ])
    pq.write_table(table, tmp_path / "d.parquet")
    cfg = DataConfig(prompt_key="question", answer_key="gt", image_key="pics", train_files=[str(tmp_path / "d.parquet")])
    ds = RLDataset(cfg, tokenizer)
    assert ds[0].answer == "3" and ds[0].image_grid_thw.tolist() == [[1, 6, 8]]
    assert ds[1].pixel_values is None and ds[1].images == []


def _write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_malformed_json_line_names_file_and_line(tmp_path):
    f = _write_lines(tmp_path / "a.jsonl", ['{"problem": "Q", "answer": "1"}', '{"problem": "Q", "answer": ', "[1, 2]"])
    cfg = DataConfig()
    with pytest.raises(BadRecordError, match=f"{f}:2: malformed JSON"):
        read_records([f], "rl", cfg)
    bad = BadRecords("skip")
    recs = read_records([f], "rl", cfg, bad)
    assert len(recs) == 1 and bad.summary() == {"json": 2}
    assert f"{f}:3: expected a JSON object" in bad.examples[1]


def test_missing_field_jsonl_and_parquet(tmp_path, caplog):
    f = _write_lines(tmp_path / "a.jsonl", ['{"problem": "Q", "answer": "1"}', '{"problem": "Q"}'])
    with pytest.raises(BadRecordError, match=f"{f}:2: missing field 'answer'"):
        read_records([f], "rl", DataConfig())
    pq.write_table(pa.Table.from_pylist([{"problem": "Q", "answer": "1"}, {"problem": None, "answer": "2"}]),
                   tmp_path / "b.parquet")
    p = str(tmp_path / "b.parquet")
    with pytest.raises(BadRecordError, match=f"{p} row 1: missing field 'problem'"):
        read_records([p], "rl", DataConfig())
    with caplog.at_level(logging.WARNING):
        bad = BadRecords("skip")
        assert len(read_records([f, p], "rl", DataConfig(), bad)) == 2
    assert bad.summary() == {"field": 2} and "b.parquet row 1" in caplog.text


def test_sft_message_checks(tmp_path):
    rows = [{"messages": [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]},
            {"messages": [{"role": "robot", "content": "Q"}]},
            {"messages": "not a list"}]
    f = tmp_path / "s.jsonl"
    write_jsonl(f, rows)
    bad = BadRecords("skip")
    assert len(read_records([str(f)], "sft", DataConfig(kind="sft"), bad)) == 1
    assert bad.total == 2 and "s.jsonl:2: message 0 has role 'robot'" in bad.examples[0]


def test_unknown_format_and_missing_file(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(ValueError, match="unknown format"):
        read_records([str(tmp_path / "x.csv")], "rl", DataConfig())
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        read_records([str(tmp_path / "nope.jsonl")], "rl", DataConfig())
    with pytest.raises(ValueError, match="no data files"):
        read_records([], "rl", DataConfig())


def test_bad_record_error_survives_pickling_and_one_arg_form():
    import pickle

    e = pickle.loads(pickle.dumps(BadRecordError("f.jsonl:3", "bad image", "image")))
    assert str(e) == "f.jsonl:3: bad image" and e.kind == "image"
    assert str(BadRecordError("Caught BadRecordError in DataLoader worker ...")).startswith("Caught")
    assert json.dumps(BadRecords("skip").summary()) == "{}"


def test_parquet_images_are_read_lazily_by_row_group(tmp_path, tokenizer):
    from megatron_mmr1.data.records import ParquetImages
    from tests.data.images import encode, photo

    rows = [{"problem": f"<image>Q{i}", "answer": str(i), "images": [{"bytes": encode(photo(40 + i, 60, seed=i)),
                                                                      "path": f"x{i}.png"}]} for i in range(5)]
    rows[3]["images"] = [{"bytes": None, "path": None}]  # an entry that is neither bytes nor a path
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet", row_group_size=2)
    cfg = DataConfig(train_files=[str(tmp_path / "d.parquet")], on_bad_record="skip")
    ds = RLDataset(cfg, tokenizer)
    assert isinstance(ds.records[0].images, ParquetImages) and len(ds) == 4
    assert ds.bad.examples == [f"{tmp_path / 'd.parquet'} row 3: image entry of type dict is not a path, bytes or "
                               "{bytes, path} struct"]
    for i, s in zip([0, 1, 2, 4], [ds[k] for k in range(4)]):
        assert s.answer == str(i) and s.images[0] == rows[i]["images"][0]["bytes"]
        assert s.image_grid_thw.tolist() == [[1, 6, 8]] and s.metadata["source_line"] == i
