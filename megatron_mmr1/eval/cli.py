"""``mmr1-eval``: benchmark accuracy of one or more checkpoints (see docs/eval.md).

    mmr1-eval --model before=outputs/hf_tiny --model after=outputs/hf_trained \\
        --data data/synth/rl_val.jsonl --data mathvista=testmini.parquet --out outputs/eval

Checkpoints are Hugging Face directories or megatron dist checkpoints (converted to HF first). For each
one, rollout servers are started (``--backend local``: the CPU stand-in; ``sglang``: SGLang on this node's
GPUs; both through ``tools/launch_sglang.py``) and stopped afterwards; ``--server-url`` uses servers that
already run instead. The markdown table goes to stdout (logs go to stderr); ``results.md``,
``results.json`` and ``<model>/<benchmark>.jsonl`` (one line per response) go to ``--out``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence

from megatron_mmr1.config import ConfigError, RunConfig, load_config
from megatron_mmr1.data.records import BadRecordError
from megatron_mmr1.eval.readers import LayoutError, load_benchmarks, parse_data_spec
from megatron_mmr1.eval.results import EvalResult, markdown_report, write_outputs
from megatron_mmr1.utils.logging import get_logger, setup_logging

logger = get_logger(__name__)

EXIT_USAGE = 2
LAUNCHER = [sys.executable, "-m", "megatron_mmr1.rollout.launch"]


class CheckpointError(ValueError):
    """A --model path that is neither a Hugging Face nor a megatron dist checkpoint."""


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="mmr1-eval", description="Benchmark accuracy of Qwen2.5-VL checkpoints (MMR1 prompt, boxed answers).",
        epilog="Overrides: run-config keys, e.g. rollout.max_inflight=64 data.max_pixels=802816 reward.num_workers=4")
    p.add_argument("--model", action="append", default=[], metavar="[NAME=]DIR",
                   help="HF checkpoint dir or megatron dist checkpoint (repeat to compare checkpoints side by side)")
    p.add_argument("--data", action="append", default=[], metavar="[NAME=]FILE", required=True,
                   help="benchmark file: JSONL, Parquet or JSON (repeat; files with the same NAME form one benchmark)")
    p.add_argument("--out", default="outputs/eval", help="directory for results.md/json and per-sample JSONL")
    p.add_argument("--server-url", action="append", default=[], help="use running servers (or a router) instead")
    p.add_argument("--backend", choices=["local", "sglang"], default=None,
                   help="servers to start: local (CPU stand-in) or sglang (GPU); default rollout.backend")
    p.add_argument("--num-servers", type=int, default=None, help="servers per checkpoint (default rollout.num_servers)")
    p.add_argument("--tp", type=int, default=1, help="GPUs per SGLang server")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir for the chat template (default: the checkpoint)")
    p.add_argument("--samples", type=int, default=None, help="responses per question k: mean@k and pass@k")
    p.add_argument("--temperature", type=float, default=None,
                   help="default: eval.temperature (0 = greedy); with --samples > 1 and 0, rollout.temperature")
    p.add_argument("--max-new-tokens", type=int, default=None, help="default eval.max_new_tokens or data.max_response_length")
    p.add_argument("--max-samples", type=int, default=None, help="first N records of each file")
    p.add_argument("--layout", default=None, help="force a layout: mathvista mathverse mathvision logicvista chartqa rl")
    p.add_argument("--on-bad-record", choices=["error", "skip"], default=None, help="default data.on_bad_record")
    p.add_argument("--config", default=None, help="run config YAML (data, rollout, reward and eval sections are used)")
    p.add_argument("--server-timeout-s", type=float, default=900.0, help="wait for started servers to be healthy")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="key.sub=value run-config overrides")
    return p.parse_args(argv)


def resolve_config(args: argparse.Namespace) -> RunConfig:
    """Run config (YAML + overrides) with the command-line flags applied to its eval/data/rollout sections."""
    cfg = load_config(args.config, args.overrides)
    ev = cfg.eval
    samples = args.samples if args.samples is not None else ev.samples
    temperature = args.temperature if args.temperature is not None else ev.temperature
    if args.temperature is None and samples > 1 and temperature == 0:
        temperature = cfg.rollout.temperature  # k greedy responses would all be the same
    cfg.eval = dataclasses.replace(ev, samples=samples, temperature=temperature,
                                   max_new_tokens=args.max_new_tokens or ev.max_new_tokens,
                                   max_samples=args.max_samples if args.max_samples is not None else ev.max_samples)
    if args.on_bad_record:
        cfg.data = dataclasses.replace(cfg.data, on_bad_record=args.on_bad_record)
    rollout = {}
    if args.backend:
        rollout["backend"] = args.backend
    if args.num_servers:
        rollout["num_servers"] = args.num_servers
    if args.server_url:
        rollout["server_urls"] = list(args.server_url)
    cfg.rollout = dataclasses.replace(cfg.rollout, **rollout)
    if cfg.eval.samples < 1:
        raise ConfigError(f"--samples {cfg.eval.samples} must be >= 1")
    return cfg


def model_specs(specs: Sequence[str]) -> list[tuple[str, str]]:
    """[NAME=]DIR -> (name, dir), names unique (the directory name by default)."""
    out: list[tuple[str, str]] = []
    for spec in specs:
        name, path = parse_data_spec(spec)
        name = name or Path(path).name or "model"
        base, i = name, 2
        while any(n == name for n, _ in out):
            name, i = f"{base}-{i}", i + 1
        out.append((name, path))
    return out


def find_checkpoint(path: str) -> tuple[str, Path]:
    """("hf" | "mcore", dir): a HF dir (config.json), a dist checkpoint (metadata.json), or a save dir whose
    newest ``iter_*`` sub-directory is one."""
    p = Path(path)
    if not p.is_dir():
        raise CheckpointError(f"--model {path}: no such directory")
    if (p / "config.json").is_file():
        return "hf", p
    if (p / "metadata.json").is_file():
        return "mcore", p
    iters = sorted(d for d in p.glob("iter_*") if (d / "metadata.json").is_file())
    if iters:
        return "mcore", iters[-1]
    raise CheckpointError(f"--model {path}: not a Hugging Face checkpoint (no config.json) nor a megatron dist "
                          "checkpoint (no metadata.json, no iter_*/metadata.json)")


def hf_dir_for(path: str, work_dir: Path) -> Path:
    """The HF directory the servers load: ``path`` itself, or a conversion of a megatron checkpoint."""
    kind, ckpt = find_checkpoint(path)
    if kind == "hf":
        return ckpt
    out = work_dir / "hf_from_mcore"
    logger.info("converting megatron checkpoint %s -> %s", ckpt, out)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    res = subprocess.run([sys.executable, "-m", "megatron_mmr1.models.convert", "mcore-to-hf", "--ckpt", str(ckpt),
                          "--out", str(out)], capture_output=True, text=True)
    if res.returncode != 0:
        raise CheckpointError(f"--model {path}: conversion to Hugging Face failed:\n{res.stderr[-3000:]}")
    return out


@contextlib.contextmanager
def launched_servers(model_dir: Path, backend: str, num: int, tp: int, log_dir: Path, timeout_s: float
                     ) -> Iterator[list[str]]:
    """Servers on ``model_dir`` through ``megatron_mmr1.rollout.launch`` (stopped on exit); yields their URLs."""
    log_dir.mkdir(parents=True, exist_ok=True)
    url_file = log_dir / "urls.json"
    url_file.unlink(missing_ok=True)
    cmd = [*LAUNCHER, "--model", str(model_dir), "--backend", backend, "--num-servers", str(num),
           "--tp", str(tp), "--log-dir", str(log_dir), "--url-file", str(url_file), "--timeout-s", str(timeout_s)]
    log_path = log_dir / "launcher.log"
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        end = time.monotonic() + timeout_s + 30
        while not url_file.is_file():
            if proc.poll() is not None:
                raise RuntimeError(f"rollout servers did not start (exit {proc.returncode}); {log_path}:\n"
                                   f"{log_path.read_text()[-3000:]}")
            if time.monotonic() > end:
                raise RuntimeError(f"rollout servers not healthy after {timeout_s:.0f}s (see {log_dir})")
            time.sleep(0.5)
        urls = json.loads(url_file.read_text())["servers"]
        logger.info("%s servers on %s: %s", backend, model_dir, ", ".join(urls))
        yield urls
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)  # the launcher stops its servers
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def _tokenizer(path: Optional[str]):
    from transformers import AutoTokenizer

    if path is None:
        raise CheckpointError("--server-url without --model needs --tokenizer (the chat template of the served model)")
    return AutoTokenizer.from_pretrained(str(path))


def run(args: argparse.Namespace, cfg: RunConfig) -> list[EvalResult]:
    from megatron_mmr1.data.chat import ChatFormatter
    from megatron_mmr1.eval.runner import evaluate
    from megatron_mmr1.eval.scoring import eval_pool
    from megatron_mmr1.rollout import RolloutClient

    out = Path(args.out)
    models = model_specs(args.model)
    if cfg.rollout.server_urls and len(models) > 1:
        raise ConfigError("--server-url serves one model: pass at most one --model")
    if not cfg.rollout.server_urls and not models:
        raise ConfigError("give --model (servers are started for it) or --server-url")
    benches = load_benchmarks(args.data, cfg.data, cfg.eval.max_samples, layout=args.layout)
    for b in benches:
        logger.info("benchmark %s (%s): %d questions from %s", b.name, b.layout, len(b.items), ", ".join(b.files))
    max_new = cfg.eval.max_new_tokens or cfg.data.max_response_length
    results = []
    with eval_pool(cfg.reward) as pool:
        for name, path in models or [("server", None)]:
            hf = hf_dir_for(path, out / name) if path else None
            formatter = ChatFormatter.from_config(_tokenizer(args.tokenizer or hf), cfg.data)
            if cfg.rollout.server_urls:
                servers = contextlib.nullcontext(list(cfg.rollout.server_urls))
            else:
                servers = launched_servers(hf, cfg.rollout.backend, cfg.rollout.num_servers, args.tp,
                                           out / name / "server_logs", args.server_timeout_s)
            with servers as urls:
                client = RolloutClient(cfg.rollout, urls, max_new_tokens=max_new)
                results.append(evaluate(client, benches, cfg.eval, cfg.data, formatter=formatter, pool=pool,
                                        model=name, progress=not args.no_progress))
            logger.info("%s: average accuracy %.1f%%", name, 100 * results[-1].average)
    return results


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(argv)
    setup_logging("INFO", stream=sys.stderr)  # stdout carries the table
    try:
        cfg = resolve_config(args)
        results = run(args, cfg)
    except (ConfigError, LayoutError, CheckpointError, BadRecordError, FileNotFoundError) as e:
        print(f"mmr1-eval: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (RuntimeError, ValueError) as e:
        print(f"mmr1-eval: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    paths = write_outputs(results, args.out)
    sys.stdout.write(markdown_report(results))
    sys.stdout.flush()
    print(f"mmr1-eval: wrote {paths['markdown']}, {paths['json']} and per-sample JSONL under {args.out}",
          file=sys.stderr)
    return 0
