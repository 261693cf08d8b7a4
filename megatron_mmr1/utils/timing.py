"""Wall-clock timing for benchmarks and the GPU check: one warm-up, then the median of repeated runs."""

from __future__ import annotations

import statistics
import time
from typing import Any, Callable


def median_seconds(fn: Callable[[], Any], repeat: int, cuda: bool = False) -> float:
    """Median wall seconds of fn() over ``repeat`` runs after one warm-up; ``cuda`` waits for the device
    after each run (kernels launch asynchronously)."""
    if cuda:
        import torch

        sync = torch.cuda.synchronize
    else:
        def sync() -> None:
            return None
    fn()
    sync()
    ts = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync()
        ts.append(time.perf_counter() - t0)
    return statistics.median(ts)
