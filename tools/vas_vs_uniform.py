"""GRPO on the tiny policy: VAS vs uniform prompt sampling from the same SFT checkpoint (not in CI).

Every run starts from the same SFT weights and spends the same number of *training* rollouts
(``--steps`` x ``--batch`` prompts x ``--n`` responses); the arms differ only in how prompts are drawn:

  uniform     ``sampler.type=uniform``
  vas-full    VAS (lambda 0.5), ``vps.refresh=full``: every prompt scored with ``--score-n`` fresh
              rollouts before step 1, again every ``--full-interval`` steps
  vas-online  VAS, ``vps.refresh=online``: scores from the training rollouts, stale prompts re-scored
              every ``--online-interval`` steps

The RL prompt pool is subsampled to ``--steps-per-epoch`` x ``--batch`` prompts so one epoch is about
as many steps as in the paper (~15k prompts at 512 per step: ~30 steps); with a pool so large that
each prompt is seen once, VAS has no scores to use. A seed fixes the sampler, the rollouts
(``rollout.seed``) and the trainer seed, identically for every arm.

Each run is a subprocess (``python tools/vas_vs_uniform.py worker ...``) that calls the trainer's
``grpo.run`` and writes ``<out>/runs/<arm>_s<seed>.json`` (per-step history + summary); finished runs
are skipped, so the tool resumes after an interruption. At the end (or with ``--report-only``) the
records are aggregated into ``<out>/table.md`` and the figure: held-out accuracy, zero-variance group
fraction and grad norm against steps and against total rollouts (training + VAS scoring).

    python tools/vas_vs_uniform.py --sft-hf SFT_HF_DIR --data DATA_DIR           # the measurement
    python tools/vas_vs_uniform.py --build                                       # data + SFT first
    python tools/vas_vs_uniform.py --sft-hf SFT_HF_DIR --data DATA_DIR --quick   # smoke: 1 seed, 3 steps
    python tools/vas_vs_uniform.py --report-only --out outputs/vas_vs_uniform    # table + figure again

``DATA_DIR`` holds ``rl_train.jsonl``, ``rl_val.jsonl`` (and ``sft_train.jsonl`` + ``tokenizer/`` from
``python -m megatron_mmr1.data.synthetic``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
GRPO_CONFIG = "examples/configs/tiny_cpu_grpo.yaml"
SFT_CONFIG = "examples/configs/tiny_cpu_sft.yaml"
ARMS = ("uniform", "vas-full", "vas-online")
ACC_KEY = "eval/average/accuracy"
RECORD_KEYS = ("arm", "seed", "settings", "history", "wall_s")


class RecordError(ValueError):
    """A run record that cannot be aggregated (the message names the file and the key)."""


@dataclass(frozen=True)
class Settings:
    """What every run of one measurement shares; a record made with other settings is not mixed in."""

    steps: int = 40
    batch: int = 8
    n: int = 8
    steps_per_epoch: int = 30
    max_response_length: int = 256
    eval_samples: int = 200
    eval_interval: int = 20
    """Held-out evals at step 0 (the SFT policy's, measured once), every ``eval_interval`` steps and at the end."""
    score_n: int = 4
    lam: float = 0.5
    full_interval: int = 56
    """Paper, table 6 (T = 56 at ~30 steps per epoch): in a short run only the initial scoring pass."""
    online_interval: int = 4
    num_servers: int = 2
    lr: float = 1e-4
    """The demo's GRPO settings (lr, temperature, no KL term): those that lift held-out accuracy here."""
    temperature: float = 1.0
    kl_loss: bool = False


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


def subsample_prompts(src: Path, dst: Path, num: int, seed: int = 0) -> int:
    """``num`` records of ``src`` (a seeded draw, file order kept) into ``dst``, image paths made
    absolute (they are relative to ``src``'s folder); returns the number written."""
    lines = [line for line in src.read_text().splitlines() if line.strip()]
    if num > len(lines):
        raise ValueError(f"{src}: {len(lines)} prompts, fewer than the {num} the pool needs "
                         "(lower --steps-per-epoch or --batch)")
    keep = sorted(random.Random(seed).sample(range(len(lines)), num))
    base = src.resolve().parent
    out = []
    for i in keep:
        try:
            row = json.loads(lines[i])
        except json.JSONDecodeError as e:
            raise ValueError(f"{src}: line {i + 1} is not JSON ({e.msg})") from None
        images = row.get("images")
        if isinstance(images, list):
            row["images"] = [str(base / p) if isinstance(p, str) and not os.path.isabs(p) else p for p in images]
        out.append(json.dumps(row))
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.write_text("\n".join(out) + "\n")
    return len(out)


def arm_overrides(arm: str, s: Settings) -> list[str]:
    if arm == "uniform":
        return ["sampler.type=uniform"]
    if arm == "vas-full":
        return ["sampler.type=vas", "vps.refresh=full", f"vps.update_interval={s.full_interval}"]
    if arm == "vas-online":
        return ["sampler.type=vas", "vps.refresh=online", f"vps.update_interval={s.online_interval}"]
    raise ValueError(f"unknown arm {arm!r} (known: {', '.join(ARMS)})")


def run_overrides(arm: str, seed: int, s: Settings, sft_hf: Path, train: Path, val: Path, out_dir: Path) -> list[str]:
    """The trainer overrides of one run: shared settings, the arm's sampler, the seed's RNGs."""
    return [
        f"model.hf_path={sft_hf}", f"model.tokenizer_path={sft_hf}",
        f"data.train_files=[{train}]", f"data.val_files=[{val}]",
        f"data.max_response_length={s.max_response_length}",
        f"training.rollout_steps={s.steps}", f"training.rollout_batch_size={s.batch}",
        f"training.global_batch_size={s.batch * s.n}", f"training.micro_batch_size={min(8, s.batch * s.n)}",
        f"training.eval_interval={min(s.eval_interval or s.steps, s.steps)}",
        f"rollout.n={s.n}", f"rollout.num_servers={s.num_servers}", f"rollout.seed={1000 + seed}",
        f"vps.num_rollouts={s.score_n}", f"sampler.lam={s.lam}", f"sampler.seed={2000 + seed}",
        f"parallel.seed={3000 + seed}", f"optim.lr={s.lr}", f"rollout.temperature={s.temperature}",
        f"algorithm.use_kl_loss={str(s.kl_loss).lower()}",
        f"eval.max_samples={s.eval_samples}", f"eval.max_new_tokens={s.max_response_length}",
        f"output_dir={out_dir}", "logging.progress=false",
        *arm_overrides(arm, s),
    ]


def worker(overrides: list[str], record_path: Path, meta: dict, sft_eval: Optional[Path]) -> None:
    """One GRPO run in this process; its record (history + summary) to ``record_path``.

    The held-out eval before step 1 is the SFT checkpoint's, the same for every run (greedy): the first
    run measures it into ``sft_eval`` and later runs reuse it instead of generating again."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.config import load_config
    from megatron_mmr1.training import grpo
    from megatron_mmr1.utils.logging import setup_logging

    cfg = load_config(str(ROOT / GRPO_CONFIG), overrides, world_size=1)
    setup_logging(cfg.logging.level, log_file=Path(cfg.output_dir) / "train.log")
    key = {"sft_hf": cfg.model.hf_path, "val_files": cfg.data.val_files, "max_samples": cfg.eval.max_samples,
           "max_new_tokens": cfg.eval.max_new_tokens}
    cached = json.loads(sft_eval.read_text()) if sft_eval is not None and sft_eval.exists() else None
    cached = cached["metrics"] if cached is not None and cached.get("key") == key else None
    if cached is not None:
        cfg.eval.at_start = False  # measured by the first run: its step-0 metrics are put in below
    info = parallel.initialize(cfg.parallel)
    t0 = time.time()
    try:
        result = grpo.run(cfg, info)
    finally:
        parallel.destroy()
    history = result.pop("history")
    for k, v in (cached or {}).items():
        history.setdefault(k, []).insert(0, (0, v))
    step0 = {k: v for k, pts in history.items() if k.startswith("eval/") for s, v in pts if s == 0}
    if sft_eval is not None and cached is None and step0:
        sft_eval.write_text(json.dumps({"key": key, "metrics": step0}, indent=1) + "\n")
    record = dict(meta, history=history, summary=result, wall_s=round(time.time() - t0, 1), overrides=overrides)
    tmp = record_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(record) + "\n")
    tmp.replace(record_path)  # a record on disk is a finished run


def run_all(args: argparse.Namespace, s: Settings, sft_hf: Path, data: Path) -> None:
    out = Path(args.out)
    runs = out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    train = out / "data" / "rl_train_pool.jsonl"
    pool = s.steps_per_epoch * s.batch
    n = subsample_prompts(data / "rl_train.jsonl", train, pool, seed=0)
    print(f"prompt pool: {n} of {data / 'rl_train.jsonl'} ({s.steps_per_epoch} steps per epoch at {s.batch} "
          f"prompts per step)", flush=True)
    todo = [(seed, arm) for seed in args.seeds for arm in args.arms]  # seed-major: partial results stay balanced
    for i, (seed, arm) in enumerate(todo):
        path = runs / f"{arm}_s{seed}.json"
        if path.exists():
            rec = load_record(path)
            diff = [f"{k} {v}, now {getattr(s, k, None)}" for k, v in rec["settings"].items() if getattr(s, k, None) != v]
            if diff:
                raise SystemExit(f"{path}: made with other settings ({'; '.join(diff)}); use another --out")
            print(f"[{i + 1}/{len(todo)}] {arm} seed {seed}: done before, skipped", flush=True)
            continue
        run_dir = out / "work" / f"{arm}_s{seed}"
        run_dir.mkdir(parents=True, exist_ok=True)
        overrides = run_overrides(arm, seed, s, sft_hf, train, data / "rl_val.jsonl", run_dir)
        meta = {"arm": arm, "seed": seed, "settings": asdict(s), "sft_hf": str(sft_hf)}
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--record", str(path),
               "--meta", json.dumps(meta), "--sft-eval", str(out / "sft_eval.json"), "--", *overrides]
        print(f"[{i + 1}/{len(todo)}] {arm} seed {seed}: running (log {run_dir / 'run.log'})", flush=True)
        t0 = time.time()
        with open(run_dir / "run.log", "w") as log:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1")))
        if rc != 0 or not path.exists():
            print(f"    failed (exit {rc}); see {run_dir / 'run.log'}; going on with the next run", flush=True)
            continue
        rec = load_record(path)
        acc = first_last(rec, ACC_KEY)
        print(f"    {time.time() - t0:.0f} s; held-out accuracy {_fmt_pair(acc)}, zero-variance "
              f"{mean_of(rec, 'vas/zero_variance_frac'):.3f}, rollouts {total_rollouts(rec):.0f}", flush=True)


def build(out: Path, sft_steps: int) -> tuple[Path, Path]:
    """Synthetic data, a random tiny policy and the SFT config's cold start through the trainer (``--build``)."""
    py = sys.executable
    data, hf_tiny, sft_hf = out / "data_src", out / "hf_tiny", out / "sft_hf"
    steps = [
        ([py, "-m", "megatron_mmr1.data.synthetic", "--out", str(data), "--num", "700", "--num-sft", "1500",
          "--seed", "0", "--tokenizer"], data / "rl_train.jsonl"),
        ([py, "-m", "megatron_mmr1.models.tiny", "--out", str(hf_tiny), "--tokenizer", str(data / "tokenizer"),
          "--logit-scale", "20"], hf_tiny / "config.json"),
        ([py, "-m", "megatron_mmr1.train", "--config", SFT_CONFIG, f"model.hf_path={hf_tiny}",
          f"model.tokenizer_path={hf_tiny}", f"data.train_files=[{data / 'sft_train.jsonl'}]",
          f"training.train_iters={sft_steps}",
          f"output_dir={out / 'sft'}", f"checkpoint.export_hf={sft_hf}", "logging.progress=false"],
         sft_hf / "config.json"),
    ]
    for cmd, made in steps:
        if made.exists():
            print(f"build: {made} exists, skipped", flush=True)
            continue
        print("build: " + " ".join(cmd[2:5]) + " ...", flush=True)
        subprocess.run(cmd, cwd=ROOT, check=True)
    return sft_hf, data


# --------------------------------------------------------------------------------------------------
# Aggregation (pure functions on run records)
# --------------------------------------------------------------------------------------------------


def load_record(path: Path) -> dict:
    try:
        rec = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise RecordError(f"{path}: not JSON ({e.msg})") from None
    missing = [k for k in RECORD_KEYS if k not in rec]
    if missing:
        raise RecordError(f"{path}: run record without {', '.join(missing)}")
    rec["_path"] = str(path)
    return rec


def load_records(runs_dir: Path) -> list[dict]:
    return [load_record(p) for p in sorted(Path(runs_dir).glob("*.json"))]


def series(rec: dict, key: str) -> list[tuple[int, float]]:
    """(step, value) of ``key``, in step order; empty when the run never logged it."""
    return sorted((int(s), float(v)) for s, v in rec["history"].get(key, []))


def _required(rec: dict, key: str) -> list[tuple[int, float]]:
    pts = series(rec, key)
    if not pts:
        raise RecordError(f"{rec.get('_path', rec['arm'])}: history has no {key!r}")
    return pts


def rollouts_at(rec: dict) -> dict[int, float]:
    """Step -> rollouts spent so far, training plus VAS scoring; step 0 (before training) is 0."""
    train = dict(_required(rec, "rollouts_total"))
    scoring = dict(series(rec, "vas/scoring_rollouts"))
    out = {0: 0.0}
    out.update({s: v + scoring.get(s, 0.0) for s, v in train.items()})
    return out


def total_rollouts(rec: dict) -> float:
    spent = rollouts_at(rec)
    return spent[max(spent)]


def first_last(rec: dict, key: str) -> Optional[tuple[float, float]]:
    pts = series(rec, key)
    return (pts[0][1], pts[-1][1]) if pts else None


def mean_of(rec: dict, key: str) -> float:
    vals = [v for _, v in _required(rec, key)]
    return sum(vals) / len(vals)


def _mean_std(vals: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def by_arm(records: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for rec in sorted(records, key=lambda r: (_arm_order(r["arm"]), r["seed"])):
        out.setdefault(rec["arm"], []).append(rec)
    return out


def _arm_order(arm: str) -> int:
    return ARMS.index(arm) if arm in ARMS else len(ARMS)


def summarize(records: list[dict]) -> list[dict]:
    """One row per arm: held-out accuracy before / after (mean, std over seeds), zero-variance fraction
    and grad norm (mean over steps, then seeds), rollouts (training, scoring, total) and wall time."""
    rows = []
    for arm, recs in by_arm(records).items():
        accs = [first_last(r, ACC_KEY) for r in recs]
        if any(a is None for a in accs):
            bad = next(r for r, a in zip(recs, accs) if a is None)
            raise RecordError(f"{bad.get('_path', arm)}: history has no {ACC_KEY!r}")
        final_mean, final_std = _mean_std([a[1] for a in accs])
        gain_mean, gain_std = _mean_std([a[1] - a[0] for a in accs])
        train = [_required(r, "rollouts_total")[-1][1] for r in recs]
        total = [total_rollouts(r) for r in recs]
        rows.append({
            "arm": arm, "seeds": len(recs), "steps": recs[0]["settings"]["steps"],
            "acc_first": statistics.fmean(a[0] for a in accs), "acc_final": final_mean, "acc_final_std": final_std,
            "acc_gain": gain_mean, "acc_gain_std": gain_std,
            "train_acc": statistics.fmean(mean_of(r, "reward/accuracy") for r in recs),
            "zero_var": statistics.fmean(mean_of(r, "vas/zero_variance_frac") for r in recs),
            "grad_norm": statistics.fmean(mean_of(r, "grad_norm") for r in recs),
            "train_rollouts": statistics.fmean(train),
            "scoring_rollouts": statistics.fmean(t - tr for t, tr in zip(total, train)),
            "total_rollouts": statistics.fmean(total),
            "wall_s": statistics.fmean(float(r["wall_s"]) for r in recs),
            "format_final": _mean_last(recs, _format_key),
            "kl_final": _mean_last(recs, lambda r: "policy/kl_ref" if _has_kl_term(r) else None),
        })
    return rows


def _has_kl_term(rec: dict) -> bool:
    """Whether the run trained with a KL term (only then does the trainer log KL to the SFT policy)."""
    return rec["settings"].get("kl_loss", True)


def _format_key(rec: dict) -> Optional[str]:
    """The held-out format rate of the first val file (the trainer logs it per file)."""
    return next((k for k in sorted(rec["history"]) if k.startswith("eval/") and k.endswith("/format")), None)


def _mean_last(recs: list[dict], key_of: Any) -> Optional[float]:
    """Mean over seeds of a key's last value; None when any run lacks it (an optional column)."""
    last = [series(r, key_of(r))[-1][1] if key_of(r) and series(r, key_of(r)) else None for r in recs]
    return None if any(v is None for v in last) else statistics.fmean(last)


def markdown_table(rows: list[dict]) -> str:
    head = ("| arm | seeds | held-out acc before | held-out acc after (mean ± std) | gain (mean ± std) "
            "| held-out format after | KL to SFT at end | train acc | zero-var frac | grad norm | training rollouts "
            "| scoring rollouts | total rollouts | wall per run |")
    lines = [head, "|" + "---|" * head.count(" | ") + "---|"]
    for r in rows:
        lines.append(
            f"| {r['arm']} | {r['seeds']} | {r['acc_first']:.3f} | {r['acc_final']:.3f} ± {r['acc_final_std']:.3f} "
            f"| {r['acc_gain']:+.3f} ± {r['acc_gain_std']:.3f} | {_opt(r['format_final'])} | {_opt(r['kl_final'])} "
            f"| {r['train_acc']:.3f} | {r['zero_var']:.3f} "
            f"| {r['grad_norm']:.3f} | {r['train_rollouts']:,.0f} | {r['scoring_rollouts']:,.0f} "
            f"| {r['total_rollouts']:,.0f} | {r['wall_s'] / 60:.1f} min |")
    return "\n".join(lines) + "\n"


def mean_curve(recs: list[dict], key: str, x: str = "step") -> tuple[list[float], list[float], list[float]]:
    """Mean over seeds of ``key`` at the steps every seed logged: (x, mean, std); ``x="rollouts"`` puts
    each step at the mean rollouts spent by then (scoring included)."""
    per_seed = [dict(series(r, key)) for r in recs]
    steps = sorted(set.intersection(*(set(d) for d in per_seed))) if per_seed else []
    spent = [rollouts_at(r) for r in recs] if x == "rollouts" else None
    xs, ys, sd = [], [], []
    for s in steps:
        vals = [d[s] for d in per_seed]
        m, std = _mean_std(vals)
        xs.append(float(s) if spent is None else statistics.fmean(sp[s] for sp in spent))
        ys.append(m)
        sd.append(std)
    return xs, ys, sd


PANELS = ((ACC_KEY, "held-out accuracy", 1), ("vas/zero_variance_frac", "zero-variance group fraction", 3),
          ("grad_norm", "grad norm", 3), ("policy/kl_ref", "KL to the SFT policy", 1))
"""(history key, title, trailing running-mean window in steps: per-step values of a few groups are noisy);
the KL shows how far each run drifted, which the held-out accuracy depends on as much as the sampler."""
NO_KL_PANEL = ("reward/accuracy", "training accuracy (batch)", 5)
"""The last panel of runs without a KL term, whose trainer logs no KL to the SFT policy."""


def panels(records: list[dict]) -> tuple:
    """``PANELS``, with the KL panel replaced by training accuracy when any run had no KL term."""
    if all(_has_kl_term(r) for r in records):
        return PANELS
    return PANELS[:-1] + (NO_KL_PANEL,)


def running_mean(ys: Sequence[float], window: int) -> list[float]:
    """Trailing mean over the last ``window`` values (fewer at the start)."""
    return [statistics.fmean(ys[max(0, i + 1 - window):i + 1]) for i in range(len(ys))]


def make_figure(records: list[dict], title: str = "") -> Any:
    """Rows: against steps, against total rollouts (scoring included); columns: ``panels(records)``. One line
    per arm: the mean over seeds, with a ±1 std band."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, cols = by_arm(records), panels(records)
    fig, axes = plt.subplots(2, len(cols), figsize=(4.5 * len(cols), 7.5))
    for row, x in enumerate(("step", "rollouts")):
        for col, (key, label, window) in enumerate(cols):
            ax = axes[row][col]
            for i, (arm, recs) in enumerate(groups.items()):
                xs, ys, sd = mean_curve(recs, key, x)
                if not xs:
                    continue
                ys, sd = running_mean(ys, window), running_mean(sd, window)
                color = f"C{i}"
                ax.plot(xs, ys, marker="o", ms=3, color=color, label=f"{arm} (n={len(recs)})")
                ax.fill_between(xs, [m - s for m, s in zip(ys, sd)], [m + s for m, s in zip(ys, sd)],
                                color=color, alpha=0.15)
            ax.set_title(label + (f" ({window}-step running mean)" if window > 1 else ""), fontsize=10)
            ax.set_xlabel("step" if x == "step" else "rollouts (training + VAS scoring)")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot(records: list[dict], path: Path, title: str = "") -> Path:
    import matplotlib.pyplot as plt

    fig = make_figure(records, title)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def report(out: Path, figure: Path) -> Optional[str]:
    records = load_records(out / "runs")
    if not records:
        print(f"no finished runs in {out / 'runs'}", flush=True)
        return None
    s = records[0]["settings"]
    mixed = [r["_path"] for r in records if r["settings"] != s]
    if mixed:
        raise RecordError(f"records with other settings than {records[0]['_path']}: {', '.join(mixed)}")
    table = markdown_table(summarize(records))
    (out / "table.md").write_text(table)
    plot(records, figure, title=f"tiny policy, GRPO {s['steps']} steps x {s['batch']} prompts x {s['n']} responses, "
                               f"pool {s['steps_per_epoch'] * s['batch']} prompts, lr {s['lr']:g}; mean ± std over seeds")
    print(table + f"\nwrote {out / 'table.md'} and {figure}", flush=True)
    return table


def _opt(v: Optional[float]) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _fmt_pair(p: Optional[tuple[float, float]]) -> str:
    return "n/a" if p is None else f"{p[0]:.3f} -> {p[1]:.3f}"


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-hf", type=Path, help="SFT policy in HF format (the common starting point)")
    ap.add_argument("--data", type=Path, help="folder with rl_train.jsonl and rl_val.jsonl")
    ap.add_argument("--build", action="store_true", help="make synthetic data and a short SFT under OUT/build first")
    ap.add_argument("--sft-steps", type=int, default=1440, help="SFT steps of --build (the SFT config's schedule: "
                    "held-out accuracy ~0.21, where 280 steps of 16 gave ~0.145)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default outputs/vas_vs_uniform[_quick])")
    ap.add_argument("--figure", type=Path, default=None, help="figure path (default OUT/vas_vs_uniform.png)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    ap.add_argument("--quick", action="store_true", help="smoke check: 1 seed, 3 steps, 16 held-out prompts")
    ap.add_argument("--report-only", action="store_true", help="aggregate the finished runs; train nothing")
    d = Settings()
    for name, value in asdict(d).items():
        kind = (lambda v: v.lower() in ("1", "true", "yes")) if isinstance(value, bool) else type(value)
        ap.add_argument("--" + name.replace("_", "-"), type=kind, default=value, dest=name)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds = args.seeds[:1]
        args.steps, args.eval_samples, args.steps_per_epoch = min(args.steps, 3), min(args.eval_samples, 16), 4
    args.out = (args.out or ROOT / ("outputs/vas_vs_uniform_quick" if args.quick else "outputs/vas_vs_uniform")).resolve()
    args.figure = args.figure or args.out / "vas_vs_uniform.png"
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        ap = argparse.ArgumentParser(prog="vas_vs_uniform.py worker")
        ap.add_argument("--record", type=Path, required=True)
        ap.add_argument("--meta", required=True)
        ap.add_argument("--sft-eval", type=Path, default=None)
        ap.add_argument("overrides", nargs="*")
        w = ap.parse_args(argv[1:])
        worker(w.overrides, w.record, json.loads(w.meta), w.sft_eval)
        return 0
    args = parse_args(argv)
    s = Settings(**{k: getattr(args, k) for k in asdict(Settings())})
    if not args.report_only:
        if args.build:
            sft_hf, data = build(args.out / "build", args.sft_steps)
        elif args.sft_hf is None or args.data is None:
            print("give --sft-hf and --data, or --build", file=sys.stderr)
            return 2
        else:
            sft_hf, data = args.sft_hf.resolve(), args.data.resolve()
        for need in (sft_hf / "config.json", data / "rl_train.jsonl", data / "rl_val.jsonl"):
            if not need.exists():
                print(f"missing {need}", file=sys.stderr)
                return 2
        run_all(args, s, sft_hf, data)
    try:
        report(args.out, args.figure)
    except RecordError as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
