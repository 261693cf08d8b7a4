"""get_rope_index vs transformers' Qwen2_5_VLModel.get_rope_index (the reference)."""

import pytest
import torch

from megatron_mmr1.models.rope_index import get_rope_index
from tests.models.workers import make_batch, tiny_dims


@pytest.fixture(scope="module")
def hf_model():
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLModel

    from megatron_mmr1.models.presets import hf_config_dict

    return Qwen2_5_VLModel(Qwen2_5_VLConfig(**hf_config_dict(tiny_dims())))


def _ours(batch):
    d = tiny_dims()
    return get_rope_index(batch["input_ids"], batch.get("image_grid_thw"), batch["attention_mask"],
                          d["vision"]["spatial_merge_size"], d["image_token_id"], d["vision_start_token_id"])


def test_images_of_two_sizes_match_hf(hf_model):
    batch = make_batch("images")
    ref, ref_delta = hf_model.get_rope_index(
        batch["input_ids"], mm_token_type_ids=(batch["input_ids"] == tiny_dims()["image_token_id"]).int(),
        image_grid_thw=batch["image_grid_thw"], attention_mask=batch["attention_mask"])
    pos, delta = _ours(batch)
    real = batch["attention_mask"].bool()
    assert pos.shape == ref.shape == (3, 2, batch["input_ids"].shape[1])
    assert torch.equal(pos[:, real], ref[:, real])
    assert torch.equal(delta, ref_delta)
    # The image rows really are 3-D: some token has different t/h/w positions.
    assert (pos[1] != pos[2]).any()


def test_text_only_is_arange():
    batch = make_batch("text")
    batch["attention_mask"][1, 90:] = 0  # right padding
    pos, _ = _ours(batch)
    assert torch.equal(pos[:, 0], torch.arange(96).expand(3, -1))
    assert torch.equal(pos[:, 1, :90], torch.arange(90).expand(3, -1))


def test_grid_mismatch_is_an_error():
    batch = make_batch("images")
    with pytest.raises(ValueError, match="image_grid_thw"):
        get_rope_index(batch["input_ids"], batch["image_grid_thw"][:2], batch["attention_mask"], 2,
                       tiny_dims()["image_token_id"], tiny_dims()["vision_start_token_id"])


def test_packed_row_restarts_per_sequence():
    """A packed row's positions are each sequence's own positions (images taken in order)."""
    from megatron_mmr1.models.rope_index import get_rope_index_packed

    d = tiny_dims()
    args = (d["vision"]["spatial_merge_size"], d["image_token_id"], d["vision_start_token_id"])
    batch = make_batch("images")
    a = batch["input_ids"][0]
    b = batch["input_ids"][1][: int(batch["attention_mask"][1].sum())]
    text = make_batch("text")["input_ids"][0][:10]
    row = torch.cat([a, text, b, torch.zeros(4, dtype=torch.long)])[None]  # (1, T) with tail padding
    cu = torch.tensor([0, len(a), len(a) + 10, len(a) + 10 + len(b)])
    pos = get_rope_index_packed(row, batch["image_grid_thw"], cu, *args)
    pa, _ = get_rope_index(a[None], batch["image_grid_thw"][:2], None, *args)
    pb, _ = get_rope_index(b[None], batch["image_grid_thw"][2:], None, *args)
    assert torch.equal(pos[:, :, : len(a)], pa)
    assert torch.equal(pos[:, 0, len(a): len(a) + 10], torch.arange(10).expand(3, -1))
    assert torch.equal(pos[:, :, len(a) + 10: cu[-1]], pb)
