"""Run unmodified megatron-core (model, schedules, DDP) on CPU over gloo.

megatron-core assumes CUDA in a handful of places: ``torch.cuda.current_device()``, tensors created
with ``device="cuda"`` / ``torch.cuda.current_device()``, ``Tensor.cuda()``, the CUDA RNG tracker,
streams and events. This module redirects exactly those to the CPU. It is the project's one
deliberate patch: small, in one file, active only when no GPU is used, and undone by
:func:`disable`. Tests prove TP=2 and PP=2 give the same loss and gradients as TP=1/PP=1.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import torch
from torch.overrides import TorchFunctionMode

_saved: dict[tuple[Any, str], Any] = {}
_mode: "_CudaToCpuMode | None" = None


def _is_cuda(device: Any) -> bool:
    if isinstance(device, int) and not isinstance(device, bool):
        return True  # megatron passes torch.cuda.current_device() (an int) as device
    if isinstance(device, torch.device):
        return device.type == "cuda"
    return isinstance(device, str) and device.startswith("cuda")


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites ``device=cuda`` arguments and ``.cuda()``/``.to(cuda)`` calls to the CPU."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if _is_cuda(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.to:
            args = tuple("cpu" if _is_cuda(a) else a for a in args)
        return func(*args, **kwargs)


class _NullStream:
    """Stands in for torch.cuda.Stream/Event: CPU work is already ordered."""

    def __init__(self, *args, **kwargs):
        pass

    def wait_stream(self, *args):
        pass

    def wait_event(self, *args):
        pass

    def record_event(self, *args):
        return _NullStream()

    def record(self, *args):
        pass

    def synchronize(self):
        pass

    def query(self):
        return True

    def elapsed_time(self, other):
        return 0.0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _patch(owner: Any, name: str, value: Any) -> None:
    key = (owner, name)
    if key not in _saved:
        _saved[key] = getattr(owner, name, None)
    setattr(owner, name, value)


def _cpu_rng_get(*args, **kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _cpu_rng_set(state: torch.Tensor, *args, **kwargs) -> None:
    torch.set_rng_state(state)


def enable() -> None:
    """Activate the CPU redirection for this process (idempotent)."""
    global _mode
    if _mode is not None:
        return
    from megatron.core.fusions import fused_softmax
    from megatron.core.tensor_parallel import random as mcore_random

    cuda = torch.cuda
    _patch(cuda, "current_device", lambda: 0)
    _patch(cuda, "device_count", lambda: 0)
    _patch(cuda, "set_device", lambda *a, **k: None)
    _patch(cuda, "synchronize", lambda *a, **k: None)
    _patch(cuda, "empty_cache", lambda *a, **k: None)
    # The CUDA generator's role (megatron's RNG tracker) is played by the CPU default generator.
    _patch(cuda, "manual_seed", lambda seed: torch.default_generator.manual_seed(int(seed)))
    _patch(cuda, "get_rng_state", _cpu_rng_get)
    _patch(cuda, "set_rng_state", _cpu_rng_set)
    _patch(cuda, "Stream", _NullStream)
    _patch(cuda, "Event", _NullStream)
    _patch(cuda, "current_stream", lambda *a, **k: _NullStream())
    _patch(cuda, "default_stream", lambda *a, **k: _NullStream())
    _patch(cuda, "stream", lambda *a, **k: contextlib.nullcontext())
    _patch(cuda, "memory_allocated", lambda *a, **k: 0)
    _patch(cuda, "max_memory_allocated", lambda *a, **k: 0)
    # Activation recompute re-runs forward inside autograd, outside the mode: build this mask on CPU.
    _patch(fused_softmax, "get_default_causal_mask",
           lambda sq: torch.triu(torch.ones(sq, sq, dtype=torch.bool), diagonal=1))
    _patch(mcore_random, "_get_cuda_rng_state", _cpu_rng_get)
    _patch(mcore_random, "_set_cuda_rng_state", _cpu_rng_set)
    _mode = _CudaToCpuMode()
    _mode.__enter__()


def disable() -> None:
    """Undo :func:`enable` (tests use it to leave the process as they found it)."""
    global _mode
    if _mode is None:
        return
    _mode.__exit__(None, None, None)
    _mode = None
    for (owner, name), value in _saved.items():
        setattr(owner, name, value)
    _saved.clear()


def is_enabled() -> bool:
    return _mode is not None


def cpu_safe(fn: Callable) -> Callable:
    """Decorator for entry points that must run under the layer when CUDA is absent."""

    def wrapper(*args, **kwargs):
        if not torch.cuda.is_available():
            enable()
        return fn(*args, **kwargs)

    return wrapper
