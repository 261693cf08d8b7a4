"""Loader: worker processes, determinism under a seed, resume mid-epoch, packing, bad records in workers."""

from __future__ import annotations

import shutil

import pytest
import torch

from megatron_mmr1.config import DataConfig
from megatron_mmr1.data.chat import IGNORE_INDEX
from megatron_mmr1.data.dataset import RLDataset, SFTDataset
from megatron_mmr1.data.loader import DataLoaderState
from megatron_mmr1.data.packing import collate_packed, plan_packs
from megatron_mmr1.data.records import BadRecordError


def _indices(loader):
    return [[s.index for s in b] for b in loader]


def test_deterministic_under_seed_and_covers_epoch(rl_cfg, tokenizer):
    from megatron_mmr1.data.loader import ResumableBatchSampler

    ds = RLDataset(rl_cfg, tokenizer)
    sampler = ResumableBatchSampler(len(ds), batch_size=8, seed=1)
    assert sampler.batches(0) == ResumableBatchSampler(len(ds), batch_size=8, seed=1).batches(0)
    assert sampler.batches(0) != ResumableBatchSampler(len(ds), batch_size=8, seed=2).batches(0)
    assert sampler.batches(0) != sampler.batches(1)
    loader = DataLoaderState(ds, batch_size=8, seed=1)
    e0 = _indices(loader)
    assert e0 == sampler.batches(0) and loader.epoch == 1
    assert sorted(i for x in e0 for i in x) == list(range(len(ds)))
    assert loader.state_dict()["batches_consumed"] == 0 and len(loader) == len(e0)


def test_resume_mid_epoch_with_workers(rl_cfg, tokenizer):
    ds = RLDataset(rl_cfg, tokenizer)
    full = _indices(DataLoaderState(ds, batch_size=4, seed=3))
    loader = DataLoaderState(ds, batch_size=4, seed=3, num_workers=2, prefetch_factor=2)
    it = iter(loader)
    head = [[s.index for s in next(it)] for _ in range(3)]  # workers have prefetched more than this
    state = loader.state_dict()
    it.close()  # stops the workers
    assert state == {"epoch": 0, "batches_consumed": 3, "seed": 3, "num_items": len(ds)}
    resumed = DataLoaderState(ds, batch_size=4, seed=999, num_workers=2)
    resumed.load_state_dict(state)
    assert head + _indices(resumed) == full
    assert resumed.state_dict()["epoch"] == 1
    with pytest.raises(ValueError, match="data files or on_bad_record changed"):
        resumed.load_state_dict(dict(state, num_items=5))


def test_build_from_config_packs_sft(sft_cfg, tokenizer):
    ds = SFTDataset(sft_cfg, tokenizer)
    cfg = DataConfig(kind="sft", seq_length=1500, packing=True, num_workers=2, seed=5)
    loader = DataLoaderState.build(ds, cfg, pad_to_multiple_of=8)
    seen = []
    for pack in loader:
        seen += pack.indices
        n = len(pack.input_ids)
        assert n % 8 == 0 and n - 7 <= 1500 + 7
        assert pack.cu_seqlens[0] == 0 and pack.cu_seqlens[-1] == n
        lens = (pack.cu_seqlens[1:] - pack.cu_seqlens[:-1]).tolist()
        assert lens[: pack.num_seqs] == [len(ds[i]) for i in pack.indices]
        assert pack.image_grid_thw.shape[0] == pack.num_seqs  # one image per synthetic item
        assert pack.pixel_values.shape[0] == int(pack.image_grid_thw.prod(-1).sum())
    assert sorted(seen) == list(range(len(ds)))


def test_packing_boundaries_and_next_token_labels():
    from types import SimpleNamespace as E

    ex = [E(index=0, input_ids=[1, 2, 3], labels=[-100, 2, 3], pixel_values=None, image_grid_thw=None, metadata={}),
          E(index=5, input_ids=[7, 8], labels=[7, 8], pixel_values=None, image_grid_thw=None, metadata={})]
    p = collate_packed(ex, pad_id=0, pad_to_multiple_of=4)
    assert p.input_ids.tolist() == [1, 2, 3, 7, 8, 0, 0, 0]
    assert p.cu_seqlens.tolist() == [0, 3, 5, 8] and p.max_seqlen == 3 and p.num_seqs == 2
    # target[t] = labels[t+1] inside a sequence; never across the 3|7 boundary, never into padding
    assert p.next_token_labels().tolist() == [2, 3, IGNORE_INDEX, 8, IGNORE_INDEX, -100, -100, -100]
    assert p.position_ids().tolist() == [0, 1, 2, 0, 1, 0, 1, 2]
    assert plan_packs([5, 5, 3, 9, 1], [0, 1, 2, 3, 4], 10) == [[0, 1], [2], [3, 4]]
    with pytest.raises(ValueError, match="more than seq_length"):
        plan_packs([11], [0], 10)


@pytest.fixture
def truncated_dataset(synth, tmp_path):
    """The synthetic RL file with the image of line 5 truncated."""
    shutil.copytree(synth["rl_train"].parent / "images", tmp_path / "images")
    shutil.copy(synth["rl_train"], tmp_path / "rl.jsonl")
    import json

    line5 = json.loads(open(tmp_path / "rl.jsonl").read().splitlines()[4])
    img = tmp_path / line5["images"][0]
    data = img.read_bytes()
    img.write_bytes(data[: len(data) // 2])
    return str(tmp_path / "rl.jsonl")


def test_worker_error_names_the_record(truncated_dataset, tokenizer):
    cfg = DataConfig(train_files=[truncated_dataset], on_bad_record="error")
    loader = DataLoaderState(RLDataset(cfg, tokenizer), batch_size=4, shuffle=False, num_workers=2)
    with pytest.raises(BadRecordError, match=f"{truncated_dataset}:5: cannot decode image"):
        _indices(loader)


def test_worker_skip_is_counted_in_main_process(truncated_dataset, tokenizer):
    cfg = DataConfig(train_files=[truncated_dataset], on_bad_record="skip")
    ds = RLDataset(cfg, tokenizer)
    batches = list(DataLoaderState(ds, batch_size=4, shuffle=False, num_workers=2))
    assert sum(len(b) for b in batches) == len(ds) - 1
    assert [str(e).split(": ")[0] for b in batches for e in b.skipped] == [f"{truncated_dataset}:5"]
    assert ds.bad.summary() == {"image": 1}


def test_pack_samples_for_grpo(rl_cfg, tokenizer):
    from megatron_mmr1.data.packing import pack_samples

    ds = RLDataset(rl_cfg, tokenizer)
    a, b = ds[0], ds[1]
    a.response_ids, a.loss_mask = [5, 6, 7], [1, 0, 1]
    b.response_ids = [9, 10]
    p = pack_samples([a, b], pad_to_multiple_of=16)
    la, lb = len(a.prompt_ids) + 3, len(b.prompt_ids) + 2
    assert p.cu_seqlens.tolist()[:3] == [0, la, la + lb] and len(p.input_ids) % 16 == 0
    assert [t for t in p.labels.tolist() if t != IGNORE_INDEX] == [5, 7, 9, 10]
    assert p.next_token_labels()[la - 1] == IGNORE_INDEX  # a's last token does not predict b's first
    assert torch.equal(p.pixel_values, torch.cat([a.pixel_values, b.pixel_values]))
    pad = tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((p.input_ids == pad).sum()) == int(p.image_grid_thw.prod(-1).sum()) // 4
    a.loss_mask = [1]
    with pytest.raises(ValueError, match="loss_mask has 1 entries for 3 tokens"):
        pack_samples([a])
