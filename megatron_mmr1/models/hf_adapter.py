"""State-dict adapter: our parameter names and TP shards <-> Hugging Face Qwen2.5-VL tensors.

One table (:func:`param_mappings`) says, for every parameter of a model chunk, which HF tensors it
comes from and how: a plain copy (optionally split over TP along one dim), the fused QKV of megatron
(per query group: the group's q heads, then its k head, then its v head), or the fused SwiGLU fc1
(gate rows, then up rows, per TP rank). Loading, the checkpoint converter and the rollout weight
sync all go through it, so they cannot disagree.

HF names are kept in the original hub layout (``model.layers.*``, ``visual.*``, ``lm_head.weight``),
which transformers 5 also writes; :func:`to_layout` / :func:`to_hub` translate to and from the
transformers-4.5x layout (``model.language_model.*``, ``model.visual.*``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Literal, Optional

import torch
from torch import Tensor

from megatron_mmr1.models import unwrap
from megatron_mmr1.utils.hf_names import Layout, detect_layout, to_hub, to_layout  # noqa: F401 (re-exported)

Kind = Literal["copy", "qkv", "fc1"]

# our layer-local suffix -> (HF suffix(es) under model.layers.{i}., kind, tp split dim)
_LAYER_MAP: dict[str, tuple[tuple[str, ...], Kind, Optional[int]]] = {
    "input_layernorm.weight": (("input_layernorm.weight",), "copy", None),
    "self_attention.linear_qkv.layer_norm_weight": (("input_layernorm.weight",), "copy", None),  # TE spec
    "self_attention.linear_qkv.weight": (("self_attn.q_proj.weight", "self_attn.k_proj.weight",
                                          "self_attn.v_proj.weight"), "qkv", 0),
    "self_attention.linear_qkv.bias": (("self_attn.q_proj.bias", "self_attn.k_proj.bias",
                                        "self_attn.v_proj.bias"), "qkv", 0),
    "self_attention.linear_proj.weight": (("self_attn.o_proj.weight",), "copy", 1),
    "pre_mlp_layernorm.weight": (("post_attention_layernorm.weight",), "copy", None),
    "mlp.linear_fc1.layer_norm_weight": (("post_attention_layernorm.weight",), "copy", None),  # TE spec
    "mlp.linear_fc1.weight": (("mlp.gate_proj.weight", "mlp.up_proj.weight"), "fc1", 0),
    "mlp.linear_fc2.weight": (("mlp.down_proj.weight",), "copy", 1),
}
_LAYER_RE = re.compile(r"^language_model\.decoder\.layers\.(\d+)\.(.+)$")


@dataclass(frozen=True)
class Mapping:
    param: str  # our parameter name in the chunk (layer index local to the stage)
    hf: tuple[str, ...]  # HF tensor names, hub layout
    kind: Kind
    tp_dim: Optional[int]  # None: replicated over TP


@dataclass(frozen=True)
class QKVShape:
    heads: int
    groups: int
    head_dim: int

    @property
    def q_per_group(self) -> int:
        return self.heads // self.groups


def qkv_shape(chunk) -> QKVShape:
    cfg = chunk.language_model.config
    return QKVShape(cfg.num_attention_heads, cfg.num_query_groups, cfg.kv_channels)


def param_mappings(chunk) -> list[Mapping]:
    """Mapping of every parameter of ``chunk`` (a :class:`Qwen25VLModel`); unknown names are errors."""
    layers = chunk.language_model.decoder.layers
    tied = chunk.language_model.share_embeddings_and_output_weights
    out = []
    for name, _ in chunk.named_parameters():
        if name.startswith("vision_model."):
            out.append(Mapping(name, ("visual." + name[len("vision_model."):],), "copy", None))
        elif name == "language_model.embedding.word_embeddings.weight":
            out.append(Mapping(name, ("model.embed_tokens.weight",), "copy", 0))
        elif name == "language_model.output_layer.weight":
            out.append(Mapping(name, ("model.embed_tokens.weight" if tied else "lm_head.weight",), "copy", 0))
        elif name == "language_model.decoder.final_layernorm.weight":
            out.append(Mapping(name, ("model.norm.weight",), "copy", None))
        elif m := _LAYER_RE.match(name):
            local, suffix = int(m.group(1)), m.group(2)
            if suffix not in _LAYER_MAP:
                raise KeyError(f"no Hugging Face mapping for parameter {name}")
            hf_suffixes, kind, tp_dim = _LAYER_MAP[suffix]
            layer = layers[local].layer_number - 1  # global index (layer_number is 1-based, global)
            out.append(Mapping(name, tuple(f"model.layers.{layer}.{s}" for s in hf_suffixes), kind, tp_dim))
        else:
            raise KeyError(f"no Hugging Face mapping for parameter {name}")
    return out


# ---- HF -> one TP shard ------------------------------------------------------------------------------

Reader = Callable[[str, Optional[int], int, int], Tensor]
"""read(hf_name, dim, start, stop): rows/cols [start, stop) along dim of a HF tensor (dim None: all)."""


def shard_from_hf(m: Mapping, read: Reader, shape: tuple[int, ...], tp: int, tp_rank: int,
                  qkv: Optional[QKVShape] = None) -> Tensor:
    """This TP rank's shard of parameter ``m.param`` (local ``shape``), reading only the rows it needs."""
    if m.kind == "copy":
        if m.tp_dim is None:
            return read(m.hf[0], None, 0, 0)
        n = shape[m.tp_dim]
        return read(m.hf[0], m.tp_dim, tp_rank * n, (tp_rank + 1) * n)
    if m.kind == "fc1":
        n = shape[0] // 2  # ffn / tp
        gate = read(m.hf[0], 0, tp_rank * n, (tp_rank + 1) * n)
        up = read(m.hf[1], 0, tp_rank * n, (tp_rank + 1) * n)
        return torch.cat([gate, up], dim=0)  # (2*ffn/tp, h)
    assert qkv is not None
    g_local = qkv.groups // tp
    g0, g1 = tp_rank * g_local, (tp_rank + 1) * g_local
    qn, d = qkv.q_per_group * qkv.head_dim, qkv.head_dim
    rest = tuple(shape[1:])
    q = read(m.hf[0], 0, g0 * qn, g1 * qn).reshape(g_local, qn, *rest)
    k = read(m.hf[1], 0, g0 * d, g1 * d).reshape(g_local, d, *rest)
    v = read(m.hf[2], 0, g0 * d, g1 * d).reshape(g_local, d, *rest)
    return torch.cat([q, k, v], dim=1).reshape(-1, *rest)  # (g_local*(q_per_group+2)*d, ...)


