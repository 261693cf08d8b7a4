"""What one GRPO step asks of the cluster: mean token counts (:class:`Workload`) and the model's FLOPs
(:class:`Model`)."""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any

from megatron_mmr1.config import RunConfig
from megatron_mmr1.models.memory import lm_layer_params, stage_params, vision_params
from megatron_mmr1.models.presets import resolve_model_dims
from megatron_mmr1.planning.hardware import Assumptions

IMAGE_TOKEN_PIXELS = 28**2
"""Pixels per merged image token of Qwen2.5-VL (14x14 patches, 2x2 merge)."""


@dataclass
class Workload:
    """One GRPO step of a run config, in mean token counts."""

    prompts: int
    n: int
    global_batch: int
    prompt_tokens: float
    image_tokens: float
    response_tokens: float
    max_response_tokens: int
    micro_batch_tokens: int
    use_kl: bool
    train_vision: bool
    max_inflight: int
    scoring_prompts: int
    """Prompts a VPS full refresh rolls out (0: uniform sampling, or online refresh, whose re-scoring of
    stale prompts is not modelled)."""
    scoring_n: int
    """Scoring rollouts per prompt (vps.num_rollouts)."""
    scoring_interval: int
    """Steps between refreshes (vps.update_interval): the refresh cost is spread over them."""
    async_rollout: bool
    max_prompt_tokens: int = 2048
    """data.max_prompt_length: the longest prompt, image tokens included (the dataset refuses longer ones)."""
    max_image_tokens: int = 0
    """Tokens of an image at data.max_pixels."""

    @property
    def sequences(self) -> int:
        return self.prompts * self.n

    @property
    def seq_tokens(self) -> float:
        return self.prompt_tokens + self.response_tokens

    @property
    def longest_sequence(self) -> int:
        """The longest sequence a micro-batch must hold: the longest prompt (its images included) and the
        longest response."""
        return self.max_prompt_tokens + self.max_response_tokens

    @property
    def fits_token_budget(self) -> bool:
        """A sequence is never split over micro-batches: the longest must fit one micro-batch's budget."""
        return self.longest_sequence <= self.micro_batch_tokens

    @classmethod
    def from_config(cls, cfg: RunConfig, a: Assumptions) -> "Workload":
        d, t, v = cfg.data, cfg.training, cfg.vps
        image = a.image_fill * d.max_pixels / IMAGE_TOKEN_PIXELS
        full_refresh = cfg.sampler.type == "vas" and v.refresh == "full"
        return cls(prompts=t.rollout_batch_size, n=cfg.rollout.n, global_batch=t.global_batch_size,
                   prompt_tokens=min(image + a.prompt_text_tokens, d.max_prompt_length), image_tokens=image,
                   response_tokens=a.response_fill * d.max_response_length, max_response_tokens=d.max_response_length,
                   micro_batch_tokens=t.max_tokens_per_micro_batch or a.micro_batch_tokens,
                   use_kl=cfg.algorithm.use_kl_loss, train_vision=not cfg.model.freeze_vision,
                   max_inflight=cfg.rollout.max_inflight,
                   scoring_prompts=a.dataset_prompts if full_refresh else 0, scoring_n=v.num_rollouts,
                   scoring_interval=v.update_interval, async_rollout=t.async_rollout,
                   max_prompt_tokens=d.max_prompt_length, max_image_tokens=d.max_pixels // IMAGE_TOKEN_PIXELS)


@functools.lru_cache(maxsize=None)
def _preset_vision_params(preset: str) -> int:
    from megatron_mmr1.config import ModelConfig

    return vision_params(resolve_model_dims(ModelConfig(preset=preset)))


@dataclass
class Model:
    dims: dict[str, Any]
    vision: int
    """Vision tower + merger parameters."""

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "Model":
        dims = resolve_model_dims(cfg.model)
        vision = vision_params(dims) if cfg.model.hf_path else _preset_vision_params(cfg.model.preset)
        return cls(dims, vision)

    @property
    def total_params(self) -> int:
        return stage_params(self.dims, 1, 1, self.vision)[0].params

    def lm_forward_flops(self, seq_tokens: float, logit_tokens: float) -> float:
        """One causal sequence: matmuls (2 per parameter and token), attention (QK^T and AV over half
        the square), LM head on the tokens whose log-probs are needed."""
        d = self.dims
        matmul = 2 * d["num_layers"] * lm_layer_params(d, 1) * seq_tokens
        return matmul + self.attention_flops(seq_tokens) + 2 * d["vocab_size"] * d["hidden_size"] * logit_tokens

    def attention_flops(self, seq_tokens: float) -> float:
        """QK^T and AV of one causal sequence (half the square, 2 matmuls of 2 FLOPs per MAC)."""
        return 2 * self.dims["num_layers"] * seq_tokens**2 * self.dims["hidden_size"]

    def mlp_forward_flops(self, seq_tokens: float) -> float:
        """The SwiGLU MLPs of one sequence (what recompute_modules=[mlp] runs again in backward)."""
        d = self.dims
        return 2 * 3 * d["hidden_size"] * d["ffn_hidden_size"] * d["num_layers"] * seq_tokens

    def vision_forward_flops(self, image_tokens: float) -> float:
        """One image of ``image_tokens`` merged tokens (4 patches each): matmuls, full-attention blocks
        over the whole image, windowed blocks over 8x8-patch windows."""
        v = self.dims["vision"]
        patches = 4 * image_tokens
        full = len(v["fullatt_block_indexes"])
        window = (v["window_size"] // v["patch_size"]) ** 2
        attention = 4 * v["vision_hidden_size"] * patches * (full * patches + (v["vision_depth"] - full) * window)
        return 2 * self.vision * patches + attention

    def decode_flops_per_token(self) -> float:
        """GEMM FLOPs of one decode token in the LM layers (the LM head's share is small and left out)."""
        return 2 * (self.total_params - self.vision - self.dims["vocab_size"] * self.dims["hidden_size"])

    def decode_weight_bytes(self) -> float:
        """bf16 LM weights a decode step reads (the vision tower does not run during decode)."""
        return 2 * (self.total_params - self.vision)
