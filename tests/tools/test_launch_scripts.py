"""examples/launch: run_node.sh reads the layout from the config through the planner and starts the
servers (tools/launch_sglang.py) and the trainer (torchrun) where the plan puts them; checked with
DRY_RUN=1, which prints the commands. slurm.sbatch is run with stand-ins for srun and scontrol."""

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from megatron_mmr1.config import ModelConfig
from megatron_mmr1.models.presets import hf_config_dict, resolve_model_dims

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "examples" / "configs"


@pytest.fixture(scope="module")
def hf_7b(tmp_path_factory):
    """A checkpoint directory with the 7B config.json only (the planner reads the real dims from it)."""
    path = tmp_path_factory.mktemp("hf7b")
    (path / "config.json").write_text(json.dumps(hf_config_dict(resolve_model_dims(ModelConfig(preset="qwen2.5-vl-7b")))))
    return path


def run_node(config, model, env=None, *overrides):
    full = {**os.environ, "DRY_RUN": "1", "MODEL": str(model), "PYTHON": sys.executable, "ADVERTISE_HOST": "h",
            **(env or {})}
    return subprocess.run(["bash", "examples/launch/run_node.sh", str(config), *overrides], capture_output=True,
                          text=True, timeout=300, env=full, cwd=ROOT)


def commands(out):
    return [shlex.split(line[2:]) for line in out.splitlines() if line.startswith("+ ") and "(" not in line[:4]]


def flag(cmd, name):
    return cmd[cmd.index(name) + 1]


def test_split_two_nodes(hf_7b, tmp_path):
    env = {"NNODES": "2", "MASTER_ADDR": "n0", "RUN_DIR": str(tmp_path)}
    server_node = run_node(CONFIGS / "mmr1_grpo_7b.yaml", hf_7b, {**env, "NODE_RANK": "1"})
    assert server_node.returncode == 0, server_node.stderr
    [sglang] = commands(server_node.stdout)
    assert sglang[1] == "tools/launch_sglang.py" and "--enable-memory-saver" not in sglang
    assert (flag(sglang, "--num-servers"), flag(sglang, "--tp"), flag(sglang, "--gpu-offset")) == ("8", "1", "0")
    assert flag(sglang, "--url-file") == str(tmp_path / "urls" / "node1.json")
    assert flag(sglang, "--router-port") == "30000" and flag(sglang, "--mem-fraction-static") == "0.85"
    assert "serve until" in server_node.stdout

    trainer_node = run_node(CONFIGS / "mmr1_grpo_7b.yaml", hf_7b, {**env, "NODE_RANK": "0"}, "data.train_files=[a b]")
    assert trainer_node.returncode == 0, trainer_node.stderr
    [torchrun] = commands(trainer_node.stdout)
    assert torchrun[:6] == ["env", "NNODES=1", "NODE_RANK=0", "GPUS_PER_NODE=8", "MASTER_ADDR=n0", "MMR1_NODE_ADDR=h"]
    assert "examples/launch/torchrun_multinode.sh" in torchrun and "data.train_files=[a b]" in torchrun
    assert "rollout.weight_sync_master_address=n0" in torchrun and f"model.hf_path={hf_7b}" in torchrun
    assert any(a.startswith("rollout.server_urls=") and "node1.json" in a for a in torchrun)


@pytest.fixture(scope="module")
def hf_32b(tmp_path_factory):
    path = tmp_path_factory.mktemp("hf32b")
    (path / "config.json").write_text(json.dumps(hf_config_dict(resolve_model_dims(ModelConfig(preset="qwen2.5-vl-32b")))))
    return path


def test_each_trainer_node_passes_its_own_address(hf_32b, tmp_path):
    """32B split: pipeline stages on trainer nodes 0 and 1; node 1's senders bind node 1's address."""
    env = {"NNODES": "3", "MASTER_ADDR": "n0", "RUN_DIR": str(tmp_path)}
    for rank, host in (("0", "n0"), ("1", "n1")):
        proc = run_node(CONFIGS / "mmr1_grpo_32b.yaml", hf_32b, {**env, "NODE_RANK": rank, "ADVERTISE_HOST": host})
        assert proc.returncode == 0, proc.stderr
        [torchrun] = commands(proc.stdout)
        assert f"MMR1_NODE_ADDR={host}" in torchrun and "rollout.weight_sync_master_address=n0" in torchrun


