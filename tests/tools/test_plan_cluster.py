"""The cluster planner (megatron_mmr1.planning, tools/plan_cluster.py) and the shipped run configs it sizes.

Every config in examples/configs loads with the world size it is meant for, and every GRPO config
fits its stated cluster (80 GB H100s unless its cluster comment names gpu=h200) by the planner's memory model.
"""

import subprocess
import sys
from pathlib import Path

import pytest

import megatron_mmr1.planning as pc
from megatron_mmr1.config import ModelConfig, load_config
from megatron_mmr1.models.memory import GIB, MicroBatchShape, activation_bytes, kv_bytes_per_token, trainer_memory
from megatron_mmr1.models.presets import resolve_model_dims

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "examples" / "configs").glob("*.yaml"))
CLUSTER = [p for p in CONFIGS if "# cluster:" in p.read_text()]

H100 = pc.GPUS["h100"]
# Configs without a "# cluster:" line (SFT and the CPU demos): the ranks they are written for.
WORLD_SIZES = {"mmr1_sft_7b.yaml": 8}
CPU_DEMO_RANKS = 2  # tiny_*.yaml: the CPU demos and tests run on 2 gloo ranks


def intended_world_size(path: Path) -> int:
    if path in CLUSTER:
        cluster = pc.read_cluster(path)
        cfg = load_config(path)
        gpus = cluster["nodes"] * pc.GPUS_PER_NODE
        return gpus if cfg.rollout.colocate else gpus - cfg.rollout.num_servers * cluster["server_tp"]
    if path.name.startswith("tiny_"):
        return CPU_DEMO_RANKS
    assert path.name in WORLD_SIZES, f"{path.name}: add its intended world size to WORLD_SIZES in this test"
    return WORLD_SIZES[path.name]


@pytest.mark.parametrize("path", CONFIGS, ids=[p.name for p in CONFIGS])
def test_every_config_loads_with_its_world_size(path):
    cfg = load_config(path, world_size=intended_world_size(path))
    assert cfg.name


def test_cli_prints_a_full_size_config_on_its_world_size():
    path = ROOT / "examples" / "configs" / "mmr1_grpo_72b.yaml"
    env = {"WORLD_SIZE": str(intended_world_size(path)), "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-m", "megatron_mmr1.train", "--config", str(path), "--print-config"],
                         capture_output=True, text=True, timeout=120, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert "preset: qwen2.5-vl-72b" in out.stdout and "colocate: false" in out.stdout


def test_grpo_configs_cover_every_size_both_modes():
    names = {p.name for p in CLUSTER}
    for size in ("3b", "7b", "32b", "72b"):
        assert {f"mmr1_grpo_{size}.yaml", f"mmr1_grpo_{size}_colocate.yaml"} <= names
        assert not load_config(ROOT / "examples" / "configs" / f"mmr1_grpo_{size}.yaml").rollout.colocate
        assert load_config(ROOT / "examples" / "configs" / f"mmr1_grpo_{size}_colocate.yaml").rollout.colocate


@pytest.mark.parametrize("path", CLUSTER, ids=[p.name for p in CLUSTER])
def test_grpo_configs_fit_their_clusters(path):
    plan = pc.plan_config(path, None, pc.Assumptions())  # the GPU its cluster comment names (h100 by default)
    assert plan.fits, pc.report(plan)
    assert plan.gpu == H100 or "gpu=h200" in path.read_text()
    assert plan.peak_per_gpu <= plan.gpu.memory_gib * GIB and plan.trainer.memory.peak <= plan.gpu.memory_gib * GIB
    assert plan.trainer.gpus == intended_world_size(path)
    assert plan.servers.serves and plan.servers.kv_cache > 0


