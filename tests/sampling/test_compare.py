"""megatron_mmr1.sampling.compare without training: aggregation of run records (means, sample std over
seeds, rollouts with VAS scoring and filtered-out groups included, per-epoch rows), the tables, the figure's
curves, the arms' trainer overrides, the prompt pool, the run plan (resume) and bad records."""

import json
import statistics
from dataclasses import asdict
from pathlib import Path

import pytest

from megatron_mmr1.sampling import compare as vvu

ARMS = ("uniform", "vas-full", "vas-online")
STEPS, B, N = 4, 2, 4
FINAL_ACC = {"uniform": [0.30, 0.40, 0.50], "vas-full": [0.35, 0.45, 0.40], "vas-online": [0.20, 0.30, 0.40]}
SCORING = {"uniform": 0.0, "vas-full": 64.0, "vas-online": 8.0}
ZERO_VAR = {"uniform": [0.5, 1.0, 0.5, 1.0], "vas-full": [0.0, 0.5, 0.0, 0.5], "vas-online": [0.5, 0.5, 0.0, 0.5]}


def synthetic_record(arm: str, seed: int) -> dict:
    """A run record shaped as the worker writes it: history {key: [[step, value], ...]}."""
    settings = asdict(vvu.Settings(steps=STEPS, batch=B, n=N, kl_loss=True))
    steps = range(1, STEPS + 1)
    # vas-full scores before step 1; vas-online re-scores 8 rollouts at step 3
    scoring = [SCORING[arm] if arm == "vas-full" or s >= 3 else 0.0 for s in steps]
    history = {
        "rollouts_total": [[s, float(s * B * N)] for s in steps],
        "vas/scoring_rollouts": [[s, v] for s, v in zip(steps, scoring)],
        "vas/zero_variance_frac": [[s, v] for s, v in zip(steps, ZERO_VAR[arm])],
        "vas/zero_variance_frac_total": [[s, v / 2] for s, v in zip(steps, ZERO_VAR[arm])],
        "vas/reward_variance_mean_total": [[s, 0.1 * s] for s in steps],
        "grad_norm": [[s, 0.1 * s + seed] for s in steps],
        "reward/accuracy": [[s, 0.25] for s in steps],
        "eval/average/accuracy": [[0, 0.2], [STEPS, FINAL_ACC[arm][seed]]],
        "eval/val/format": [[0, 0.8], [STEPS, 0.5 + 0.1 * seed]],
        "policy/kl_ref": [[s, 0.01 * s * (seed + 1)] for s in steps],
    }
    return {"arm": arm, "seed": seed, "settings": settings, "history": history, "wall_s": 60.0 * (seed + 1)}


@pytest.fixture
def records():
    return [synthetic_record(a, s) for s in range(3) for a in ARMS]


def test_summary_rows(records):
    rows = {r["arm"]: r for r in vvu.summarize(records)}
    assert list(rows) == list(ARMS)  # in compare.ARMS order
    for arm, accs in FINAL_ACC.items():
        r = rows[arm]
        assert r["seeds"] == 3 and r["acc_first"] == pytest.approx(0.2)
        assert r["acc_final"] == pytest.approx(statistics.fmean(accs))
        assert r["acc_final_std"] == pytest.approx(statistics.stdev(accs))  # sample std over seeds
        assert r["acc_gain"] == pytest.approx(statistics.fmean(accs) - 0.2)
        assert r["zero_var"] == pytest.approx(statistics.fmean(ZERO_VAR[arm]))
        assert r["zero_var_total"] == pytest.approx(statistics.fmean(ZERO_VAR[arm]) / 2)
        assert r["grad_norm"] == pytest.approx(0.25 + 1.0)  # mean over steps 0.25, seeds 0, 1, 2
        assert r["train_rollouts"] == STEPS * B * N
        assert r["scoring_rollouts"] == SCORING[arm]
        assert r["total_rollouts"] == STEPS * B * N + SCORING[arm]
        assert r["wall_s"] == pytest.approx(120.0)
        assert r["format_final"] == pytest.approx(0.6) and r["kl_final"] == pytest.approx(0.01 * STEPS * 2)
    table = vvu.markdown_table(list(rows.values()))
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 3 and all(line.count("|") == lines[0].count("|") for line in lines)
    assert "| vas-full | 3 | 0.200 | 0.400 ± 0.050 | +0.200 ± 0.050 | 0.600 | 0.080 | 0.250 | 0.250 | 0.125 |" in table
    del records[0]["history"]["policy/kl_ref"]  # an optional column: one run without it leaves it empty
    assert "| uniform | 3 | 0.200 | 0.400 ± 0.100 | +0.200 ± 0.100 | 0.600 | n/a |" in vvu.markdown_table(
        vvu.summarize(records))
    assert "| 32 | 64 | 96 | 2.0 min |" in table
    for rec in records:  # runs without a KL term: no KL column, whatever the history holds
        rec["settings"]["kl_loss"] = False
    assert "| vas-full | 3 | 0.200 | 0.400 ± 0.050 | +0.200 ± 0.050 | 0.600 | n/a |" in vvu.markdown_table(
        vvu.summarize(records))


