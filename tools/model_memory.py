#!/usr/bin/env python
"""Per-GPU parameter / gradient / optimizer memory of Qwen2.5-VL layouts (the README's memory table).

    python tools/model_memory.py                                  # the example layouts
    python tools/model_memory.py --layout qwen2.5-vl-7b:4:1:2     # preset:tp:pp:dp, repeatable
"""

import argparse

from megatron_mmr1.models.memory import EXAMPLE_LAYOUTS, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--layout", action="append", default=[], help="preset:tp:pp:dp")
    args = parser.parse_args()
    layouts = EXAMPLE_LAYOUTS
    if args.layout:
        layouts = {}
        for item in args.layout:
            preset, tp, pp, dp = item.split(":")
            layouts[preset] = (int(tp), int(pp), int(dp))
    print(table(layouts))


if __name__ == "__main__":
    main()
