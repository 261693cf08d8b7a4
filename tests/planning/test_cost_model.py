"""The planner's calibrated formulas, each against a hand computation from the model's published shape
(Qwen2.5-VL-7B config.json: 28 layers, hidden 3584, 28 query heads, 4 key/value heads of 128, FFN 18944)."""

import math
import subprocess
import sys
from pathlib import Path

import pytest

import megatron_mmr1.planning as pc
from megatron_mmr1.config import load_config
from megatron_mmr1.models.memory import GIB
from megatron_mmr1.planning.cost import Links, bubble, collective_s, offload_s, optimizer_s, training_flops, weight_sync_s
from megatron_mmr1.planning.layout import TrainerOptions, decode_step, plan_trainer

ROOT = Path(__file__).resolve().parents[2]
H100 = pc.GPUS["h100"]
A = pc.Assumptions()


def _cfg(*overrides, preset="qwen2.5-vl-7b"):
    return load_config(None, [f"model.preset={preset}", *overrides])


@pytest.fixture(scope="module")
def m7():
    return pc.Model.from_config(_cfg())


@pytest.fixture(scope="module")
def w7():
    return pc.Workload.from_config(_cfg(), A)


def test_decode_step_is_the_sum_of_gemm_attention_and_tp_allreduce(m7):
    c, context, tp = 100, 2000, 4
    hbm = 3.35e12 * 0.60
    lm_params = m7.total_params - m7.vision
    gemm = max(2 * lm_params / tp / hbm, 2 * (lm_params - 152064 * 3584) * c / tp / (989e12 * 0.40))
    attention = c * context * (2 * 2 * 28 * 1 * 128) / hbm  # 4 KV heads over TP4: one per GPU
    allreduce = 2 * 28 * (10e-6 + 2 * 3 / 4 * c * 3584 * 2 / (450e9 * 0.80))
    parts = decode_step(m7, H100, A, tp, c, context)
    assert parts["gemm"] == pytest.approx(gemm)
    assert parts["attention"] == pytest.approx(attention)
    assert parts["tp_allreduce"] == pytest.approx(allreduce)
    # The old roofline, max(bytes, FLOPs), was 1.55x optimistic at TP > 1: the sum is slower than it.
    old = max((2 * lm_params / tp + c * context * 2 * 2 * 28 * 128) / hbm, gemm)
    assert sum(parts.values()) > 1.2 * old
    assert decode_step(m7, H100, A, 1, c, context)["tp_allreduce"] == 0.0


def test_weight_sync_pays_slimes_cost_per_bucket(m7, w7):
    t = plan_trainer(m7, w7, 8, 4, 1, TrainerOptions())
    s = pc.plan_servers(m7, w7, H100, A, 8, 1, t)
    full = 2 * m7.total_params
    buckets = math.ceil(full / 2**29)  # 512 MiB
    hand = full * 3 / 4 / (450e9 * 0.8) + full / (450e9 * 0.8) + buckets * 0.035
    assert A.sync_bucket_overhead_s == 0.035
    assert weight_sync_s(m7, t, s, A, Links.of(H100, A), False, 512) == pytest.approx(hand)
    assert buckets == 31  # 15.4 GiB of bf16


def test_the_longest_sequence_must_fit_the_micro_batch_budget():
    cfg = _cfg("data.max_response_length=16000", "training.max_tokens_per_micro_batch=16384")
    w = pc.Workload.from_config(cfg, A)
    assert w.longest_sequence == 2048 + 16000 and not w.fits_token_budget
    plan = pc.search(cfg, 1, H100, A, colocate=True)
    assert not plan.fits and any("longest sequence (18048 tokens)" in p for p in plan.problems)
    assert "OVER the 16384-token micro-batch budget" in pc.report(plan)
    ok = pc.Workload.from_config(_cfg("data.max_response_length=14336"), A)
    assert ok.longest_sequence == 16384 and ok.fits_token_budget