def test_rollouts_include_scoring():
    rec = synthetic_record("vas-online", 0)
    assert vvu.rollouts_at(rec) == {0: 0.0, 1: 8.0, 2: 16.0, 3: 32.0, 4: 40.0}
    xs, ys, sd = vvu.mean_curve([rec, synthetic_record("vas-online", 1)], "eval/average/accuracy", x="rollouts")
    assert xs == [0.0, 40.0] and ys == pytest.approx([0.2, 0.25]) and sd[0] == 0.0
    xs, ys, _ = vvu.mean_curve([rec], "vas/zero_variance_frac", x="step")
    assert xs == [1.0, 2.0, 3.0, 4.0] and ys == ZERO_VAR["vas-online"]


def test_mean_curve_uses_steps_all_seeds_logged(records):
    short = synthetic_record("uniform", 1)
    short["history"]["grad_norm"] = short["history"]["grad_norm"][:2]  # an interrupted run
    xs, ys, _ = vvu.mean_curve([records[0], short], "grad_norm")
    assert xs == [1.0, 2.0] and ys == pytest.approx([0.6, 0.7])


def test_running_mean():
    assert vvu.running_mean([1.0, 3.0, 5.0, 7.0], 3) == [1.0, 2.0, 3.0, 5.0]
    assert vvu.running_mean([1.0, 3.0], 1) == [1.0, 3.0]


def test_figure_curves(records, tmp_path):
    fig = vvu.make_figure(records)
    axes = fig.axes
    assert len(axes) == 2 * len(vvu.PANELS)
    zero_var_by_rollouts = axes[len(vvu.PANELS) + 1]
    lines = {line.get_label().split(" (")[0]: line for line in zero_var_by_rollouts.lines}
    assert set(lines) == set(ARMS)
    full = lines["vas-full"]
    assert list(full.get_xdata()) == [72.0, 80.0, 88.0, 96.0]  # 64 scoring rollouts before step 1
    assert list(full.get_ydata()) == pytest.approx([0.0, 0.25, 1 / 6, 1 / 3])  # 3-step running mean of ZERO_VAR
    acc = {line.get_label().split(" (")[0]: line for line in axes[0].lines}["uniform"]
    assert list(acc.get_xdata()) == [0.0, STEPS] and list(acc.get_ydata()) == pytest.approx([0.2, 0.4])
    assert axes[len(vvu.PANELS) - 1].get_title() == "KL to the SFT policy"
    path = vvu.plot(records, tmp_path / "fig.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_figure_without_kl_term_shows_training_accuracy(records):
    records[0]["settings"]["kl_loss"] = False
    axes = vvu.make_figure(records).axes
    assert axes[len(vvu.PANELS) - 1].get_title().startswith("training accuracy")
    line = {ln.get_label().split(" (")[0]: ln for ln in axes[len(vvu.PANELS) - 1].lines}["uniform"]
    assert list(line.get_ydata()) == pytest.approx([0.25] * STEPS)


def test_bad_records_name_file_and_key(records, tmp_path):
    path = tmp_path / "uniform_s0.json"
    path.write_text(json.dumps({"arm": "uniform", "seed": 0, "settings": {}}))
    with pytest.raises(vvu.RecordError, match=r"uniform_s0\.json: run record without history, wall_s"):
        vvu.load_record(path)
    path.write_text("{not json")
    with pytest.raises(vvu.RecordError, match=r"uniform_s0\.json: not JSON"):
        vvu.load_record(path)
    del records[4]["history"]["eval/average/accuracy"]
    records[4]["_path"] = "runs/vas-full_s1.json"
    with pytest.raises(vvu.RecordError, match=r"runs/vas-full_s1\.json: history has no 'eval/average/accuracy'"):
        vvu.summarize(records)


def _rl_file(path: Path, n: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps({"problem": f"<image>q{i}", "answer": str(i), "images": [f"images/{i}.png"]})
                            + "\n" for i in range(n)))
    return path


