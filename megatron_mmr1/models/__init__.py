"""Qwen2.5-VL policy on megatron-core: presets, model chunks, HF mapping and checkpoints (docs/model.md).

Exports are lazy (like ``megatron_mmr1.data``): loading a run config reads ``models.presets`` and must
not import torch and megatron.
"""

import importlib

_EXPORTS = {
    "checkpoint": ["CheckpointError", "HFCheckpoint", "load_dist", "load_hf_weights", "save_dist"],
    "hf_adapter": ["iter_hf_state"],
    "qwen2_5_vl": ["Qwen25VLModel", "build_model"],
    "rope_index": ["get_rope_index"],
}
_WHERE = {name: mod for mod, names in _EXPORTS.items() for name in names}
__all__ = sorted(_WHERE)


def __getattr__(name: str):
    if name in _WHERE:
        return getattr(importlib.import_module(f"megatron_mmr1.models.{_WHERE[name]}"), name)
    raise AttributeError(f"module 'megatron_mmr1.models' has no attribute {name!r}")
