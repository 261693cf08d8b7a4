"""build_model resolves the model dims once (they may come from a checkpoint's config.json) and hands
them down to the language model and its TransformerConfig."""

from tests.dist_utils import spawn


def count_dim_resolutions() -> int:
    from megatron_mmr1 import parallel
    from megatron_mmr1.config import ModelConfig, ParallelConfig
    from megatron_mmr1.models import language, presets, qwen2_5_vl

    calls = []
    real = presets.resolve_model_dims

    def counting(model_cfg):
        calls.append(1)
        return real(model_cfg)

    for mod in (language, qwen2_5_vl):
        mod.resolve_model_dims = counting
    pcfg = ParallelConfig(sequence_parallel=False)
    parallel.initialize(pcfg)
    qwen2_5_vl.build_model((ModelConfig(preset="tiny", params_dtype="fp32"), pcfg))
    return len(calls)


def test_dims_resolved_once_per_build_model():
    assert spawn(count_dim_resolutions, 1) == [1]