def test_a_layout_that_does_not_fit_is_reported(tmp_path):
    # 72B colocated on 2 nodes of H100s without the offloads: TP8 PP1 DP2 shards (weights, fp32 grads, half the
    # Adam state) leave no room.
    text = (ROOT / "examples" / "configs" / "mmr1_grpo_72b_colocate.yaml").read_text()
    path = tmp_path / "run.yaml"
    path.write_text(text.replace("offload_trainer: true", "offload_trainer: false")
                    .replace("cpu_offload: true", "cpu_offload: false"))
    plan = pc.plan_config(path, H100, pc.Assumptions())
    assert not plan.fits and "DOES NOT FIT" in pc.report(plan)
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "plan_cluster.py"), "--config", str(path)],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 1 and "DOES NOT FIT" in proc.stdout


def test_72b_colocated_config_is_the_layout_the_planner_picks_on_2_nodes():
    path = ROOT / "examples" / "configs" / "mmr1_grpo_72b_colocate.yaml"
    assert pc.read_cluster(path) == {"nodes": 2, "server_tp": 8}
    picked = pc.search(load_config(None, ["model.preset=qwen2.5-vl-72b"]), 2, H100, pc.Assumptions(), colocate=True)
    cfg = load_config(path)
    assert (picked.trainer.tp, picked.trainer.pp, picked.servers.tp, picked.servers.count) == (
        cfg.parallel.tp, cfg.parallel.pp, 8, cfg.rollout.num_servers)
    assert picked.trainer.options.offload_trainer == cfg.rollout.offload_trainer is True
    assert picked.trainer.options.cpu_offload == cfg.optim.cpu_offload is True
    assert picked.trainer.recompute == cfg.model.recompute


