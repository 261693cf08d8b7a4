"""config.validate on the megatron-core switches (``_check_mcore_features``): each refusal is one line that
names the key, and the accepted settings reach megatron's TransformerConfig."""

import pytest

from megatron_mmr1.config import ConfigError, load_config


@pytest.mark.parametrize("overrides,world,needle", [
    (["parallel.vpp=2"], None, "parallel.vpp=2 needs parallel.pp > 1"),
    (["parallel.pp=2", "parallel.vpp=4"], None, "parallel.vpp=4: model.num_layers=4 is not divisible by parallel.pp\\*parallel.vpp=2\\*4"),
    (["parallel.pp=2", "parallel.vpp=2", "training.mode=lm_smoke"], None, "parallel.vpp=2 with training.mode=lm_smoke"),
    (["parallel.vpp=0"], None, "parallel.vpp=0 must be >= 1"),
    (["parallel.cp=2"], 4, "parallel.cp=2: context parallelism is not wired"),
    (["parallel.cp=2"], 3, "world size 3 is not divisible by parallel.tp\\*parallel.pp\\*parallel.cp=1\\*1\\*2"),
    (["parallel.tp_comm_overlap=true"], None, "parallel.tp_comm_overlap=true: Transformer Engine userbuffers"),
    (["parallel.overlap_param_gather=true", "parallel.use_distributed_optimizer=false"], None,
     "parallel.overlap_param_gather=true needs parallel.use_distributed_optimizer=true"),
    (["parallel.overlap_param_gather=true"], None, "parallel.overlap_param_gather=true: params gathered in the next"),
    (["model.recompute=selective", "model.recompute_modules=[mlp, layernorm]"], None,
     "model.recompute_modules=\\[layernorm\\] needs Transformer Engine"),
])
def test_refusals_are_one_line_naming_the_key(overrides, world, needle):
    with pytest.raises(ConfigError, match=needle) as e:
        load_config(None, overrides, world_size=world)
    assert "\n" not in str(e.value)


def test_vpp_reaches_megatron_config():
    from megatron_mmr1.models.language import build_transformer_config

    cfg = load_config(None, ["parallel.pp=2", "parallel.vpp=2"], world_size=2)
    tc = build_transformer_config(cfg.model, cfg.parallel)
    assert tc.virtual_pipeline_model_parallel_size == 2
    assert tc.overlap_p2p_comm and not tc.batch_p2p_comm  # batched p2p swaps directions at pp=2 (test_vpp.py)
    cfg = load_config(None, ["parallel.pp=2"], world_size=2)
    tc = build_transformer_config(cfg.model, cfg.parallel)
    assert tc.virtual_pipeline_model_parallel_size is None and tc.batch_p2p_comm


def test_plans_have_at_least_pp_micro_batches_under_vpp():
    from megatron_mmr1.training.engine import min_micro_batches
    from megatron_mmr1.training.micro_batches import plan_micro_batches

    cfg = load_config(None, ["parallel.pp=2", "parallel.vpp=2"], world_size=2)
    assert min_micro_batches(cfg) == 2
    assert min_micro_batches(load_config(None, ["parallel.pp=2"], world_size=2)) == 1
    plan = plan_micro_batches([5, 3, 2], dp=1, max_tokens=100, min_count=2)
    assert len(plan[0]) == 2 and sorted(i for mb in plan[0] for i in mb) == [0, 1, 2]
    assert len(plan_micro_batches([5], dp=1, max_tokens=100, min_count=2)[0]) == 2  # an empty one pads
