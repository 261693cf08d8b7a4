"""The tiny tokenizer loads through transformers.AutoTokenizer like a real Qwen2.5-VL checkpoint."""

from __future__ import annotations

import json

from megatron_mmr1.data.tokenizer import QWEN_ADDED_TOKENS, build_tokenizer, load_tokenizer
from megatron_mmr1.models.presets import PRESETS

TEXTS = ["How many red circles are in the image? Answer with a number.",
         "<think>\nCounting: 1, 2, 3.\n</think>\n<answer> The final answer is \\boxed{3} </answer>"] * 20


def test_loads_with_autotokenizer_and_fits_tiny_vocab(tokenizer):
    from transformers import AutoTokenizer

    assert len(tokenizer) <= PRESETS["tiny"]["vocab_size"]
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    ids = tokenizer.convert_tokens_to_ids([t for t, _ in QWEN_ADDED_TOKENS])
    assert ids == list(range(ids[0], ids[0] + len(ids)))  # Qwen's order, consecutive
    assert max(ids) < len(tokenizer)
    assert isinstance(tokenizer, type(AutoTokenizer.from_pretrained(tokenizer.name_or_path)))


def test_special_tokens_are_atomic_and_text_round_trips(tokenizer):
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>What is 12+30?<|im_end|>\n"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    toks = tokenizer.convert_ids_to_tokens(ids)
    for special in ("<|im_start|>", "<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|im_end|>"):
        assert special in toks
    assert tokenizer.decode(ids) == text
    assert toks[toks.index("?") - 2 : toks.index("?")] == ["3", "0"]  # Qwen splits digits one by one
    unicode = "Größe ≥ 3 — ✓ 数学"
    assert tokenizer.decode(tokenizer(unicode, add_special_tokens=False)["input_ids"]) == unicode


def test_same_encoding_as_the_raw_tokenizers_file(tokenizer, synth):
    from tokenizers import Tokenizer

    raw = Tokenizer.from_file(str(synth["tokenizer"] / "tokenizer.json"))
    for text in TEXTS[:2] + ["  spaces\n\n\ttabs 1234 'll don't"]:
        assert raw.encode(text, add_special_tokens=False).ids == tokenizer(text, add_special_tokens=False)["input_ids"]


def test_deterministic(tmp_path):
    build_tokenizer(tmp_path / "a", TEXTS, vocab_size=400)
    build_tokenizer(tmp_path / "b", TEXTS, vocab_size=400)
    a = json.loads((tmp_path / "a" / "tokenizer.json").read_text())
    b = json.loads((tmp_path / "b" / "tokenizer.json").read_text())
    assert a == b
    assert len(load_tokenizer(tmp_path / "a")) <= 400


def test_chat_template_is_qwen2_vl(tokenizer):
    msgs = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "hi"}]}]
    out = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert out == ("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                   "<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n<|im_start|>assistant\n")
