"""Small command-line fixes of issue 14: what a newcomer's first commands must do."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")


def _tool(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "tools" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def test_quick_vas_simulation_leaves_the_docs_figure_alone():
    sim = _tool("vas_simulation")
    docs = REPO / "docs" / "vas_simulation.png"
    assert sim.figure_path(None, quick=False) == docs
    assert sim.figure_path(None, quick=True).resolve() != docs.resolve()
    assert sim.figure_path(Path("x.png"), quick=True) == Path("x.png")


def test_aot_help_prints_usage():
    proc = subprocess.run([sys.executable, "-m", "mmr1_kernels.aot", "--help"], capture_output=True, text=True,
                          env=ENV, cwd=REPO, timeout=120)
    assert proc.returncode == 0 and "usage: python -m mmr1_kernels.aot" in proc.stdout, proc.stderr[-2000:]


def test_synthetic_with_no_items_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "megatron_mmr1.data.synthetic", "--out", str(tmp_path / "d"),
                           "--num", "0"], capture_output=True, text=True, env=ENV, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].endswith("error: --num 0: need at least 1 RL item")
    assert not (tmp_path / "d").exists()


def test_docs_are_in_the_repository():
    """Every reference to the method's description points into docs/ (a design file outside the
    repository helps no one who cloned it)."""
    needle = "DESIGN" + ".md"
    files = [REPO / "README.md", *[p for d in ("megatron_mmr1", "kernels", "tools", "tests", "examples", "docs")
                                   for p in (REPO / d).rglob("*") if p.suffix in (".py", ".md", ".yaml", ".sh")]]
    citing = [str(p.relative_to(REPO)) for p in files if needle in p.read_text(errors="ignore")]
    assert citing == []
    method = (REPO / "docs" / "method.md").read_text()
    for formula in ("p * (1 - p)", "alpha * OVS + beta * TDS", "(r_i - mean(r)) / (std(r) + eps)"):
        assert formula in method