def test_offload_moves_the_trainer_state_over_pcie_each_way(m7, w7):
    opts = TrainerOptions(recompute="selective", offload_trainer=True)
    t = plan_trainer(m7, w7, 8, 4, 1, opts)
    m = t.memory
    assert m.resident == pytest.approx(m.weights + m.grads + m.optimizer)
    hand = m.resident / (64e9 * 0.8)
    assert offload_s(t, Links.of(H100, A)) == pytest.approx(hand)
    s = pc.plan_servers(m7, w7, H100, A, 8, 1, t)
    kept = pc.plan_servers(m7, w7, H100, A, 8, 1, plan_trainer(m7, w7, 8, 4, 1, TrainerOptions("selective")))
    assert s.kv_cache == pytest.approx(kept.kv_cache + m.resident)  # the servers get the trainer's room
    plan = pc.search(_cfg("rollout.colocate=true", "rollout.offload_trainer=true", "model.recompute=selective",
                          "parallel.tp=4"), 1, H100, A, colocate=True, recomputes=("selective",))
    assert plan.times["trainer_offload"] == plan.times["trainer_reload"] > 0


def test_host_adam_keeps_the_optimizer_off_the_gpu_and_costs_a_host_step(m7, w7):
    on_gpu = plan_trainer(m7, w7, 8, 4, 1, TrainerOptions("selective"))
    host = plan_trainer(m7, w7, 8, 4, 1, TrainerOptions("selective", cpu_offload=True, offload_fraction=0.5))
    assert host.memory.optimizer == pytest.approx(on_gpu.memory.optimizer / 2)
    assert host.memory.host_optimizer == pytest.approx(on_gpu.memory.optimizer / 2)
    shard = host.trained_params / 2 * 0.5  # DP=2, half on the host
    steps = 4096 / 512
    hand = steps * (shard / 1e9 + 6 * shard / (64e9 * 0.8))
    assert optimizer_s(w7, host, A, Links.of(H100, A))["host_adam"] == pytest.approx(hand)


def test_frozen_vision_keeps_only_its_bf16_weights(m7, w7):
    trained = plan_trainer(m7, w7, 8, 4, 1, TrainerOptions())
    w = pc.Workload.from_config(_cfg("model.freeze_vision=true"), A)
    frozen = plan_trainer(m7, w, 8, 4, 1, TrainerOptions())
    v = m7.vision
    assert trained.memory.vision == pytest.approx(2 * v + 4 * v + 12 * v / 2)  # Adam over DP=2, on each TP rank
    assert frozen.memory.vision == pytest.approx(2 * v)
    assert trained.memory.grads - frozen.memory.grads == pytest.approx(4 * v)


def test_virtual_pipeline_shrinks_the_bubble(m7, w7):
    t = plan_trainer(m7, w7, 16, 2, 4, TrainerOptions())
    v = plan_trainer(m7, w7, 16, 2, 4, TrainerOptions(vpp=2))
    assert bubble(t) == pytest.approx(1 + 3 / t.micro_batches)
    assert bubble(v) == pytest.approx(1 + 3 / (2 * v.micro_batches))
    assert v.memory.activations == pytest.approx(t.memory.activations * (1 + 3 / 8))  # interleaved 1F1B holds more


def test_context_parallel_splits_tokens_and_pays_the_ring(m7, w7):
    links = Links.of(H100, A)
    one = plan_trainer(m7, w7, 16, 2, 1, TrainerOptions("full"))
    two = plan_trainer(m7, w7, 16, 2, 1, TrainerOptions("full", cp=2))
    assert two.dp == one.dp // 2
    assert two.memory.optimizer == pytest.approx(one.memory.optimizer)  # sharded over DP x CP alike
    tokens = 4096 * w7.seq_tokens / (4 * 2)
    ring = tokens * 28 * 1 * 2 * 2 * (4 * 128 / 2) / (450e9 * 0.8)  # K and V of 2 of the 4 groups, one hop
    assert collective_s(m7, w7, two, links)["cp"] == pytest.approx(ring)
    assert collective_s(m7, w7, one, links)["cp"] == 0.0


