#!/usr/bin/env python
"""Per-GPU parameter / gradient / optimizer memory of Qwen2.5-VL layouts (the README's memory table).

    python tools/model_memory.py                                  # the example layouts
    python tools/model_memory.py --layout qwen2.5-vl-7b:4:1:2     # preset:tp:pp:dp, repeatable

The reference policy of the KL term (``algorithm.use_kl_loss``) is frozen bf16 weights of the same
shards, kept in CPU memory and swapped in for the reference forward only: 0 GPU bytes while idle; the
last column is its size (the CPU copy, and the GPU bytes during that forward). At 7B with TP4 that is
4.8 GiB per GPU. Activations, the KV cache and whole-cluster layouts: ``python -m megatron_mmr1.planning``.
"""

import argparse
import sys

from megatron_mmr1.config import ConfigError, load_config
from megatron_mmr1.models.memory import EXAMPLE_LAYOUTS, table

LAYOUT_FORMAT = "preset:tp:pp:dp, e.g. qwen2.5-vl-7b:4:1:2"


def parse_layout(item: str) -> tuple[str, tuple[int, int, int]]:
    """``preset:tp:pp:dp`` checked by the run config's own rules (known preset, TP dividing the heads, ...)."""
    parts = item.split(":")
    if len(parts) != 4 or not all(p.isdigit() and int(p) >= 1 for p in parts[1:]):
        raise ValueError(f"--layout {item!r}: expected {LAYOUT_FORMAT}")
    preset, (tp, pp, dp) = parts[0], (int(p) for p in parts[1:])
    try:
        load_config(None, [f"model.preset={preset}", f"parallel.tp={tp}", f"parallel.pp={pp}"])
    except ConfigError as e:
        raise ValueError(f"--layout {item!r}: {e}") from None
    return preset, (tp, pp, dp)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", action="append", default=[], help=LAYOUT_FORMAT)
    args = parser.parse_args(argv)
    try:
        layouts = [parse_layout(item) for item in args.layout] or list(EXAMPLE_LAYOUTS.items())
    except ValueError as e:
        print(f"model_memory: {e}", file=sys.stderr)
        return 2
    print(table(layouts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
