"""DALI path vs the Pillow path (itself checked against transformers in test_vision.py).

Runs the real DALI pipeline on CPU when nvidia-dali is installed (skips with the reason otherwise),
and on GPU when CUDA is at hand. The pass-order, exact-resize and routing logic needs no DALI and
always runs.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from megatron_mmr1.data import dali
from megatron_mmr1.data.resample import pillow_bicubic
from megatron_mmr1.data.vision import ImageError, PillowImageProcessor, VisionSpec, open_image
from tests.data.images import encode, photo

CASES = [(37, 501), (123, 77), (1000, 300), (224, 224), (42, 70), (333, 257), (56, 56), (300, 100)]
RESIZES = [((37, 501), (28, 504)), ((100, 300), (150, 280)), ((300, 100), (280, 150)), ((64, 64), (32, 32)),
           ((42, 70), (84, 112)), ((15, 15), (84, 84)), ((3000, 20), (2996, 28)), ((500, 400), (252, 196))]
# One uint8 level after normalisation is 1 / (255 * std) ~= 0.0150.
LEVEL = 1.0 / (255 * 0.26130258)
# resize="dali": DALI's float cubic vs Pillow's fixed point differ by 1-2 levels inside the image;
# DALI replicates edge pixels where Pillow renormalises its truncated kernel, so borders of upscaled
# images differ by up to ~8 levels (measured 7.6 on 56x56 -> 84x84 noise).
DALI_RESIZE_MAX_LEVELS, DALI_RESIZE_MEAN_LEVELS = 10, 0.1
# nvJPEG (GPU) decodes JPEGs a few levels away from libjpeg-turbo.
GPU_JPEG_MAX_LEVELS, GPU_JPEG_MEAN_LEVELS = 24, 1.0

needs_dali = pytest.mark.skipif(not dali.dali_available(), reason="nvidia-dali not installed (GPU extra)")


@pytest.mark.parametrize("src,dst", RESIZES)
def test_resize_passes_follow_pillow(src, dst):
    """The two one-axis passes, in the order we pick, reproduce Pillow's one-call bicubic exactly."""
    img = photo(*src, seed=sum(src))
    (h1, w1), (h2, w2) = dali.resize_passes(src, dst)
    assert (h2, w2) == dst and (h1 == src[0] or w1 == src[1])
    two = img.resize((w1, h1), Image.Resampling.BICUBIC).resize((w2, h2), Image.Resampling.BICUBIC)
    one = img.resize((dst[1], dst[0]), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(two), np.asarray(one))


@pytest.mark.parametrize("src,dst", RESIZES)
def test_exact_resize_is_bit_identical_to_pillow(src, dst):
    img = photo(*src, seed=sum(src) + 1)
    (h1, w1), _ = dali.resize_passes(src, dst)
    ours = pillow_bicubic(torch.from_numpy(np.array(img)), dst, vertical_first=(h1 != src[0] and w1 == src[1]))
    ref = np.asarray(img.resize((dst[1], dst[0]), Image.Resampling.BICUBIC))
    assert ours.dtype == torch.uint8 and np.array_equal(ours.numpy(), ref)


def test_routing_to_pillow():
    assert dali.dali_decodable(open_image(encode(photo(30, 40), "PNG")))
    assert dali.dali_decodable(open_image(encode(photo(30, 40), "JPEG")))
    assert dali.dali_decodable(open_image(encode(photo(30, 40, "L"), "PNG")))
    assert not dali.dali_decodable(open_image(encode(photo(30, 40, "RGBA"), "PNG")))
    assert not dali.dali_decodable(open_image(encode(photo(30, 40, "P"), "PNG")))
    assert not dali.dali_decodable(open_image(encode(photo(30, 40), "BMP")))


def _levels(proc, fmt, kw=None):
    """(max, mean) |DALI - Pillow| in uint8 levels over CASES."""
    srcs = [encode(photo(h, w, seed=h * 7 + w), fmt, **(kw or {})) for h, w in CASES]
    ours = proc.process_many([[s] for s in srcs])
    worst, means = 0.0, []
    for o, s in zip(ours, srcs):
        r = PillowImageProcessor(proc.spec)([s])
        assert torch.equal(o.image_grid_thw.cpu(), r.image_grid_thw)
        d = (o.pixel_values.cpu() - r.pixel_values).abs() / LEVEL
        worst, means = max(worst, d.max().item()), means + [d.mean().item()]
    return worst, float(np.mean(means))


@needs_dali
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_dali_cpu_exact_equals_pillow(fmt):
    proc = dali.DaliImageProcessor(VisionSpec(), device="cpu", batch_size=4, num_threads=1)
    assert _levels(proc, fmt, {"quality": 95} if fmt == "JPEG" else None) == (0.0, 0.0)
    assert proc.stats["dali"] == len(CASES)


@needs_dali
def test_dali_cpu_dali_resize_close_to_pillow():
    proc = dali.DaliImageProcessor(VisionSpec(), device="cpu", batch_size=4, num_threads=1, resize="dali")
    worst, mean = _levels(proc, "PNG")
    assert worst <= DALI_RESIZE_MAX_LEVELS and mean <= DALI_RESIZE_MEAN_LEVELS, (worst, mean)


