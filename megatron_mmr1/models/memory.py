"""Per-GPU bytes of a Qwen2.5-VL layout (no model is built): parameters, gradients, optimizer state,
activations, reference weights and the rollout servers' KV cache.

Counts follow how this project shards the model: LM matrices split over TP (vocab rows, QKV/fc1 rows,
proj/fc2 columns), norms replicated, layers split over PP, vision tower replicated on the first stage,
and with tied embeddings under PP the last stage keeps a copy of the embedding as its output layer.
Bytes: bf16 params (2), fp32 grads (4, ``grad_reduce_in_fp32``), Adam fp32 master + m + v (12),
the last divided by DP with the distributed optimizer.

Activations (bf16, sequence parallel on, flash attention, packed micro-batches of a token budget)
count what autograd keeps per token and layer: the two norm inputs, the QKV and fc1 inputs, Q/K/V,
the attention output, the fc1 output (gate and up), silu(gate) and the fc2 input (the unfused SwiGLU
that ``models/language.py`` configures), i.e. ``12h + 4*groups*head_dim + 8f`` bytes, divided by TP. Full recompute keeps only each layer's input
(``2h / TP``) plus one layer's working set. The vision tower (replicated, not TP-split) is counted
the same way per patch; megatron's selective recompute saves nothing more than flash attention
already does, so it counts as ``None`` for the LM, while any recompute checkpoints the vision blocks
(``models/vision.py``); ``recompute_modules`` [mlp] / [layernorm] free the MLP's ``8f`` / the norm outputs'
``4h`` bytes. Under 1F1B pipelining stage s holds ``pp - s`` micro-batches in flight (times
``1 + (pp-1)/(pp*vpp)`` on stage 0 with virtual stages); context parallelism divides the LM tokens by ``cp`` and
shards Adam over DP x CP; ``host_optimizer_fraction`` of Adam lives on the host (optim.cpu_offload).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterable, Optional, Union


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


def stage_layers(layers: int, pp: int) -> list[int]:
    """LM layers per pipeline stage (the first stages take the remainder)."""
    return [layers // pp + (1 if s < layers % pp else 0) for s in range(pp)]


def stage_params(dims: dict[str, Any], tp: int, pp: int, vision: int | None = None) -> list[StageMemory]:
    """Parameters held by one GPU of each pipeline stage (TP shard), first stage first."""
    vision = vision_params(dims) if vision is None else vision
    layers = dims["num_layers"]
    per_stage = stage_layers(layers, pp)
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


GIB = 1024**3
LOGITS_WORKSPACE = 1 * GIB
"""Fused loss / log-prob workspace on the last stage: a <= 512 MiB fp32 logits chunk and its gradient."""
FRAMEWORK_OVERHEAD = 4 * GIB
"""CUDA context, NCCL buffers and caching-allocator slack per GPU (an allowance, not a measurement)."""


def head_dim(dims: dict[str, Any]) -> int:
    return dims["hidden_size"] // dims["num_attention_heads"]


def lm_layer_activation_bytes(dims: dict[str, Any], tp: int) -> float:
    """Bytes one LM layer keeps per token for backward (bf16, sequence parallel, flash attention)."""
    h, f = dims["hidden_size"], dims["ffn_hidden_size"]
    return (12 * h + 4 * dims["num_query_groups"] * head_dim(dims) + 8 * f) / tp


def vision_block_activation_bytes(dims: dict[str, Any]) -> float:
    """Bytes one vision block keeps per patch (replicated over TP; full multi-head attention)."""
    v = dims["vision"]
    return 16 * v["vision_hidden_size"] + 8 * v["vision_intermediate_size"]


def kv_bytes_per_token(dims: dict[str, Any], tp: int = 1) -> float:
    """bf16 K and V of every layer for one token on one GPU of a TP ``tp`` server (KV heads split
    over TP, replicated once TP exceeds them, as SGLang does)."""
    groups_per_gpu = max(dims["num_query_groups"] // tp, 1)
    return 2 * 2 * dims["num_layers"] * groups_per_gpu * head_dim(dims)


@dataclass
class MicroBatchShape:
    tokens: int
    """LM tokens in one packed micro-batch (training.max_tokens_per_micro_batch)."""
    patches: int
    """Vision patches in it (4 per image token with Qwen2.5-VL's 2x2 merge)."""
    count: int
    """Micro-batches per optimizer step on one DP rank (caps the 1F1B in-flight count)."""


MLP_RECOMPUTE_SAVES = 8
"""Bytes per token and FFN unit that recomputing the MLP frees (fc1 output, silu(gate), fc2 input)."""
LAYERNORM_RECOMPUTE_SAVES = 4
"""Bytes per token and hidden unit that recomputing the two norms frees (their outputs: QKV and fc1 inputs)."""


def lm_kept_bytes(dims: dict[str, Any], tp: int, modules: Optional[Iterable[str]]) -> float:
    """Bytes per token and layer kept for backward under selective recompute of ``modules`` (megatron's
    recompute_modules; core_attn frees nothing that flash attention keeps)."""
    kept = lm_layer_activation_bytes(dims, tp)
    mods = set(modules or ())
    if "mlp" in mods:
        kept -= MLP_RECOMPUTE_SAVES * dims["ffn_hidden_size"] / tp
    if "layernorm" in mods:
        kept -= LAYERNORM_RECOMPUTE_SAVES * dims["hidden_size"] / tp
    return kept


def interleave_factor(pp: int, vpp: int) -> float:
    """Extra in-flight activations of megatron's interleaved 1F1B on the first stage: 1 + (pp-1)/(pp*vpp)
    (Korthikanti et al. 2022, section 4.2.3); 1 without virtual stages."""
    return 1.0 + (pp - 1) / (pp * vpp) if vpp > 1 and pp > 1 else 1.0


def _vision_activation_bytes(dims: dict[str, Any], mb: MicroBatchShape, recompute: Optional[str]) -> tuple[float, float]:
    """(stored per in-flight micro-batch, working set) of a trained vision tower on stage 0."""
    v = dims["vision"]
    block = vision_block_activation_bytes(dims)
    if recompute is not None:  # any recompute checkpoints the vision blocks (models/vision.py)
        return mb.patches * v["vision_depth"] * 2 * v["vision_hidden_size"], mb.patches * block
    return mb.patches * v["vision_depth"] * block, 0.0


def activation_bytes(dims: dict[str, Any], tp: int, pp: int, stage: int, mb: MicroBatchShape,
                     recompute: Optional[str], train_vision: bool = True, cp: int = 1, vpp: int = 1,
                     recompute_modules: Optional[Iterable[str]] = None) -> float:
    """Peak activation bytes of one GPU of pipeline ``stage`` during 1F1B training. Context parallelism
    splits each micro-batch's LM tokens over ``cp`` ranks (the vision tower runs whole images)."""
    layers = stage_layers(dims["num_layers"], pp)[stage]
    tokens = mb.tokens / cp
    if recompute == "full":
        stored = tokens * layers * 2 * dims["hidden_size"] / tp
        working = tokens * lm_layer_activation_bytes(dims, tp)
    else:
        modules = recompute_modules if recompute == "selective" else None
        stored, working = tokens * layers * lm_kept_bytes(dims, tp, modules), 0.0
    if stage == 0 and train_vision:  # a frozen tower runs without autograd: nothing kept
        v_stored, v_working = _vision_activation_bytes(dims, mb, recompute)
        stored += v_stored
        working += v_working
    in_flight = max(min(pp - stage, mb.count), 1) * (interleave_factor(pp, vpp) if stage == 0 else 1.0)
    return in_flight * stored + working


@dataclass
class TrainerMemory:
    """Bytes on one GPU of one pipeline stage, by part."""

    stage: int
    params: int
    weights: float
    """bf16 parameters."""
    grads: float
    """fp32 main-gradient buffer (grad_reduce_in_fp32)."""
    optimizer: float
    """fp32 master weights + Adam m and v, sharded over DP (distributed optimizer)."""
    activations: float
    logits: float
    """Fused loss / log-prob workspace (last stage)."""
    reference: float
    """Reference-policy weights while swapped in for the reference forward (0 on GPU while idle: kept on CPU)."""
    overhead: float = FRAMEWORK_OVERHEAD
    host_optimizer: float = 0.0
    """Adam state the HybridDeviceOptimizer keeps on the host (optim.cpu_offload; not in ``optimizer``)."""
    vision: float = 0.0
    """Of weights + grads + optimizer above: the vision tower's (stage 0; replicated on every TP rank,
    Adam sharded over DP x CP like the rest)."""

    @property
    def resident(self) -> float:
        """What stays allocated between phases (weights, grads, optimizer)."""
        return self.weights + self.grads + self.optimizer

    @property
    def train_peak(self) -> float:
        return self.resident + self.activations + self.logits + self.overhead

    @property
    def reference_peak(self) -> float:
        """During the no-grad reference forward, with the reference weights beside the policy's."""
        return self.resident + self.reference + self.overhead

    @property
    def peak(self) -> float:
        return max(self.train_peak, self.reference_peak)


def trainer_memory(dims: dict[str, Any], tp: int, pp: int, dp: int, mb: MicroBatchShape,
                   recompute: Optional[str], train_vision: bool = True, use_reference: bool = True,
                   distributed_optimizer: bool = True, vision: Optional[int] = None, cp: int = 1, vpp: int = 1,
                   recompute_modules: Optional[Iterable[str]] = None, host_optimizer_fraction: float = 0.0
                   ) -> TrainerMemory:
    """The stage with the highest peak of a TP x PP x DP (x CP) trainer. The distributed optimizer shards
    over DP x CP; ``host_optimizer_fraction`` of it lives on the host (optim.cpu_offload)."""
    vision = vision_params(dims) if vision is None else vision
    out = []
    for s in stage_params(dims, tp, pp, vision):
        trained = s.params - (vision if s.stage == 0 and not train_vision else 0)
        b = StageMemory(s.stage, trained).bytes(dp * cp, distributed_optimizer)
        own_vision = vision if s.stage == 0 else 0
        vis_trained = own_vision if train_vision else 0
        out.append(TrainerMemory(
            stage=s.stage, params=s.params, weights=2 * s.params, grads=b["grads"],
            optimizer=b["optimizer"] * (1 - host_optimizer_fraction),
            activations=activation_bytes(dims, tp, pp, s.stage, mb, recompute, train_vision, cp, vpp,
                                         recompute_modules),
            logits=LOGITS_WORKSPACE if s.stage == pp - 1 else 0.0,
            reference=2 * s.params if use_reference else 0.0,
            host_optimizer=b["optimizer"] * host_optimizer_fraction,
            vision=2 * own_vision + (4 + 12 * (1 - host_optimizer_fraction) / (dp * cp if distributed_optimizer
                                                                              else 1)) * vis_trained))
    return max(out, key=lambda m: m.peak)


# Example layouts (GPUs = tp * pp * dp), one per size.
EXAMPLE_LAYOUTS = {
    "qwen2.5-vl-3b": (2, 1, 4),
    "qwen2.5-vl-7b": (4, 1, 2),
    "qwen2.5-vl-32b": (8, 2, 2),
    "qwen2.5-vl-72b": (8, 4, 2),
}


def table(layouts: Union[dict[str, tuple[int, int, int]], Iterable[tuple[str, tuple[int, int, int]]]]
          = EXAMPLE_LAYOUTS) -> str:
    """Markdown table of the worst (largest) stage per layout, in GiB.

    The reference policy (``algorithm.use_kl_loss``) is frozen bf16 weights of the same shards: kept
    in CPU memory and swapped in only for the reference forward, so it costs no GPU memory while
    idle; the last column gives its size (the CPU copy, and the GPU bytes during that forward).
    """
    from megatron_mmr1.config import ModelConfig
    from megatron_mmr1.models.presets import resolve_model_dims

    rows = ["| model | TP x PP x DP (GPUs) | params/GPU | bf16 weights | fp32 grads | Adam (dist. opt.) | total | "
            "reference weights (GPU idle / CPU, swapped in) |",
            "|---|---|---|---|---|---|---|---|"]
    items = layouts.items() if isinstance(layouts, dict) else layouts
    for preset, (tp, pp, dp) in items:
        dims = resolve_model_dims(ModelConfig(preset=preset))
        worst = max(stage_params(dims, tp, pp), key=lambda s: s.params)
        b = worst.bytes(dp)
        rows.append(f"| {preset} | {tp} x {pp} x {dp} ({tp * pp * dp}) | {worst.params / 1e9:.2f} B | "
                    f"{b['params'] / GIB:.1f} GiB | {b['grads'] / GIB:.1f} GiB | {b['optimizer'] / GIB:.1f} GiB | "
                    f"{b['total'] / GIB:.1f} GiB | 0 / {b['params'] / GIB:.1f} GiB |")
    return "\n".join(rows)
