#!/usr/bin/env python
"""Hugging Face Qwen2.5-VL <-> megatron dist checkpoint (same as the installed ``mmr1-convert``).

    python tools/convert_checkpoint.py hf-to-mcore --hf HF_DIR --out MCORE_DIR --tp 2 --pp 1
    python tools/convert_checkpoint.py mcore-to-hf --ckpt MCORE_DIR --out HF_DIR
"""

import sys

from megatron_mmr1.models.convert import main

if __name__ == "__main__":
    sys.exit(main())
