"""megatron_mmr1.sampling.simulation, the quick setting: the bandit simulation runs end to end through the
real GRPO and VAS code, and reports every quantity issue 6 asks for (the paper's direction is not asserted
here: the full run's numbers are in docs/vas.md)."""

import math

from megatron_mmr1.sampling.simulation import ARMS, METRICS, SimConfig, format_table, plot, simulate, summarise


def test_quick_run_structure(tmp_path):
    cfg = SimConfig.quick()
    results = simulate(cfg)
    table = summarise(results, cfg)
    png = tmp_path / "sim.png"
    plot(results, cfg, png)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert set(table) == set(ARMS)
    for arm, per_seed in results.items():
        for hist in per_seed.values():
            assert set(hist) == set(METRICS)
            assert all(len(v) == cfg.steps for v in hist.values())
            assert all(0.0 <= z <= 1.0 for z in hist["zero_variance_frac"])
            assert all(math.isfinite(g) and g >= 0 for g in hist["grad_norm"])
            assert hist["rollouts"] == sorted(hist["rollouts"])
    vas = table["vas"]
    assert math.isfinite(vas["reward_var"]) and vas["reward_var"] > 0  # VAS batch reward variance is measured
    assert table["dapo"]["zero_var_frac"] <= table["uniform"]["zero_var_frac"]  # filter works
    # VAS spends scoring rollouts beyond the training ones; uniform does not
    assert table["vas"]["rollouts_total"] > table["uniform"]["rollouts_total"]
    assert "| vas |" in format_table(table, len(cfg.seeds))
