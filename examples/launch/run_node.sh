#!/usr/bin/env bash
# One node's part of a GRPO run: the SGLang servers (and sglang-router in front of them) that the plan
# puts on this node, then the trainer if this node trains. The layout is read from the config itself
# (parallel.*, rollout.colocate / num_servers and its "# cluster: nodes=N server_tp=T" line) through
# `python -m megatron_mmr1.planning --config CONFIG --shell`, so the config is the one place it is written.
#
#   one node:    MODEL=/ckpt/hf bash examples/launch/run_node.sh examples/configs/mmr1_grpo_7b_colocate.yaml \
#                    data.train_files=[/data/rl.parquet]
#   many nodes:  the same command on every node, with a directory all nodes share (fresh for each run):
#                NNODES=2 NODE_RANK=<0|1> MASTER_ADDR=<node 0 host> RUN_DIR=/shared/run1 MODEL=/ckpt/hf \
#                    bash examples/launch/run_node.sh examples/configs/mmr1_grpo_7b.yaml data.train_files=[...]
#   slurm:       MODEL=/ckpt/hf RUN_DIR=/shared/run1 sbatch --nodes=2 examples/launch/slurm.sbatch CONFIG [key=value ...]
#
# Servers write their URLs to RUN_DIR/urls/node<rank>.json; the trainer nodes wait for every server
# node's file and pass the server URLs as rollout.server_urls (weight sync talks to each server, so the
# trainer gets the servers, not the router; the router is there for evaluation and other clients).
# Server-only nodes keep their servers up until the trainer writes RUN_DIR/trainer.rc.
# DRY_RUN=1 prints the commands instead of running them.
set -euo pipefail
CONFIG=${1:?usage: $0 RUN.yaml [key.sub=value ...]}; shift
MODEL=${MODEL:?set MODEL to the Hugging Face checkpoint directory of the policy}
NNODES=${NNODES:-1}
NODE_RANK=${NODE_RANK:-0}
MASTER_ADDR=${MASTER_ADDR:-127.0.0.1}
RUN_DIR=${RUN_DIR:-outputs/launch}
PYTHON=${PYTHON:-python}
ROUTER_PORT=${ROUTER_PORT:-30000}
ADVERTISE_HOST=${ADVERTISE_HOST:-$(hostname)}
# This node's address as the servers reach it: each pipeline stage's weight sender binds its update group
# here (rollout.weight_sync_master_address is node 0's, which a stage on another node cannot bind).
NODE_ADDR=${NODE_ADDR:-$ADVERTISE_HOST}
DRY_RUN=${DRY_RUN:-0}

die() { echo "run_node.sh: $*" >&2; exit 1; }
run() { if [ "$DRY_RUN" = 1 ]; then echo "+ $(printf "%q " "$@")"; else "$@"; fi; }

plan=$($PYTHON -m megatron_mmr1.planning --config "$CONFIG" --shell model.hf_path="$MODEL" "$@") \
    || die "no layout for $CONFIG (the planner said why above; without --shell it shows the plan)"