# ---- TP shards -> full -> HF -------------------------------------------------------------------------

def merge_shards(m: Mapping, shards: list[Tensor]) -> Tensor:
    """TP shards (in TP-rank order) -> the TP-independent full tensor (fc1: [gate; up])."""
    if m.tp_dim is None or len(shards) == 1:
        return shards[0]
    if m.kind == "fc1":
        gates, ups = zip(*(s.chunk(2, dim=0) for s in shards))
        return torch.cat([*gates, *ups], dim=0)
    return torch.cat(shards, dim=m.tp_dim)  # qkv: query groups are contiguous per rank


def hf_from_full(m: Mapping, full: Tensor, qkv: Optional[QKVShape] = None) -> list[tuple[str, Tensor]]:
    """HF (name, tensor) pairs from a full (TP=1 layout) parameter."""
    if m.kind == "copy":
        return [(m.hf[0], full)]
    if m.kind == "fc1":
        gate, up = full.chunk(2, dim=0)
        return [(m.hf[0], gate), (m.hf[1], up)]
    assert qkv is not None
    qn, d = qkv.q_per_group * qkv.head_dim, qkv.head_dim
    rest = tuple(full.shape[1:])
    grouped = full.reshape(qkv.groups, qn + 2 * d, *rest)  # (groups, q|k|v rows, ...)
    q, k, v = grouped.split([qn, d, d], dim=1)
    return [(m.hf[0], q.reshape(-1, *rest)), (m.hf[1], k.reshape(-1, *rest)), (m.hf[2], v.reshape(-1, *rest))]


def iter_hf_state(model_chunks: list, layout: Layout = "hub", dtype: Optional[torch.dtype] = None,
                  tp_group: Any = None) -> Iterator[tuple[str, Tensor]]:
    """(hf_name, full tensor) for every weight held by this rank's pipeline stage(s), gathered over TP.

    Every rank of a TP group must iterate (the gathers are collective); each gets the full tensors,
    so the caller picks who sends (e.g. TP rank 0 of each stage). With tied embeddings the output
    layer is skipped (HF ties lm_head to embed_tokens). ``dtype`` casts the yielded tensors.
    """
    import torch.distributed as dist
    from megatron.core import parallel_state as mpu

    for chunk in model_chunks:
        chunk = unwrap(chunk)
        params = dict(chunk.named_parameters())
        qkv = qkv_shape(chunk)
        tied = chunk.language_model.share_embeddings_and_output_weights
        group = tp_group if tp_group is not None else mpu.get_tensor_model_parallel_group()
        tp = dist.get_world_size(group) if dist.is_initialized() else 1
        for m in param_mappings(chunk):
            if tied and m.param == "language_model.output_layer.weight":
                continue
            local = params[m.param].detach()
            if m.tp_dim is None or tp == 1:
                shards = [local]
            else:
                shards = [torch.empty_like(local) for _ in range(tp)]
                dist.all_gather(shards, local.contiguous(), group=group)
            full = merge_shards(m, shards)
            for name, tensor in hf_from_full(m, full, qkv):
                if dtype is not None:
                    tensor = tensor.to(dtype)
                yield to_layout(name, layout), tensor


