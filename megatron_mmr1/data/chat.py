"""Qwen2.5-VL chat formatting: MMR1 system prompt, image-pad expansion, SFT label masking.

The renderer is our own Python copy of the Qwen2.5-VL chat template (tests check it token for token
against ``tokenizer.apply_chat_template``), because the trainer needs the character spans of the
assistant turns to mask labels, and the image pads must grow to the image-token count of each image
(``grid_t * grid_h * grid_w / merge**2``) exactly as transformers' ``Qwen2_5_VLProcessor`` does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Optional, Sequence

IMAGE_PLACEHOLDER = "<image>"
IGNORE_INDEX = -100
DEFAULT_SYSTEM = "You are a helpful assistant."
IMAGE_TOKENS = "<|vision_start|><|image_pad|><|vision_end|>"

# The system prompt of MMR1's released RL scripts (examples/mmr1/train_qwen2_5_vl_{3b,7b}.sh).
MMR1_SYSTEM_PROMPT = (
    "A conversation between User and Assistant. \n"
    "The User provides an image and asks a question. \n"
    "The Assistant first analyzes both the image and the question, \n"
    "then carefully thinks about the reasoning process step by step, \n"
    "and finally provides the User with an accurate answer. \n"
    "The Assistant must carefully checkout the correctness and validity of each reasoning step. \n"
    "If any errors or inconsistencies are found during the reasoning process, \n"
    "the Assistant reflects and corrects them logically. \n"
    "The reasoning process and answer are enclosed within <think> </think> and <answer> </answer> "
    "tags, respectively, \n"
    "i.e., <think> reasoning process here, with potential reflections and corrections </think>\n"
    "<answer> final answer here, with the key result enclosed in \\boxed{} </answer>."
)

SystemPromptMode = Literal["user_prefix", "system"]


class PromptError(ValueError):
    """A record whose text cannot be formatted (placeholder/image mismatch, too long, bad roles)."""


def split_image_placeholders(text: str) -> list[dict]:
    """'a <image> b' -> [text a, image, text b] content parts (MMR1's RLHFDataset rule)."""
    parts: list[dict] = []
    for i, chunk in enumerate(text.split(IMAGE_PLACEHOLDER)):
        if i:
            parts.append({"type": "image"})
        if chunk:
            parts.append({"type": "text", "text": chunk})
    return parts


def _is_image_part(part: dict) -> bool:
    return part.get("type") == "image" or "image" in part or "image_url" in part


def count_images(messages: Sequence[dict]) -> int:
    n = 0
    for m in messages:
        c = m.get("content")
        n += c.count(IMAGE_PLACEHOLDER) if isinstance(c, str) else sum(_is_image_part(p) for p in c or [])
    return n


def render_chat(
    messages: Sequence[dict], add_generation_prompt: bool = False, spans: Optional[list] = None
) -> str:
    """The Qwen2.5-VL template; string contents may hold ``<image>`` placeholders.

    ``spans`` (if given) receives the (start, end) character span of each assistant turn's content
    plus its ``<|im_end|>``: the tokens SFT trains on.
    """
    out: list[str] = []
    pos = 0

    def emit(s: str) -> None:
        nonlocal pos
        out.append(s)
        pos += len(s)

    for i, msg in enumerate(messages):
        role, content = msg.get("role"), msg.get("content")
        if role not in ("system", "user", "assistant"):
            raise PromptError(f"message {i} has role {role!r}; expected system, user or assistant")
        if i == 0 and role != "system":
            emit(f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n")
        emit(f"<|im_start|>{role}\n")
        start = pos
        if isinstance(content, str):
            content = split_image_placeholders(content) if IMAGE_PLACEHOLDER in content else content
        if isinstance(content, str):
            emit(content)
        elif isinstance(content, list):
            for part in content:
                if _is_image_part(part):
                    emit(IMAGE_TOKENS)
                elif part.get("type") == "video" or "video" in part:
                    raise PromptError(f"message {i}: video inputs are not supported")
                elif "text" in part:
                    emit(part["text"])
        else:
            raise PromptError(f"message {i} content is {type(content).__name__}, not text or parts")
        emit("<|im_end|>")
        if role == "assistant" and spans is not None:
            spans.append((start, pos))
        emit("\n")
    if add_generation_prompt:
        emit("<|im_start|>assistant\n")
    return "".join(out)


@dataclass
class ChatFormatter:
    """Builds token ids for RL prompts and SFT conversations with one tokenizer."""

    tokenizer: Any
    system_prompt: Optional[str] = MMR1_SYSTEM_PROMPT
    """None or "" = no system prompt (the template then inserts Qwen's default system turn)."""
    system_prompt_mode: SystemPromptMode = "user_prefix"
    """user_prefix: MMR1's released code joins system prompt + " " + problem in the user turn;
    system: a separate system turn."""
    merge_size: int = 2

    def __post_init__(self) -> None:
        ids = self.tokenizer.convert_tokens_to_ids(["<|image_pad|>", "<|im_end|>", "<|endoftext|>"])
        self.image_pad_id, self.im_end_id, self.endoftext_id = ids
        unk = getattr(self.tokenizer, "unk_token_id", None)
        if self.image_pad_id is None or self.image_pad_id == unk:
            raise ValueError("tokenizer has no <|image_pad|> token: not a Qwen2-VL style tokenizer")

    @classmethod
    def from_config(cls, tokenizer: Any, cfg: Any, **kw) -> "ChatFormatter":
        prompt = MMR1_SYSTEM_PROMPT if cfg.system_prompt is None else cfg.system_prompt
        return cls(tokenizer, prompt, cfg.system_prompt_mode, **kw)

    # ---------------------------------------------------------------------------------------------
    # RL prompts
    # ---------------------------------------------------------------------------------------------

    def rl_messages(self, problem: str, num_images: int) -> list[dict]:
        """User turn of an RL problem; images without placeholders go first (one per image)."""
        placeholders = problem.count(IMAGE_PLACEHOLDER)
        if placeholders == 0 and num_images:
            problem = IMAGE_PLACEHOLDER * num_images + problem
        elif placeholders != num_images:
            raise PromptError(f"problem has {placeholders} {IMAGE_PLACEHOLDER} placeholders but {num_images} images")
        messages: list[dict] = []
        if self.system_prompt and self.system_prompt_mode == "system":
            messages.append({"role": "system", "content": self.system_prompt})
        elif self.system_prompt:
            problem = " ".join((self.system_prompt.strip(), problem))
        messages.append({"role": "user", "content": split_image_placeholders(problem)})
        return messages

    def rl_prompt(self, problem: str, num_images: int) -> str:
        """Chat text with one ``<|image_pad|>`` per image (what ``Sample.prompt`` holds)."""
        return render_chat(self.rl_messages(problem, num_images), add_generation_prompt=True)

    def encode_prompt(self, prompt: str, image_tokens: Sequence[int]) -> list[int]:
        ids = self.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        return self.expand_image_pads(ids, image_tokens)

    # ---------------------------------------------------------------------------------------------
    # SFT conversations
    # ---------------------------------------------------------------------------------------------

    def sft_messages(self, messages: Sequence[dict]) -> list[dict]:
        """Apply the system prompt like the RL prompts do, unless the conversation has its own."""
        messages = [dict(m) for m in messages]
        if not self.system_prompt or any(m.get("role") == "system" for m in messages):
            return messages
        if self.system_prompt_mode == "system":
            return [{"role": "system", "content": self.system_prompt}] + messages
        for m in messages:
            if m.get("role") == "user":
                c = m["content"]
                if isinstance(c, str):
                    m["content"] = " ".join((self.system_prompt.strip(), c))
                else:
                    m["content"] = [{"type": "text", "text": self.system_prompt.strip() + " "}] + list(c)
                break
        return messages

    def encode_sft(self, messages: Sequence[dict], image_tokens: Sequence[int]) -> tuple[list[int], list[int]]:
        """(input_ids, labels): labels are the ids inside assistant turns (content + <|im_end|>), else -100."""
        if not any(m.get("role") == "assistant" for m in messages):
            raise PromptError("conversation has no assistant turn to train on")
        spans: list[tuple[int, int]] = []
        text = render_chat(messages, add_generation_prompt=False, spans=spans)
        enc = self.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        ids, offsets = enc["input_ids"], enc["offset_mapping"]
        labels = [IGNORE_INDEX] * len(ids)
        k = 0
        for i, (start, end) in enumerate(offsets):
            while k < len(spans) and start >= spans[k][1]:
                k += 1
            if k < len(spans) and spans[k][0] <= start < spans[k][1]:
                labels[i] = ids[i]
        ids, labels = self.expand_image_pads(ids, image_tokens, labels)
        return ids, labels

    # ---------------------------------------------------------------------------------------------

    def expand_image_pads(self, ids: list[int], image_tokens: Sequence[int], labels: Optional[list[int]] = None):
        """Repeat the k-th ``<|image_pad|>`` ``image_tokens[k]`` times (labels: -100)."""
        pads = sum(1 for t in ids if t == self.image_pad_id)
        if pads != len(image_tokens):
            raise PromptError(f"text has {pads} <|image_pad|> tokens but {len(image_tokens)} images were given")
        out_ids: list[int] = []
        out_labels: list[int] = []
        k = 0
        for i, t in enumerate(ids):
            if t == self.image_pad_id:
                out_ids.extend([t] * image_tokens[k])
                out_labels.extend([IGNORE_INDEX] * image_tokens[k])
                k += 1
            else:
                out_ids.append(t)
                if labels is not None:
                    out_labels.append(labels[i])
        return out_ids if labels is None else (out_ids, out_labels)
