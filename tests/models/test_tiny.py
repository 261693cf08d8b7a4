"""The demo's random tiny policy is a real Qwen2.5-VL checkpoint: transformers loads it, its special-token
ids are the tokenizer's, and our preset reader reads back the tiny dims."""

from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

from megatron_mmr1.data.tokenizer import build_tokenizer
from megatron_mmr1.models.presets import PRESETS, read_hf_config
from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint


def test_tiny_checkpoint_loads_in_transformers(tmp_path):
    build_tokenizer(tmp_path / "tok")
    out = make_tiny_hf_checkpoint(tmp_path / "ckpt", tmp_path / "tok", seed=3)
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(out))
    tok = AutoTokenizer.from_pretrained(str(out))
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    dims = read_hf_config(out)
    for key in ("num_layers", "hidden_size", "num_attention_heads", "num_query_groups", "vocab_size"):
        assert dims[key] == PRESETS["tiny"][key], key
    ids = tok("<|im_start|>user\n2+2?<|im_end|>", return_tensors="pt").input_ids
    assert model.generate(ids, max_new_tokens=3, do_sample=False).shape[1] == ids.shape[1] + 3
