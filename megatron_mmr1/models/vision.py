"""The Qwen2.5-VL vision tower (ViT with window attention + 2x2 patch merger) on the first PP stage.

We keep transformers' own ``Qwen2_5_VisionTransformerPretrainedModel`` (slime's choice): it is ~0.7B
of a 72B model, so replicating it on every TP rank costs little, and reusing the reference module
makes vision parity with Hugging Face exact by construction. Its parameter names are the HF names
below ``visual.``, which keeps the checkpoint mapping an identity.
"""

from __future__ import annotations

from typing import Any

import torch


def vision_config(dims: dict[str, Any]):
    """transformers ``Qwen2_5_VLVisionConfig`` for resolved model ``dims`` (out size = LM hidden)."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    from megatron_mmr1.models.presets import hf_config_dict

    return Qwen2_5_VLVisionConfig(**hf_config_dict(dims)["vision_config"])


def build_vision_model(dims: dict[str, Any], dtype: torch.dtype, freeze: bool = False,
                       recompute: bool = False) -> torch.nn.Module:
    """The HF vision tower in ``dtype``; sdpa attention (runs on CPU and GPU without flash-attn)."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    cfg = vision_config(dims)
    cfg._attn_implementation = "sdpa"
    model = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg, dtype=dtype)
    model.to(dtype)
    if recompute:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    if freeze:
        model.requires_grad_(False)
    return model


def image_embeddings(vision_model: torch.nn.Module, pixel_values: torch.Tensor,
                     image_grid_thw: torch.Tensor) -> torch.Tensor:
    """Merged image features (sum over images of t*h*w/merge^2, lm_hidden), images in batch order."""
    pixel_values = pixel_values.to(next(vision_model.parameters()).dtype)  # (num_patches, 3*2*14*14)
    out = vision_model(pixel_values, grid_thw=image_grid_thw)
    return out.pooler_output
