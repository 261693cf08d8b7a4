"""Size presets vs the published Qwen2.5-VL-*-Instruct sizes, counted by transformers' own model class."""

import pytest
import torch

from megatron_mmr1.config import ModelConfig
from megatron_mmr1.models.presets import hf_config_dict, read_hf_config, resolve_model_dims

# Parameter totals of the Hugging Face checkpoints (model cards / safetensors metadata).
PUBLISHED = {
    "qwen2.5-vl-3b": 3_754_622_976,
    "qwen2.5-vl-7b": 8_292_166_656,
    "qwen2.5-vl-32b": 33_452_718_336,
    "qwen2.5-vl-72b": 73_410_000_000,  # "73.4B": checked to 1e6 below
}


@pytest.mark.parametrize("preset", sorted(PUBLISHED))
def test_preset_builds_the_published_model_size(preset):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    dims = resolve_model_dims(ModelConfig(preset=preset))
    with torch.device("meta"):
        model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**hf_config_dict(dims)))
    n = sum(p.numel() for p in model.parameters())
    tol = 1_000_000 if preset.endswith("72b") else 0
    assert abs(n - PUBLISHED[preset]) <= tol, n
    assert dims["vocab_size"] == (151936 if preset.endswith("3b") else 152064)
    assert dims["tie_word_embeddings"] == preset.endswith("3b")


def test_config_json_round_trip(tmp_path):
    """hf_config_dict -> transformers config -> save -> read_hf_config gives back the same dims."""
    from transformers import Qwen2_5_VLConfig

    dims = resolve_model_dims(ModelConfig(preset="qwen2.5-vl-7b"))
    Qwen2_5_VLConfig(**hf_config_dict(dims)).save_pretrained(str(tmp_path))
    back = read_hf_config(tmp_path)
    for key in ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "vocab_size", "rope_theta", "mrope_section", "tie_word_embeddings", "image_token_id",
                "vision_start_token_id", "vision"):
        assert back[key] == dims[key], key


@pytest.mark.parametrize("preset", ["qwen2.5-vl-3b", "qwen2.5-vl-7b"])
def test_memory_model_counts_the_whole_model_on_one_gpu(preset):
    from megatron_mmr1.models.memory import stage_params

    [stage] = stage_params(resolve_model_dims(ModelConfig(preset=preset)), tp=1, pp=1)
    assert stage.params == PUBLISHED[preset]
