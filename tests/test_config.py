"""Run-config loading: typed sections, dotted overrides, and one clear error naming the key."""

import subprocess
import sys
from pathlib import Path

import pytest

from megatron_mmr1.config import ConfigError, RunConfig, dump_yaml, field_docs, load_config

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = sorted((REPO / "examples" / "configs").glob("*.yaml"))


def test_defaults_follow_paper_table6():
    cfg = load_config()
    assert (cfg.vps.alpha, cfg.vps.beta, cfg.sampler.lam, cfg.vps.update_interval) == (0.8, 0.2, 0.5, 56)
    assert (cfg.rollout.n, cfg.rollout.temperature, cfg.algorithm.kl_coef) == (8, 0.6, 0.01)
    assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.training.global_batch_size) == (1e-6, 0.01, 512)


def test_overrides_are_typed(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("optim:\n  lr: 1e-5\nparallel:\n  tp: 2\n")  # YAML 1.1 reads 1e-5 as a string
    cfg = load_config(path, ["parallel.pp=2", "data.train_files=[a.jsonl, b.parquet]", "algorithm.clip_ratio_c=3"],
                      world_size=8)
    assert cfg.optim.lr == 1e-5 and isinstance(cfg.optim.lr, float)
    assert (cfg.parallel.tp, cfg.parallel.pp) == (2, 2)
    assert cfg.data.train_files == ["a.jsonl", "b.parquet"]
    assert cfg.algorithm.clip_ratio_c == 3.0


@pytest.mark.parametrize("overrides,world_size,needle", [
    (["model.foo=1"], None, "unknown config key 'model.foo'"),
    (["bogus=1"], None, "unknown config key 'bogus'"),
    (["parallel.tp=3"], None, "parallel.tp=3 does not divide model.num_attention_heads=4"),
    (["model.num_attention_heads=8", "parallel.tp=4"], None, "parallel.tp=4 does not divide model.num_query_groups=2"),
    (["parallel.pp=5"], None, "parallel.pp=5 is larger than model.num_layers=4"),
    (["parallel.tp=2"], 3, "world size 3 is not divisible by parallel.tp*parallel.pp=2"),
    (["training.micro_batch_size=3"], None, "training.global_batch_size=512 is not a multiple of training.micro_batch_size=3"),
    (["training.micro_batch_size=64"], 16, "micro_batch_size*dp=64*16"),
    (["training.rollout_batch_size=3", "rollout.n=5"], None, "does not divide the 15 responses"),
    (["parallel.tp=two"], None, "parallel.tp: expected an integer, got 'two'"),
    (["sampler.lam=1.5"], None, "sampler.lam=1.5 must be in [0, 1]"),
    (["sampler.type=weighted"], None, "sampler.type: 'weighted' is not one of"),
    (["vps.tds_metrics=[bleu]"], None, "vps.tds_metrics: unknown metric 'bleu'"),
    (["vps.refresh=rollouts"], None, "vps.refresh: 'rollouts' is not one of"),
    (["vps.refresh=training", "rollout.n=1", "training.global_batch_size=512"], None,
     "vps.refresh=training scores prompts from the training groups: rollout.n=1 must be >= 2"),
    (["vps.stale_after=-1"], None, "vps.stale_after=-1 must be >= 0"),
    (["vps.prior=-0.5"], None, "vps.prior=-0.5 must be >= 0"),
    (["model.preset=qwen9"], None, "model.preset: unknown preset 'qwen9'"),
    (["model.hf_path=/nonexistent/ckpt"], None, "model.hf_path"),
    (["parallel.tp"], None, "override 'parallel.tp' is not of the form key.sub=value"),
])
def test_bad_configs_name_the_key(overrides, world_size, needle):
    with pytest.raises(ConfigError) as e:
        load_config(None, overrides, world_size=world_size)
    assert needle in str(e.value)


def test_presets_validate_at_full_size():
    load_config(None, ["model.preset=qwen2.5-vl-72b", "parallel.tp=8", "parallel.pp=4"], world_size=64)
    with pytest.raises(ConfigError, match="parallel.tp=16 does not divide model.num_query_groups=8"):
        load_config(None, ["model.preset=qwen2.5-vl-72b", "parallel.tp=16"])


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_configs_load(path):
    assert isinstance(load_config(path), RunConfig)


def test_every_field_documented():
    import dataclasses

    from megatron_mmr1 import config as c

    for cls in (c.ModelConfig, c.ParallelConfig, c.DataConfig, c.RolloutConfig, c.RewardConfig, c.AlgorithmConfig,
                c.VPSConfig, c.SamplerConfig, c.TrainingConfig, c.OptimizerConfig, c.CheckpointConfig, c.LoggingConfig):
        docs = field_docs(cls)
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in docs]
        assert not missing, f"{cls.__name__} fields without a doc line: {missing}"


