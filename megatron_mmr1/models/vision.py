"""The Qwen2.5-VL vision tower (ViT with window attention + 2x2 patch merger) on the first PP stage.

We keep transformers' own ``Qwen2_5_VisionTransformerPretrainedModel`` (slime's choice): it is ~0.7B
of a 72B model, so replicating it on every TP rank costs little, and reusing the reference module
makes vision parity with Hugging Face exact by construction. Its parameter names are the HF names
below ``visual.``, which keeps the checkpoint mapping an identity.
"""

from __future__ import annotations

import functools
import importlib.util
from typing import Any, Optional

import torch


def vision_config(dims: dict[str, Any]):
    """transformers ``Qwen2_5_VLVisionConfig`` for resolved model ``dims`` (out size = LM hidden)."""
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLVisionConfig

    from megatron_mmr1.models.presets import hf_config_dict

    return Qwen2_5_VLVisionConfig(**hf_config_dict(dims)["vision_config"])


def flash_attn_importable() -> bool:
    return importlib.util.find_spec("flash_attn") is not None


def vision_attn_implementation(dtype: torch.dtype, device: Optional[torch.device | str] = None) -> str:
    """HF ``attn_implementation`` of the tower: ``flash_attention_2`` (one varlen call over all windows of
    a layer) on CUDA in bf16/fp16 with flash_attn installed, else ``sdpa`` (one call per window: many small
    launches for a 72B run's thousands of windows, but it runs anywhere). ``device`` defaults to where
    build_model puts the model (the GPU when there is one)."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if on_cuda and dtype in (torch.bfloat16, torch.float16) and flash_attn_importable():
        return "flash_attention_2"
    return "sdpa"


@functools.lru_cache(maxsize=None)
def _fp32_rotary_class():
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLVisionRotaryEmbedding

    class VisionRotaryEmbeddingFp32(Qwen2_5_VLVisionRotaryEmbedding):
        """HF's 2-D vision RoPE whose ``inv_freq`` stays fp32 through ``.to(bf16)`` / ``.bfloat16()``: a
        bf16 inv_freq (8 mantissa bits) shifts the angle of patch row p by up to p * 2^-9 rad, while HF
        keeps the (non-persistent) buffer fp32. Dtype casts are undone by recomputing it, device moves kept."""

        def _apply(self, fn, recurse=True):
            super()._apply(fn, recurse)
            for name in ("inv_freq", "original_inv_freq"):
                buf = self._buffers.get(name)
                if buf is not None and buf.dtype != torch.float32:
                    self._buffers[name] = self.compute_axial_rope_parameters(self.config, device=buf.device)[0]
            return self

    VisionRotaryEmbeddingFp32.__module__ = __name__  # picklable through the module __getattr__ below
    VisionRotaryEmbeddingFp32.__qualname__ = "VisionRotaryEmbeddingFp32"
    return VisionRotaryEmbeddingFp32


def __getattr__(name: str):
    if name == "VisionRotaryEmbeddingFp32":  # defined lazily: transformers is imported on first use
        return _fp32_rotary_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def build_vision_model(dims: dict[str, Any], dtype: torch.dtype, freeze: bool = False,
                       recompute: bool = False) -> torch.nn.Module:
    """The HF vision tower in ``dtype`` (RoPE inv_freq kept fp32), attention by :func:`vision_attn_implementation`."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    cfg = vision_config(dims)
    cfg._attn_implementation = vision_attn_implementation(dtype)
    model = Qwen2_5_VisionTransformerPretrainedModel._from_config(cfg, dtype=dtype)
    model.rotary_pos_emb = _fp32_rotary_class()(model.config)  # built outside _from_config's default dtype
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