def test_subsample_pool(tmp_path):
    src = _rl_file(tmp_path / "data" / "rl_train.jsonl", 20)
    assert vvu.subsample_prompts(src, tmp_path / "a.jsonl", 8, seed=0) == 8
    vvu.subsample_prompts(src, tmp_path / "b.jsonl", 8, seed=0)
    rows = [json.loads(line) for line in (tmp_path / "a.jsonl").read_text().splitlines()]
    assert (tmp_path / "a.jsonl").read_text() == (tmp_path / "b.jsonl").read_text()
    ids = [int(r["answer"]) for r in rows]
    assert ids == sorted(ids) and len(set(ids)) == 8
    assert all(r["images"] == [str(tmp_path / "data" / "images" / f"{i}.png")] for r, i in zip(rows, ids))
    with pytest.raises(ValueError, match="rl_train.jsonl: 20 prompts, fewer than the 21"):
        vvu.subsample_prompts(src, tmp_path / "c.jsonl", 21)


def test_arm_overrides():
    s = vvu.Settings(full_interval=56, online_interval=4)
    assert "vps.update_interval=56" in vvu.arm_overrides("vas-full", s)
    assert "vps.refresh=online" in vvu.arm_overrides("vas-online", s)
    assert vvu.arm_overrides("uniform", s) == ["sampler.type=uniform"]
    with pytest.raises(ValueError, match="unknown arm 'dapo'"):
        vvu.arm_overrides("dapo", s)
    o = vvu.run_overrides("uniform", 1, vvu.Settings(batch=4, n=8, steps=12), Path("sft"), Path("t"), Path("v"),
                          Path("o"))
    assert {"training.rollout_batch_size=4", "training.global_batch_size=32", "rollout.seed=1001",
            "training.eval_interval=12", "rollout.temperature=1.0", "algorithm.use_kl_loss=false"} <= set(o)
    o = vvu.run_overrides("uniform", 1, vvu.Settings(steps=40, eval_interval=20, kl_loss=True), Path("sft"), Path("t"),
                          Path("v"), Path("o"))
    assert {"training.eval_interval=20", "algorithm.use_kl_loss=true"} <= set(o)


def test_arms_of_the_training_refresh():
    s = vvu.Settings()
    training = vvu.arm_overrides("vas-training", s)
    assert {"sampler.type=vas", "vps.refresh=training", "vps.alpha=1.0", "vps.beta=0.0"} <= set(training)
    assert vvu.arm_overrides("vas-training-filter", s) == training + ["algorithm.dynamic_filtering=true"]
    # the paper's VPS is pinned in the scoring arms, whatever the tiny config's own vps defaults are
    assert {"vps.alpha=0.8", "vps.beta=0.2"} <= set(vvu.arm_overrides("vas-full", s))
    assert "vps.alpha=0.5" in vvu.arm_overrides("vas-online", vvu.Settings(alpha=0.5))
    assert vvu.arm_overrides("vas-full-gated", s) == vvu.arm_overrides("vas-full", s) + ["vps.tds_gate=true"]


