#!/usr/bin/env bash
# One-shot GPU check of the trainer (docs/gpu.md): six checks, one summary line each, exit 1 if any failed.
#   bash tools/gpu_check.sh [--dry-run] [--only kernels,parity] [--work-dir DIR] [--list]
# The logic lives in megatron_mmr1/gpu_check.py; this wrapper only sets the environment and the interpreter.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
if [ -z "${PY:-}" ]; then  # the project's venv when there is one, else the machine's python
    if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
# the repo's packages importable without an install (mmr1_kernels lives under kernels/)
export PYTHONPATH="$ROOT:$ROOT/kernels${PYTHONPATH:+:$PYTHONPATH}"
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=${PYTHONWARNINGS:-ignore} TOKENIZERS_PARALLELISM=false
exec "$PY" -m megatron_mmr1.gpu_check "$@"
