"""Core attention for megatron's local spec (CPU, or GPU without Transformer Engine) through torch's
``scaled_dot_product_attention``.

megatron's ``DotProductAttention`` materialises the scores with ``baddbmm``, copies them through a masked
fill and an fp32 softmax, and keeps every (b, np, s, s) intermediate for backward: on CPU that is most of
a training step of the tiny policy (profile in docs/training.md). SDPA computes the same softmax(QK^T)V
with fused CPU / CUDA kernels and GQA without repeating K and V. It is a drop-in subclass: same
constructor, same masks (None = causal from the layer's mask type, or megatron's bool mask with
True = masked), same output layout; configurations SDPA cannot express (attention dropout while
training, learnable or off-by-one softmax, sliding windows, query-key layer scaling) fall back to
megatron's own forward.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from megatron.core.transformer.dot_product_attention import DotProductAttention
from megatron.core.transformer.enums import AttnMaskType
from torch import Tensor


class SDPADotProductAttention(DotProductAttention):
    """``DotProductAttention`` with its math in ``F.scaled_dot_product_attention``."""

    def _sdpa_ok(self) -> bool:
        cfg = self.config
        dropout = self.attention_dropout.p if self.training else 0.0
        return (dropout == 0.0 and self.softmax_offset is None and cfg.window_size is None
                and not cfg.apply_query_key_layer_scaling)

    def forward(self, query: Tensor, key: Tensor, value: Tensor, attention_mask: Optional[Tensor],
                attn_mask_type: Optional[AttnMaskType] = None, attention_bias: Optional[Tensor] = None,
                packed_seq_params=None):
        if attention_bias is not None or not self._sdpa_ok():
            return super().forward(query, key, value, attention_mask, attn_mask_type, attention_bias,
                                   packed_seq_params)
        if packed_seq_params is not None:
            return self._forward_thd(query, key, value, packed_seq_params)
        sq, b, np_, hn = query.shape
        # [s, b, heads, hn] -> [b, heads, s, hn]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        mask, causal, dead = None, False, None
        if attention_mask is not None:
            keep = ~attention_mask.bool()  # megatron: True = masked; SDPA: True = attend
            dead = ~keep.any(dim=-1, keepdim=True)  # (b, 1, sq, 1): queries that see no key (left pads)
            if bool(dead.any()):
                mask = keep | dead  # SDPA would give NaN on them; their output is set below
            else:
                mask, dead = keep, None
        elif self.attn_mask_type == AttnMaskType.causal and sq > 1:
            causal = True
        groups = k.shape[1]
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=self.softmax_scale,
                                             enable_gqa=np_ != groups)
        if dead is not None:
            # megatron fills every masked score with -10000, so such a query attends uniformly to all keys
            v_mean = v.mean(dim=2, keepdim=True).repeat_interleave(np_ // groups, dim=1)  # (b, heads, 1, hn)
            ctx = torch.where(dead, v_mean, ctx)
        # [b, heads, s, hn] -> [s, b, heads * hn]
        return ctx.permute(2, 0, 1, 3).reshape(sq, b, np_ * hn)

    def _forward_thd(self, query: Tensor, key: Tensor, value: Tensor, packed_seq_params) -> Tensor:
        """Packed rows (THD, [t, heads, hn]): causal attention inside each sequence of ``cu_seqlens``, one
        SDPA call per sequence, so a packed row costs the sum of its sequences' squares, not its own."""
        if packed_seq_params.qkv_format != "thd":
            raise ValueError(f"packed_seq_params.qkv_format={packed_seq_params.qkv_format!r}: only 'thd' is supported")
        if self.attn_mask_type != AttnMaskType.causal:
            raise ValueError(f"packed sequences need causal attention, this layer has {self.attn_mask_type}")
        cu = packed_seq_params.cu_seqlens_q
        if packed_seq_params.cu_seqlens_q_padded is not None:
            cu = packed_seq_params.cu_seqlens_q_padded
        bounds = cu.tolist()
        if bounds[-1] != query.shape[0]:
            raise ValueError(f"cu_seqlens ends at {bounds[-1]} but the packed row has {query.shape[0]} tokens")
        t, np_, hn = query.shape
        gqa = np_ != key.shape[1]
        outs = []
        for a, b in zip(bounds[:-1], bounds[1:]):
            if b == a:
                continue
            q, k, v = (x[a:b].transpose(0, 1)[None] for x in (query, key, value))  # [1, heads, L, hn]
            o = F.scaled_dot_product_attention(q, k, v, is_causal=b - a > 1, scale=self.softmax_scale, enable_gqa=gqa)
            outs.append(o[0].transpose(0, 1))  # [L, heads, hn]
        return torch.cat(outs).reshape(t, np_ * hn)
