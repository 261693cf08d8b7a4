#!/usr/bin/env python
"""Plan a GRPO run on a GPU cluster: the same command as ``python -m megatron_mmr1.planning`` (same flags;
the cost model lives in ``megatron_mmr1/planning/``).

    python tools/plan_cluster.py --preset qwen2.5-vl-72b --nodes 2     # best layout, colocated
    python tools/plan_cluster.py --config RUN.yaml --shell             # variables for examples/launch
"""

import sys

from megatron_mmr1.planning.cli import main

if __name__ == "__main__":
    sys.exit(main(prog="plan_cluster"))
