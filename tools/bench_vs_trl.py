"""Our GRPO loop vs TRL's GRPOTrainer on the tiny policy: seconds per step by phase, held-out accuracy (not in CI).

Both frameworks start from the same SFT checkpoint and train on the same prompts in the same order (each
seed's order is drawn once by the project's uniform sampler, ``sampler.type=uniform``; TRL reads the
rows in that order with ``shuffle_dataset=False``), with the same reward (the project's format + accuracy
functions, TRL calling them as ``reward_funcs``), 8 prompts x 8 responses per step, at most 256 new
tokens, temperature 1.0, lr 1e-4 (constant), no KL term, token-mean loss (TRL ``loss_type="dapo"``), one
optimizer step per rollout batch, fp32 on the CPU. Ours runs as a 1-rank job with one stand-in server
(trainer and server one torch thread each, ``OMP_NUM_THREADS=1`` as ``make`` sets it); TRL in one process
with ``--trl-threads`` (1) torch threads. One thread each because on a loaded machine a second OpenMP
thread waits for a descheduled partner at every parallel region: TRL's generation of 4 x 32 tokens took
18.2 s with 2 threads against 0.49 s with 1 at load average ~22 on 2 cores. Runs alternate (ours s0, TRL s0, ours s1, ...) so a load change on a shared
machine hits both; every record keeps the load average before and after.

Phases (``megatron_mmr1.baselines.trl_side``, whose docstring maps TRL's methods onto ours): generation,
reward, logprob, train, sync, other; per run the mean over steps 2..N (step 1 carries start-up costs),
then mean ± std over seeds, and TRL / ours. Held-out accuracy: every final policy (and the SFT start)
is exported to HF and evaluated by one harness, ``mmr1-eval`` (greedy, stand-in server, 256 tokens), on
the first ``--eval-samples`` prompts of ``rl_val.jsonl``.

    make bench-trl BENCH_TRL_ARGS="--sft-hf outputs/demo/sft/hf --data outputs/demo/data"   # TRL installed first
    PYTHONPATH=.venv/trl-cpu python tools/bench_vs_trl.py --sft-hf SFT_HF --data DATA [--quick]
    python tools/bench_vs_trl.py --report-only --out outputs/bench_vs_trl

``--quick``: 1 seed, 2 steps, 16 held-out prompts. Finished runs (``OUT/runs/*.json``) are kept and
skipped, so an interrupted bench resumes. Results: ``OUT/results.json`` and ``OUT/table.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
GRPO_CONFIG = ROOT / "examples/configs/tiny_cpu_grpo.yaml"

from megatron_mmr1.baselines.trl_side import BenchSettings as Settings  # noqa: E402  (after the path insert)


def ours_overrides(s: Settings, seed: int, sft_hf: Path, pool: Path, out: Path) -> list[str]:
    return [
        f"model.hf_path={sft_hf}", f"model.tokenizer_path={sft_hf}", f"data.train_files=[{pool}]",
        f"data.max_response_length={s.max_new_tokens}", f"training.rollout_steps={s.steps}",
        f"training.rollout_batch_size={s.batch}", f"training.global_batch_size={s.batch * s.n}",
        "training.eval_interval=0", f"rollout.n={s.n}", "rollout.num_servers=1", f"rollout.seed={1000 + seed}",
        f"rollout.temperature={s.temperature}", "sampler.type=uniform", f"sampler.seed={2000 + seed}",
        f"parallel.seed={3000 + seed}", f"optim.lr={s.lr}", f"optim.min_lr={s.lr}", "optim.lr_decay_style=constant",
        "optim.lr_warmup_fraction=0.0", "algorithm.use_kl_loss=false", "algorithm.loss_agg_mode=token-mean",
        f"checkpoint.export_hf={out / 'hf'}", f"output_dir={out}", "logging.progress=false",
    ]


def _load() -> float:
    return round(os.getloadavg()[0], 2)


# ---- workers (one run each, in a process of its own) ------------------------------------------------------

def worker_ours(s: Settings, seed: int, sft_hf: Path, pool: Path, out: Path) -> dict:
    from megatron_mmr1 import parallel
    from megatron_mmr1.config import load_config
    from megatron_mmr1.training import grpo
    from megatron_mmr1.baselines.trl_side import ours_steps

    cfg = load_config(str(GRPO_CONFIG), ours_overrides(s, seed, sft_hf, pool, out), world_size=1)
    info = parallel.initialize(cfg.parallel)
    t0 = time.perf_counter()
    try:
        result = grpo.run(cfg, info)
    finally:
        parallel.destroy()
    history = result.pop("history")
    train = {k: [v for _, v in history.get(k, [])] for k in ("reward/accuracy", "reward/format", "response/length_mean")}
    return {"steps": ours_steps(history), "wall_s": time.perf_counter() - t0, "hf": str(out / "hf"), "train": train}


def worker_trl(s: Settings, seed: int, sft_hf: Path, pool: Path, out: Path) -> dict:
    from megatron_mmr1.config import DataConfig
    from megatron_mmr1.data.chat import ChatFormatter
    from megatron_mmr1.data.records import read_records
    from megatron_mmr1.data.tokenizer import load_tokenizer
    from megatron_mmr1.baselines.trl_side import prompt_order, run_trl, trl_rows

    records = read_records([str(pool)], "rl", DataConfig(kind="rl"))
    rows = trl_rows(records, ChatFormatter(load_tokenizer(sft_hf)), prompt_order(len(records), s.batch, s.steps, 2000 + seed))
    res = run_trl(str(sft_hf), rows, str(out), s, seed)
    logs = res.pop("log_history")
    key = {"reward/accuracy": "rewards/mmr1_accuracy_reward/mean", "reward/format": "rewards/mmr1_format_reward/mean",
           "response/length_mean": "completions/mean_length"}
    res["train"] = {k: [float(h[v]) for h in logs if v in h] for k, v in key.items()}
    res["order"] = list(rows["index"])
    return res


def worker(framework: str, s: Settings, seed: int, sft_hf: Path, pool: Path, run_dir: Path, record: Path) -> None:
    import warnings

    warnings.filterwarnings("ignore")
    load0 = _load()
    fn = worker_ours if framework == "ours" else worker_trl
    res = fn(s, seed, sft_hf, pool, run_dir)
    rec = dict(res, framework=framework, seed=seed, settings=asdict(s), load_before=load0, load_after=_load())
    tmp = record.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec) + "\n")
    tmp.replace(record)  # a record on disk is a finished run


# ---- the bench ---------------------------------------------------------------------------------------------

def prepare(out: Path, sft_src: Path, data: Path, s: Settings) -> tuple[Path, Path]:
    """OUT/sft_hf (the start, with the processor TRL loads) and OUT/data/pool.jsonl (the first steps x batch
    training prompts, image paths made absolute)."""
    from megatron_mmr1.models.checkpoint import ensure_processor

    sft_hf = out / "sft_hf"
    if not sft_hf.exists():
        shutil.copytree(sft_src, sft_hf)
    ensure_processor(sft_hf)
    lines = [json.loads(x) for x in (data / "rl_train.jsonl").read_text().splitlines() if x.strip()]
    need = s.steps * s.batch
    if len(lines) < need:
        raise SystemExit(f"{data / 'rl_train.jsonl'}: {len(lines)} prompts, the bench needs {need}")
    base = (data / "rl_train.jsonl").resolve().parent
    rows = []
    for row in lines[:need]:
        row["images"] = [p if os.path.isabs(p) else str(base / p) for p in row.get("images", [])]
        rows.append(json.dumps(row))
    pool = out / "data" / "pool.jsonl"
    pool.parent.mkdir(parents=True, exist_ok=True)
    pool.write_text("\n".join(rows) + "\n")
    return sft_hf, pool


def run_all(args: argparse.Namespace, s: Settings, sft_hf: Path, pool: Path) -> None:
    runs = args.out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    todo = [(seed, fw) for seed in args.seeds for fw in ("ours", "trl")]  # alternated
    for i, (seed, fw) in enumerate(todo):
        record = runs / f"{fw}_s{seed}.json"
        if record.exists():
            print(f"[{i + 1}/{len(todo)}] {fw} seed {seed}: done before, skipped", flush=True)
            continue
        run_dir = args.out / "work" / f"{fw}_s{seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        run_dir.mkdir(parents=True)
        cmd = [sys.executable, str(Path(__file__).resolve()), "worker", "--framework", fw, "--seed", str(seed),
               "--settings", json.dumps(asdict(s)), "--sft-hf", str(sft_hf), "--pool", str(pool),
               "--run-dir", str(run_dir), "--record", str(record)]
        print(f"[{i + 1}/{len(todo)}] {fw} seed {seed}: running (load {_load()}, log {run_dir / 'run.log'})", flush=True)
        t0 = time.time()
        with open(run_dir / "run.log", "w") as log:
            rc = subprocess.call(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                 env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
        if rc != 0 or not record.exists():
            print(f"    failed (exit {rc}); see {run_dir / 'run.log'}", flush=True)
            continue
        rec = json.loads(record.read_text())
        step = sum(st["step"] for st in rec["steps"][1:]) / max(1, len(rec["steps"]) - 1)
        print(f"    {time.time() - t0:.0f} s; {step:.2f} s/step after step 1 (load {rec['load_after']})", flush=True)


def evaluate_all(args: argparse.Namespace, s: Settings, sft_hf: Path, data: Path) -> dict[str, dict]:
    """One harness for every final policy and the SFT start: mmr1-eval, greedy, same prompts and settings."""
    models = {"sft": sft_hf}
    for path in sorted((args.out / "runs").glob("*.json")):
        rec = json.loads(path.read_text())
        models[path.stem] = Path(rec["hf"])
    out = args.out / "eval"
    done = json.loads((out / "results.json").read_text())["models"] if (out / "results.json").exists() else []
    if {m["model"] for m in done} >= set(models):
        return {m["model"]: m for m in done}
    cmd = [sys.executable, "-m", "megatron_mmr1.eval", *[f"--model={k}={v}" for k, v in models.items()],
           f"--data=heldout={data / 'rl_val.jsonl'}", f"--max-samples={s.eval_samples}",
           f"--max-new-tokens={s.max_new_tokens}", f"--out={out}", "--no-progress"]
    print(f"eval: {len(models)} policies on {s.eval_samples} held-out prompts (load {_load()})", flush=True)
    subprocess.run(cmd, cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
                   env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore"))
    return {m["model"]: m for m in json.loads((out / "results.json").read_text())["models"]}


def report(out: Path, evals: Optional[dict] = None) -> Optional[str]:
    from megatron_mmr1.baselines.trl_side import markdown_table, summarize

    records = [json.loads(p.read_text()) for p in sorted((out / "runs").glob("*.json"))]
    if not records:
        print(f"no finished runs in {out / 'runs'}", flush=True)
        return None
    for r in records:
        r["accuracy"] = (evals or {}).get(f"{r['framework']}_s{r['seed']}", {}).get("average")
    summary = summarize(records)
    table = markdown_table(summary)
    sft = (evals or {}).get("sft", {}).get("average")
    if sft is not None:
        table += f"\nSFT start (same harness): held-out accuracy {sft:.3f}\n"
    loads = [x for r in records for x in (r["load_before"], r["load_after"])]
    table += f"load average (1 min) at run starts / ends: {min(loads):.1f} to {max(loads):.1f}\n"
    (out / "table.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"summary": summary, "sft_accuracy": sft, "runs": [
        {k: r[k] for k in ("framework", "seed", "settings", "steps", "wall_s", "train", "accuracy", "load_before",
                           "load_after")} for r in records]}, indent=1) + "\n")
    print(table + f"\nwrote {out / 'table.md'} and {out / 'results.json'}", flush=True)
    return table


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-hf", type=Path, help="SFT policy in HF format (e.g. outputs/demo/sft/hf of make demo)")
    ap.add_argument("--data", type=Path, help="folder with rl_train.jsonl and rl_val.jsonl (e.g. outputs/demo/data)")
    ap.add_argument("--out", type=Path, default=None, help="results folder (default outputs/bench_vs_trl[_quick])")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--quick", action="store_true", help="smoke: 1 seed, 2 steps, 16 held-out prompts")
    ap.add_argument("--no-eval", action="store_true", help="timings only")
    ap.add_argument("--report-only", action="store_true", help="aggregate the finished runs; run nothing")
    for name, value in asdict(Settings()).items():
        ap.add_argument("--" + name.replace("_", "-"), type=type(value), default=value, dest=name)
    args = ap.parse_args(argv)
    if args.quick:
        args.seeds, args.steps, args.eval_samples = args.seeds[:1], 2, min(args.eval_samples, 16)
    args.out = (args.out or ROOT / ("outputs/bench_vs_trl_quick" if args.quick else "outputs/bench_vs_trl")).resolve()
    return args


def main(argv: Optional[Sequence[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["worker"]:
        ap = argparse.ArgumentParser(prog="bench_vs_trl.py worker")
        for a in ("--framework", "--settings", "--sft-hf", "--pool", "--run-dir", "--record"):
            ap.add_argument(a, required=True)
        ap.add_argument("--seed", type=int, required=True)
        w = ap.parse_args(argv[1:])
        worker(w.framework, Settings(**json.loads(w.settings)), w.seed, Path(w.sft_hf), Path(w.pool), Path(w.run_dir),
               Path(w.record))
        return 0
    args = parse_args(argv)
    s = Settings(**{k: getattr(args, k) for k in asdict(Settings())})
    evals = None
    if not args.report_only:
        if args.sft_hf is None or args.data is None:
            print("give --sft-hf and --data (make demo writes outputs/demo/sft/hf and outputs/demo/data)", file=sys.stderr)
            return 2
        try:
            import trl  # noqa: F401
        except ImportError:
            print("TRL is not importable: `make bench-trl` installs constraints/trl-cpu.lock into .venv/trl-cpu "
                  "(PYTHONPATH=.venv/trl-cpu)", file=sys.stderr)
            return 2
        sft_hf, pool = prepare(args.out, args.sft_hf.resolve(), args.data.resolve(), s)
        run_all(args, s, sft_hf, pool)
        if not args.no_eval:
            evals = evaluate_all(args, s, sft_hf, args.data.resolve())
    elif (args.out / "eval" / "results.json").exists():
        evals = {m["model"]: m for m in json.loads((args.out / "eval" / "results.json").read_text())["models"]}
    report(args.out, evals)
    return 0


if __name__ == "__main__":
    sys.exit(main())
