"""Entry point ``mmr1-train`` (``python -m megatron_mmr1.train``).

    mmr1-train --nproc-per-node 8 --config RUN.yaml [key.sub=value ...]          # validates, then torchrun
    torchrun --nproc_per_node 8 -m megatron_mmr1.train --config RUN.yaml [...]   # the same job, plain torchrun
    mmr1-train --config RUN.yaml --print-config | --help-config

Every worker loads and validates the run config before any heavy import (one line on rank 0 and exit
code 2 on a config error), dies with its launcher, writes the resolved ``config.yaml`` and ``train.log``
into ``output_dir`` (rank 0), sets up the process groups, then runs the job ``training.mode`` names
(:data:`MODES`). A signal before the training loop takes over ends the worker with one line on rank 0.

With ``--nproc-per-node`` this command is the launcher: it validates the config for the whole world
size, runs torchrun in-process and turns its result into one line and an exit code (2 for a config
error) instead of torchrun's failure report.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os
import sys
import time
import typing
from pathlib import Path
from typing import Any, Callable, Optional

from megatron_mmr1.config import ConfigError, RunConfig, dump_yaml, field_docs, load_config, unread_keys
from megatron_mmr1.utils.logging import get_logger, setup_logging, tensorboard_dir
from megatron_mmr1.utils.procs import Interrupted, die_with_parent, launched_by_torchrun, signals_raise_interrupted

logger = get_logger(__name__)

EXIT_CONFIG_ERROR = 2
PROG = "mmr1-train"
RANK0_REPORT_GRACE_S = 30.0
"""How long a torchrun worker other than rank 0 waits after a config error for rank 0 to report it."""

# torchrun options the launcher passes through (dest -> flag).
_TORCHRUN_FLAGS = {"nnodes": "--nnodes", "node_rank": "--node-rank", "rdzv_backend": "--rdzv-backend",
                   "rdzv_endpoint": "--rdzv-endpoint", "rdzv_id": "--rdzv-id", "master_addr": "--master-addr",
                   "master_port": "--master-port", "max_restarts": "--max-restarts"}


# --------------------------------------------------------------------------------------------------
# Training modes
# --------------------------------------------------------------------------------------------------


def _mode_runner(mode: str) -> Callable[[RunConfig, Any], Any]:
    """``megatron_mmr1.training.<mode>.run(cfg, info)``, imported when the mode runs."""

    def run_mode(cfg: RunConfig, info: Any) -> Any:
        return importlib.import_module(f"megatron_mmr1.training.{mode}").run(cfg, info)

    return run_mode


MODES: dict[str, Callable[[RunConfig, Any], Any]] = {mode: _mode_runner(mode) for mode in ("lm_smoke", "sft", "grpo")}


def run(cfg: RunConfig) -> int:
    """Process groups up, the mode's job, process groups down; the job may return an exit code."""
    from megatron_mmr1 import parallel

    if cfg.training.mode not in MODES:
        raise ConfigError(f"training.mode={cfg.training.mode}: no runner (known: {', '.join(MODES)})")
    info = parallel.initialize(cfg.parallel)
    try:
        out = MODES[cfg.training.mode](cfg, info)
    finally:
        parallel.destroy()
    return out if isinstance(out, int) else 0


# --------------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------------


