"""Entry point: ``torchrun --nproc_per_node N -m megatron_mmr1.train --config RUN.yaml [key.sub=value ...]``.

Loads and validates the run config (one clear line and exit code 2 on a config error), sets up the
process groups (nccl on GPU, gloo on CPU), then runs the job that ``training.mode`` names.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from megatron_mmr1.config import ConfigError, RunConfig, dump_yaml, load_config
from megatron_mmr1.utils.logging import get_logger, setup_logging

logger = get_logger(__name__)

EXIT_CONFIG_ERROR = 2


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="mmr1-train",
        description="Train a Qwen2.5-VL policy (cold-start SFT or GRPO + VAS) with megatron-core.",
        epilog="Overrides: dotted keys, e.g. parallel.tp=2 optim.lr=1e-5 data.train_files=[a.jsonl,b.jsonl]",
    )
    parser.add_argument("--config", "-c", help="run config YAML (see examples/configs/)")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    parser.add_argument("overrides", nargs="*", help="key.sub=value overrides")
    return parser.parse_args(argv)


def run(cfg: RunConfig) -> int:
    from megatron_mmr1 import parallel

    info = parallel.initialize(cfg.parallel)
    try:
        if cfg.training.mode == "lm_smoke":
            from megatron_mmr1.training import lm_smoke

            lm_smoke.run(cfg, info, steps=cfg.training.train_iters)
        else:
            raise ConfigError(
                f"training.mode={cfg.training.mode}: the {cfg.training.mode.upper()} trainer is not part of this "
                "build yet; training.mode=lm_smoke runs the megatron stack on synthetic tokens"
            )
    finally:
        parallel.destroy()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    try:
        cfg = load_config(args.config, args.overrides, world_size=world_size)
    except ConfigError as e:
        print(f"mmr1-train: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR
    setup_logging(cfg.logging.level)
    if args.print_config:
        print(dump_yaml(cfg), end="")
        return 0
    Path(cfg.output_dir).mkdir(parents=True, exist_ok=True)
    try:
        return run(cfg)
    except ConfigError as e:
        print(f"mmr1-train: config error: {e}", file=sys.stderr)
        return EXIT_CONFIG_ERROR


if __name__ == "__main__":
    sys.exit(main())
