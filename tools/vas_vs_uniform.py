"""GRPO on the tiny policy: prompt-sampler arms (uniform, VAS variants) from the same SFT checkpoint (not in CI).

Every run starts from the same SFT weights and spends the same number of *training* rollouts
(``--steps`` x ``--batch`` prompts x ``--n`` responses); the arms differ only in how prompts are drawn (and
vas-training-filter in what is trained on). The arms, the record aggregation, the tables and the figure are
``megatron_mmr1.sampling.compare``; this file runs the trainer and does the file and process work.

The RL prompt pool is subsampled to ``--steps-per-epoch`` x ``--batch`` prompts so one epoch is about
as many steps as in the paper (~15k prompts at 512 per step: ~30 steps); with a pool so large that
each prompt is seen once, VAS has no scores to use. A seed fixes the sampler, the rollouts
(``rollout.seed``) and the trainer seed, identically for every arm.

Each run is a subprocess (``python tools/vas_vs_uniform.py worker ...``) that calls the trainer's
``grpo.run`` and writes ``<out>/runs/<arm>_s<seed>.json`` (per-step history + summary); finished runs
are skipped, so the tool resumes after an interruption. At the end (or with ``--report-only``) the
records are aggregated into ``<out>/table.md`` (whole runs, and per epoch of the pool) and the figure:
held-out accuracy, zero-variance group fraction and grad norm against steps and against total rollouts
(training + VAS scoring).

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
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

from megatron_mmr1.sampling.compare import (
    ACC_KEY, ARMS, ZERO_VAR_ACC, RecordError, Settings, epoch_summary, epoch_table, first_last, load_record,
    load_records, markdown_table, mean_of, plan_runs, plot, run_overrides, settings_diff, subsample_prompts, summarize,
    total_rollouts,
)

ROOT = Path(__file__).resolve().parents[1]
GRPO_CONFIG = "examples/configs/tiny_cpu_grpo.yaml"
SFT_CONFIG = "examples/configs/tiny_cpu_sft.yaml"


# --------------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------------


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
    todo = plan_runs(runs, args.seeds, args.arms, s)
    for i, (seed, arm, path, done) in enumerate(todo):
        if done:
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
              f"{mean_of(rec, ZERO_VAR_ACC):.3f}, rollouts {total_rollouts(rec):.0f}", flush=True)


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


def report(out: Path, figure: Path) -> Optional[str]:
    records = load_records(out / "runs")
    if not records:
        print(f"no finished runs in {out / 'runs'}", flush=True)
        return None
    s = records[0]["settings"]
    mixed = [r["_path"] for r in records if settings_diff(r["settings"], s)]
    if mixed:
        raise RecordError(f"records with other settings than {records[0]['_path']}: {', '.join(mixed)}")
    table = markdown_table(summarize(records)) + "\nPer epoch of the pool:\n\n" + epoch_table(epoch_summary(records))
    (out / "table.md").write_text(table)
    plot(records, figure, title=f"tiny policy, GRPO {s['steps']} steps x {s['batch']} prompts x {s['n']} responses, "
                               f"pool {s['steps_per_epoch'] * s['batch']} prompts, lr {s['lr']:g}; mean ± std over seeds")
    print(table + f"\nwrote {out / 'table.md'} and {figure}", flush=True)
    return table


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
    try:
        if not args.report_only:
            run_all(args, s, sft_hf, data)
        report(args.out, args.figure)
    except RecordError as e:
        print(str(e), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
