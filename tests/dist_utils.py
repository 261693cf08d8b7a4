"""One place that launches multi-rank tests: spawned processes with torchrun's environment variables.

On CPU every rank uses gloo, so any test can ask for 2 ranks; GPU tests ask for as many GPUs as they
need through :func:`require_gpus` and skip when the machine has fewer.
"""

from __future__ import annotations

import os
import pickle
import queue
import traceback
from typing import Any, Callable

import pytest
import torch
import torch.multiprocessing as mp

from megatron_mmr1.parallel import free_port
from megatron_mmr1.utils.procs import die_with_parent


def require_gpus(n: int) -> None:
    if torch.cuda.device_count() < n:
        pytest.skip(f"needs {n} CUDA device(s), found {torch.cuda.device_count()}")


def _entry(rank: int, world_size: int, port: int, fn: Callable, args: tuple, results: Any, parent: int) -> None:
    die_with_parent(expected_parent=parent)  # a killed pytest takes its ranks along
    os.environ.update(
        RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1",
    )
    try:
        # Plain pickle bytes: torch's queue would share tensor memory with a process about to exit.
        results.put((rank, True, pickle.dumps(fn(*args))))
    except BaseException:  # report every failure with its traceback to the parent
        results.put((rank, False, traceback.format_exc()))
    finally:
        from megatron_mmr1.parallel import destroy

        destroy()


def spawn(fn: Callable, world_size: int, *args: Any, timeout_s: float = 300.0) -> list[Any]:
    """Run ``fn(*args)`` on ``world_size`` ranks; returns the per-rank results, raises on any failure."""
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_entry, args=(r, world_size, port, fn, args, results, os.getpid()))
             for r in range(world_size)]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    errors = []
    try:
        for _ in range(world_size):
            rank, ok, value = results.get(timeout=timeout_s)
            if ok:
                out[rank] = pickle.loads(value)
            else:
                errors.append(f"rank {rank} failed:\n{value}")
                break
    except queue.Empty:
        errors.append(f"timed out after {timeout_s}s waiting for {world_size - len(out)} rank(s)")
    finally:
        for p in procs:
            p.join(timeout=5 if errors else 30)
            if p.is_alive():
                p.kill()
    if errors:
        raise AssertionError("\n".join(errors))
    return [out[r] for r in range(world_size)]
