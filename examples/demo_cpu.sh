#!/usr/bin/env bash
# Tiny end-to-end CPU demo of what this build has (2 processes where parallel, gloo).
# Usage: bash examples/demo_cpu.sh [OUT_DIR]
#
# Stages are functions listed in STAGES (run in order, numbered and timed); a new stage is one more
# function and one more entry. Outputs a later stage can rely on:
#   $OUT/data/            synthetic task: rl_train.jsonl, rl_val.jsonl (held-out prompts), sft_train.jsonl,
#                         sft_val.jsonl (held-out traces), tokenizer/
#   $OUT/hf_tiny/         the random tiny policy (HF)
#   $OUT/sft/hf/          the SFT policy exported to HF;  $OUT/sft/summary.json  its run summary
#   $OUT/grpo/hf/          the GRPO policy exported to HF; $OUT/grpo/summary.json  its run summary
#   $OUT/grpo/eval/        greedy held-out evals of the SFT policy (step_0) and the GRPO policy, per response
set -euo pipefail
OUT=${1:-outputs/demo}
PY=${PY:-.venv/bin/python}
TORCHRUN=${TORCHRUN:-.venv/bin/torchrun}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} PYTHONWARNINGS=${PYTHONWARNINGS:-ignore}
SFT_CONFIG=examples/configs/tiny_cpu_sft.yaml
GRPO_CONFIG=examples/configs/tiny_cpu_grpo.yaml
GRPO_STEPS=${GRPO_STEPS:-30}  # 8 prompts x 8 responses per step (~7 s each): format rises, held-out accuracy by +0.01 to +0.055
                              # in 30 steps (SE ~0.02; docs/training.md); 30 keeps a fresh `make demo` (2.3 min of .venv set-up included) under 15 min
GRPO_TEMPERATURE=1.0  # the config's 0.6 is the paper's; on this policy 1.0 leaves fewer groups with equal rewards
                      # (zero-variance fraction ~0.45 against ~0.65 over 30 steps), so more of each step's rollouts train
GRPO_KL=false         # as the plain on-policy loop it is measured against (tools/plain_loop.py); saves the reference forward
NUM_RL=1200        # RL prompts: 800 to train on, 400 held out for the greedy evals (paired SE ~0.015 on a change)
NUM_SFT_TRAIN=1500 # SFT traces trained on
NUM_SFT_VAL=64     # held-out SFT traces for the validation loss
EVAL_TOKENS=256    # greedy max new tokens (the traces: median 140, 99th percentile ~290)
rm -rf "$OUT"
mkdir -p "$OUT"

title() { echo "== $STAGE/${#STAGES[@]} $* =="; }

train() {  # torchrun on 2 gloo ranks: train ARGS...
    $TORCHRUN --nproc_per_node 2 -m megatron_mmr1.train "$@" logging.progress=false
}

