"""Images/s of Qwen2.5-VL preprocessing: Pillow with 0..N loader workers, DALI side by side.

Each path turns encoded images into ``pixel_values`` + ``image_grid_thw`` (decode, smart_resize,
bicubic, normalise, patchify). Pillow runs in torch DataLoader worker processes; DALI (when installed)
runs batched in the main process -- on the GPU when CUDA is up, on the CPU with ``--dali-cpu``. All
numbers of one run come from the same images on the same machine; ratios are to Pillow in-process.

    python tools/bench_data.py --num-images 128 --workers 1,2,4 --size 640x480 --format JPEG
"""

from __future__ import annotations

import argparse
import io
import os
import time

import numpy as np
import torch
from PIL import Image

from megatron_mmr1.data.vision import PillowImageProcessor, VisionSpec


def make_images(n: int, size: tuple[int, int], fmt: str, seed: int = 0) -> list[bytes]:
    """Photo-like images (smooth gradients + noise + shapes), sizes jittered +-25% around ``size``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        w = int(size[0] * rng.uniform(0.75, 1.25))
        h = int(size[1] * rng.uniform(0.75, 1.25))
        yy, xx = np.mgrid[0:h, 0:w]
        a = np.stack([xx * 255 / w, yy * 255 / h, ((xx + yy) % 97) * 2.6], -1) + rng.normal(0, 12, (h, w, 3))
        img = Image.fromarray(np.clip(a, 0, 255).astype(np.uint8))
        buf = io.BytesIO()
        img.save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
        out.append(buf.getvalue())
    return out


class _Images(torch.utils.data.Dataset):
    def __init__(self, images: list[bytes], spec: VisionSpec):
        self.images, self.proc = images, PillowImageProcessor(spec)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        out = self.proc([self.images[i]])
        return out.pixel_values.shape[0]


def bench_pillow(images: list[bytes], spec: VisionSpec, workers: int, batch: int) -> float:
    ds = _Images(images, spec)
    if workers == 0:
        t = time.perf_counter()
        for i in range(len(ds)):
            ds[i]
        return len(ds) / (time.perf_counter() - t)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch, num_workers=workers, collate_fn=list,
                                         prefetch_factor=2, persistent_workers=True)
    next(iter(loader))  # start the workers outside the timed region
    t = time.perf_counter()
    n = sum(len(b) for b in loader)
    return n / (time.perf_counter() - t)


def bench_dali(images: list[bytes], spec: VisionSpec, device: str, resize: str, batch: int) -> float:
    from megatron_mmr1.data.dali import DaliImageProcessor

    proc = DaliImageProcessor(spec, device=device, batch_size=batch, resize=resize)
    proc.process_many([[x] for x in images[:batch]])  # build + warm up
    if device == "gpu":
        torch.cuda.synchronize()
    t = time.perf_counter()
    for i in range(0, len(images), batch):
        proc.process_many([[x] for x in images[i : i + batch]])
    if device == "gpu":
        torch.cuda.synchronize()
    return len(images) / (time.perf_counter() - t)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-images", type=int, default=128)
    ap.add_argument("--size", default="640x480", help="WxH around which image sizes vary")
    ap.add_argument("--format", default="JPEG", choices=["JPEG", "PNG"])
    ap.add_argument("--workers", default=None, help="comma list of worker counts (default 0,1,2,..,cores)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--min-pixels", type=int, default=7056)
    ap.add_argument("--max-pixels", type=int, default=1048576)
    ap.add_argument("--dali-cpu", action="store_true", help="also time DALI's CPU pipeline")
    args = ap.parse_args(argv)

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    workers = [int(w) for w in args.workers.split(",")] if args.workers else sorted({0, 1, 2, max(1, cores // 2), cores})
    w, h = (int(v) for v in args.size.split("x"))
    spec = VisionSpec(args.min_pixels, args.max_pixels)
    images = make_images(args.num_images, (w, h), args.format)
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
    print(f"cores available: {cores}   gpu: {gpu}   torch threads: {torch.get_num_threads()}")
    print(f"{args.num_images} {args.format} images around {w}x{h}, min/max pixels {spec.min_pixels}/{spec.max_pixels}")
    print(f"{'path':34s} {'images/s':>10s} {'vs pillow x0':>13s}")
    base = None
    for k in workers:
        rate = bench_pillow(images, spec, k, args.batch)
        base = base or rate
        label = "pillow in-process" if k == 0 else f"pillow, {k} loader worker{'s' if k > 1 else ''}"
        print(f"{label:34s} {rate:10.1f} {rate / base:12.2f}x")

    from megatron_mmr1.data.dali import dali_available

    if not dali_available():
        print("dali: not installed (pip install nvidia-dali-cuda120) -- skipped")
        return
    runs = []
    if torch.cuda.is_available():
        runs += [("gpu", "exact"), ("gpu", "dali")]
    if args.dali_cpu:
        runs += [("cpu", "exact"), ("cpu", "dali")]
    if not runs:
        print("dali: no CUDA device (use --dali-cpu to time DALI's CPU pipeline) -- skipped")
    for device, resize in runs:
        rate = bench_dali(images, spec, device, resize, args.batch)
        print(f"{f'dali {device}, resize={resize}':34s} {rate:10.1f} {rate / base:12.2f}x")


if __name__ == "__main__":
    main()
