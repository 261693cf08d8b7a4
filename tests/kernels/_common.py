"""Shared helpers of the kernel tests: backends, tolerances, comparisons."""

from __future__ import annotations

import pytest
import torch

from mmr1_kernels._dispatch import interpreter_mode

# fp32: both sides accumulate in fp32; differences come from summation order only (the 1e-5 relative).
# bf16: both sides share the bf16 logits GEMM (reference with upcast=False); the fused path also rounds
# dlogits and dX / dW to bf16 (8 mantissa bits: 2^-8 = 3.9e-3 relative per rounding; dW is summed over
# token chunks in fp32 and rounded once), so gradients agree to ~1e-2 of their largest entry; log-probs
# stay fp32.
TOL = {
    torch.float32: dict(value=1e-5, grad=1e-5),
    torch.bfloat16: dict(value=2e-3, grad=2e-2),
}


def backend_or_skip(backend: str) -> str:
    """'triton' runs on CUDA, or on CPU when this process runs Triton's interpreter; otherwise the test
    is skipped here and runs in the TRITON_INTERPRET=1 subprocess of test_triton_interpreter.py."""
    if backend == "triton" and not (torch.cuda.is_available() or interpreter_mode()):
        pytest.skip("Triton on CPU needs the interpreter: runs in test_triton_interpreter.py's subprocess")
    return backend


def device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def assert_rel_close(got: torch.Tensor, want: torch.Tensor, rel: float, what: str = "") -> None:
    """|got - want| <= rel * max|want| elementwise (relative to the tensor's scale)."""
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    scale = want.abs().max().clamp(min=1e-12)
    err = (got - want).abs().max()
    assert torch.isfinite(got).all(), f"{what}: non-finite values"
    assert err <= rel * scale, f"{what}: max |diff| {err:.3e} > {rel} * {scale:.3e}"