def test_overlaps_hide_tp_collectives_and_the_param_gather(m7, w7):
    links = Links.of(H100, A)
    base = plan_trainer(m7, w7, 16, 2, 1, TrainerOptions())
    over = plan_trainer(m7, w7, 16, 2, 1, TrainerOptions(tp_comm_overlap=True, overlap_param_gather=True))
    assert collective_s(m7, w7, base, links)["tp"] > 0 and collective_s(m7, w7, over, links)["tp"] == 0.0
    ratio = optimizer_s(w7, over, A, links)["dp_collectives"] / optimizer_s(w7, base, A, links)["dp_collectives"]
    assert ratio == pytest.approx(4 / 6)  # fp32 reduce-scatter stays, the bf16 all-gather hides


def test_recompute_mlp_trades_activations_for_mlp_flops(m7, w7):
    sel = plan_trainer(m7, w7, 8, 4, 1, TrainerOptions("selective"))
    mlp = plan_trainer(m7, w7, 8, 4, 1, TrainerOptions("selective", recompute_modules=("mlp",)))
    assert sel.memory.activations - mlp.memory.activations == pytest.approx(
        16384 * 28 * 8 * 18944 / 4 * min(1, sel.micro_batches))
    extra = training_flops(m7, w7, mlp)["train"] - training_flops(m7, w7, sel)["train"]
    assert extra == pytest.approx(4096 * 2 * 3 * 3584 * 18944 * 28 * w7.seq_tokens)


def test_72b_fits_2_nodes_colocated_with_offload():
    plan = pc.search(_cfg(preset="qwen2.5-vl-72b"), 2, H100, A, colocate=True)
    assert plan.fits and plan.colocated
    assert plan.trainer.tp * plan.trainer.pp * plan.trainer.dp == 16 and plan.trainer.tp <= 8
    assert plan.trainer.options.offload_trainer and plan.trainer.options.cpu_offload
    assert plan.peak_per_gpu <= H100.memory_gib * GIB
    assert plan.times["trainer_offload"] > 0 and plan.times["host_adam"] > 0
    assert 0 < plan.train_mfu < A.train_mfu  # recompute and unoverlapped TP collectives cost


def test_search_plans_sglang_servers_on_a_cuda_machine_too(monkeypatch):
    # The default config's CPU stand-in server refuses CUDA-IPC sync where CUDA is present; the planner plans
    # SGLang servers, so a login or GPU node finds the same colocated layout as this CPU machine.
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    plan = pc.search(_cfg(), 1, H100, A, colocate=True, recomputes=("selective",))
    assert plan.fits and plan.colocated


def test_7b_fits_1_node_colocated_with_the_offload_timed():
    plan = pc.search(_cfg(), 1, H100, A, colocate=True)
    assert plan.fits and plan.colocated and plan.trainer.gpus == 8
    assert plan.trainer.options.offload_trainer and plan.times["trainer_offload"] > 0
    assert "trainer offload:" in pc.report(plan)


def test_thin_cli_and_the_package_print_the_same_plan():
    args = ["--preset", "qwen2.5-vl-3b", "--nodes", "1"]
    tool = subprocess.run([sys.executable, str(ROOT / "tools" / "plan_cluster.py"), *args],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    pkg = subprocess.run([sys.executable, "-m", "megatron_mmr1.planning", *args],
                         capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert tool.returncode == pkg.returncode == 0, tool.stderr + pkg.stderr
    assert tool.stdout == pkg.stdout and "qwen2.5-vl-3b on 1 node(s)" in tool.stdout


def test_shell_output_of_the_package_parses():
    path = ROOT / "examples" / "configs" / "mmr1_grpo_72b_colocate.yaml"
    proc = subprocess.run([sys.executable, "-m", "megatron_mmr1.planning", "--config", str(path), "--shell"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    shell = dict(line.split("=", 1) for line in proc.stdout.splitlines())
    assert shell["PLAN_NODES"] == "2" and shell["PLAN_COLOCATE"] == "1" and shell["PLAN_FITS"] == "1"
    assert shell["PLAN_SERVER_TP"] == "8" and shell["PLAN_SERVERS_PER_NODE"] == "1"
    assert shell["PLAN_TRAINER_NODES"] == "2" and 0 < float(shell["PLAN_MEM_FRACTION"]) < 1
