"""SDPA core attention against megatron-core's own ``DotProductAttention`` (the reference it replaces
in the local spec): same outputs and input gradients for every mask the trainer passes, fp32, GQA.

Masks: causal from the layer's mask type (None), the block-diagonal causal mask of packed rows, and
the causal + padding mask of padded rows, including a left-padded row whose first query sees no key
(megatron attends uniformly there; a naive SDPA call would give NaN). Packed rows also as THD with
``PackedSeqParams`` (which megatron's class refuses), against megatron on the block-diagonal mask.
"""

from __future__ import annotations

import pytest

from tests.dist_utils import spawn


CASES = [(gqa, mask_kind) for gqa in (True, False) for mask_kind in ("causal", "packed", "padding", "thd")]
PACKED_CU = [0, 11, 30, 31, 37]  # three sequences (one of a single token) and a padding tail


def compare_all() -> dict:
    """Every case in one rank (one megatron import)."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.config import ParallelConfig

    parallel.initialize(ParallelConfig(sequence_parallel=False))
    return {case: compare_with_megatron(*case) for case in CASES}


def compare_with_megatron(gqa: bool, mask_kind: str) -> dict:
    import torch
    from megatron.core.packed_seq_params import PackedSeqParams
    from megatron.core.transformer.dot_product_attention import DotProductAttention
    from megatron.core.transformer.enums import AttnMaskType

    from megatron_mmr1.config import ModelConfig, ParallelConfig
    from megatron_mmr1.models.attention import SDPADotProductAttention
    from megatron_mmr1.models.language import build_transformer_config
    from megatron_mmr1.training.micro_batches import block_causal_mask

    pcfg = ParallelConfig(sequence_parallel=False)
    heads, groups, hn, s = 4, (2 if gqa else 4), 16, 37
    b = 1 if mask_kind == "thd" else 2
    cfg = build_transformer_config(ModelConfig(preset="tiny", params_dtype="fp32"), pcfg,
                                   num_attention_heads=heads, num_query_groups=groups, kv_channels=hn,
                                   hidden_size=heads * hn)
    ref = DotProductAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    ours = SDPADotProductAttention(cfg, layer_number=1, attn_mask_type=AttnMaskType.causal, attention_type="self")
    g = torch.Generator().manual_seed(0)
    q = torch.randn(s, b, heads, hn, generator=g)
    k = torch.randn(s, b, groups, hn, generator=g)
    v = torch.randn(s, b, groups, hn, generator=g)
    packed = None
    if mask_kind == "causal":
        mask = None
    elif mask_kind in ("packed", "thd"):
        cu = torch.tensor(PACKED_CU, dtype=torch.int32)
        mask = block_causal_mask(cu, s, torch.device("cpu")).expand(b, 1, s, s)
        if mask_kind == "thd":  # megatron's attention hands THD to the core attention as [t, heads, hn]
            packed = PackedSeqParams(qkv_format="thd", cu_seqlens_q=cu, cu_seqlens_kv=cu, max_seqlen_q=19,
                                     max_seqlen_kv=19)
    else:  # padding: row 0 right-padded, row 1 left-padded by 5 (its first 5 queries see only pads)
        keep = torch.ones(b, s, dtype=torch.bool)
        keep[0, -6:] = False
        keep[1, :5] = False
        causal = torch.ones(s, s, dtype=torch.bool).triu(1)
        mask = causal[None, None] | ~keep[:, None, None, :]
    out, grads = [], []
    for m in (ref, ours):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        if m is ours and packed is not None:  # the reference takes the same row with its block-diagonal mask
            o = m(qq[:, 0], kk[:, 0], vv[:, 0], None, packed_seq_params=packed).reshape(s, b, heads * hn)
        else:
            o = m(qq, kk, vv, mask)
        (o * torch.linspace(-1, 1, o.numel()).view_as(o)).sum().backward()
        out.append(o.detach())
        grads.append([t.grad for t in (qq, kk, vv)])
    return {
        "shape_ok": out[0].shape == out[1].shape == (s, b, heads * hn),
        "finite": bool(torch.isfinite(out[1]).all()),
        "out_err": float((out[0] - out[1]).abs().max()),
        "grad_err": max(float((a - c).abs().max()) for a, c in zip(*grads)),
        "scale": float(out[0].abs().max()),
    }


@pytest.fixture(scope="module")
def results():
    return spawn(compare_all, 1)[0]


@pytest.mark.parametrize("case", CASES, ids=[f"{'gqa' if g else 'mha'}-{m}" for g, m in CASES])
def test_sdpa_matches_megatron_dot_product_attention(results, case):
    r = results[case]
    assert r["shape_ok"] and r["finite"]
    assert r["scale"] > 0.1  # a real output, not zeros
    assert r["out_err"] < 1e-5, r
    assert r["grad_err"] < 1e-5, r


def test_local_spec_uses_sdpa_unless_asked_for_megatrons():
    from megatron.core.transformer.dot_product_attention import DotProductAttention

    from megatron_mmr1.config import ModelConfig
    from megatron_mmr1.models.attention import SDPADotProductAttention
    from megatron_mmr1.models.language import layer_spec

    def core(backend):
        return layer_spec(ModelConfig(attention_backend=backend)).submodules.self_attention.submodules.core_attention

    assert core("auto") is SDPADotProductAttention  # no GPU here: auto = sdpa
    assert core("sdpa") is SDPADotProductAttention
    assert core("local") is DotProductAttention
