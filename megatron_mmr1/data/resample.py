"""Pillow's 8-bit bicubic resize, bit for bit, as two matrix products on any torch device.

Why: the rollout engine and transformers resize with Pillow. DALI's cubic resize agrees inside the
image but handles borders differently (edge replication vs Pillow's renormalised truncated kernel),
so upscaled images -- common with min_pixels -- differ by up to ~8 levels along the edges. With this
module the GPU path decodes with DALI and resizes exactly like Pillow, on the GPU.

Pillow's algorithm (libImaging/Resample.c): per output pixel a window of the a=-0.5 cubic kernel,
stretched by the scale when shrinking, clipped to the image and renormalised; weights in fixed point
with 22 fraction bits; each one-axis pass rounds to uint8. Integer sums stay below 2**53, so float64
matrix products reproduce them exactly.
"""

from __future__ import annotations

import functools
import math

import numpy as np
import torch

PRECISION_BITS = 32 - 8 - 2
SUPPORT = 2.0


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    return np.where(
        x < 1.0,
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1,
        np.where(x < 2.0, (((x - 5) * x + 8) * x - 4) * a, 0.0),
    )


@functools.lru_cache(maxsize=1024)
def _compact_weights(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pillow's precompute_coeffs + fixed point: (window start [out], int weights [out, ksize], 0 past the window)."""
    scale = filterscale = in_size / out_size
    filterscale = max(filterscale, 1.0)
    support = SUPPORT * filterscale
    ksize = int(math.ceil(support)) * 2 + 1
    center = (np.arange(out_size) + 0.5) * scale
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C's (int) truncates; args are >= 0 here
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size) - xmin
    w = np.zeros((out_size, ksize))
    ww = np.zeros(out_size)
    for x in range(ksize):  # sequential sum, as in C
        k = np.where(x < xmax, _bicubic((x + xmin - center + 0.5) * (1.0 / filterscale)), 0.0)
        w[:, x] = k
        ww += k
    w = np.where(ww[:, None] != 0.0, w / np.where(ww == 0.0, 1.0, ww)[:, None], w)
    fixed = np.where(w < 0, np.trunc(-0.5 + w * (1 << PRECISION_BITS)), np.trunc(0.5 + w * (1 << PRECISION_BITS)))
    return xmin, fixed


def pillow_weights(in_size: int, out_size: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """[out_size, in_size] float64 fixed-point weights of one bicubic pass, built on ``device``
    from the compact form (only out_size * ksize numbers cross to the GPU)."""
    xmin, fixed = _compact_weights(in_size, out_size)
    out, ksize = fixed.shape
    cols = torch.from_numpy(xmin).to(device)[:, None] + torch.arange(ksize, device=device)[None, :]
    vals = torch.from_numpy(fixed).to(device)
    keep = cols < in_size  # weights past the clipped window are 0
    dense = torch.zeros(out, in_size, dtype=torch.float64, device=device)
    rows = torch.arange(out, device=device)[:, None].expand(out, ksize)
    dense[rows[keep], cols[keep]] = vals[keep]
    return dense


def _clip8(acc: torch.Tensor) -> torch.Tensor:
    """Pillow's clip8 on the fixed-point sum (which starts at the rounding offset 2**21)."""
    return torch.floor(acc / (1 << PRECISION_BITS)).clamp_(0, 255)


def _pass(x: torch.Tensor, k: torch.Tensor, dim: int) -> torch.Tensor:
    """One-axis pass over ``dim`` of a float64 [H, W, C] tensor of integers 0..255; k is (out, in)."""
    offset = float(1 << (PRECISION_BITS - 1))
    if dim == 1:  # horizontal: (H, W, C) -> (H, W', C)
        acc = torch.einsum("hwc,ow->hoc", x, k)
    else:  # vertical: (H, W, C) -> (H', W, C)
        acc = torch.einsum("hwc,oh->owc", x, k)
    return _clip8(acc + offset)


def pillow_bicubic(img: torch.Tensor, size: tuple[int, int], vertical_first: bool = False) -> torch.Tensor:
    """uint8 [H, W, C] -> uint8 [h, w, C], equal to ``PIL.Image.resize((w, h), BICUBIC)``.

    ``vertical_first``: the pass order Pillow picks (see :func:`megatron_mmr1.data.dali.resize_passes`).
    """
    h_in, w_in = img.shape[:2]
    h, w = size
    x = img.to(torch.float64)
    passes = [(1, w_in, w), (0, h_in, h)]
    if vertical_first:
        passes.reverse()
    for dim, n_in, n_out in passes:
        if n_in != n_out:
            x = _pass(x, pillow_weights(n_in, n_out, x.device), dim)
    return x.to(torch.uint8)
