"""tools/vas_simulation.py --quick: the bandit simulation runs end to end through the real GRPO and
VAS code, and reports every quantity issue 6 asks for (the paper's direction is not asserted here:
the full run's numbers are in docs/vas.md)."""

import importlib.util
import math
import sys
from pathlib import Path

TOOL = Path(__file__).resolve().parents[2] / "tools" / "vas_simulation.py"


def _load():
    spec = importlib.util.spec_from_file_location("vas_simulation", TOOL)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up while the file executes
    spec.loader.exec_module(mod)
    return mod


def test_quick_run_structure(tmp_path, capsys):
    sim = _load()
    png = tmp_path / "sim.png"
    out = sim.main(["--quick", "--out", str(png)])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(out["table"]) == set(sim.ARMS)
    for arm, per_seed in out["results"].items():
        for hist in per_seed.values():
            assert set(hist) == set(sim.METRICS)
            assert all(len(v) == 10 for v in hist.values())
            assert all(0.0 <= z <= 1.0 for z in hist["zero_variance_frac"])
            assert all(math.isfinite(g) and g >= 0 for g in hist["grad_norm"])
            assert hist["rollouts"] == sorted(hist["rollouts"])
    vas = out["table"]["vas"]
    assert math.isfinite(vas["reward_var"]) and vas["reward_var"] > 0  # VAS batch reward variance is measured
    assert out["table"]["dapo"]["zero_var_frac"] <= out["table"]["uniform"]["zero_var_frac"]  # filter works
    # VAS spends scoring rollouts beyond the training ones; uniform does not
    assert out["table"]["vas"]["rollouts_total"] > out["table"]["uniform"]["rollouts_total"]
    assert "| vas |" in capsys.readouterr().out
