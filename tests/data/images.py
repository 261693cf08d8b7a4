"""Real-looking test images (gradients, noise, shapes, text) of odd sizes and modes."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw


def photo(h: int, w: int, mode: str = "RGB", seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    a = np.stack([xx * 255 / max(w - 1, 1), yy * 255 / max(h - 1, 1), ((xx + yy) % 64) * 4], -1)
    a = np.clip(a + rng.normal(0, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    img = Image.fromarray(a)
    d = ImageDraw.Draw(img)
    d.ellipse([w // 5, h // 5, w // 2, h // 2], fill=(200, 30, 60))
    d.text((2, 2), "42", fill=(0, 0, 0))
    if mode == "RGBA":
        img = img.convert("RGBA")
        alpha = Image.fromarray(((xx * 255) // max(w - 1, 1)).astype(np.uint8))
        img.putalpha(alpha)
        return img
    return img.convert(mode)


def encode(img: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()
