"""Qwen2.5-VL preprocessing vs transformers' Qwen2-VL image processor (the outside reference)."""

from __future__ import annotations

import itertools

import pytest
import torch

from megatron_mmr1.data.vision import (
    ImageError,
    PillowImageProcessor,
    VisionSpec,
    build_image_processor,
    decode_rgb,
    open_image,
    smart_resize,
)
from tests.data.images import encode, photo

# float32 rounding of the fused rescale+normalise; transformers does x*(1/255) in float64 first.
PARITY_ATOL = 1e-6


def test_smart_resize_matches_transformers():
    from transformers.models.qwen2_vl import image_processing_pil_qwen2_vl as ref

    sizes = [1, 2, 13, 14, 27, 28, 29, 41, 42, 55, 56, 70, 97, 98, 111, 224, 333, 1000, 1023, 2048, 4097]
    bounds = [(7056, 1048576), (3136, 12845056), (256 * 28 * 28, 1280 * 28 * 28)]
    for (h, w), (lo, hi) in itertools.product(itertools.product(sizes, sizes), bounds):
        if max(h, w) / min(h, w) > 200:
            with pytest.raises(ImageError):
                smart_resize(h, w, 28, lo, hi)
            continue
        assert smart_resize(h, w, 28, lo, hi) == ref.smart_resize(h, w, 28, lo, hi), (h, w, lo, hi)


@pytest.mark.parametrize(
    "h,w,mode",
    [(37, 501, "RGB"), (123, 77, "RGB"), (1000, 1500, "RGB"), (224, 224, "L"), (15, 15, "RGBA"),
     (3000, 20, "RGB"), (42, 70, "RGB"), (333, 257, "P"), (56, 56, "RGB"), (1200, 1100, "RGB")],
)
def test_pixel_values_match_transformers(h, w, mode, hf_image_processor):
    img = photo(h, w, mode, seed=h * 7 + w)
    ref = hf_image_processor(images=[img], return_tensors="pt")
    ours = PillowImageProcessor(VisionSpec(7056, 1048576))([img])
    assert torch.equal(ours.image_grid_thw, ref["image_grid_thw"])
    assert ours.pixel_values.shape == ref["pixel_values"].shape
    assert ours.pixel_values.dtype == torch.float32
    diff = (ours.pixel_values - ref["pixel_values"]).abs().max().item()
    assert diff <= PARITY_ATOL, diff


def test_several_images_concatenate_like_transformers(hf_image_processor):
    imgs = [photo(90, 130, seed=1), photo(300, 61, seed=2), photo(64, 64, "L", seed=3)]
    ref = hf_image_processor(images=imgs, return_tensors="pt")
    ours = PillowImageProcessor()(imgs)
    assert torch.equal(ours.image_grid_thw, ref["image_grid_thw"])
    assert (ours.pixel_values - ref["pixel_values"]).abs().max().item() <= PARITY_ATOL
    assert ours.num_image_tokens() == [int(g.prod()) // 4 for g in ref["image_grid_thw"]]


def test_token_count_from_header_matches_transformers(hf_image_processor):
    spec = VisionSpec()
    for h, w in [(37, 501), (1000, 1500), (15, 15), (777, 333)]:
        assert spec.num_image_tokens(h, w) == hf_image_processor.get_number_of_image_patches(h, w, {}) // 4


def test_sources_paths_bytes_structs_agree(tmp_path):
    img = photo(100, 150, seed=5)
    data = encode(img)
    (tmp_path / "a.png").write_bytes(data)
    p = PillowImageProcessor()
    outs = [p([src]) for src in (str(tmp_path / "a.png"), data, {"bytes": data, "path": "a.png"}, img)]
    for o in outs[1:]:
        assert torch.equal(o.pixel_values, outs[0].pixel_values)


def test_exif_orientation_applied():
    img = photo(60, 120, seed=9)
    exif = img.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    rotated = decode_rgb(encode(img, "JPEG", exif=exif.tobytes(), quality=95))
    assert rotated.size == (60, 120)


def test_truncated_image_is_an_image_error():
    data = encode(photo(200, 200, seed=3), "PNG")
    with pytest.raises(ImageError, match="cannot decode"):
        decode_rgb(data[: len(data) // 2])
    jpg = encode(photo(200, 200, seed=3), "JPEG")
    with pytest.raises(ImageError, match="cannot decode"):
        decode_rgb(jpg[: len(jpg) // 2])


def test_unreadable_and_missing_images(tmp_path):
    (tmp_path / "x.png").write_bytes(b"not an image at all")
    with pytest.raises(ImageError, match="cannot open image .*x.png"):
        open_image(str(tmp_path / "x.png"))
    with pytest.raises(ImageError, match="cannot read image .*missing.png"):
        open_image(str(tmp_path / "missing.png"))


def test_pixel_limit_checked_before_decoding():
    spec = VisionSpec(max_decode_pixels=100 * 100)
    with pytest.raises(ImageError, match="over the limit"):
        PillowImageProcessor(spec)([encode(photo(101, 100))])
    PillowImageProcessor(spec)([encode(photo(100, 100))])


def test_extreme_aspect_ratio_rejected():
    with pytest.raises(ImageError, match="aspect ratio"):
        PillowImageProcessor()([encode(photo(1, 250))])


def test_build_image_processor_without_dali_uses_pillow():
    from megatron_mmr1.config import DataConfig

    assert isinstance(build_image_processor(DataConfig(image_decoder="pillow")), PillowImageProcessor)
    if not torch.cuda.is_available():
        assert isinstance(build_image_processor(DataConfig(image_decoder="auto")), PillowImageProcessor)
    with pytest.raises(ValueError, match="image_decoder"):
        build_image_processor(DataConfig(), decoder="opencv")
