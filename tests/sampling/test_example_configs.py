"""The released MMR1 config and the paper's ablation setting load and carry the values of docs/method.md."""

from pathlib import Path

import pytest

from megatron_mmr1.config import load_config
from megatron_mmr1.models.presets import resolve_model_dims

CONFIGS = Path(__file__).resolve().parents[2] / "examples" / "configs"


def test_released_config():
    cfg = load_config(CONFIGS / "mmr1_released.yaml", world_size=8)
    v = cfg.vps
    assert (v.alpha, v.beta, v.update_interval, v.num_rollouts, v.momentum, v.refresh) == (1.0, 0.0, 4, 8, 0.0, "full")
    assert cfg.sampler.type == "vas" and cfg.sampler.lam == 0.5
    assert cfg.data.max_response_length == 8192
    assert cfg.algorithm.kl_coef == 0.01 and cfg.algorithm.kl_estimator == "low_var_kl"
    assert resolve_model_dims(cfg.model)["hidden_size"] == 3584  # Qwen2.5-VL-7B


def test_ablation_config():
    cfg = load_config(CONFIGS / "mmr1_ablation.yaml", world_size=8)
    v = cfg.vps
    assert (v.alpha, v.beta, v.update_interval, v.num_rollouts) == (0.5, 0.5, 28, 8)
    assert v.tds_metrics == ["self_bleu"] and cfg.sampler.lam == 0.5


@pytest.mark.parametrize("name", ["mmr1_released.yaml", "mmr1_ablation.yaml"])
def test_overrides_still_apply(name):
    cfg = load_config(CONFIGS / name, ["sampler.type=uniform", "vps.refresh=online"])
    assert cfg.sampler.type == "uniform" and cfg.vps.refresh == "online"


ALL_CONFIGS = sorted(CONFIGS.glob("*.yaml"))


def _cluster(path: Path) -> dict[str, int]:
    """The config's `# cluster: nodes=N server_tp=T` comment (the launch scripts read it too); TP 1 on 1 node if none."""
    for line in path.read_text().splitlines():
        if line.startswith("# cluster:"):
            items = dict(kv.split("=") for kv in line.split(":", 1)[1].split())
            return {"nodes": int(items["nodes"]), "server_tp": int(items["server_tp"])}
    return {"nodes": 1, "server_tp": 1}


@pytest.mark.parametrize("path", ALL_CONFIGS, ids=[p.name for p in ALL_CONFIGS])
def test_every_example_config_validates(path):
    """A shipped config must not pass the planner and then die after the model is built (the launcher
    passes the node count and rollout.server_tp from the cluster comment)."""
    cfg = load_config(path)
    assert cfg.name
    nodes, server_tp = _cluster(path)["nodes"], _cluster(path)["server_tp"]
    launched = [f"rollout.server_tp={server_tp}"]
    load_config(path, launched, nnodes=nodes)
    if cfg.rollout.colocate:  # the workers' check, with the world size: every colocated server fed on its node
        load_config(path, [*launched, "rollout.backend=sglang"], world_size=8 * nodes, nnodes=nodes)
    assert "NOT RUNNABLE YET" not in path.read_text()