def parse_args(argv: Optional[list[str]] = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train a Qwen2.5-VL policy (cold-start SFT or GRPO + VAS) with megatron-core.",
        epilog="Overrides: dotted keys, e.g. parallel.tp=2 optim.lr=1e-5 data.train_files=[a.jsonl,b.jsonl]",
    )
    parser.add_argument("--config", "-c", help="run config YAML (see examples/configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("--help-config", action="store_true", help="list every config key with its doc and exit")
    launch = parser.add_argument_group("launcher (runs torchrun after validating the config)")
    launch.add_argument("--nproc-per-node", "--nproc_per_node", dest="nproc_per_node", type=int, default=None,
                        help="worker processes per node; given, this command starts them through torchrun")
    for dest, flag in _TORCHRUN_FLAGS.items():
        spellings = dict.fromkeys([flag, "--" + dest])  # torchrun takes --node-rank and --node_rank
        launch.add_argument(*spellings, dest=dest, default=None, help=f"passed to torchrun as {flag}")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return parser.parse_args(argv)


def config_help() -> str:
    """Every config key with its type, default and one-line doc, section by section."""
    lines: list[str] = []

    def walk(cls: type, obj: Any, prefix: str) -> None:
        docs, hints = field_docs(cls), typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                lines.append("")
                walk(type(value), value, f"{prefix}{f.name}.")
                continue
            kind = str(hints[f.name]).replace("typing.", "").replace("<class '", "").replace("'>", "")
            lines.append(f"{prefix}{f.name} = {value!r}  [{kind}]\n    {docs.get(f.name, '')}")

    walk(RunConfig, RunConfig(), "")
    return "\n".join(lines).lstrip("\n")


def _env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def _say(message: str, all_ranks: bool = False) -> None:
    """One line on stderr from rank 0 (or from this rank, for errors only it can see)."""
    if all_ranks or _env_rank() == 0:
        prefix = f"{PROG}: " if _env_rank() == 0 else f"{PROG} (rank {_env_rank()}): "
        print(prefix + message, file=sys.stderr, flush=True)


def prepare_output_dir(cfg: RunConfig) -> Path:
    """Rank 0: ``output_dir`` with the resolved ``config.yaml`` (a different one already there is kept
    as ``config.yaml.<n>``) and the TensorBoard dir printed with the command that views it."""
    out = Path(cfg.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = dump_yaml(cfg)
    path = out / "config.yaml"
    if path.is_file() and path.read_text() != text:
        n = 1
        while (out / f"config.yaml.{n}").exists():
            n += 1
        path.rename(out / f"config.yaml.{n}")
    path.write_text(text)
    return out


def _user_errors() -> tuple[type, ...]:
    """Errors that are the user's input (config, checkpoint files): one line, exit 2."""
    errors: list[type] = [ConfigError]
    if "megatron_mmr1.models.checkpoint" in sys.modules:  # imported only if a checkpoint was touched
        errors.append(sys.modules["megatron_mmr1.models.checkpoint"].CheckpointError)
    return tuple(errors)


def worker_main(args: argparse.Namespace) -> int:
    """One training process (torchrun worker, or the only process)."""
    if launched_by_torchrun():
        die_with_parent()
    try:
        # Until the trainer installs its own handlers (save at the next step), a signal stops the run here.
        with signals_raise_interrupted():
            world_size = int(os.environ.get("WORLD_SIZE", "1"))
            nnodes = max(1, world_size // int(os.environ.get("LOCAL_WORLD_SIZE", world_size)))
            cfg = load_config(args.config, args.overrides, world_size=world_size, nnodes=nnodes, launch=True)
            log_file = None
            if _env_rank() == 0:
                log_file = prepare_output_dir(cfg) / "train.log"
            setup_logging(cfg.logging.level, log_file=log_file)
            logger.info("run %s: output_dir %s (config.yaml, train.log)", cfg.name, cfg.output_dir)
            unread = unread_keys(cfg) if _env_rank() == 0 else []  # one warning per run, not per rank
            if unread:
                logger.warning("training.mode=%s does not read %s (set away from the default; ignored)",
                               cfg.training.mode, ", ".join(unread))
            tb = tensorboard_dir(cfg)
            logger.info("TensorBoard: %s  (view: tensorboard --logdir %s)", tb, tb)
            return run(cfg)
    except Interrupted as e:
        _say(f"stopped by {e.name} before a checkpoint was written; nothing saved")
        return e.exit_code
    except _user_errors() as e:
        # Config errors are the same on every rank: rank 0 speaks for all. A checkpoint error may be
        # one rank's own (a tensor of its pipeline stage); those ranks say it themselves.
        kind = "config error" if isinstance(e, ConfigError) else "checkpoint error"
        rank_specific = getattr(e, "rank_specific", False)
        _say(f"{kind}: {e}", all_ranks=rank_specific)
        if not rank_specific and _env_rank() != 0 and launched_by_torchrun():
            # A silent rank that exits first makes torchrun SIGTERM the others, rank 0 too, possibly before it
            # said why: wait for rank 0's exit to end this one (torchrun's SIGTERM), at most the grace period.
            time.sleep(RANK0_REPORT_GRACE_S)
        return EXIT_CONFIG_ERROR


def launch(args: argparse.Namespace) -> int:
    """Validate for the whole world size, then run torchrun in this process (workers: this module)."""
    nnodes = str(args.nnodes or "1")
    world_size = args.nproc_per_node * int(nnodes) if nnodes.isdigit() else None  # "1:4": elastic, unknown
    try:
        load_config(args.config, args.overrides, world_size=world_size,
                    nnodes=int(nnodes) if nnodes.isdigit() else None, launch=True)
    except ConfigError as e:
        _say(f"config error: {e}")
        return EXIT_CONFIG_ERROR
    torchrun_args = ["--nproc-per-node", str(args.nproc_per_node)]
    for dest, flag in _TORCHRUN_FLAGS.items():
        if getattr(args, dest) is not None:
            torchrun_args += [flag, str(getattr(args, dest))]
    worker_args = (["--config", args.config] if args.config else []) + list(args.overrides)
    return run_torchrun(torchrun_args + ["-m", "megatron_mmr1.train", *worker_args])


def run_torchrun(torchrun_argv: list[str]) -> int:
    """torchrun in-process; its failure report and shutdown warnings replaced by one line and an exit code.

    Workers print their own one-line errors (rank 0); a worker exit code 2 (config / checkpoint error)
    becomes this command's exit code, a signal 128 + its number.
    """
    import logging

    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args as torchrun_parse_args
    from torch.distributed.run import run as torchrun_run

    for name in list(logging.root.manager.loggerDict):  # torch elastic sets levels per logger
        if name.startswith("torch.distributed.elastic") or name.startswith("torch.distributed.run"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        torchrun_run(torchrun_parse_args(torchrun_argv))
    except ChildFailedError as e:
        codes = {rank: f.exitcode for rank, f in e.failures.items()}
        if EXIT_CONFIG_ERROR in codes.values():  # a worker said why in one line; torchrun stopped the rest
            return EXIT_CONFIG_ERROR
        rank, failure = e.get_first_failure()
        code = failure.exitcode
        how = f"signal {-code}" if code < 0 else f"code {code}"
        _say(f"worker rank {rank} exited with {how} (its output is above); {len(codes)} rank(s) failed")
        return code if 0 < code < 128 else 1
    except SignalException as e:
        return 128 + int(e.sigval)  # the workers got the signal too and said what they did
    except KeyboardInterrupt:  # before torchrun installed its handlers: no worker started yet
        _say("stopped by SIGINT before the workers started")
        return 128 + 2
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    args = parse_args(argv)
    if args.help_config:
        print(config_help())
        return 0
    if args.print_config:
        try:  # printing a config needs neither its cluster nor the model
            cfg = load_config(args.config, args.overrides, world_size=None)
        except ConfigError as e:
            _say(f"config error: {e}")
            return EXIT_CONFIG_ERROR
        print(dump_yaml(cfg), end="")
        return 0
    if args.nproc_per_node is not None and "WORLD_SIZE" not in os.environ:
        return launch(args)
    return worker_main(args)


if __name__ == "__main__":
    sys.exit(main())
