"""The in-repo stand-in server on a machine with a GPU (the tiny demo configs on a GPU box): its weight
sync must not take a GPU-only path. torch.cuda.is_available is forced on; nothing touches a device."""

from pathlib import Path

import pytest
import torch

from megatron_mmr1.config import ConfigError, RolloutConfig, load_config
from megatron_mmr1.rollout.servers import make_weight_sender

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


@pytest.fixture
def cuda_on(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


@pytest.mark.parametrize("override,needle", [("rollout.colocate=true", "rollout.colocate=true"),
                                             ("rollout.weight_sync=tensor", "rollout.weight_sync=tensor")])
def test_cuda_ipc_to_the_standin_is_refused(cuda_on, override, needle):
    with pytest.raises(ConfigError, match="rollout.backend=local \\(the CPU stand-in server\\) cannot receive") as e:
        load_config(CONFIGS / "tiny_cpu_grpo.yaml", [override])
    assert needle in str(e.value)
    assert load_config(CONFIGS / "tiny_cpu_grpo.yaml", [override, "rollout.backend=sglang"]).rollout.backend == "sglang"
    assert load_config(CONFIGS / "tiny_cpu_grpo.yaml", [override, "parallel.backend=gloo"]).parallel.backend == "gloo"


def test_the_demo_config_loads_on_a_gpu_box(cuda_on):
    for name in ("tiny_cpu_grpo.yaml", "tiny_cpu_sft.yaml", "tiny_cpu_smoke.yaml"):
        assert load_config(CONFIGS / name).rollout.backend == "local"
    assert load_config(CONFIGS / "tiny_cpu_grpo.yaml", ["rollout.weight_sync=disk"]).rollout.weight_sync == "disk"


def test_distributed_sync_to_the_standin_runs_over_gloo(cuda_on):
    """nccl would broadcast from the trainer's GPU into the stand-in's CPU tensors."""
    sender = make_weight_sender(RolloutConfig(backend="local"), ["http://127.0.0.1:1"])
    try:
        assert sender.backend == "gloo" and sender.device == torch.device("cpu")
    finally:
        sender.close()