def test_generated_rollouts_count_filtered_groups():
    """With a dynamic filter the trainer's rollouts_total counts responses trained on; the cost is every
    response generated (rollouts/generated per step), scoring rollouts on top."""
    rec = synthetic_record("vas-online", 0)
    rec["history"]["rollouts/generated"] = [[s, 2.0 * B * N] for s in range(1, STEPS + 1)]
    assert vvu.training_rollouts_at(rec) == {s: 2.0 * B * N * s for s in range(1, STEPS + 1)}
    assert vvu.total_rollouts(rec) == 2 * STEPS * B * N + SCORING["vas-online"]
    row = vvu.summarize([rec])[0]
    assert row["train_rollouts"] == 2 * STEPS * B * N and row["scoring_rollouts"] == SCORING["vas-online"]


def test_epoch_rows(records):
    """Per epoch of the pool (2 steps here): per-seed means over the epoch's steps, mean ± sample std over
    seeds, the held-out accuracy at the epoch's last step when there is an eval, and rollouts by then."""
    for rec in records:
        rec["settings"]["steps_per_epoch"] = 2
        rec["history"]["eval/average/accuracy"].insert(1, [2, 0.3 + 0.1 * rec["seed"]])
    rows = [r for r in vvu.epoch_summary(records) if r["arm"] == "vas-full"]
    assert [(r["epoch"], r["steps"]) for r in rows] == [(1, (1, 2)), (2, (3, 4))]
    e1, e2 = rows
    assert e1["zero_var_per_seed"] == [0.25] * 3 and e2["zero_var"] == (pytest.approx(0.25), 0.0)
    assert e2["zero_var_total_per_seed"] == [pytest.approx(0.125)] * 3
    assert e1["grad_norm_per_seed"] == pytest.approx([0.15, 1.15, 2.15])  # steps 1-2: 0.1 s + seed
    assert e1["grad_norm"] == pytest.approx((1.15, 1.0))
    assert e1["reward_var_total"][0] == pytest.approx(0.15)
    assert e1["acc_per_seed"] == pytest.approx([0.3, 0.4, 0.5]) and e1["acc"] == pytest.approx((0.4, 0.1))
    assert e2["acc_per_seed"] == pytest.approx(FINAL_ACC["vas-full"])
    assert e1["rollouts"] == 2 * B * N + SCORING["vas-full"] and e2["rollouts"] == 4 * B * N + SCORING["vas-full"]
    del records[0]["history"]["vas/zero_variance_frac_total"]  # a record from before the metric: n/a, not a crash
    table = vvu.epoch_table(vvu.epoch_summary(records))
    assert "| uniform | 1 (1-2) | 0.750 ± 0.000 | 0.750 / 0.750 / 0.750 | n/a | n/a / 0.375 / 0.375 |" in table
    assert "| vas-full | 2 (3-4) | 0.250 ± 0.000 | 0.250 / 0.250 / 0.250 | 0.125 ± 0.000 |" in table
    lines = table.strip().splitlines()
    assert len(lines) == 2 + 2 * len(ARMS) and all(line.count("|") == lines[0].count("|") for line in lines)


def test_run_plan_skips_finished_runs_and_refuses_other_settings(tmp_path):
    s = vvu.Settings(steps=STEPS, batch=B, n=N, steps_per_epoch=4)
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "uniform_s0.json").write_text(json.dumps(dict(synthetic_record("uniform", 0), settings=asdict(s))))
    plan = vvu.plan_runs(runs, [0, 1], ["uniform", "vas-training"], s)
    assert [(seed, arm, done) for seed, arm, _, done in plan] == [
        (0, "uniform", True), (0, "vas-training", False), (1, "uniform", False), (1, "vas-training", False)]
    assert plan[1][2] == runs / "vas-training_s0.json"
    old = {k: v for k, v in asdict(s).items() if k not in ("alpha", "beta")}  # a record from before a setting
    (runs / "uniform_s0.json").write_text(json.dumps(dict(synthetic_record("uniform", 0), settings=old)))
    assert vvu.plan_runs(runs, [0], ["uniform"], s)[0][3]
    other = vvu.Settings(**dict(asdict(s), steps=STEPS + 1))
    with pytest.raises(vvu.RecordError, match=r"uniform_s0\.json: made with other settings \(steps 4, now 5\)"):
        vvu.plan_runs(runs, [0], ["uniform"], other)
