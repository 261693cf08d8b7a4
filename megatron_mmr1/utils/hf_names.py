"""Qwen2.5-VL tensor-name layouts: the hub layout (``model.layers.*``, ``visual.*``, ``lm_head.weight``,
which transformers 5 also writes) and the nested transformers-4.5x / module layout
(``model.language_model.*``, ``model.visual.*``). Torch-free, so that the stand-in rollout server and
the megatron adapter share it without either importing the other's stack."""

from __future__ import annotations

from typing import Literal

Layout = Literal["hub", "nested"]


def to_layout(hub_name: str, layout: Layout) -> str:
    """Hub name -> the given layout."""
    if layout == "hub":
        return hub_name
    if hub_name.startswith("visual."):
        return "model." + hub_name
    if hub_name.startswith("model."):
        return "model.language_model." + hub_name[len("model."):]
    return hub_name  # lm_head.weight


def to_hub(name: str) -> str:
    """Any layout -> hub name."""
    if name.startswith("model.visual."):
        return name[len("model."):]
    if name.startswith("model.language_model."):
        return "model." + name[len("model.language_model."):]
    return name


def detect_layout(names: list[str]) -> Layout:
    return "nested" if any(n.startswith(("model.language_model.", "model.visual.")) for n in names) else "hub"
