"""Qwen2.5-VL size presets (values from the Hugging Face ``config.json`` of each *-Instruct model).

Resolution order for a run: preset < special-token ids of ``model.tokenizer_path`` <
``model.hf_path``/config.json < explicit ``model.*`` fields.
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
    tokens_per_second=2,
)

_LM_BASE = dict(
    rope_theta=1000000.0,
    mrope_section=[16, 24, 24],
    rms_norm_eps=1e-6,
    max_position_embeddings=128000,
    # Qwen2.5-VL's special-token ids (its tokenizer's added tokens start at 151643).
    image_token_id=151655,
    video_token_id=151656,
    vision_start_token_id=151652,
    vision_end_token_id=151653,
    bos_token_id=151643,
    eos_token_id=151645,
)

PRESETS: dict[str, dict[str, Any]] = {
    # Tiny random model for CPU tests and the demo: same architecture, toy sizes.
    "tiny": dict(
        _LM_BASE,
        num_layers=4, hidden_size=64, ffn_hidden_size=128, num_attention_heads=4, num_query_groups=2,
        vocab_size=2048, tie_word_embeddings=False, mrope_section=[2, 3, 3], max_position_embeddings=4096,
        # Placeholders (the last 22 ids of the vocab). The tiny tokenizer's ids depend on its training
        # corpus, so a run must set model.tokenizer_path (or hf_path): its ids override these.
        image_token_id=2038, video_token_id=2039, vision_start_token_id=2035, vision_end_token_id=2036,
        bos_token_id=2026, eos_token_id=2028,
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


_HF_TOKEN_KEYS = ("image_token_id", "video_token_id", "vision_start_token_id", "vision_end_token_id",
                  "bos_token_id", "eos_token_id")

# HF vision_config key -> our name (older configs say in_chans, newer in_channels).
_HF_VISION_KEYS = {
    "depth": "vision_depth",
    "hidden_size": "vision_hidden_size",
    "num_heads": "vision_num_heads",
    "intermediate_size": "vision_intermediate_size",
    "patch_size": "patch_size",
    "spatial_merge_size": "spatial_merge_size",
    "temporal_patch_size": "temporal_patch_size",
    "window_size": "window_size",
    "fullatt_block_indexes": "fullatt_block_indexes",
    "in_chans": "in_chans",
    "in_channels": "in_chans",
    "tokens_per_second": "tokens_per_second",
}


def read_hf_config(hf_path: str | Path) -> dict[str, Any]:
    """Model dims from a Hugging Face Qwen2.5-VL ``config.json`` (flat or text_config layout)."""
    root = Path(hf_path)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: Hugging Face checkpoint directory does not exist")
    path = root / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no config.json in the Hugging Face checkpoint directory {hf_path}")
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    archs = raw.get("architectures") or []
    model_type = raw.get("model_type")
    if model_type not in ("qwen2_5_vl",) and "Qwen2_5_VLForConditionalGeneration" not in archs:
        raise ValueError(f"{path}: model_type={model_type!r} architectures={archs}: not a Qwen2.5-VL checkpoint "
                         "(expected model_type 'qwen2_5_vl' / Qwen2_5_VLForConditionalGeneration)")
    text = dict(raw)
    text.update(raw.get("text_config") or {})
    out: dict[str, Any] = {ours: text[hf] for hf, ours in _HF_TEXT_KEYS.items() if hf in text}
    # transformers 5 keeps tie_word_embeddings at the top level; older saves had it in text_config too.
    out["tie_word_embeddings"] = bool(raw.get("tie_word_embeddings") or text.get("tie_word_embeddings"))
    rope = text.get("rope_scaling") or text.get("rope_parameters") or {}
    if "mrope_section" in rope:
        out["mrope_section"] = list(rope["mrope_section"])
    if "rope_theta" in rope and "rope_theta" not in out:
        out["rope_theta"] = rope["rope_theta"]
    for key in _HF_TOKEN_KEYS:
        value = raw.get(key, text.get(key))
        if isinstance(value, list):
            value = value[0]
        if value is not None:
            out[key] = value
    vision_raw = raw.get("vision_config") or {}
    vision = dict(_VISION_BASE)
    vision.update({ours: vision_raw[hf] for hf, ours in _HF_VISION_KEYS.items() if hf in vision_raw})
    out["vision"] = vision
    out["hf_config"] = raw
    return out


def hf_config_dict(dims: dict[str, Any]) -> dict[str, Any]:
    """A Hugging Face Qwen2.5-VL ``config.json`` (original flat layout) for resolved ``dims``.

    Used when no checkpoint config exists (a preset trained from scratch, tests' tiny models).
    """
    v = dims["vision"]
    return {
        "architectures": ["Qwen2_5_VLForConditionalGeneration"],
        "model_type": "qwen2_5_vl",
        "hidden_act": "silu",
        "hidden_size": dims["hidden_size"],
        "intermediate_size": dims["ffn_hidden_size"],
        "num_hidden_layers": dims["num_layers"],
        "num_attention_heads": dims["num_attention_heads"],
        "num_key_value_heads": dims["num_query_groups"],
        "vocab_size": dims["vocab_size"],
        "max_position_embeddings": dims["max_position_embeddings"],
        "rms_norm_eps": dims["rms_norm_eps"],
        "rope_theta": dims["rope_theta"],
        "rope_scaling": {"type": "mrope", "mrope_section": list(dims["mrope_section"])},
        "tie_word_embeddings": bool(dims["tie_word_embeddings"]),
        "attention_dropout": 0.0,
        "use_sliding_window": False,
        **{k: dims[k] for k in _HF_TOKEN_KEYS},
        "vision_config": {
            "depth": v["vision_depth"],
            "hidden_size": v["vision_hidden_size"],
            "num_heads": v["vision_num_heads"],
            "intermediate_size": v["vision_intermediate_size"],
            "out_hidden_size": dims["hidden_size"],
            "hidden_act": "silu",
            "patch_size": v["patch_size"],
            "spatial_merge_size": v["spatial_merge_size"],
            "temporal_patch_size": v["temporal_patch_size"],
            "window_size": v["window_size"],
            "fullatt_block_indexes": list(v["fullatt_block_indexes"]),
            "in_chans": v["in_chans"],
            "tokens_per_second": v["tokens_per_second"],
        },
    }


def _tokenizer_ids(tokenizer_path: str | Path) -> dict[str, int]:
    """Special-token ids from a tokenizer dir's tokenizer.json (no transformers import needed)."""
    path = Path(tokenizer_path) / "tokenizer.json"
    if not path.is_file():
        return {}
    added = {t["content"]: t["id"] for t in json.loads(path.read_text()).get("added_tokens", [])}
    names = {"image_token_id": "<|image_pad|>", "video_token_id": "<|video_pad|>",
             "vision_start_token_id": "<|vision_start|>", "vision_end_token_id": "<|vision_end|>",
             "bos_token_id": "<|endoftext|>", "eos_token_id": "<|im_end|>"}
    return {k: added[v] for k, v in names.items() if v in added}


def resolve_model_dims(model_cfg: Any) -> dict[str, Any]:
    """Merge preset, tokenizer ids, checkpoint config.json and explicit fields of a :class:`ModelConfig`."""
    from megatron_mmr1.config import ConfigError

    if model_cfg.preset not in PRESETS:
        raise ConfigError(f"model.preset: unknown preset '{model_cfg.preset}' (known: {', '.join(PRESETS)})")
    dims = dict(PRESETS[model_cfg.preset])
    dims["vision"] = dict(dims["vision"])
    if getattr(model_cfg, "tokenizer_path", None):
        dims.update(_tokenizer_ids(model_cfg.tokenizer_path))
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