def test_colocated_one_node(hf_7b, tmp_path):
    proc = run_node(CONFIGS / "mmr1_grpo_7b_colocate.yaml", hf_7b, {"RUN_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    sglang, torchrun = commands(proc.stdout)
    assert "--enable-memory-saver" in sglang and (flag(sglang, "--num-servers"), flag(sglang, "--tp")) == ("8", "1")
    assert float(flag(sglang, "--mem-fraction-static")) < 0.85  # the trainer keeps its state beside them
    assert "GPUS_PER_NODE=8" in torchrun and "NNODES=1" in torchrun and "rollout.server_tp=1" in torchrun


def test_servers_get_the_configs_pixel_limits_and_admission_limit(hf_7b, tmp_path):
    """SGLang resizes images with the run's data.min_pixels / max_pixels only when told (else the checkpoint's),
    and reports max_running_requests only when started with it (else the client's admission never engages)."""
    proc = run_node(CONFIGS / "mmr1_grpo_7b_colocate.yaml", hf_7b, {"RUN_DIR": str(tmp_path)},
                    "data.min_pixels=3136", "data.max_pixels=401408", "rollout.max_running_requests=64")
    assert proc.returncode == 0, proc.stderr
    sglang, torchrun = commands(proc.stdout)
    assert (flag(sglang, "--min-pixels"), flag(sglang, "--max-pixels")) == ("3136", "401408")
    assert flag(sglang, "--max-running-requests") == "64"
    assert "data.max_pixels=401408" in torchrun and "rollout.max_running_requests=64" in torchrun


def test_colocated_servers_of_tp2_start_and_a_tp_that_splits_a_node_is_refused(hf_7b, tmp_path):
    """The launcher validates with the plan's server TP: colocated servers of TP 2 (fed per node, each TP rank by
    the trainer rank on its GPU) start; a server TP that does not divide the node's GPUs stops at once."""
    text = (CONFIGS / "mmr1_grpo_7b_colocate.yaml").read_text()
    config = tmp_path / "tp2.yaml"
    config.write_text(text.replace("# cluster: nodes=1 server_tp=1", "# cluster: nodes=1 server_tp=2")
                      .replace("  num_servers: 8\n", "  num_servers: 4\n"))
    proc = run_node(config, hf_7b, {"RUN_DIR": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    sglang, torchrun = commands(proc.stdout)
    assert flag(sglang, "--tp") == "2" and "rollout.server_tp=2" in torchrun

    config.write_text(text.replace("# cluster: nodes=1 server_tp=1", "# cluster: nodes=1 server_tp=3")
                      .replace("  num_servers: 8\n", "  num_servers: 2\n"))
    proc = run_node(config, hf_7b, {"RUN_DIR": str(tmp_path)})
    assert proc.returncode == 1 and "server_tp=3" in proc.stderr, proc.stderr
    assert "launch" not in proc.stdout


def test_wrong_node_count_is_refused(hf_7b, tmp_path):
    proc = run_node(CONFIGS / "mmr1_grpo_7b.yaml", hf_7b, {"RUN_DIR": str(tmp_path), "NNODES": "1"})
    assert proc.returncode == 1 and "planned for 2 node(s), NNODES=1" in proc.stderr


def test_slurm_passes_overrides_through(hf_7b, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/bin/sh\necho n0\necho n1\n")
    # srun stand-in: run the per-node command as node 1 of the job
    (bin_dir / "srun").write_text('#!/bin/bash\nfor a; do cmd=$a; done\nSLURM_NODEID=1 exec bash -c "$cmd"\n')
    for f in ("scontrol", "srun"):
        (bin_dir / f).chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "SLURM_JOB_NODELIST": "n[0-1]",
           "SLURM_NNODES": "2", "SLURM_JOB_ID": "7", "DRY_RUN": "1", "MODEL": str(hf_7b), "PYTHON": sys.executable,
           "RUN_DIR": str(tmp_path / "run")}
    proc = subprocess.run(["bash", "examples/launch/slurm.sbatch", str(CONFIGS / "mmr1_grpo_7b.yaml"),
                           "data.train_files=[a b]"], capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    [sglang] = commands(proc.stdout)
    assert flag(sglang, "--url-file") == str(tmp_path / "run" / "urls" / "node1.json")
