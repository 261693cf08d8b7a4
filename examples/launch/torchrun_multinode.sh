#!/usr/bin/env bash
# Multi-node torchrun launch. Run the same command on every node:
#   NNODES=4 NODE_RANK=<0..3> MASTER_ADDR=<node 0 host> bash examples/launch/torchrun_multinode.sh RUN.yaml [key=value ...]
# Single node: NNODES=1 (the default) and no MASTER_ADDR needed.
set -euo pipefail
CONFIG=${1:?usage: $0 RUN.yaml [key.sub=value ...]}; shift
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
GPUS_PER_NODE=${GPUS_PER_NODE:-8}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
MASTER_PORT=${MASTER_PORT:-29500}
export CUDA_DEVICE_MAX_CONNECTIONS=1   # megatron: ordered TP communication / compute overlap
export NCCL_DEBUG=${NCCL_DEBUG:-WARN}
exec torchrun --nnodes "$NNODES" --node_rank "$NODE_RANK" --nproc_per_node "$GPUS_PER_NODE" \
    --rdzv_backend c10d --rdzv_endpoint "$MASTER_ADDR:$MASTER_PORT" \
    -m megatron_mmr1.train --config "$CONFIG" "$@"
