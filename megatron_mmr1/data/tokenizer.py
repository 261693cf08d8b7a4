"""A tiny byte-level BPE tokenizer with Qwen2.5-VL's special tokens and chat template.

There is no model hub here, so the demo and the tests train a small BPE locally (same normaliser,
pre-tokeniser split rule and byte-level alphabet as Qwen2), save it in Hugging Face format, and load it
with ``transformers.AutoTokenizer.from_pretrained(dir)`` -- the call that takes a real Qwen2.5-VL
checkpoint directory. Special tokens come right after the 256 byte symbols, in Qwen's order.

    python -m megatron_mmr1.data.tokenizer --out /tmp/tok [--texts data/sft.jsonl] [--vocab-size 2048]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Iterable, Optional

# Qwen2.5-VL's added tokens, in id order (151643 ...); (content, special).
QWEN_ADDED_TOKENS: list[tuple[str, bool]] = [
    ("<|endoftext|>", True),
    ("<|im_start|>", True),
    ("<|im_end|>", True),
    ("<|object_ref_start|>", True),
    ("<|object_ref_end|>", True),
    ("<|box_start|>", True),
    ("<|box_end|>", True),
    ("<|quad_start|>", True),
    ("<|quad_end|>", True),
    ("<|vision_start|>", True),
    ("<|vision_end|>", True),
    ("<|vision_pad|>", True),
    ("<|image_pad|>", True),
    ("<|video_pad|>", True),
    ("<tool_call>", False),
    ("</tool_call>", False),
    ("<|fim_prefix|>", False),
    ("<|fim_middle|>", False),
    ("<|fim_suffix|>", False),
    ("<|fim_pad|>", False),
    ("<|repo_name|>", False),
    ("<|file_sep|>", False),
]

# Qwen2's pre-tokeniser split: single digits, letters with one leading non-letter, punctuation runs.
QWEN_SPLIT_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# The chat template shipped in Qwen2.5-VL-*-Instruct's chat_template.json.
QWEN2_VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}"
    "{% for message in messages %}{% if loop.first and message['role'] != 'system' %}"
    "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}"
    "{{ message['content'] }}<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'video' or 'video' in content %}"
    "{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n"
    "{% endif %}{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

# Always-present training text so that the template's own words merge even with little data.
_SEED_TEXT = [
    "system\nYou are a helpful assistant.",
    "user\n",
    "assistant\n",
    "<think> </think> <answer> </answer> \\boxed{} The final answer is",
]


def build_tokenizer(
    out_dir: str | Path,
    texts: Optional[Iterable[str]] = None,
    vocab_size: int = 2048,
    min_frequency: int = 2,
):
    """Train, save (HF format) and return the tokenizer loaded back through ``AutoTokenizer``.

    ``vocab_size`` counts everything (256 bytes + merges + Qwen's 22 added tokens), so the embedding
    of the tiny preset (vocab 2048) covers every id. Deterministic for the same texts.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    n_added = len(QWEN_ADDED_TOKENS)
    if vocab_size < 256 + n_added + 1:
        raise ValueError(f"vocab_size={vocab_size} leaves no room for merges (256 bytes + {n_added} added)")

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN_SPLIT_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, use_regex=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - n_added,
        min_frequency=min_frequency,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    from megatron_mmr1.data.chat import MMR1_SYSTEM_PROMPT

    corpus = list(_SEED_TEXT) + [MMR1_SYSTEM_PROMPT] + [t for t in (texts or []) if t]
    tok.train_from_iterator(corpus, trainer=trainer, length=len(corpus))
    # Specials after the learned vocab, in Qwen's relative order (ids 151643.. in the real model).
    from tokenizers import AddedToken

    tok.add_tokens([AddedToken(c, special=s, normalized=False) for c, s in QWEN_ADDED_TOKENS])
    for content, special in QWEN_ADDED_TOKENS:
        if special:
            tok.add_special_tokens([AddedToken(content, special=True, normalized=False)])

    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        bos_token=None,
        clean_up_tokenization_spaces=False,
        model_max_length=32768,
        split_special_tokens=False,
    )
    fast.chat_template = QWEN2_VL_CHAT_TEMPLATE
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    fast.save_pretrained(str(out_dir))
    cfg_path = out_dir / "tokenizer_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["tokenizer_class"] = "Qwen2Tokenizer"  # what real Qwen2.5-VL checkpoints declare
    cfg["errors"] = "replace"
    cfg_path.write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
    loaded = AutoTokenizer.from_pretrained(str(out_dir))
    if len(loaded) > vocab_size:
        raise RuntimeError(f"tokenizer has {len(loaded)} ids, more than vocab_size={vocab_size}")
    return loaded


def load_tokenizer(path: str | Path):
    """The one loading call for our tiny tokenizer and a real Qwen2.5-VL checkpoint alike."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


def texts_from_jsonl(paths: Iterable[str | Path]) -> list[str]:
    """All strings in JSONL records (RL problems/answers, SFT messages) as BPE training text."""
    out: list[str] = []

    def walk(x):
        if isinstance(x, str):
            out.append(x)
        elif isinstance(x, dict):
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for p in paths:
        with open(p, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    rec = json.loads(line)
                    rec.pop("images", None)
                    walk(rec)
    return out


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True, help="output tokenizer dir (HF format)")
    ap.add_argument("--texts", nargs="*", default=[], help="JSONL files whose strings train the BPE")
    ap.add_argument("--vocab-size", type=int, default=2048)
    args = ap.parse_args(argv)
    tok = build_tokenizer(args.out, texts_from_jsonl(args.texts), vocab_size=args.vocab_size)
    print(f"saved {type(tok).__name__} with {len(tok)} ids to {args.out}")


if __name__ == "__main__":
    main()
