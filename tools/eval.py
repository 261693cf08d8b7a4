"""Benchmark accuracy of checkpoints: the same as ``mmr1-eval`` / ``python -m megatron_mmr1.eval``.

    python tools/eval.py --model outputs/hf_tiny --data data/synth/rl_val.jsonl --backend local
"""

import sys

from megatron_mmr1.eval.cli import main

if __name__ == "__main__":
    sys.exit(main())
