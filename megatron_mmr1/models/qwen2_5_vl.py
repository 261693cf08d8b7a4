"""Qwen2.5-VL as one megatron model chunk: HF vision tower (first PP stage) + megatron GPTModel.

    chunks = build_model(cfg)                     # one chunk per virtual pipeline stage (parallel.vpp)
    logits = chunks[0](input_ids, None, attention_mask, pixel_values=pv, image_grid_thw=thw)
    hidden = chunks[0](..., return_hidden=True)   # + chunks[0].output_layer_weight() for fused losses

Every stage computes the 3-D M-RoPE positions itself from ``input_ids`` + ``image_grid_thw``
(:func:`get_rope_index`), so only hidden states travel between pipeline stages.
"""

from __future__ import annotations

from typing import Any, Optional, Union

import torch
from torch import Tensor

from megatron_mmr1.config import ModelConfig, ParallelConfig, RunConfig, check_parallel_dims
from megatron_mmr1.models.language import build_language_model, resolve_dtype
from megatron_mmr1.models.presets import resolve_model_dims
from megatron_mmr1.models.rope_index import get_rope_index, get_rope_index_packed
from megatron_mmr1.models.vision import build_vision_model, image_embeddings


def _padding_to_mask(attention_mask: Optional[Tensor]) -> Optional[Tensor]:
    """(b, s) 1/0 padding mask -> megatron's (b, 1, s, s) bool mask (True = masked), or None when the
    causal mask alone is exact (no padding, or padding only on the right of every row)."""
    if attention_mask is None or attention_mask.dim() != 2:
        return attention_mask  # None or an already built (b, 1, s, s) mask
    keep = attention_mask.bool()
    right_padded = bool((keep[:, 1:] <= keep[:, :-1]).all())  # no token after a pad
    if right_padded:
        return None
    s = keep.shape[1]
    causal = torch.ones(s, s, dtype=torch.bool, device=keep.device).triu(1)  # (s, s) True above diagonal
    return causal[None, None] | ~keep[:, None, None, :]  # (b, 1, s, s)


def mark_tensor_parallel_params(module: torch.nn.Module) -> None:
    """megatron 0.16 sets ``tensor_model_parallel`` on a layer's weight only inside its random init, so
    with ``perform_initialization=False`` the TP-sharded weights look like TP duplicates and the grad
    norm (megatron's and ours) counts one shard only. Set the attributes as the init would."""
    from megatron.core.tensor_parallel.layers import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                                      set_tensor_model_parallel_attributes)

    for m in module.modules():
        dim = 0 if isinstance(m, (ColumnParallelLinear, VocabParallelEmbedding)) else \
            1 if isinstance(m, RowParallelLinear) else None
        weight = getattr(m, "weight", None)
        if dim is not None and weight is not None and not getattr(weight, "tensor_model_parallel", False):
            set_tensor_model_parallel_attributes(weight, is_parallel=True, dim=dim, stride=1)


