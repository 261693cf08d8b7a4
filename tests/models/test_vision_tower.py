"""The vision tower as build_vision_model makes it: RoPE inv_freq stays fp32 through bf16 casts (as in
Hugging Face), and the attention implementation follows :func:`vision_attn_implementation`."""

from __future__ import annotations

import pickle

import pytest
import torch

from megatron_mmr1.models import vision
from megatron_mmr1.models.presets import PRESETS


def _dims():
    dims = dict(PRESETS["tiny"])
    dims["vision"] = dict(dims["vision"])
    return dims


def _angles(model, grid_thw):
    """cos of the tower's rotary angles for one image grid (what the attention layers rotate by)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import get_vision_position_ids

    pos = get_vision_position_ids(grid_thw, model.spatial_merge_size)
    x = torch.zeros(pos.shape[-1], 1, dtype=next(model.parameters()).dtype)
    cos, _ = model.rotary_pos_emb(x, pos)
    return cos.float()


def test_inv_freq_stays_fp32_after_bf16_cast():
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionRotaryEmbedding

    dims = _dims()
    ref = vision.build_vision_model(dims, torch.float32)
    model = vision.build_vision_model(dims, torch.float32).to(torch.bfloat16)
    model.bfloat16()
    hf_inv_freq, _ = Qwen2_5_VLVisionRotaryEmbedding.compute_axial_rope_parameters(vision.vision_config(dims))
    for name in ("inv_freq", "original_inv_freq"):
        buf = getattr(model.rotary_pos_emb, name)
        assert buf.dtype == torch.float32, name
        assert torch.equal(buf, hf_inv_freq), name
    assert next(model.parameters()).dtype == torch.bfloat16  # the weights themselves are cast
    bf16_built = vision.build_vision_model(dims, torch.bfloat16)
    assert torch.equal(bf16_built.rotary_pos_emb.inv_freq, hf_inv_freq)

    # rotary angles of a 56 x 56-patch image: exact with the fp32 buffer (a bf16 one is off by 5e-3 here)
    grid = torch.tensor([[1, 56, 56]])
    assert (_angles(model, grid) - _angles(ref, grid)).abs().max() < 1e-6
    pickle.loads(pickle.dumps(model.rotary_pos_emb))  # the subclass pickles (spawned workers, deepcopy)


def test_attn_implementation_choice(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(vision, "flash_attn_importable", lambda: True)
    assert vision.vision_attn_implementation(torch.bfloat16) == "sdpa"  # no CUDA
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert vision.vision_attn_implementation(torch.bfloat16) == "flash_attention_2"
    assert vision.vision_attn_implementation(torch.float16, "cuda:0") == "flash_attention_2"
    assert vision.vision_attn_implementation(torch.bfloat16, "cpu") == "sdpa"  # CPU tensors
    assert vision.vision_attn_implementation(torch.float32) == "sdpa"  # flash-attn is bf16/fp16 only
    monkeypatch.setattr(vision, "flash_attn_importable", lambda: False)
    assert vision.vision_attn_implementation(torch.bfloat16) == "sdpa"  # not installed


@pytest.mark.parametrize("impl", ["sdpa", "eager"])
def test_tower_uses_the_chosen_attention(monkeypatch, impl):
    seen = []

    def choose(dtype, device=None):
        seen.append(dtype)
        return impl

    monkeypatch.setattr(vision, "vision_attn_implementation", choose)
    model = vision.build_vision_model(_dims(), torch.float32)
    assert seen == [torch.float32]
    assert model.config._attn_implementation == impl
    assert all(b.attn.config._attn_implementation == impl for b in model.blocks)
