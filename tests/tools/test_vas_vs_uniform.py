"""tools/vas_vs_uniform.py as a command (the aggregation itself is tested in tests/sampling/test_compare.py):
--report-only writes the whole-run and per-epoch tables and the figure from finished run records, and a
record made with other settings is refused with a one-line error naming it."""

import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

from megatron_mmr1.sampling import compare
from tests.sampling.test_compare import ARMS, B, N, STEPS, synthetic_record

ROOT = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "kernels"), os.environ.get("PYTHONPATH", "")]))


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "tools" / "vas_vs_uniform.py"), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=300)


def test_report_only(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    settings = asdict(compare.Settings(steps=STEPS, batch=B, n=N, steps_per_epoch=2, kl_loss=True))
    for seed in range(2):
        for arm in ARMS:
            (runs / f"{arm}_s{seed}.json").write_text(json.dumps(dict(synthetic_record(arm, seed), settings=settings)))
    out = _cli("--report-only", "--out", str(tmp_path))
    assert out.returncode == 0, out.stderr
    table = (tmp_path / "table.md").read_text()
    assert table in out.stdout and "Per epoch of the pool" in table
    assert "| vas-full | 2 (3-4) | 0.250 ± 0.000 | 0.250 / 0.250 |" in table
    assert (tmp_path / "vas_vs_uniform.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (runs / "uniform_s0.json").write_text(json.dumps(dict(synthetic_record("uniform", 0),
                                                          settings=dict(settings, lr=1.0))))
    out = _cli("--report-only", "--out", str(tmp_path))
    assert out.returncode == 2 and "records with other settings than" in out.stderr
    assert "uniform_s0.json" in out.stderr and len(out.stderr.strip().splitlines()) == 1