class Qwen25VLModel(torch.nn.Module):
    """One pipeline stage of Qwen2.5-VL. Exposes the attributes megatron's schedules and
    finalize_model_grads look up on a model chunk (set_input_tensor, pre/post_process, tied
    embeddings), so it drops in wherever megatron expects a GPTModel."""

    def __init__(self, model_cfg: ModelConfig, parallel_cfg: ParallelConfig,
                 pre_process: bool, post_process: bool, init_weights: bool = True,
                 dims: Optional[dict[str, Any]] = None, vp_stage: Optional[int] = None):
        super().__init__()
        self.dims = dims or resolve_model_dims(model_cfg)  # resolved once: it may read config.json
        check_parallel_dims(self.dims, parallel_cfg.tp, parallel_cfg.pp)
        self.pre_process, self.post_process = pre_process, post_process
        self.freeze_vision = model_cfg.freeze_vision
        # init_weights=False skips megatron's random init when weights are loaded right after.
        self.language_model = build_language_model(model_cfg, parallel_cfg, pre_process, post_process,
                                                   dims=self.dims, vp_stage=vp_stage,
                                                   perform_initialization=init_weights)
        if not init_weights:
            mark_tensor_parallel_params(self.language_model)
        self.config = self.language_model.config
        self.model_type = self.language_model.model_type
        self.vision_model = None
        if pre_process:
            self.vision_model = build_vision_model(
                self.dims, resolve_dtype(model_cfg), freeze=model_cfg.freeze_vision,
                recompute=model_cfg.recompute is not None)
        self.share_embeddings_and_output_weights = self.language_model.share_embeddings_and_output_weights

    # ---- what megatron's schedules / grad finalisation call on a chunk ----------------------------
    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def shared_embedding_or_output_weight(self) -> Optional[Tensor]:
        return self.language_model.shared_embedding_or_output_weight()

    def sharded_state_dict(self, prefix: str = "", sharded_offsets: tuple = (), metadata: Optional[dict] = None):
        """megatron dist-checkpoint view: the LM's own sharding; the vision tower replicated over TP."""
        from megatron.core import parallel_state as mpu
        from megatron.core.transformer.utils import sharded_state_dict_default

        out = self.language_model.sharded_state_dict(f"{prefix}language_model.", sharded_offsets, metadata)
        if self.vision_model is not None:
            # tp_group explicitly: without it megatron 0.16.1 gives every TP rank replica_id 0 here.
            out.update(sharded_state_dict_default(self.vision_model, f"{prefix}vision_model.", sharded_offsets,
                                                  metadata, tp_group=mpu.get_tensor_model_parallel_group()))
        return out

    def output_layer_weight(self) -> Tensor:
        """Vocab-parallel output weight shard (V/tp, h) of the last stage (the embedding when tied)."""
        if not self.post_process:
            raise RuntimeError("output_layer_weight() exists only on the last pipeline stage")
        lm = self.language_model
        return lm.shared_embedding_or_output_weight() if lm.share_embeddings_and_output_weights else lm.output_layer.weight

    # ---- forward ------------------------------------------------------------------------------------
    def position_ids(self, input_ids: Tensor, image_grid_thw: Optional[Tensor],
                     attention_mask: Optional[Tensor], packed_seq_params: Any = None) -> Tensor:
        """(3, b, s) M-RoPE positions, HF's rule (see rope_index.py); per sequence when packed."""
        args = (self.dims["vision"]["spatial_merge_size"], self.dims["image_token_id"],
                self.dims["vision_start_token_id"])
        if packed_seq_params is not None:
            return get_rope_index_packed(input_ids, image_grid_thw, packed_seq_params.cu_seqlens_q, *args)
        mask2d = attention_mask if attention_mask is not None and attention_mask.dim() == 2 else None
        pos, _ = get_rope_index(input_ids, image_grid_thw, mask2d, *args)
        return pos

    def embed(self, input_ids: Tensor, pixel_values: Optional[Tensor], image_grid_thw: Optional[Tensor]) -> Tensor:
        """Token embeddings with image features scattered into the <|image_pad|> positions: (s, b, h),
        split over TP ranks along s when sequence parallel is on."""
        from megatron.core import tensor_parallel

        lm = self.language_model
        sp = self.config.sequence_parallel
        emb = lm.embedding.word_embeddings(input_ids)  # (b, s, h), or (s/tp, b, h) reduce-scattered with SP
        if sp:
            # Full sequence for the scatter; backward splits (tensor_parallel_output_grad=False).
            emb = tensor_parallel.gather_from_sequence_parallel_region(emb, tensor_parallel_output_grad=False)
        else:
            emb = emb.transpose(0, 1)  # (s, b, h)
        if pixel_values is not None:
            if image_grid_thw is None:
                raise ValueError("pixel_values given without image_grid_thw")
            feats = image_embeddings(self.vision_model, pixel_values, image_grid_thw).to(emb.dtype)  # (n, h)
            mask = input_ids == self.dims["image_token_id"]  # (b, s)
            n_tokens = int(mask.sum())
            if n_tokens != feats.shape[0]:
                raise ValueError(f"{n_tokens} <|image_pad|> tokens (id {self.dims['image_token_id']}) in input_ids but "
                                 f"the vision tower produced {feats.shape[0]} image features from image_grid_thw")
            # HF fills image tokens in (b, s) order; emb is (s, b, h): go through (b, s) to keep that order.
            emb = emb.transpose(0, 1).masked_scatter(mask[..., None], feats).transpose(0, 1)
        elif self.vision_model is not None and self.training and not self.freeze_vision:
            # Text-only micro-batch: touch the vision tower so DDP sees a gradient (zeros) for each param.
            emb = emb + 0.0 * sum(p.sum() for p in self.vision_model.parameters() if p.requires_grad)
        emb = emb.contiguous()  # (s, b, h); strides propagate to the stage output sent by p2p
        if lm.embedding.config.fp32_residual_connection:
            emb = emb.float()
        if sp:
            emb = tensor_parallel.scatter_to_sequence_parallel_region(emb)
        return emb

    def forward(
        self,
        input_ids: Tensor,
        position_ids: Optional[Tensor] = None,
        attention_mask: Optional[Tensor] = None,
        pixel_values: Optional[Tensor] = None,
        image_grid_thw: Optional[Tensor] = None,
        labels: Optional[Tensor] = None,
        return_hidden: bool = False,
        runtime_gather_output: Optional[bool] = None,
        packed_seq_params: Any = None,
    ) -> Tensor:
        """Last stage: vocab-parallel logits (b, s, V/tp) (full V with runtime_gather_output=True), per-token
        loss (b, s) when ``labels`` are given, or final-norm hidden states (b, s, h) with
        ``return_hidden``. Other stages: hidden states (s, b, h) for the next stage.

        ``return_hidden`` contract: the hidden states are the same on every TP rank and the consumer
        (``hidden @ output_layer_weight().T`` per vocab shard) must all-reduce their gradient over the TP
        group, as ``mmr1_kernels.fused_grpo_loss(reduce_grad_hidden=True)`` does.

        ``attention_mask``: None (causal), a (b, s) 1/0 padding mask, or megatron's (b, 1, s, s) bool mask.
        ``position_ids``: (3, b, s); None computes them from ``input_ids`` and ``image_grid_thw``.
        ``packed_seq_params``: megatron ``PackedSeqParams`` (qkv_format "thd", b = 1) for packed rows;
        positions restart per sequence. Needs a varlen attention backend (TE, or the default SDPA one).
        """
        if position_ids is None:
            position_ids = self.position_ids(input_ids, image_grid_thw, attention_mask, packed_seq_params)
        decoder_input = self.embed(input_ids, pixel_values, image_grid_thw) if self.pre_process else None
        mask = _padding_to_mask(attention_mask)
        lm = self.language_model
        if not (return_hidden and self.post_process):
            return lm(input_ids, position_ids, mask, decoder_input=decoder_input, labels=labels,
                      runtime_gather_output=runtime_gather_output, packed_seq_params=packed_seq_params)
        # GPTModel returns the final-norm hidden states when post_process is off; the decoder keeps its
        # final layernorm (decoder.post_process), so flipping the flag for this call skips only the head.
        lm.post_process = False
        try:
            hidden = lm(input_ids, position_ids, mask, decoder_input=decoder_input,
                        packed_seq_params=packed_seq_params)  # (s[/tp], b, h)
        finally:
            lm.post_process = True
        if self.config.sequence_parallel:
            from megatron.core import tensor_parallel

            # Backward only splits: the consumer already sums the hidden-state gradient over TP.
            hidden = tensor_parallel.gather_from_sequence_parallel_region(hidden, tensor_parallel_output_grad=False)
        return hidden.transpose(0, 1)  # (b, s, h)