@needs_dali
def test_dali_mixed_batch_alpha_exif_grouping():
    proc = dali.DaliImageProcessor(VisionSpec(), device="cpu", batch_size=2, num_threads=1)
    img = photo(60, 120, seed=9)
    exif = img.getexif()
    exif[0x0112] = 6  # rotated: DALI and Pillow must both apply it
    prompts = [[encode(photo(50, 80, "RGBA"), "PNG")], [],
               [encode(img, "JPEG", exif=exif.tobytes(), quality=95), encode(photo(90, 33, "L"), "PNG")]]
    ours = proc.process_many(prompts)
    assert proc.stats == {"dali": 2, "pillow": 1}
    for o, p in zip(ours, prompts):
        r = PillowImageProcessor()(p)
        assert torch.equal(o.image_grid_thw, r.image_grid_thw)
        assert torch.equal(o.pixel_values, r.pixel_values)


@needs_dali
def test_dali_truncated_image_names_it_and_recovers():
    proc = dali.DaliImageProcessor(VisionSpec(), device="cpu", batch_size=4, num_threads=1)
    good = encode(photo(64, 64), "JPEG")
    bad = encode(photo(200, 200, seed=4), "JPEG")
    with pytest.raises(ImageError, match="cannot decode"):
        proc.process_many([[good], [bad[: len(bad) // 3]]])
    assert len(proc.process_many([[good]])[0].pixel_values) > 0


@needs_dali
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("resize", ["exact", "dali"])
def test_dali_gpu_matches_pillow(resize):
    proc = dali.DaliImageProcessor(VisionSpec(), device="gpu", batch_size=8, resize=resize)
    worst, mean = _levels(proc, "PNG")
    if resize == "exact":
        assert (worst, mean) == (0.0, 0.0)
    else:
        assert worst <= DALI_RESIZE_MAX_LEVELS and mean <= DALI_RESIZE_MEAN_LEVELS, (worst, mean)
    worst, mean = _levels(proc, "JPEG", {"quality": 95})
    assert worst <= GPU_JPEG_MAX_LEVELS and mean <= GPU_JPEG_MEAN_LEVELS, ("jpeg", worst, mean)


@needs_dali
def test_dali_accepts_pil_images_and_paths(tmp_path):
    proc = dali.DaliImageProcessor(VisionSpec(), device="cpu", batch_size=4, num_threads=1)
    img = photo(70, 90, seed=8)
    (tmp_path / "a.png").write_bytes(encode(img))
    a, b = proc.process_many([[img], [str(tmp_path / "a.png")]])
    assert torch.equal(a.pixel_values, b.pixel_values) and proc.stats == {"dali": 1, "pillow": 1}
    assert img.size == (90, 70)  # the caller's image is still usable


@needs_dali
def test_dataset_batches_images_through_dali(rl_cfg, tokenizer):
    from megatron_mmr1.data.dataset import RLDataset

    proc = dali.DaliImageProcessor(VisionSpec(), device="cpu", batch_size=16, num_threads=1)
    ds = RLDataset(rl_cfg, tokenizer, image_processor=proc)
    ref = RLDataset(rl_cfg, tokenizer)
    batch = ds.get_batch([0, 3, 5])
    assert proc.stats["dali"] == 3  # one process_many call for the batch
    for s in batch:
        assert torch.equal(s.pixel_values, ref[s.index].pixel_values) and s.prompt_ids == ref[s.index].prompt_ids


@needs_dali
@pytest.mark.parametrize("kind", ["rl", "sft"])
def test_image_decoder_dali_is_used_by_the_datasets(rl_cfg, sft_cfg, tokenizer, monkeypatch, kind):
    """data.image_decoder=dali reaches the datasets the trainers build (build_dataset, no processor
    passed): images go through DALI (its CPU pipeline here), with Pillow's pixel_values (exact resize)."""
    from dataclasses import replace

    from megatron_mmr1.data.dataset import build_dataset

    calls = []
    real = dali.DaliImageProcessor.process_many

    def spy(self, prompts):
        calls.append(len(prompts))
        return real(self, prompts)

    monkeypatch.setattr(dali.DaliImageProcessor, "process_many", spy)
    cfg = rl_cfg if kind == "rl" else sft_cfg
    ds = build_dataset(replace(cfg, image_decoder="dali"), tokenizer)
    ref = build_dataset(cfg, tokenizer)
    assert isinstance(ds.image_processor, dali.DaliImageProcessor) and ds.image_processor.device == "cpu"
    assert isinstance(ref.image_processor, PillowImageProcessor)
    items = [i for i in range(len(ds)) if ds.records[i].images][:3]
    batch = ds.get_batch(items)
    assert calls == [len(items)] and ds.image_processor.stats["dali"] >= len(items)
    single = ds[items[0]]  # one item (the loader's path without batching) goes through DALI too
    assert len(calls) == 2
    for got, i in zip([*batch, single], [*items, items[0]]):
        want = ref[i]
        assert torch.equal(got.image_grid_thw, want.image_grid_thw)
        assert (got.pixel_values - want.pixel_values).abs().max().item() == 0.0  # exact: 0 uint8 levels
