"""The yardstick CLI: plain single-process PyTorch SFT and on-policy GRPO on the tiny policy
(``megatron_mmr1/baselines/plain_loop.py`` says what it is and what it leaves out).

    python tools/plain_loop.py sft  --model HF_DIR --data sft_train.jsonl --out DIR
    python tools/plain_loop.py grpo --model SFT_DIR --train rl_train.jsonl --val rl_val.jsonl --out DIR
"""

import sys

from megatron_mmr1.baselines.plain_loop import main

if __name__ == "__main__":
    sys.exit(main())
