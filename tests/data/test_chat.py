"""Chat formatting vs the tokenizer's own Jinja chat template and transformers' pad expansion rule."""

from __future__ import annotations

import types

import pytest
import torch

from megatron_mmr1.data.chat import (
    IGNORE_INDEX,
    MMR1_SYSTEM_PROMPT,
    ChatFormatter,
    PromptError,
    render_chat,
    split_image_placeholders,
)

CONVERSATIONS = [
    [{"role": "user", "content": "<image>How many circles?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "two <image> images <image>!"}],
    [{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "<think>x</think>\\boxed{1}"},
     {"role": "user", "content": "again?"}, {"role": "assistant", "content": "\nyes 2\n"}],
    [{"role": "user", "content": [{"type": "text", "text": "A"}, {"type": "image"}, {"type": "text", "text": "B"}]}],
]


def _as_parts(messages):
    out = []
    for m in messages:
        c = m["content"]
        out.append({"role": m["role"], "content": split_image_placeholders(c) if isinstance(c, str) and "<image>" in c else c})
    return out


@pytest.mark.parametrize("messages", CONVERSATIONS)
@pytest.mark.parametrize("gen", [False, True])
def test_render_matches_jinja_template(messages, gen, tokenizer):
    ref = tokenizer.apply_chat_template(_as_parts(messages), tokenize=False, add_generation_prompt=gen)
    assert render_chat(messages, add_generation_prompt=gen) == ref


def test_rl_prompt_follows_mmr1_reference(tokenizer):
    """MMR1's RLHFDataset joins system prompt + ' ' + problem in the user turn."""
    f = ChatFormatter(tokenizer)
    prompt = f.rl_prompt("<image>How many?", 1)
    ref = tokenizer.apply_chat_template(
        [{"role": "user", "content": split_image_placeholders(MMR1_SYSTEM_PROMPT.strip() + " <image>How many?")}],
        tokenize=False, add_generation_prompt=True)
    assert prompt == ref
    sys_mode = ChatFormatter(tokenizer, system_prompt_mode="system").rl_prompt("Q", 0)
    assert sys_mode.startswith("<|im_start|>system\n" + MMR1_SYSTEM_PROMPT + "<|im_end|>")
    assert ChatFormatter(tokenizer, system_prompt=None).rl_prompt("<image>Q", 1).count("<|image_pad|>") == 1
    assert ChatFormatter(tokenizer, system_prompt=None).rl_prompt("Q", 2).count("<|image_pad|>") == 2
    with pytest.raises(PromptError, match="2 <image> placeholders but 1 images"):
        f.rl_prompt("<image><image>Q", 1)


def test_image_pads_expand_like_transformers_processor(tokenizer, hf_image_processor):
    """Expansion count = grid_t*grid_h*grid_w // merge**2, the rule of Qwen2_5_VLProcessor."""
    from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

    from tests.data.images import photo

    imgs = [photo(90, 130, seed=1), photo(300, 61, seed=2)]
    grid = hf_image_processor(images=imgs, return_tensors="pt")["image_grid_thw"]
    stub = types.SimpleNamespace(image_processor=hf_image_processor, image_token="<|image_pad|>")
    f = ChatFormatter(tokenizer, system_prompt=None)
    prompt = f.rl_prompt("<image>and<image>Q", 2)
    expanded = [Qwen2_5_VLProcessor.replace_image_token(stub, {"image_grid_thw": grid}, k) for k in range(2)]
    head, mid, tail = prompt.split("<|image_pad|>")  # what the HF processor does before tokenizing
    text = head + expanded[0] + mid + expanded[1] + tail
    ref_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    counts = [int(torch.prod(g)) // 4 for g in grid]
    assert f.encode_prompt(prompt, counts) == ref_ids


def test_sft_labels_cover_assistant_turns_only(tokenizer):
    f = ChatFormatter(tokenizer, system_prompt=None)
    msgs = CONVERSATIONS[2]
    ids, labels = f.encode_sft(msgs, [5])
    assert len(ids) == len(labels)
    assert ids == tokenizer(render_chat(msgs).replace("<|image_pad|>", "<|image_pad|>" * 5),
                            add_special_tokens=False)["input_ids"]
    trained = tokenizer.decode([t for t, l in zip(ids, labels) if l != IGNORE_INDEX])
    assert trained == "<think>x</think>\\boxed{1}<|im_end|>\nyes 2\n<|im_end|>"
    assert all(l == IGNORE_INDEX for t, l in zip(ids, labels) if t == f.image_pad_id)
    assert labels[-1] == IGNORE_INDEX  # the "\n" after the last <|im_end|>
    with pytest.raises(PromptError, match="no assistant turn"):
        f.encode_sft(CONVERSATIONS[0], [5])


def test_sft_system_prompt_applied_like_rl(tokenizer):
    f = ChatFormatter(tokenizer)
    msgs = f.sft_messages([{"role": "user", "content": "<image>Q"}, {"role": "assistant", "content": "A"}])
    assert render_chat(msgs, add_generation_prompt=False).startswith(f.rl_prompt("<image>Q", 1)[: -len("<|im_start|>assistant\n")])
    own = [{"role": "system", "content": "S"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}]
    assert f.sft_messages(own) == own


def test_pad_count_mismatch_and_bad_roles(tokenizer):
    f = ChatFormatter(tokenizer, system_prompt=None)
    with pytest.raises(PromptError, match="1 <\\|image_pad\\|> tokens but 2 images"):
        f.encode_prompt(f.rl_prompt("<image>Q", 1), [4, 4])
    with pytest.raises(PromptError, match="role 'tool'"):
        render_chat([{"role": "tool", "content": "x"}])
