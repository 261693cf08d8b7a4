"""Per-GPU parameter / gradient / optimizer-state bytes of a Qwen2.5-VL layout (no model is built).

Counts follow how this project shards the model: LM matrices split over TP (vocab rows, QKV/fc1 rows,
proj/fc2 columns), norms replicated, layers split over PP, vision tower replicated on the first stage,
and with tied embeddings under PP the last stage keeps a copy of the embedding as its output layer.
Bytes: bf16 params (2), fp32 grads (4, ``grad_reduce_in_fp32``), Adam fp32 master + m + v (12),
the last divided by DP with the distributed optimizer. Activations depend on sequence length and
recompute and are not included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def vision_params(dims: dict[str, Any]) -> int:
    """Vision tower + merger parameters (counted on transformers' module, on the meta device)."""
    import torch
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VisionTransformerPretrainedModel

    from megatron_mmr1.models.vision import vision_config

    with torch.device("meta"):
        model = Qwen2_5_VisionTransformerPretrainedModel(vision_config(dims))
    return sum(p.numel() for p in model.parameters())


def lm_layer_params(dims: dict[str, Any], tp: int) -> int:
    h, f = dims["hidden_size"], dims["ffn_hidden_size"]
    heads, groups = dims["num_attention_heads"], dims["num_query_groups"]
    d = h // heads
    qkv_rows = (heads + 2 * groups) * d
    return (qkv_rows * h + qkv_rows + heads * d * h + 3 * h * f) // tp + 2 * h  # + 2 RMSNorms


@dataclass
class StageMemory:
    stage: int
    params: int

    def bytes(self, dp: int, distributed_optimizer: bool = True) -> dict[str, float]:
        opt = 12 * self.params / (dp if distributed_optimizer else 1)
        return {"params": 2 * self.params, "grads": 4 * self.params, "optimizer": opt,
                "total": 6 * self.params + opt}


def stage_params(dims: dict[str, Any], tp: int, pp: int, vision: int | None = None) -> list[StageMemory]:
    """Parameters held by one GPU of each pipeline stage (TP shard), first stage first."""
    vision = vision_params(dims) if vision is None else vision
    layers = dims["num_layers"]
    per_stage = [layers // pp + (1 if s < layers % pp else 0) for s in range(pp)]
    emb = dims["vocab_size"] * dims["hidden_size"] // tp
    out = []
    for s, n in enumerate(per_stage):
        p = n * lm_layer_params(dims, tp)
        if s == 0:
            p += emb + vision
        if s == pp - 1:
            p += dims["hidden_size"]  # final norm
            if not dims["tie_word_embeddings"] or pp > 1:
                p += emb  # output layer (a synced copy of the embedding when tied and pp > 1)
        out.append(StageMemory(s, p))
    return out


# Example layouts (GPUs = tp * pp * dp), one per size.
EXAMPLE_LAYOUTS = {
    "qwen2.5-vl-3b": (2, 1, 4),
    "qwen2.5-vl-7b": (4, 1, 2),
    "qwen2.5-vl-32b": (8, 2, 2),
    "qwen2.5-vl-72b": (8, 4, 2),
}


def table(layouts: dict[str, tuple[int, int, int]] = EXAMPLE_LAYOUTS) -> str:
    """Markdown table of the worst (largest) stage per layout, in GiB."""
    from megatron_mmr1.config import ModelConfig
    from megatron_mmr1.models.presets import resolve_model_dims

    gib = 1024**3
    rows = ["| model | TP x PP x DP (GPUs) | params/GPU | bf16 weights | fp32 grads | Adam (dist. opt.) | total |",
            "|---|---|---|---|---|---|---|"]
    for preset, (tp, pp, dp) in layouts.items():
        dims = resolve_model_dims(ModelConfig(preset=preset))
        worst = max(stage_params(dims, tp, pp), key=lambda s: s.params)
        b = worst.bytes(dp)
        rows.append(f"| {preset} | {tp} x {pp} x {dp} ({tp * pp * dp}) | {worst.params / 1e9:.2f} B | "
                    f"{b['params'] / gib:.1f} GiB | {b['grads'] / gib:.1f} GiB | {b['optimizer'] / gib:.1f} GiB | "
                    f"{b['total'] / gib:.1f} GiB |")
    return "\n".join(rows)
