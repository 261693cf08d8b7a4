"""Triton-backend tests need CUDA or Triton's interpreter. Without either, this process deselects them
(they are not skipped features: test_triton_interpreter.py runs every one of them in a fresh
TRITON_INTERPRET=1 pytest process and fails if any of them fails or skips)."""

from __future__ import annotations

import torch

from mmr1_kernels._dispatch import interpreter_mode

_RUNNER = "test_triton_interpreter.py"


def _runs_here() -> bool:
    return torch.cuda.is_available() or interpreter_mode()


def pytest_report_header(config):
    if not _runs_here():
        return "kernels: Triton-backend tests (named *triton*) run in test_triton_interpreter.py's subprocess"
    return None


def pytest_collection_modifyitems(config, items):
    if _runs_here():
        return
    moved = [it for it in items if "triton" in it.nodeid.split("::", 1)[-1] and _RUNNER not in it.nodeid
             and "tests/kernels/" in it.nodeid.replace("\\", "/")]
    if moved:
        config.hook.pytest_deselected(items=moved)
        items[:] = [it for it in items if it not in moved]
