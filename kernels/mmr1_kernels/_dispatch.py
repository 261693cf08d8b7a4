"""Backend choice for every kernel in mmr1_kernels: Triton on CUDA (or on CPU tensors when Triton runs
in interpreter mode, TRITON_INTERPRET=1 set before triton was first imported), torch otherwise."""

from __future__ import annotations

import torch

try:
    import triton  # noqa: F401
    import triton.language as tl

    HAS_TRITON = True
except ImportError:  # pragma: no cover - triton is a base dependency
    HAS_TRITON = False

BACKENDS = ("auto", "triton", "torch")


def interpreter_mode() -> bool:
    """True when triton's kernels run in its CPU interpreter (decided once, when triton is imported)."""
    if not HAS_TRITON:
        return False
    from triton.runtime.interpreter import InterpretedFunction

    return isinstance(tl.standard.sum, InterpretedFunction)


def use_triton(backend: str, tensor: torch.Tensor) -> bool:
    """The single dispatch: "auto" picks Triton for CUDA tensors (or CPU tensors under the
    interpreter) and torch otherwise; "triton" / "torch" force one (an impossible "triton" raises)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend '{backend}' (known: {', '.join(BACKENDS)})")
    if backend == "torch":
        return False
    runnable = HAS_TRITON and (tensor.is_cuda or interpreter_mode())
    if backend == "triton" and not runnable:
        raise RuntimeError(
            "backend='triton' needs a CUDA tensor, or TRITON_INTERPRET=1 set before triton is imported"
        )
    return runnable
