"""The one data contract between data loading, rollout, rewards, VPS scoring and training.

A :class:`Sample` is one (prompt, response) pair; the N responses of a prompt share ``index``
and ``group_index``. Pluggable rollout and reward functions take and return lists of Samples.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Optional

import torch


class Status(str, Enum):
    PENDING = "pending"
    COMPLETED = "completed"  # stopped at EOS / stop string
    TRUNCATED = "truncated"  # hit max_new_tokens
    ABORTED = "aborted"  # server failure after all retries


@dataclass
class Sample:
    index: int = -1
    """Prompt index in the dataset (the VPS score-store key)."""
    group_index: int = -1
    """Position of the prompt in the current rollout batch."""
    prompt: str = ""
    """Chat-formatted prompt text (image tokens collapsed to one <|image_pad|> per image)."""
    prompt_ids: list[int] = field(default_factory=list)
    """Prompt token ids with image pads expanded to the image-token count."""
    answer: str = ""
    """Reference answer checked by the accuracy reward."""
    images: list[Any] = field(default_factory=list)
    """Raw images (paths, bytes or PIL images) as sent to the rollout server."""
    pixel_values: Optional[torch.Tensor] = None
    """[num_patches, 3*2*14*14] Qwen2.5-VL patches of all images of the prompt."""
    image_grid_thw: Optional[torch.Tensor] = None
    """[num_images, 3] (t, h, w) patch grid per image."""
    response: str = ""
    """Generated text."""
    response_ids: list[int] = field(default_factory=list)
    """Generated token ids."""
    rollout_logprobs: list[float] = field(default_factory=list)
    """Per-token log-probs reported by the rollout engine (mismatch metrics)."""
    loss_mask: list[int] = field(default_factory=list)
    """1 for response tokens that train, aligned with response_ids."""
    reward: float = 0.0
    """Scalar reward used for advantages."""
    reward_info: dict[str, float] = field(default_factory=dict)
    """Reward parts, e.g. {"format": 1.0, "accuracy": 0.0, "timeout": 0.0}."""
    status: Status = Status.PENDING
    """Generation outcome."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """Free-form per-sample data (source file and line, difficulty, ...)."""

    @property
    def tokens(self) -> list[int]:
        return self.prompt_ids + self.response_ids
