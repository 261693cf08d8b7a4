"""A random Qwen2.5-VL checkpoint of the ``tiny`` preset, in Hugging Face format.

No model hub here: the demo and the tests make their policy locally, with the tiny tokenizer's special
token ids, so that the same loading code (converter, stand-in rollout server, trainer) that takes a real
Qwen2.5-VL directory takes this one.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Optional

import torch

from megatron_mmr1.config import ModelConfig
from megatron_mmr1.models.presets import hf_config_dict, resolve_model_dims


def make_tiny_hf_checkpoint(
    out_dir: str | Path, tokenizer_dir: Optional[str | Path] = None, seed: int = 0, logit_scale: float = 1.0, *,
    tied: bool = False, dtype: torch.dtype = torch.float32, randomize_norms: bool = False,
    max_shard_size: Optional[str] = None, **dims_override: Any,
) -> Path:
    """Save ``Qwen2_5_VLForConditionalGeneration`` (tiny preset dims, random weights), with the tokenizer
    of ``tokenizer_dir`` (its special-token ids become the model's) when given.

    ``logit_scale`` > 1 sharpens the output distribution, so greedy decoding depends visibly on the weights.
    ``randomize_norms``: HF initialises norms to 1 and biases to 0; random values test a weight mapping.
    ``max_shard_size`` (e.g. "200KB"): several shards + an index, like real checkpoints.
    """
    from transformers import AutoTokenizer, Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tok = str(tokenizer_dir) if tokenizer_dir is not None else None
    dims = resolve_model_dims(ModelConfig(preset="tiny", tokenizer_path=tok))
    dims["tie_word_embeddings"] = tied
    dims.update(dims_override)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig(**hf_config_dict(dims))).to(dtype).eval()
    with torch.no_grad():
        if randomize_norms:
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(torch.randn_like(p) * 0.1)
        if logit_scale != 1.0:
            model.lm_head.weight.mul_(logit_scale)
    out_dir = Path(out_dir)
    kwargs = {"max_shard_size": max_shard_size} if max_shard_size else {}
    model.save_pretrained(str(out_dir), **kwargs)
    if tok is not None:
        from megatron_mmr1.models.hf_processor import save_processor

        AutoTokenizer.from_pretrained(tok).save_pretrained(str(out_dir))
        save_processor(out_dir)  # AutoProcessor(out_dir, trust_remote_code=True) loads it, without torchvision
    return out_dir


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Write a random tiny Qwen2.5-VL checkpoint (HF format).")
    parser.add_argument("--out", required=True, help="output directory")
    parser.add_argument("--tokenizer", required=True, help="tokenizer directory (HF format)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--logit-scale", type=float, default=1.0)
    args = parser.parse_args(argv)
    out = make_tiny_hf_checkpoint(args.out, args.tokenizer, args.seed, args.logit_scale)
    print(f"tiny Qwen2.5-VL checkpoint: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
