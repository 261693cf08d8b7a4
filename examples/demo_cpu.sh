#!/usr/bin/env bash
# Tiny end-to-end CPU demo (2 processes, gloo). Usage: bash examples/demo_cpu.sh [OUT_DIR]
set -euo pipefail
OUT=${1:-outputs/demo}
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-.venv/bin/torchrun}
mkdir -p "$OUT"

echo "== 1/2 megatron stack: tiny Qwen2.5-VL LM, TP=2, 10 steps on synthetic tokens =="
$TORCHRUN --nproc_per_node 2 -m megatron_mmr1.train --config examples/configs/tiny_cpu_smoke.yaml \
    parallel.tp=2 output_dir="$OUT/lm_tp2" logging.progress=false

echo "== 2/2 megatron stack: same model, PP=2 =="
$TORCHRUN --nproc_per_node 2 -m megatron_mmr1.train --config examples/configs/tiny_cpu_smoke.yaml \
    parallel.pp=2 output_dir="$OUT/lm_pp2" logging.progress=false

echo "demo: done (outputs in $OUT)"