stage_data() {
    title "synthetic image-math task + tiny Qwen-style tokenizer"
    $PY -m megatron_mmr1.data.synthetic --out "$OUT/data" --num $NUM_RL --val-fraction 0.3333 --num-sft $((NUM_SFT_TRAIN + NUM_SFT_VAL)) \
        --seed 0 --tokenizer
    # the last NUM_SFT_VAL traces are held out (same folder: image paths stay relative to it)
    mv "$OUT/data/sft_train.jsonl" "$OUT/data/sft_all.jsonl"
    head -n $NUM_SFT_TRAIN "$OUT/data/sft_all.jsonl" > "$OUT/data/sft_train.jsonl"
    tail -n $NUM_SFT_VAL "$OUT/data/sft_all.jsonl" > "$OUT/data/sft_val.jsonl"
    rm "$OUT/data/sft_all.jsonl"
    wc -l "$OUT"/data/*.jsonl
}

stage_policy() {
    title "random tiny Qwen2.5-VL policy in Hugging Face format"
    $PY -m megatron_mmr1.models.tiny --out "$OUT/hf_tiny" --tokenizer "$OUT/data/tokenizer" --logit-scale 20
}

stage_convert() {
    title "checkpoint conversion: HF -> megatron dist checkpoint (TP=2) -> HF"
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
}

stage_sft() {
    title "cold-start SFT of the tiny policy with DP=2 (megatron-core, 2 gloo ranks) -> HF export"
    train --config $SFT_CONFIG model.hf_path="$OUT/hf_tiny" model.tokenizer_path="$OUT/hf_tiny" \
        data.train_files="[$OUT/data/sft_train.jsonl]" data.val_files="[$OUT/data/sft_val.jsonl]" \
        output_dir="$OUT/sft" checkpoint.save="$OUT/sft/ckpt" checkpoint.export_hf="$OUT/sft/hf"
    $PY - "$OUT/sft/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"SFT: {s['steps']} steps, {s['tokens_seen']} tokens in {s['wall_s']:.0f} s ({s['step_s_last']:.2f} s/step, "
      f"{s['tokens_per_s_last']:.0f} tokens/s) | train loss {s['loss_first']:.3f} -> {s['loss_last']:.3f} | "
      f"held-out val loss {s['val_loss_first']:.3f} -> {s['val_loss_last']:.3f}")
sys.exit(0 if s["val_loss_last"] < s["val_loss_first"] else 1)
PYEOF
}

stage_pp() {
    title "the SFT export under PP=2: same validation loss as at DP=2, then a few more SFT steps"
    train --config $SFT_CONFIG parallel.pp=2 model.hf_path="$OUT/sft/hf" model.tokenizer_path="$OUT/sft/hf" \
        data.train_files="[$OUT/data/sft_train.jsonl]" data.val_files="[$OUT/data/sft_val.jsonl]" \
        output_dir="$OUT/sft_pp2" training.train_iters=4 training.eval_interval=0 logging.log_interval=1 \
        optim.lr=5.0e-5 optim.min_lr=5.0e-5 optim.lr_decay_style=constant optim.lr_warmup_fraction=0
    $PY - "$OUT/sft/summary.json" "$OUT/sft_pp2/summary.json" <<'PYEOF'
import json, sys
tp2, pp2 = (json.load(open(p)) for p in sys.argv[1:])
a, b = tp2["val_loss_last"], pp2["val_loss_first"]
print(f"held-out val loss of the same weights: DP=2 {a:.6f}, PP=2 {b:.6f} (rel. diff {abs(a - b) / a:.1e}); "
      f"after {pp2['steps']} PP=2 steps {pp2['val_loss_last']:.6f}")
sys.exit(0 if abs(a - b) <= 1e-4 * a else 1)
PYEOF
}

stage_grpo() {
    title "GRPO + VAS from the SFT policy with TP=2 (2 gloo ranks, 2 stand-in SGLang servers, weight sync every step)"
    train --config $GRPO_CONFIG parallel.tp=2 model.hf_path="$OUT/sft/hf" model.tokenizer_path="$OUT/sft/hf" \
        data.train_files="[$OUT/data/rl_train.jsonl]" data.val_files="[$OUT/data/rl_val.jsonl]" \
        output_dir="$OUT/grpo" training.rollout_steps=$GRPO_STEPS training.eval_interval=$GRPO_STEPS \
        data.max_response_length=$EVAL_TOKENS eval.max_new_tokens=$EVAL_TOKENS eval.max_samples=null \
        rollout.num_servers=2 rollout.temperature=$GRPO_TEMPERATURE optim.lr=1.0e-4 algorithm.use_kl_loss=$GRPO_KL \
        checkpoint.export_hf="$OUT/grpo/hf"
    $PY - "$OUT/grpo/summary.json" <<'PYEOF'
import json, sys
s = json.load(open(sys.argv[1]))
f = lambda k: f"{s[k + '_first']:.3f} -> {s[k + '_last']:.3f}"  # noqa: E731
print(f"GRPO: {s['steps']} steps, {s['rollouts_total']} rollouts in {s['wall_s']:.0f} s ({s['step_s_last']:.1f} s/step)\n"
      f"  held-out greedy accuracy on {s['eval_rl_val_n']} prompts, SFT policy (step {s['eval_step_first']}) -> "
      f"GRPO policy (step {s['eval_step_last']}): "
      f"{f('eval_average_accuracy')} (paired {s['eval_rl_val_paired_delta']:+.3f}, SE {s['eval_rl_val_paired_se']:.3f}; "
      f"{s['eval_rl_val_gained']} questions gained, {s['eval_rl_val_lost']} lost), format {f('eval_rl_val_format')}\n"
      f"  training reward (first -> last window): {f('reward/mean')}, accuracy {f('reward/accuracy')}, "
      f"format {f('reward/format')}\n"
      f"  zero-variance groups {f('vas/zero_variance_frac')} | trainer-vs-server log-prob mismatch "
      f"{s['mismatch/logp_abs_mean_last']:.1e}")
PYEOF
}

stage_vas_simulation() {
    title "the VAS mechanism: bandit simulation, uniform vs VAS vs DAPO filtering (quick)"
    $PY tools/vas_simulation.py --quick --out "$OUT/vas_simulation.png"
}

STAGES=(stage_data stage_policy stage_convert stage_sft stage_pp stage_grpo stage_vas_simulation)
START=$SECONDS
STAGE=0
for fn in "${STAGES[@]}"; do
    STAGE=$((STAGE + 1)) t0=$SECONDS
    "$fn"
    echo "   (stage $STAGE: $((SECONDS - t0)) s)"
done
echo "demo: done in $((SECONDS - START)) s (outputs in $OUT)"
