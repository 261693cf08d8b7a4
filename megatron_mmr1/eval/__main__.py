"""``python -m megatron_mmr1.eval`` = ``mmr1-eval`` (the guard matters: reward workers are spawned)."""

import sys

from megatron_mmr1.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
