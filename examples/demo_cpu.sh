#!/usr/bin/env bash
# Tiny end-to-end CPU demo of what this build has (2 processes where parallel, gloo).
# Usage: bash examples/demo_cpu.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-outputs/demo}
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-.venv/bin/torchrun}
rm -rf "$OUT"
mkdir -p "$OUT"

echo "== 1/6 synthetic image-math task + tiny Qwen-style tokenizer =="
$PY -m megatron_mmr1.data.synthetic --out "$OUT/data" --num 64 --seed 0 --tokenizer

echo "== 2/6 random tiny Qwen2.5-VL policy in Hugging Face format =="
$PY -m megatron_mmr1.models.tiny --out "$OUT/hf_tiny" --tokenizer "$OUT/data/tokenizer" --logit-scale 20

echo "== 3/6 checkpoint conversion: HF -> megatron dist checkpoint (TP=2) -> HF =="
$PY -m megatron_mmr1.models.convert hf-to-mcore --hf "$OUT/hf_tiny" --out "$OUT/mcore_tp2" --tp 2
$PY -m megatron_mmr1.models.convert mcore-to-hf --ckpt "$OUT/mcore_tp2" --out "$OUT/hf_roundtrip"
$PY - "$OUT/hf_tiny" "$OUT/hf_roundtrip" <<'PYEOF'
import sys
from safetensors.torch import load_file
from pathlib import Path
load = lambda d: {k: v for f in sorted(Path(d).glob("*.safetensors")) for k, v in load_file(f).items()}
a, b = load(sys.argv[1]), load(sys.argv[2])
same = a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)
print(f"round trip: {len(a)} tensors, bitwise identical: {same}")
sys.exit(0 if same else 1)
PYEOF

echo "== 4/6 megatron training steps (tiny LM, synthetic tokens): TP=2, then PP=2 =="
$TORCHRUN --nproc_per_node 2 -m megatron_mmr1.train --config examples/configs/tiny_cpu_smoke.yaml \
    parallel.tp=2 output_dir="$OUT/lm_tp2" logging.progress=false
$TORCHRUN --nproc_per_node 2 -m megatron_mmr1.train --config examples/configs/tiny_cpu_smoke.yaml \
    parallel.pp=2 output_dir="$OUT/lm_pp2" logging.progress=false training.train_iters=5

echo "== 5/6 VAS sampling -> rollouts (stand-in server, SGLang HTTP API) -> rewards -> GRPO advantages =="
$PY examples/rollout_vas_demo.py --model "$OUT/hf_tiny" --data "$OUT/data/rl_train.jsonl" --steps 3

echo "== 6/6 the VAS mechanism: bandit simulation, uniform vs VAS vs DAPO filtering (quick) =="
$PY tools/vas_simulation.py --quick --out "$OUT/vas_simulation.png"

echo "demo: done (outputs in $OUT)"