def _split_cfg(cfg: Union[RunConfig, tuple[ModelConfig, ParallelConfig]]) -> tuple[ModelConfig, ParallelConfig]:
    if isinstance(cfg, RunConfig):
        return cfg.model, cfg.parallel
    model_cfg, parallel_cfg = cfg
    return model_cfg, parallel_cfg


def build_model(cfg: Union[RunConfig, tuple[ModelConfig, ParallelConfig]], load_hf: bool = True,
                init_weights: bool = True) -> list[Qwen25VLModel]:
    """Model chunks of this rank, megatron style: one per virtual pipeline stage (``parallel.vpp``; chunk
    v of pipeline rank r holds the layers of global stage v * pp + r, the vision tower sits in chunk 0
    of rank 0), on the GPU when there is one. With ``model.hf_path`` set and ``load_hf``, the HF weights
    are loaded for this rank's TP/PP shard straight from the safetensors files."""
    from megatron.core import parallel_state as mpu

    model_cfg, parallel_cfg = _split_cfg(cfg)
    load = bool(model_cfg.hf_path) and load_hf
    dims = resolve_model_dims(model_cfg)
    vpp = parallel_cfg.vpp if parallel_cfg.vpp > 1 else None
    chunks = []
    for v in range(vpp or 1):
        stage = v if vpp else None
        model = Qwen25VLModel(model_cfg, parallel_cfg, dims=dims, vp_stage=stage,
                              pre_process=mpu.is_pipeline_first_stage(ignore_virtual=False, vp_stage=stage),
                              post_process=mpu.is_pipeline_last_stage(ignore_virtual=False, vp_stage=stage),
                              init_weights=init_weights and not load)
        if torch.cuda.is_available():
            model.cuda(torch.cuda.current_device())
        chunks.append(model)
    if load:
        from megatron_mmr1.models.checkpoint import load_hf_weights

        load_hf_weights(chunks, model_cfg.hf_path)
    return chunks
