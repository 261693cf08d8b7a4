"""NVIDIA DALI image path: decode (+ resize + normalise) on the GPU; runs on CPU for tests.

Two resize modes behind one class:

- ``resize="exact"`` (default): DALI decodes (nvJPEG on GPU), then Pillow's bicubic runs bit for bit
  on the GPU (:mod:`megatron_mmr1.data.resample`), then normalise + patchify in torch. Output equals
  the Pillow path exactly for PNGs (and for JPEGs decoded on CPU).
- ``resize="dali"``: decode + resize + normalise all inside DALI. Matches Pillow inside the image
  to 1-2 uint8 levels; borders of *upscaled* images differ by up to ~8 levels (DALI replicates edge
  pixels, Pillow renormalises its truncated kernel).

Both agree with Pillow because:

- target sizes come from the same ``smart_resize``, computed on the host from the image header and
  fed to the pipeline per sample (DALI's own arithmetic would not reproduce Python's round-half-even);
- Pillow's bicubic is separable with a uint8 intermediate, and (Pillow >= 13) it runs the shrinking
  pass first when one axis grows and the other shrinks. We run two one-axis DALI resizes with uint8
  outputs in the order the installed Pillow uses (found by a probe at start-up);
- images DALI does not decode like Pillow (alpha/transparency, palette, CMYK, 16-bit, formats other
  than JPEG/PNG) go through the Pillow path.

On GPU, nvJPEG's IDCT and chroma upsampling differ from libjpeg-turbo's by a few levels on JPEGs;
PNG decoding is exact. ``tests/data/test_dali.py`` states the tolerances.
"""

from __future__ import annotations

import functools
import logging
from typing import Any, Optional, Sequence

import numpy as np
import torch
from PIL import Image

from megatron_mmr1.data.vision import (
    CLIP_MEAN,
    CLIP_STD,
    ImageError,
    ImageSource,
    PillowImageProcessor,
    ProcessedImages,
    VisionSpec,
    describe,
    has_alpha,
    open_image,
    oriented_size,
    patchify,
    patchify_uint8,
    read_bytes,
)

logger = logging.getLogger(__name__)

DALI_FORMATS = ("JPEG", "PNG")
DALI_MODES = ("RGB", "L")


def dali_available() -> bool:
    try:
        import nvidia.dali  # noqa: F401
    except Exception:  # ImportError, or a broken CUDA install raising at import
        return False
    return True


@functools.lru_cache(maxsize=None)
def pillow_shrinks_first() -> bool:
    """Does the installed Pillow run the vertical pass first when width grows and height shrinks?"""
    from PIL import Image

    rng = np.random.default_rng(0)
    img = Image.fromarray(rng.integers(0, 256, (24, 16), dtype=np.uint8))
    one = np.asarray(img.resize((19, 17), Image.Resampling.BICUBIC))
    v_first = np.asarray(img.resize((16, 17), Image.Resampling.BICUBIC).resize((19, 17), Image.Resampling.BICUBIC))
    return bool(np.array_equal(one, v_first))


