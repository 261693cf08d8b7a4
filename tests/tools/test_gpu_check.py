"""tools/gpu_check.sh: the dry run (what CI can run) goes through the real driver - check list, budgets,
worker process, one summary line per check, exit code - with each check's CPU-sized path or plan; a check
over its budget is killed and failed while the checks after it still run."""

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LINE = re.compile(r"^gpu-check  (\S+)\s+(PASS|FAIL|SKIP)\s+([\d.]+)s  (.+)$")


def summary(stdout: str) -> dict[str, tuple[str, str]]:
    return {m.group(1): (m.group(2), m.group(4)) for m in map(LINE.match, stdout.splitlines()) if m}


def test_dry_run_prints_one_line_per_check_and_exits_0(tmp_path):
    env = dict(os.environ, PY=sys.executable)
    proc = subprocess.run(["bash", "tools/gpu_check.sh", "--dry-run", "--work-dir", str(tmp_path)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    lines = summary(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "gpu_check.log").read_text()
    assert list(lines) == ["kernels", "overlap", "offload", "parity", "sft", "grpo", "memory_3b"]  # in order
    status = {k: v[0] for k, v in lines.items()}
    assert status == {"kernels": "PASS", "overlap": "PASS", "offload": "PASS", "parity": "PASS", "sft": "PASS",
                      "grpo": "SKIP", "memory_3b": "SKIP"}
    assert re.search(r"worst err/tol 0\.\d\d", lines["kernels"][1])
    assert "grad-norm rel diff 3 vs 1 micro-batches" in lines["overlap"][1]
    assert "reload bitwise True" in lines["offload"][1]
    assert "fp32 rel" in lines["parity"][1] and "bf16 rel" in lines["parity"][1]
    assert "resume rel diff" in lines["sft"][1]
    assert lines["grpo"][1].startswith("dry-run: plan validated")
    assert re.search(r"estimate \d+\.\d\d GiB", lines["memory_3b"][1])
    assert "5 PASS, 0 FAIL, 2 SKIP" in proc.stdout


def test_a_check_over_budget_fails_and_the_next_one_still_runs(tmp_path, capsys):
    from megatron_mmr1 import gpu_check as gc

    by_name = {c.name: c for c in gc.CHECKS}
    checks = [dataclasses.replace(by_name["kernels"], budget_s=0.01), by_name["memory_3b"]]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "kernels"),
                                                       os.environ.get("PYTHONPATH", "")]))
    old = os.environ.copy()
    os.environ.update(env)
    try:
        results = gc.drive(checks, dry_run=True, work_dir=tmp_path, log_path=tmp_path / "log")
    finally:
        os.environ.clear()
        os.environ.update(old)
    assert [(r.name, r.status) for r in results] == [("kernels", "FAIL"), ("memory_3b", "SKIP")]
    assert "timed out after its 0 s budget" in results[0].key
    out = capsys.readouterr().out
    assert summary(out)["kernels"][0] == "FAIL"
