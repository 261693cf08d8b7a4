"""Plan a GRPO run on a GPU cluster: trainer and SGLang-server layout, memory per GPU by part, and an
estimated time per step, with every assumption printed beside the figures.

    python -m megatron_mmr1.planning --preset qwen2.5-vl-7b --nodes 1              # best layout, colocated
    python -m megatron_mmr1.planning --preset qwen2.5-vl-72b --nodes 6 --split     # servers on their own GPUs
    python -m megatron_mmr1.planning --config examples/configs/mmr1_grpo_32b.yaml  # the config's own layout
    python -m megatron_mmr1.planning --table --nodes 1,2,4,8                       # docs/performance.md table
    python -m megatron_mmr1.planning --config RUN.yaml --shell                     # variables for examples/launch

A config states its cluster in one comment line, ``# cluster: nodes=N server_tp=T``; with
``rollout.num_servers`` and ``rollout.colocate`` that fixes where the trainer and the servers run.
Nothing here is measured: memory follows ``megatron_mmr1.models.memory``; times are FLOPs at a stated
MFU, decode steps from HBM bandwidth, transfers from link bandwidth (the ``Assumptions`` fields,
``--assume name=value`` to change one). ``tools/plan_cluster.py`` is the same command.
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional

from megatron_mmr1.config import ConfigError, load_config
from megatron_mmr1.planning.hardware import GPUS, Assumptions, GPUSpec, parse_assume
from megatron_mmr1.planning.plan import Plan
from megatron_mmr1.planning.report import markdown_table, report, shell_vars
from megatron_mmr1.planning.search import plan_config, search

SIZES = ("qwen2.5-vl-3b", "qwen2.5-vl-7b", "qwen2.5-vl-32b", "qwen2.5-vl-72b")


def table_cell(preset: str, nodes: int, gpu: GPUSpec, a: Assumptions, colocate: bool) -> Plan | str:
    """The best plan of a size preset with the paper's settings; split layouts ranked by their overlapped step."""
    try:
        return search(load_config(None, [f"model.preset={preset}"]), nodes, gpu, a, colocate, overlapped=not colocate)
    except ValueError as e:
        return f"| {preset.removeprefix('qwen2.5-vl-')} | {nodes} | {'colocated' if colocate else 'split'} | {e} |"


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: node counts must be >= 1")
    return values


def parser(prog: Optional[str] = None) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog=prog, description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--config", help="run config YAML: its workload, and its layout unless --nodes is given")
    src.add_argument("--preset", choices=SIZES, help="size preset with the paper's GRPO settings (table 6)")
    ap.add_argument("--nodes", type=_int_list, help="node counts (8 GPUs each) to search layouts for, e.g. 1,2,4,8")
    ap.add_argument("--gpu", choices=sorted(GPUS), help="default: a config's cluster comment, else h100")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--colocate", dest="colocate", action="store_true", default=None,
                      help="servers share the trainer's GPUs (default for --preset)")
    mode.add_argument("--split", dest="colocate", action="store_false", help="servers on GPUs of their own")
    ap.add_argument("--overlapped", action="store_true", help="rank split layouts by their one-step off-policy step")
    ap.add_argument("--table", action="store_true", help="markdown table of every size, colocated and split")
    ap.add_argument("--shell", action="store_true", help="print the config's layout as shell variables")
    ap.add_argument("--assume", action="append", default=[], metavar="NAME=VALUE", help="change an assumption")
    ap.add_argument("overrides", nargs="*", help="config overrides (key.sub=value)")
    return ap


def run(args: argparse.Namespace) -> int:
    a = parse_assume(args.assume)
    gpu = GPUS[args.gpu or "h100"]
    if args.table:
        print(markdown_table([table_cell(preset, n, gpu, a, colocate) for preset in SIZES
                              for n in (args.nodes or [1, 2, 4, 8]) for colocate in (True, False)]))
        return 0
    if args.config and not args.nodes:
        plan = plan_config(args.config, GPUS[args.gpu] if args.gpu else None, a, args.overrides)
        print(shell_vars(plan) if args.shell else report(plan))
        return 0 if plan.fits else 1
    if args.shell:
        raise ValueError("--shell needs --config (without --nodes)")
    cfg = load_config(args.config, args.overrides) if args.config else load_config(
        None, [f"model.preset={args.preset or 'qwen2.5-vl-7b'}", *args.overrides])
    colocate = args.colocate if args.colocate is not None else (cfg.rollout.colocate if args.config else True)
    for n in args.nodes or [1]:
        print(report(search(cfg, n, gpu, a, colocate, overlapped=args.overlapped)), end="\n\n")
    return 0


def main(argv: Optional[list[str]] = None, prog: Optional[str] = None) -> int:
    """0: printed (a config's plan fits); 1: the config's plan does not fit; 2: bad input."""
    args = parser(prog).parse_args(argv)
    try:
        return run(args)
    except (ConfigError, ValueError, OSError) as e:
        print(f"{prog or 'megatron_mmr1.planning'}: {e}", file=sys.stderr)
        return 2