def resize_passes(src_hw: tuple[int, int], dst_hw: tuple[int, int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Sizes after the first and the second one-axis pass, in Pillow's order."""
    (h, w), (th, tw) = src_hw, dst_hw
    vertical_first = pillow_shrinks_first() and tw > w and th < h
    first = (th, w) if vertical_first else (h, tw)
    return first, (th, tw)


def dali_decodable(img: Any) -> bool:
    return img.format in DALI_FORMATS and img.mode in DALI_MODES and not has_alpha(img)


class DaliImageProcessor:
    """Batches the images of many prompts through one DALI pipeline."""

    name = "dali"

    def __init__(
        self,
        spec: Optional[VisionSpec] = None,
        device: str = "gpu",
        batch_size: int = 64,
        num_threads: int = 4,
        device_id: Optional[int] = None,
        resize: str = "exact",
    ):
        if not dali_available():
            raise ImportError("data.image_decoder=dali needs NVIDIA DALI: pip install nvidia-dali-cuda120")
        if device not in ("gpu", "cpu"):
            raise ValueError(f"DALI device must be gpu or cpu, got {device!r}")
        if device == "gpu" and not torch.cuda.is_available():
            raise RuntimeError("DALI on gpu needs CUDA; use device='cpu' or data.image_decoder=pillow")
        if resize not in ("exact", "dali"):
            raise ValueError(f"DALI resize must be exact or dali, got {resize!r}")
        self.spec, self.resize = spec or VisionSpec(), resize
        self.device, self.batch_size, self.num_threads = device, batch_size, num_threads
        self.device_id = (torch.cuda.current_device() if device_id is None else device_id) if device == "gpu" else None
        self.fallback = PillowImageProcessor(self.spec)
        self._pipe = None
        self.stats = {"dali": 0, "pillow": 0}

    # ---------------------------------------------------------------------------------------------

    def _build(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        gpu = self.device == "gpu"

        @pipeline_def(batch_size=self.batch_size, num_threads=self.num_threads, device_id=self.device_id,
                      prefetch_queue_depth=1)
        def pipe():
            enc = fn.external_source(name="encoded", dtype=types.UINT8, ndim=1)
            size1 = fn.external_source(name="size1", dtype=types.FLOAT, ndim=1)
            size2 = fn.external_source(name="size2", dtype=types.FLOAT, ndim=1)
            # fancy upsampling: nvJPEG upsamples chroma like libjpeg-turbo (Pillow) instead of its own way
            img = fn.decoders.image(enc, device="mixed" if gpu else "cpu", output_type=types.RGB,
                                    jpeg_fancy_upsampling=True)
            if self.resize == "exact":  # uint8 HWC; resized by resample.pillow_bicubic
                return img
            for size in (size1, size2):  # two one-axis passes, uint8 in between, as Pillow
                img = fn.resize(img, size=size, interp_type=types.INTERP_CUBIC, antialias=True, dtype=types.UINT8)
            return fn.crop_mirror_normalize(
                img, dtype=types.FLOAT, output_layout="CHW",
                mean=[255.0 * m for m in CLIP_MEAN], std=[255.0 * s for s in CLIP_STD],
            )

        p = pipe()
        p.build()
        return p

    def _run(self, encoded: list[np.ndarray], sizes1: list, sizes2: list) -> list[torch.Tensor]:
        if self._pipe is None:
            self._pipe = self._build()
        self._pipe.feed_input("encoded", encoded)
        if self.resize == "dali":
            self._pipe.feed_input("size1", [np.asarray(s, np.float32) for s in sizes1])
            self._pipe.feed_input("size2", [np.asarray(s, np.float32) for s in sizes2])
        (out,) = self._pipe.run()
        if self.device == "gpu":
            from nvidia.dali.plugin.pytorch import feed_ndarray

            tensors = []
            for k in range(len(encoded)):
                t = out[k]
                dtype = torch.uint8 if self.resize == "exact" else torch.float32
                dst = torch.empty(tuple(t.shape()), dtype=dtype, device=f"cuda:{self.device_id}")
                feed_ndarray(t, dst, cuda_stream=torch.cuda.current_stream(self.device_id))
                tensors.append(dst)
            return tensors
        return [torch.from_numpy(np.array(out[k])) for k in range(len(encoded))]

    def _run_chunk(self, jobs: list[tuple[int, ImageSource, bytes, tuple, tuple]], results: list) -> None:
        try:
            outs = self._run([np.frombuffer(b, np.uint8) for _, _, b, _, _ in jobs],
                             [s1 for *_, s1, _ in jobs], [s2 for *_, s2 in jobs])
        except Exception as e:  # a corrupt image fails the whole DALI batch: find it with Pillow
            logger.warning("DALI batch of %d images failed (%s); decoding it with Pillow", len(jobs), e)
            self._pipe = None  # a failed pipeline is not reusable
            for k, src, *_ in jobs:  # raises ImageError naming the bad image
                results[k] = self.fallback.process_one(src)
                self.stats["pillow"] += 1
            return
        for (k, _, _, first, second), x in zip(jobs, outs):
            if self.resize == "exact":
                patches, gh, gw = patchify_uint8(self._exact(x, first, second), self.spec)
            else:  # DALI already normalised: float32 [3, h, w]
                patches, gh, gw = patchify(x, self.spec)
            results[k] = ProcessedImages(patches, torch.tensor([[1, gh, gw]], dtype=torch.long))
            self.stats["dali"] += 1

    def _exact(self, hwc: torch.Tensor, first: tuple, second: tuple) -> torch.Tensor:
        """uint8 [H, W, 3] -> uint8 [h, w, 3] with Pillow's bicubic (on the tensor's device)."""
        from megatron_mmr1.data.resample import pillow_bicubic

        vertical_first = first[1] == hwc.shape[1] and first[0] != hwc.shape[0]
        return pillow_bicubic(hwc, second, vertical_first=vertical_first)

    # ---------------------------------------------------------------------------------------------

    def process_many(self, prompts: Sequence[Sequence[ImageSource]]) -> list[ProcessedImages]:
        """Images of many prompts in DALI batches; one ProcessedImages per prompt."""
        flat = [src for imgs in prompts for src in imgs]
        results: list[Optional[ProcessedImages]] = [None] * len(flat)
        jobs = []
        for k, src in enumerate(flat):
            if isinstance(src, Image.Image):  # already decoded: nothing for DALI to do
                results[k] = self.fallback.process_one(src)
                self.stats["pillow"] += 1
                continue
            with open_image(src, self.spec) as img:  # header only: pixel limit, format, mode, orientation
                decodable, (h, w) = dali_decodable(img), oriented_size(img)
            if not decodable:
                results[k] = self.fallback.process_one(src)
                self.stats["pillow"] += 1
                continue
            target = self.spec.target_size(h, w)
            first, second = resize_passes((h, w), target)
            jobs.append((k, src, read_bytes(src) if not isinstance(src, (bytes, bytearray)) else bytes(src),
                         first, second))
        for i in range(0, len(jobs), self.batch_size):
            self._run_chunk(jobs[i : i + self.batch_size], results)
        out, pos = [], 0
        for imgs in prompts:
            part = results[pos : pos + len(imgs)]
            pos += len(imgs)
            if self.device == "gpu":  # Pillow fallbacks join the DALI results on the GPU
                part = [ProcessedImages(p.pixel_values.to(f"cuda:{self.device_id}"), p.image_grid_thw) for p in part]
            out.append(ProcessedImages.concat(part, self.spec))
        return out

    def __call__(self, images: Sequence[ImageSource]) -> ProcessedImages:
        return self.process_many([images])[0]


__all__ = ["DaliImageProcessor", "dali_available", "pillow_shrinks_first", "resize_passes", "ImageError", "describe"]
