"""Runs the Triton-backend kernel tests on CPU: Triton's interpreter must be chosen before triton is
first imported (TRITON_INTERPRET=1), and other test modules import it early (megatron-core does), so
the tests named *triton* run here in a fresh pytest process. Skipped when this process can already
run them (CUDA present, or the whole session was started with TRITON_INTERPRET=1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mmr1_kernels._dispatch import interpreter_mode

HERE = Path(__file__).parent
FILES = ["test_fused_logprobs.py", "test_fused_grpo_loss.py", "test_vps_stats.py", "test_liger_parity.py"]


@pytest.mark.slow
def test_triton_kernels_under_interpreter():
    if torch.cuda.is_available() or interpreter_mode():
        pytest.skip("the *triton* tests run in this process")
    env = dict(os.environ, TRITON_INTERPRET="1")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-k", "triton", *(str(HERE / f) for f in FILES)]
    proc = subprocess.run(cmd, env=env, cwd=HERE.parents[1], capture_output=True, text=True, timeout=600)
    tail = proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.returncode == 0, f"interpreter run failed:\n{tail}"
    assert " passed" in proc.stdout and "skipped" not in proc.stdout.splitlines()[-1], tail
