"""The QKV / SwiGLU / vocab mapping alone: HF -> TP shards -> merged -> HF is the identity."""

import pytest
import torch

from megatron_mmr1.models.hf_adapter import Mapping, QKVShape, hf_from_full, merge_shards, shard_from_hf


def _reader(tensors):
    def read(name, dim, start, stop):
        t = tensors[name]
        return t if dim is None else t.narrow(dim, start, stop - start)
    return read


@pytest.mark.parametrize("tp", [1, 2, 4])
def test_qkv_fc1_row_col_round_trip(tp):
    h, heads, groups, d, ffn, vocab = 16, 8, 4, 4, 24, 32
    g = torch.Generator().manual_seed(0)
    hf = {
        "q.w": torch.randn(heads * d, h, generator=g), "k.w": torch.randn(groups * d, h, generator=g),
        "v.w": torch.randn(groups * d, h, generator=g), "q.b": torch.randn(heads * d, generator=g),
        "k.b": torch.randn(groups * d, generator=g), "v.b": torch.randn(groups * d, generator=g),
        "gate": torch.randn(ffn, h, generator=g), "up": torch.randn(ffn, h, generator=g),
        "down": torch.randn(h, ffn, generator=g), "emb": torch.randn(vocab, h, generator=g),
    }
    qkv = QKVShape(heads, groups, d)
    rows = (heads + 2 * groups) * d
    cases = [
        (Mapping("qkv.w", ("q.w", "k.w", "v.w"), "qkv", 0), (rows // tp, h)),
        (Mapping("qkv.b", ("q.b", "k.b", "v.b"), "qkv", 0), (rows // tp,)),
        (Mapping("fc1", ("gate", "up"), "fc1", 0), (2 * ffn // tp, h)),
        (Mapping("fc2", ("down",), "copy", 1), (h, ffn // tp)),
        (Mapping("emb", ("emb",), "copy", 0), (vocab // tp, h)),
    ]
    for m, shape in cases:
        shards = [shard_from_hf(m, _reader(hf), shape, tp, r, qkv) for r in range(tp)]
        assert all(tuple(s.shape) == shape for s in shards)
        back = dict(hf_from_full(m, merge_shards(m, shards), qkv))
        assert sorted(back) == sorted(m.hf)
        for name in m.hf:
            assert torch.equal(back[name], hf[name]), (m.param, name, tp)
    # megatron's per-group layout: group 0 = its q heads, then its k head, then its v head.
    full = merge_shards(cases[0][0], [shard_from_hf(cases[0][0], _reader(hf), cases[0][1], tp, r, qkv)
                                      for r in range(tp)])
    q_per_group = heads // groups
    assert torch.equal(full[: q_per_group * d], hf["q.w"][: q_per_group * d])
    assert torch.equal(full[q_per_group * d:(q_per_group + 1) * d], hf["k.w"][:d])