@pytest.mark.parametrize("overrides,needle", [
    (["model.foo=1"], "unknown config key 'model.foo'"),
    (["parallel.tp=3"], "parallel.tp=3 does not divide model.num_attention_heads=4"),
])
def test_cli_exits_nonzero_with_one_line(tmp_path, overrides, needle):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("model:\n  preset: tiny\n")
    proc = subprocess.run([sys.executable, "-m", "megatron_mmr1.train", "--config", str(cfg), *overrides],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and needle in lines[0], proc.stderr


def test_cli_unknown_key_in_yaml(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("parallel:\n  tensor_parallel: 2\n")
    proc = subprocess.run([sys.executable, "-m", "megatron_mmr1.train", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown config key 'parallel.tensor_parallel'" in proc.stderr


@pytest.mark.parametrize("size,world_size", [("3b", 8), ("7b", 8), ("32b", 16), ("72b", 32)])
def test_full_size_configs_fit_their_clusters(size, world_size):
    cfg = load_config(REPO / "examples" / "configs" / f"mmr1_grpo_{size}.yaml", world_size=world_size)
    assert cfg.model.preset == f"qwen2.5-vl-{size}"
    with pytest.raises(ConfigError, match="world size"):
        load_config(REPO / "examples" / "configs" / f"mmr1_grpo_{size}.yaml", world_size=world_size + 1)


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_print_config_needs_no_cluster(path, monkeypatch, capsys):
    """--print-config on one CPU process prints every shipped config (they are sized for 8-32 GPUs)."""
    import yaml

    from megatron_mmr1.train import main

    monkeypatch.setenv("WORLD_SIZE", "1")
    assert main(["--config", str(path), "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed == yaml.safe_load(dump_yaml(load_config(path)))


def test_help_config_lists_every_key_with_its_doc(capsys):
    import dataclasses

    from megatron_mmr1.train import main

    assert main(["--help-config"]) == 0
    out = capsys.readouterr().out

    def leaves(cls, prefix=""):
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default_factory() if f.default_factory is not dataclasses.MISSING else None):
                yield from leaves(f.default_factory, f"{prefix}{f.name}.")
            else:
                yield f"{prefix}{f.name}", docs[f.name]

    keys = list(leaves(RunConfig))
    assert len(keys) > 100
    for key, doc in keys:
        assert f"\n{key} = " in "\n" + out, key
        assert doc in out, key


def test_loading_a_config_imports_neither_torch_nor_megatron():
    code = ("import sys; from megatron_mmr1.config import load_config; "
            "load_config('examples/configs/mmr1_grpo_7b.yaml'); import megatron_mmr1.train; "
            "print(sorted(m for m in ('torch', 'megatron') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert out.stdout.strip() == "[]"


def test_keys_a_mode_never_reads_are_named():
    from megatron_mmr1.config import load_config, unread_keys

    cfg = load_config(None, ["training.mode=sft", "rollout.n=4", "vps.alpha=0.5", "optim.lr=1e-5",
                             "training.rollout_batch_size=4", "training.global_batch_size=16",
                             "training.micro_batch_size=4"])
    assert unread_keys(cfg) == ["rollout.n", "vps.alpha", "training.rollout_batch_size"]
    smoke = load_config(None, ["training.mode=lm_smoke", "checkpoint.save=x", "optim.lr_decay_style=cosine",
                               "logging.log_interval=5", "rollout.n=1", "training.rollout_steps=3"])
    assert set(unread_keys(smoke)) == {"checkpoint.save", "logging.log_interval", "rollout.n", "training.rollout_steps"}
    grpo = load_config(None, ["training.mode=grpo", "rollout.n=8", "data.seq_length=4096"])
    assert unread_keys(grpo) == ["data.seq_length"]


def test_train_iters_is_not_a_grpo_run_length():
    """train_iters counts optimizer steps (megatron's meaning); a GRPO run is counted in rollout steps."""
    from megatron_mmr1.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"training.train_iters=5 counts optimizer steps .* training.rollout_steps=5"):
        load_config(None, ["training.mode=grpo", "training.train_iters=5"])
    assert load_config(None, ["training.mode=sft", "training.train_iters=5"]).training.train_iters == 5


@pytest.mark.parametrize("mode,overrides,needle", [
    ("sft", ["data.kind=rl"], "training.mode=sft needs data.kind=sft"),
    ("sft", ["data.kind=sft"], "training.mode=sft needs data.train_files"),
    ("grpo", ["data.train_files=[x.jsonl]"], "training.mode=grpo needs model.hf_path"),
    ("grpo", ["data.train_files=[x.jsonl]", "model.tokenizer_path=tok"], "stand-in rollout servers load model.hf_path"),
])
def test_mode_inputs_are_checked_when_a_run_is_launched(mode, overrides, needle):
    """Checked by validate(launch=True) (the launcher's and the workers' call, before any server starts), not
    inside the trainers."""
    from megatron_mmr1.config import ConfigError, load_config

    load_config(None, [f"training.mode={mode}", *overrides], world_size=1)  # values alone: fine
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [f"training.mode={mode}", *overrides], world_size=1, launch=True)


def test_min_lr_above_lr_names_both_keys():
    from megatron_mmr1.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=r"optim.min_lr=0.001 must be in \[0, optim.lr=0.0001\]"):
        load_config(None, ["optim.lr=1e-4", "optim.min_lr=1e-3"])


@pytest.mark.parametrize("overrides,needle", [
    (["rollout.weight_sync=tensor"], "parallel.pp=2 with rollout.weight_sync=tensor"),
    (["rollout.weight_sync=disk"], "parallel.pp=2 with rollout.weight_sync=disk"),
])
def test_pipeline_stages_need_the_distributed_or_colocated_sync(overrides, needle):
    """Refused at load, not after the model is built: a tensor / disk sender holds only its own stage's layers."""
    with pytest.raises(ConfigError, match="pipeline stages need rollout.weight_sync=distributed or rollout.colocate") as e:
        load_config(None, ["parallel.pp=2", *overrides])
    assert needle in str(e.value)
    assert load_config(None, ["parallel.pp=2", "rollout.weight_sync=distributed"]).parallel.pp == 2
    assert load_config(None, ["parallel.pp=1", *overrides]).parallel.pp == 1


def test_colocate_with_pipeline_stages_is_accepted():
    """Colocated sync broadcasts every stage's buckets to the other stages (rollout.colocate.full_model_tensors,
    tests/rollout/test_colocate_nodes.py)."""
    for sync in ("distributed", "tensor"):
        cfg = load_config(None, ["training.mode=grpo", "parallel.pp=2", "rollout.colocate=true", f"rollout.weight_sync={sync}"])
        assert cfg.parallel.pp == 2


def test_colocate_across_nodes_and_with_server_tp():
    """Each node's servers are fed by that node's trainer ranks, server TP rank r by the rank on its GPU
    (rollout.colocate.colocated_plan): 72B on 2 x 8 GPUs with servers of TP 8 is accepted."""
    base = ["training.mode=grpo", "rollout.colocate=true", "rollout.backend=sglang"]
    two_tp8 = [*base, "rollout.server_urls=[http://a:1,http://b:1]", "rollout.server_tp=8"]
    load_config(None, two_tp8, world_size=16, nnodes=2)
    load_config(None, two_tp8, nnodes=2)  # the launcher: GPUs per node not known yet
    load_config(None, [*base, "rollout.num_servers=4", "rollout.server_tp=4", "parallel.tp=4", "parallel.pp=2",
                         "model.preset=qwen2.5-vl-7b"],
                world_size=16, nnodes=2)
    load_config(None, [*base, "rollout.num_servers=8", "rollout.server_tp=1"], world_size=8, nnodes=1)


@pytest.mark.parametrize("overrides,kw,needle", [
    (["rollout.num_servers=1", "rollout.server_tp=16"], dict(world_size=16, nnodes=2),
     r"^rollout.server_tp=16 is larger than a node's 8 GPUs: a colocated server would span nodes"),
    (["rollout.num_servers=4", "rollout.server_tp=3"], dict(world_size=16, nnodes=2),
     r"^rollout.server_tp=3 does not divide a node's 8 GPUs"),
    (["rollout.num_servers=3", "rollout.server_tp=2"], dict(nnodes=2),
     r"^rollout.num_servers=3 .*the same number on each of the 2 nodes"),
    (["rollout.backend=local"], dict(nnodes=2), r"^rollout.colocate=true with rollout.backend=local on 2 nodes"),
])
def test_colocated_layouts_that_cannot_work_are_refused_with_the_key(overrides, kw, needle):
    base = ["training.mode=grpo", "rollout.colocate=true", "rollout.backend=sglang"]
    with pytest.raises(ConfigError, match=needle):
        load_config(None, [*base, *overrides], **kw)
    load_config(None, [*base[:1], "rollout.colocate=false", *overrides], **kw)


def test_colocate_with_async_rollout_is_refused():
    """Colocated servers release their memory while the trainer runs: an overlapped rollout would stall."""
    with pytest.raises(ConfigError, match=r"^training.async_rollout=true with rollout.colocate=true"):
        load_config(None, ["training.mode=grpo", "rollout.colocate=true", "training.async_rollout=true"])
    load_config(None, ["training.mode=grpo", "rollout.colocate=false", "training.async_rollout=true"])


def test_rollout_seed_on_sglang_is_refused():
    """SGLang copies one sampling_seed to all n samples of a prompt (identical responses)."""
    with pytest.raises(ConfigError, match=r"^rollout.seed=7 with rollout.backend=sglang"):
        load_config(None, ["training.mode=grpo", "rollout.backend=sglang", "rollout.seed=7"])
    assert load_config(None, ["training.mode=grpo", "rollout.backend=local", "rollout.seed=7"]).rollout.seed == 7
