"""Qwen2.5-VL policy on megatron-core: presets, model chunks, HF mapping and checkpoints (docs/model.md)."""

from megatron_mmr1.models.checkpoint import CheckpointError, HFCheckpoint, load_dist, load_hf_weights, save_dist
from megatron_mmr1.models.hf_adapter import iter_hf_state
from megatron_mmr1.models.qwen2_5_vl import Qwen25VLModel, build_model
from megatron_mmr1.models.rope_index import get_rope_index

__all__ = ["CheckpointError", "HFCheckpoint", "Qwen25VLModel", "build_model", "get_rope_index", "iter_hf_state",
           "load_dist", "load_hf_weights", "save_dist"]
