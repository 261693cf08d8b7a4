"""Sampler resume: run k steps, save, reload in a *fresh process*, continue; the drawn index sequence
must equal an uninterrupted run (issue 6 acceptance). Covers VAS full/online/training refresh and uniform."""

import json
import subprocess
import sys
from pathlib import Path

from tests.sampling._resume_driver import main as run_steps

DRIVER = Path(__file__).with_name("_resume_driver.py")
MODES = ("full", "online", "training", "uniform")


def test_resume_in_fresh_process_draws_identical_batches(tmp_path):
    total, k = 14, 5  # k = 5 is mid refresh interval (T = 3), so the refresh after resume is also checked
    jobs, expected = [], {}
    for mode in MODES:
        ckpt = tmp_path / f"{mode}.pt"
        expected[mode] = run_steps(mode, 0, total, None, None)  # uninterrupted, this process
        first = run_steps(mode, 0, k, None, str(ckpt))
        jobs.append([mode, k, total, str(ckpt), None])
        expected[mode + "/first"] = first
    out = subprocess.run([sys.executable, str(DRIVER), json.dumps(jobs)], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    resumed = json.loads(out.stdout.strip().splitlines()[-1])
    for mode, second in zip(MODES, resumed):
        assert expected[mode + "/first"]["batches"] + second["batches"] == expected[mode]["batches"], mode
        assert second["weights"] == expected[mode]["weights"], mode  # the VPS store resumed exactly too
        assert len(set(map(tuple, expected[mode]["batches"]))) > 1  # the batches really change from step to step
        if mode != "uniform":
            assert len(set(second["weights"])) > 1, mode  # scores were learnt, not all at the prior
