"""Every Triton kernel of mmr1_kernels compiles ahead of time for sm_90 (H100) at its production block
sizes in bf16 (and fp32), within H100's per-block resources; prints shared memory / registers.

Runs ``python -m mmr1_kernels.aot`` in a fresh process: compilation needs triton imported without
TRITON_INTERPRET, which this test process may have set."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

H100_MAX_SHARED_PER_BLOCK = 227 * 1024  # bytes (sm_90 opt-in maximum)


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    code = "import json; from mmr1_kernels.aot import compile_all; " \
           "[print(json.dumps(r)) for dt in ('bf16', 'fp32') for r in compile_all(90, dt)]"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


def test_every_kernel_compiles_for_sm90(compiled):
    from mmr1_kernels.aot import all_specs

    def name(spec):
        k = spec["kernel"]
        return getattr(k, "__name__", None) or k.fn.__name__

    for dtype in ("bf16", "fp32"):  # every production launch of every kernel was compiled
        assert sorted(r["kernel"] for r in compiled if r["dtype"] == dtype) == sorted(map(name, all_specs(dtype)))
    assert {"_vocab_stats_kernel", "_dlogits_kernel", "_levenshtein_kernel"} <= {r["kernel"] for r in compiled}
    for r in compiled:
        print(f"{r['kernel']:<24} {r['dtype']:>5} sm_90 BLOCK={r['constexprs']} warps={r['num_warps']} "
              f"shared={r['shared_bytes']} B regs={r.get('registers')} spills={r.get('spill_store_bytes')} B")
        assert r["cubin_bytes"] > 0
        assert r["shared_bytes"] <= H100_MAX_SHARED_PER_BLOCK
        assert r.get("spill_store_bytes") in (0, None), f"{r['kernel']} spills registers"
