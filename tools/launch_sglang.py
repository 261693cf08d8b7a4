"""Start N rollout servers (SGLang or the CPU stand-ins) and sglang-router on this node; see
``megatron_mmr1/rollout/launch.py`` (also ``python -m megatron_mmr1.rollout.launch``) for the flags.

    python tools/launch_sglang.py --model /ckpt/Qwen2.5-VL-7B-Instruct --num-servers 4 --tp 2 --router-port 30000
    python tools/launch_sglang.py stop --url-file run1/rollout_urls.json
"""

import sys

from megatron_mmr1.rollout.launch import main

if __name__ == "__main__":
    sys.exit(main())
