"""Qwen2.5-VL policy on megatron-core: presets, model chunks, HF mapping and checkpoints (docs/model.md).

Exports are lazy (like ``megatron_mmr1.data``): loading a run config reads ``models.presets`` and must
not import torch and megatron.
"""

from typing import Any

from megatron_mmr1.utils.lazy import lazy_exports


def unwrap(chunk: Any) -> Any:
    """DDP / Float16Module wrappers -> the Qwen25VLModel (or GPTModel) inside."""
    while hasattr(chunk, "module") and not hasattr(chunk, "language_model"):
        chunk = chunk.module
    return chunk


def chunks_device(chunks: list) -> Any:
    """The device of the chunks' params (CPU for a rank that holds none)."""
    import torch

    for c in chunks:
        for p in c.parameters():
            return p.device
    return torch.device("cpu")


_all, __getattr__ = lazy_exports(__name__, {
    "checkpoint": ["CheckpointError", "HFCheckpoint", "load_dist", "load_hf_weights", "save_dist"],
    "hf_adapter": ["iter_hf_state"],
    "qwen2_5_vl": ["Qwen25VLModel", "build_model"],
    "rope_index": ["get_rope_index"],
})
__all__ = [*_all, "chunks_device", "unwrap"]
