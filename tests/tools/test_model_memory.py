"""tools/model_memory.py: bad layouts get one clear line (the run config's own rules), and the table
states the reference-policy weights (on CPU, swapped in for the reference forward)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOL = ROOT / "tools" / "model_memory.py"


def run(*args):
    return subprocess.run([sys.executable, str(TOOL), *args], capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.mark.parametrize("layout,needle", [
    ("foo", "--layout 'foo': expected preset:tp:pp:dp"),
    ("qwen2.5-vl-7b:4:1", "expected preset:tp:pp:dp"),
    ("qwen2.5-vl-7b:0:1:2", "expected preset:tp:pp:dp"),
    ("qwen2.5-vl-7b:3:1:2", "parallel.tp=3 does not divide model.num_attention_heads=28"),
    ("qwen9:1:1:1", "unknown preset 'qwen9'"),
])
def test_bad_layouts_give_one_line(layout, needle):
    proc = run("--layout", layout)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr


def test_reference_weights_column_at_7b():
    proc = run("--layout", "qwen2.5-vl-7b:4:1:2", "--layout", "qwen2.5-vl-7b:2:2:2")
    assert proc.returncode == 0, proc.stderr
    rows = [r.split("|")[1:-1] for r in proc.stdout.splitlines() if r.startswith("| qwen2.5-vl-7b")]
    assert len(rows) == 2  # two layouts of one preset both listed
    for cells in rows:
        weights, reference = cells[3].strip(), cells[7].strip()
        assert reference == f"0 / {weights}"  # no GPU bytes while idle; the CPU copy is the bf16 shard
