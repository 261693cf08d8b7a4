"""Qwen2.5-VL size presets (values from the Hugging Face ``config.json`` of each *-Instruct model).

Resolution order for a run: preset < ``model.hf_path``/config.json < explicit ``model.*`` fields.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

_VISION_BASE = dict(
    vision_depth=32,
    vision_hidden_size=1280,
    vision_num_heads=16,
    vision_intermediate_size=3420,
    patch_size=14,
    spatial_merge_size=2,
    temporal_patch_size=2,
    window_size=112,
    fullatt_block_indexes=[7, 15, 23, 31],
    in_chans=3,
)

_LM_BASE = dict(
    rope_theta=1000000.0,
    mrope_section=[16, 24, 24],
    rms_norm_eps=1e-6,
    max_position_embeddings=128000,
)

PRESETS: dict[str, dict[str, Any]] = {
    # Tiny random model for CPU tests and the demo: same architecture, toy sizes.
    "tiny": dict(
        _LM_BASE,
        num_layers=4, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
        vocab_size=2048, tie_word_embeddings=False, mrope_section=[2, 3, 3], max_position_embeddings=4096,
        vision=dict(_VISION_BASE, vision_depth=2, vision_hidden_size=32, vision_num_heads=2,
                    vision_intermediate_size=64, fullatt_block_indexes=[1]),
    ),
    "qwen2.5-vl-3b": dict(
        _LM_BASE,
        num_layers=36, hidden_size=2048, ffn_hidden_size=11008, num_attention_heads=16, num_query_groups=2,
        vocab_size=151936, tie_word_embeddings=True, vision=dict(_VISION_BASE),
    ),
    "qwen2.5-vl-7b": dict(
        _LM_BASE,
        num_layers=28, hidden_size=3584, ffn_hidden_size=18944, num_attention_heads=28, num_query_groups=4,
        vocab_size=152064, tie_word_embeddings=False, vision=dict(_VISION_BASE),
    ),
    "qwen2.5-vl-32b": dict(
        _LM_BASE,
        num_layers=64, hidden_size=5120, ffn_hidden_size=27648, num_attention_heads=40, num_query_groups=8,
        vocab_size=152064, tie_word_embeddings=False, vision=dict(_VISION_BASE, vision_intermediate_size=3456),
    ),
    "qwen2.5-vl-72b": dict(
        _LM_BASE,
        num_layers=80, hidden_size=8192, ffn_hidden_size=29568, num_attention_heads=64, num_query_groups=8,
        vocab_size=152064, tie_word_embeddings=False, vision=dict(_VISION_BASE, vision_intermediate_size=3456),
    ),
}

# HF config.json key -> our name (text part; HF nests it under text_config in newer layouts).
_HF_TEXT_KEYS = {
    "num_hidden_layers": "num_layers",
    "hidden_size": "hidden_size",
    "intermediate_size": "ffn_hidden_size",
    "num_attention_heads": "num_attention_heads",
    "num_key_value_heads": "num_query_groups",
    "vocab_size": "vocab_size",
    "rope_theta": "rope_theta",
    "rms_norm_eps": "rms_norm_eps",
    "max_position_embeddings": "max_position_embeddings",
    "tie_word_embeddings": "tie_word_embeddings",
}

_OVERRIDABLE = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
                "vocab_size")


def read_hf_config(hf_path: str | Path) -> dict[str, Any]:
    """Model dims from a Hugging Face Qwen2.5-VL ``config.json`` (either layout)."""
    path = Path(hf_path) / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json in the Hugging Face checkpoint directory {hf_path}")
    raw = json.loads(path.read_text())
    archs = raw.get("architectures") or []
    model_type = raw.get("model_type")
    if model_type not in ("qwen2_5_vl",) and "Qwen2_5_VLForConditionalGeneration" not in archs:
        raise ValueError(f"{path}: model_type={model_type!r} architectures={archs}: not a Qwen2.5-VL checkpoint")
    text = dict(raw)
    text.update(raw.get("text_config") or {})
    out: dict[str, Any] = {ours: text[hf] for hf, ours in _HF_TEXT_KEYS.items() if hf in text}
    rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
    if "mrope_section" in rope:
        out["mrope_section"] = list(rope["mrope_section"])
    if "rope_theta" in rope and "rope_theta" not in out:
        out["rope_theta"] = rope["rope_theta"]
    out["hf_config"] = raw
    return out


def resolve_model_dims(model_cfg: Any) -> dict[str, Any]:
    """Merge preset, checkpoint config.json and explicit fields of a :class:`ModelConfig`."""
    from megatron_mmr1.config import ConfigError

    if model_cfg.preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset '{model_cfg.preset}' (known: {', '.join(PRESETS)})")
    dims = dict(PRESETS[model_cfg.preset])
    if model_cfg.hf_path:
        try:
            dims.update(read_hf_config(model_cfg.hf_path))
        except (FileNotFoundError, ValueError) as e:
            raise ConfigError(f"model.hf_path: {e}") from None
    for name in _OVERRIDABLE:
        value = getattr(model_cfg, name)
        if value is not None:
            dims[name] = value
    return dims