def test_72b_colocated_config_prints_through_the_train_cli():
    path = ROOT / "examples" / "configs" / "mmr1_grpo_72b_colocate.yaml"
    out = subprocess.run([sys.executable, "-m", "megatron_mmr1.train", "--config", str(path), "--print-config",
                          "data.train_files=[x]"], capture_output=True, text=True, timeout=120, cwd=ROOT,
                         env={"WORLD_SIZE": "16", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr
    assert "offload_trainer: true" in out.stdout and "cpu_offload: true" in out.stdout


def test_72b_colocated_config_validates_on_its_2_nodes():
    path = ROOT / "examples" / "configs" / "mmr1_grpo_72b_colocate.yaml"
    cfg = load_config(path, ["data.train_files=[x]", "rollout.server_tp=8"], world_size=16, nnodes=2)
    assert cfg.rollout.colocate and cfg.parallel.tp * cfg.parallel.pp == 16


@pytest.mark.parametrize("line,needle", [
    ("", "no '# cluster: nodes=N server_tp=T' comment"),
    ("# cluster: nodes=two server_tp=1\n", "cluster comment item 'nodes=two'"),
    ("# cluster: nodes=1\n", "lacks server_tp"),
])
def test_cluster_comment_errors_name_the_file(tmp_path, line, needle):
    path = tmp_path / "run.yaml"
    path.write_text(line + "model:\n  preset: qwen2.5-vl-7b\n")
    with pytest.raises(ValueError, match=needle) as e:
        pc.read_cluster(path)
    assert str(path) in str(e.value)


def test_split_layout_on_one_node_puts_servers_after_the_trainer(tmp_path):
    text = (ROOT / "examples" / "configs" / "mmr1_grpo_7b.yaml").read_text()
    path = tmp_path / "run.yaml"
    path.write_text(text.replace("# cluster: nodes=2 server_tp=1", "# cluster: nodes=1 server_tp=2")
                    .replace("num_servers: 8", "num_servers: 2"))
    shell = dict(line.split("=", 1) for line in pc.shell_vars(pc.plan_config(path, H100, pc.Assumptions())).splitlines())
    assert shell["PLAN_TRAINER_GPUS_PER_NODE"] == "4" and shell["PLAN_SERVER_GPU_OFFSET"] == "4"
    assert shell["PLAN_SERVERS_PER_NODE"] == "2" and shell["PLAN_SERVER_TP"] == "2"
    assert shell["PLAN_SERVER_FIRST_NODE"] == "0" and shell["PLAN_TRAINER_NODES"] == "1"


def _dims(preset):
    return resolve_model_dims(ModelConfig(preset=preset))


def test_kv_cache_per_token_from_the_hf_config():
    # Qwen2.5-VL-7B config.json: 28 layers, 4 key/value heads of 128 dims; K and V in bf16.
    assert kv_bytes_per_token(_dims("qwen2.5-vl-7b")) == 2 * 2 * 28 * 4 * 128
    assert kv_bytes_per_token(_dims("qwen2.5-vl-7b"), tp=2) == 2 * 2 * 28 * 2 * 128
    assert kv_bytes_per_token(_dims("qwen2.5-vl-7b"), tp=8) == 2 * 2 * 28 * 1 * 128  # heads replicated past 4


def test_activations_follow_recompute_tokens_and_pipeline_depth():
    dims = _dims("qwen2.5-vl-7b")
    mb = MicroBatchShape(tokens=8192, patches=4096, count=16)
    none, sel, full = (activation_bytes(dims, 4, 1, 0, mb, rc) for rc in (None, "selective", "full"))
    assert full < sel < none  # selective checkpoints the vision tower only
    double = MicroBatchShape(tokens=16384, patches=8192, count=16)
    assert activation_bytes(dims, 4, 1, 0, double, None) == pytest.approx(2 * none)
    # 1F1B: stage 0 of PP=4 holds 4 micro-batches of its 7 layers, the last stage one.
    first, last = (activation_bytes(dims, 4, 4, s, MicroBatchShape(8192, 0, 16), None) for s in (0, 3))
    assert first == pytest.approx(4 * last)
    frozen = activation_bytes(dims, 4, 1, 0, mb, None, train_vision=False)
    assert frozen == pytest.approx(activation_bytes(dims, 4, 1, 0, MicroBatchShape(8192, 0, 16), None))


def test_reference_weights_cost_gpu_memory_only_during_their_forward():
    dims = _dims("qwen2.5-vl-7b")
    mb = MicroBatchShape(tokens=16384, patches=0, count=8)
    with_ref = trainer_memory(dims, 4, 1, 2, mb, "full", use_reference=True, vision=0)
    without = trainer_memory(dims, 4, 1, 2, mb, "full", use_reference=False, vision=0)
    assert with_ref.reference == with_ref.weights  # same shards, bf16
    assert with_ref.resident == without.resident and with_ref.train_peak == without.train_peak
    assert with_ref.reference_peak == pytest.approx(without.reference_peak + with_ref.weights)


def test_search_fits_small_models_and_72b_on_one_node_only_with_adam_on_the_host():
    a = pc.Assumptions()
    plan = pc.search(load_config(None, ["model.preset=qwen2.5-vl-7b"]), 1, H100, a, colocate=True)
    assert plan.fits and plan.trainer.gpus == 8
    two = pc.search(load_config(None, ["model.preset=qwen2.5-vl-7b"]), 2, H100, a, colocate=True)
    assert two.step_s < plan.step_s
    big = pc.search(load_config(None, ["model.preset=qwen2.5-vl-72b"]), 1, H100, a, colocate=True)
    # TP8 shards of bf16 weights + fp32 grads + the reference copy during its forward: ~77 of 79.6 GiB, and
    # only with every Adam shard on the host (optim.cpu_offload).
    assert big.fits and big.trainer.options.cpu_offload and not big.comfortable


def test_overlap_beats_sequential_on_split_servers():
    plan = pc.plan_config(ROOT / "examples" / "configs" / "mmr1_grpo_7b.yaml", H100, pc.Assumptions())
    assert plan.overlapped_step_s < plan.step_s
    assert plan.times["rollout"] > 0 and plan.times["train"] > plan.times["old_logprob"] > 0


def test_assume_rejects_unknown_names():
    with pytest.raises(ValueError, match="--assume bogus=1"):
        pc.parse_assume(["bogus=1"])
    a = pc.parse_assume(["train_mfu=0.5", "sync_bucket_overhead_s=0.1"])
    assert a.train_mfu == 0.5 and a.sync_bucket_overhead_s == 0.1