eval "$plan"
[ "$NNODES" = "$PLAN_NODES" ] || die "$CONFIG is planned for $PLAN_NODES node(s), NNODES=$NNODES"
# The run's own settings the servers must share (image pixel limits, admission limit), read from the config
# validated with this layout's node count and server TP (refusals name the key before anything starts).
run_args=$($PYTHON -c '
import shlex, sys
from megatron_mmr1.config import load_config
c = load_config(sys.argv[1], sys.argv[3:], nnodes=int(sys.argv[2]))
print(" ".join(shlex.quote(a) for a in ["--min-pixels", str(c.data.min_pixels), "--max-pixels", str(c.data.max_pixels)]
      + (["--max-running-requests", str(c.rollout.max_running_requests)] if c.rollout.max_running_requests else [])))
'  "$CONFIG" "$PLAN_NODES" model.hf_path="$MODEL" rollout.server_tp="$PLAN_SERVER_TP" "$@") \
    || die "$CONFIG does not validate for this layout (the reason is above)"
eval "server_run_args=($run_args)"

url_file() { echo "$RUN_DIR/urls/node$1.json"; }
servers_here=0
if [ "$NODE_RANK" -ge "$PLAN_SERVER_FIRST_NODE" ]; then servers_here=1; fi
trainer_here=0
if [ "$NODE_RANK" -lt "$PLAN_TRAINER_NODES" ]; then trainer_here=1; fi

# ---- servers on this node --------------------------------------------------------------------------
server_pid=""
stop_servers() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" || true; fi; }
if [ "$servers_here" = 1 ]; then
    mine=$(url_file "$NODE_RANK")
    [ "$DRY_RUN" = 1 ] || [ ! -e "$mine" ] || die "$mine exists: use a fresh RUN_DIR for each run"
    mkdir -p "$RUN_DIR/urls"
    args=(--model "$MODEL" --num-servers "$PLAN_SERVERS_PER_NODE" --tp "$PLAN_SERVER_TP"
          --gpu-offset "$PLAN_SERVER_GPU_OFFSET" --host 0.0.0.0 --advertise-host "$ADVERTISE_HOST"
          --router-port "$ROUTER_PORT" --url-file "$mine" --log-dir "$RUN_DIR/sglang_logs/node$NODE_RANK"
          "${server_run_args[@]}")
    if [ "$PLAN_COLOCATE" = 1 ]; then args+=(--enable-memory-saver); fi
    # launch_sglang stays in the foreground of its own process: killing it stops its servers and router.
    if [ "$DRY_RUN" = 1 ]; then
        run "$PYTHON" tools/launch_sglang.py "${args[@]}" -- --mem-fraction-static "$PLAN_MEM_FRACTION"
    else
        "$PYTHON" tools/launch_sglang.py "${args[@]}" -- --mem-fraction-static "$PLAN_MEM_FRACTION" &
        server_pid=$!
        trap stop_servers EXIT
    fi
fi

# ---- trainer ---------------------------------------------------------------------------------------
if [ "$trainer_here" = 1 ]; then
    files=()
    for ((r = PLAN_SERVER_FIRST_NODE; r < PLAN_NODES; r++)); do files+=("$(url_file "$r")"); done
    if [ "$DRY_RUN" = 1 ]; then
        urls="[servers of ${files[*]}]"
    else
        for f in "${files[@]}"; do  # a file appears once all of its node's servers answer /health
            until [ -e "$f" ]; do
                if [ -n "$server_pid" ] && ! kill -0 "$server_pid" 2>/dev/null; then
                    die "the servers on this node exited (logs in $RUN_DIR/sglang_logs/node$NODE_RANK)"
                fi
                sleep 5
            done
        done
        urls=$("$PYTHON" -c 'import json, sys; print("[" + ",".join(u for f in sys.argv[1:] for u in json.load(open(f))["servers"]) + "]")' "${files[@]}")
    fi
    rc=0
    run env NNODES="$PLAN_TRAINER_NODES" NODE_RANK="$NODE_RANK" GPUS_PER_NODE="$PLAN_TRAINER_GPUS_PER_NODE" \
        MASTER_ADDR="$MASTER_ADDR" MMR1_NODE_ADDR="$NODE_ADDR" bash examples/launch/torchrun_multinode.sh "$CONFIG" model.hf_path="$MODEL" \
        rollout.backend=sglang rollout.server_urls="$urls" rollout.weight_sync_master_address="$MASTER_ADDR" rollout.server_tp="$PLAN_SERVER_TP" "$@" \
        || rc=$?
    if [ "$NODE_RANK" = 0 ] && [ "$DRY_RUN" != 1 ]; then echo "$rc" > "$RUN_DIR/trainer.rc"; fi
    exit "$rc"
fi

# ---- server-only node: serve until the trainer is done ---------------------------------------------
if [ "$DRY_RUN" = 1 ]; then
    echo "+ (serve until $RUN_DIR/trainer.rc exists)"
    exit 0
fi
until [ -e "$RUN_DIR/trainer.rc" ]; do
    kill -0 "$server_pid" 2>/dev/null || die "the servers on this node exited (logs in $RUN_DIR/sglang_logs/node$NODE_RANK)"
    sleep 30
done
