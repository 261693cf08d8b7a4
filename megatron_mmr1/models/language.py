"""The Qwen2.5 language model of Qwen2.5-VL as a megatron-core ``GPTModel``.

RMSNorm, SwiGLU, GQA with QKV bias, M-RoPE (3 sections), untied or tied embeddings per size.
Transformer Engine spec on GPU when installed, megatron's local spec otherwise (CPU), with its core
attention through torch SDPA (``attention.py``) unless ``model.attention_backend=local``.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.nn.functional as F

from megatron_mmr1.config import ModelConfig, ParallelConfig
from megatron_mmr1.models.presets import resolve_model_dims


def te_available() -> bool:
    """TE raises ImportError without the package and RuntimeError without cuDNN: guard both."""
    if not torch.cuda.is_available():
        return False
    try:
        import transformer_engine.pytorch  # noqa: F401
    except (ImportError, RuntimeError):
        return False
    return True


def resolve_dtype(model_cfg: ModelConfig) -> torch.dtype:
    if model_cfg.params_dtype == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return {"fp32": torch.float32, "bf16": torch.bfloat16}[model_cfg.params_dtype]


def build_transformer_config(model_cfg: ModelConfig, parallel_cfg: ParallelConfig,
                             dims: Optional[dict[str, Any]] = None, **overrides: Any):
    """megatron ``TransformerConfig`` for the language model of ``model_cfg`` (``dims``: already resolved)."""
    from megatron.core.transformer import TransformerConfig

    dims = dims or resolve_model_dims(model_cfg)
    dtype = resolve_dtype(model_cfg)
    on_gpu = torch.cuda.is_available()
    te = uses_te(model_cfg)
    kwargs: dict[str, Any] = dict(
        num_layers=dims["num_layers"],
        hidden_size=dims["hidden_size"],
        ffn_hidden_size=dims["ffn_hidden_size"],
        num_attention_heads=dims["num_attention_heads"],
        num_query_groups=dims["num_query_groups"],
        kv_channels=dims["hidden_size"] // dims["num_attention_heads"],
        normalization="RMSNorm",
        layernorm_epsilon=dims["rms_norm_eps"],
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=True,
        mrope_section=list(dims["mrope_section"]),
        attention_dropout=0.0,
        hidden_dropout=0.0,
        tensor_model_parallel_size=parallel_cfg.tp,
        pipeline_model_parallel_size=parallel_cfg.pp,
        virtual_pipeline_model_parallel_size=parallel_cfg.vpp if parallel_cfg.vpp > 1 else None,
        # Interleaving as Megatron-LM runs it: p2p overlapped, not batched. Batched at pp=2, the shape exchange of
        # variable_seq_lengths posts both directions to one peer in one batch and swaps them (wrong activations).
        overlap_p2p_comm=parallel_cfg.vpp > 1,
        batch_p2p_comm=parallel_cfg.vpp == 1,
        # megatron's torch-norm fallback (local spec, no TE/apex) cannot do sequence parallelism.
        sequence_parallel=uses_sequence_parallel(model_cfg, parallel_cfg),
        params_dtype=dtype,
        pipeline_dtype=dtype,
        bf16=dtype == torch.bfloat16,
        use_cpu_initialization=not on_gpu,
        # Fusions need CUDA kernels (apex/TE); the torch paths compute the same thing. Under the TE spec:
        # the fused SwiGLU, and weight gradients accumulated straight into DDP's fp32 main_grad.
        bias_activation_fusion=te,
        bias_dropout_fusion=False,
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        apply_rope_fusion=False,
        gradient_accumulation_fusion=te and fused_wgrad_available(),
        recompute_granularity=model_cfg.recompute,
        recompute_modules=None if model_cfg.recompute_modules is None else list(model_cfg.recompute_modules),
        recompute_method="uniform" if model_cfg.recompute == "full" else None,
        recompute_num_layers=1 if model_cfg.recompute == "full" else None,
    )
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def uses_te(model_cfg: ModelConfig) -> bool:
    return model_cfg.attention_backend == "te" or (model_cfg.attention_backend == "auto" and te_available())


def uses_sequence_parallel(model_cfg: ModelConfig, parallel_cfg: ParallelConfig) -> bool:
    """Whether megatron runs sequence parallel: asked for, tp > 1, and the TE spec (megatron's torch-norm
    fallback of the local spec cannot do it). Rows must then be padded to a multiple of tp."""
    return parallel_cfg.sequence_parallel and parallel_cfg.tp > 1 and uses_te(model_cfg)


def fused_wgrad_available() -> bool:
    """apex's ``fused_weight_gradient_mlp_cuda``: megatron's own ColumnParallelLinear (the output layer,
    under the TE spec too) refuses ``gradient_accumulation_fusion`` without it."""
    try:
        import fused_weight_gradient_mlp_cuda  # noqa: F401
    except ImportError:
        return False
    return True


def has_varlen_attention(model_cfg: ModelConfig) -> bool:
    """Packed rows go in as THD ``PackedSeqParams`` (TE's varlen kernels, or our SDPA core attention);
    megatron's own local attention needs a block-diagonal mask instead."""
    return model_cfg.attention_backend != "local"


def layer_spec(model_cfg: ModelConfig):
    from megatron.core.models.gpt import gpt_layer_specs

    if uses_te(model_cfg):
        return gpt_layer_specs.get_gpt_layer_with_transformer_engine_spec()
    spec = gpt_layer_specs.get_gpt_layer_local_spec(normalization="RMSNorm")
    if has_varlen_attention(model_cfg):  # "sdpa", or "auto" without TE: ours takes THD packed rows
        from megatron_mmr1.models.attention import SDPADotProductAttention

        spec.submodules.self_attention.submodules.core_attention = SDPADotProductAttention
    return spec


def build_language_model(
    model_cfg: ModelConfig,
    parallel_cfg: ParallelConfig,
    pre_process: Optional[bool] = None,
    post_process: Optional[bool] = None,
    dims: Optional[dict[str, Any]] = None,
    vp_stage: Optional[int] = None,
    **config_overrides: Any,
):
    """One pipeline stage of the language model (megatron decides the stage from parallel_state);
    ``dims``: the model dims when the caller has resolved them already; ``vp_stage``: the virtual
    pipeline stage of this chunk (``parallel.vpp`` > 1), which picks its layers."""
    from megatron.core import parallel_state as mpu
    from megatron.core.models.gpt import GPTModel

    dims = dims or resolve_model_dims(model_cfg)
    config = build_transformer_config(model_cfg, parallel_cfg, dims, **config_overrides)
    if pre_process is None:
        pre_process = mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=vp_stage)
    if post_process is None:
        post_process = mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=vp_stage)
    return GPTModel(
        config=config,
        transformer_layer_spec=layer_spec(model_cfg),
        vocab_size=dims["vocab_size"],
        max_sequence_length=dims["max_position_embeddings"],
        pre_process=pre_process,
        post_process=post_process,
        share_embeddings_and_output_weights=bool(dims["tie_word_embeddings"]),
        position_embedding_type="mrope",
        rotary_base=int(dims["rope_theta"]),
        vp_stage=vp_stage,
    )
