"""The language model's TransformerConfig (a pure function of the config): CUDA fusions under the TE
spec only; the local spec (CPU) keeps megatron's torch paths."""

import pytest

from megatron_mmr1.config import ModelConfig, ParallelConfig
from megatron_mmr1.models import language


@pytest.mark.parametrize("apex_wgrad", [True, False])
def test_te_spec_turns_on_the_fusions(monkeypatch, apex_wgrad):
    monkeypatch.setattr(language, "fused_wgrad_available", lambda: apex_wgrad)
    config = language.build_transformer_config(ModelConfig(attention_backend="te"), ParallelConfig())
    assert config.bias_activation_fusion
    # megatron's own output ColumnParallelLinear raises without apex's fused wgrad kernel
    assert config.gradient_accumulation_fusion is apex_wgrad


@pytest.mark.parametrize("backend", ["sdpa", "local"])
def test_local_spec_keeps_the_fusions_off(monkeypatch, backend):
    monkeypatch.setattr(language, "fused_wgrad_available", lambda: True)
    config = language.build_transformer_config(ModelConfig(attention_backend=backend), ParallelConfig())
    assert not config.bias_activation_fusion and not config.gradient_accumulation_fusion


def test_sequence_parallel_only_with_te_and_tp():
    te, sdpa = ModelConfig(attention_backend="te"), ModelConfig(attention_backend="sdpa")
    assert language.uses_sequence_parallel(te, ParallelConfig(tp=2))
    assert not language.uses_sequence_parallel(te, ParallelConfig(tp=1))
    assert not language.uses_sequence_parallel(te, ParallelConfig(tp=2, sequence_parallel=False))
    assert not language.uses_sequence_parallel(sdpa, ParallelConfig(tp=2))


def test_recompute_modules_reach_megatron():
    from megatron_mmr1.config import load_config

    cfg = load_config(None, ["model.recompute=selective", "model.recompute_modules=[]"])
    config = language.build_transformer_config(cfg.model, cfg.parallel)
    assert config.recompute_granularity == "selective" and config.recompute_modules == []
    cfg = load_config(None, ["model.recompute=selective", "model.recompute_modules=[mlp]"])
    assert language.build_transformer_config(cfg.model, cfg.parallel).recompute_modules == ["mlp"]
    cfg = load_config(None, ["model.recompute=selective"])  # unset: megatron's own default
    assert language.build_transformer_config(cfg.model, cfg.parallel).recompute_modules == ["core_attn"]


@pytest.mark.parametrize("overrides,needle", [
    (["model.recompute_modules=[mlp]"], "model.recompute_modules needs model.recompute=selective"),
    (["model.recompute=full", "model.recompute_modules=[mlp]"], "needs model.recompute=selective"),
    (["model.recompute=selective", "model.recompute_modules=[moe]"], "model.recompute_modules: ['moe']"),
])
def test_recompute_modules_refusals_name_the_key(overrides, needle):
    from megatron_mmr1.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, overrides)
