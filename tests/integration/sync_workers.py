"""Rank function for the trainer -> rollout-server integration test (module level for spawn)."""

from __future__ import annotations

import requests
import torch
import torch.distributed as dist

PROMPT = "<|im_start|>user\nHow many sides does a hexagon have?<|im_end|>\n<|im_start|>assistant\n"


def sync_then_compare_logprobs(ckpt: str, tokenizer_dir: str, url: str, max_new_tokens: int = 12):
    """TP=2 megatron policy loaded from ``ckpt``: push its weights to the server through SGLang's
    distributed update, sample from the server with log-probs, and recompute those log-probs with
    the fused kernel from the megatron model's hidden states. Returns (max |diff|, n tokens, names sent)."""
    from megatron.core import parallel_state as mpu

    from megatron_mmr1 import parallel
    from megatron_mmr1.config import ModelConfig, ParallelConfig
    from megatron_mmr1.models import iter_hf_state
    from megatron_mmr1.models.qwen2_5_vl import build_model
    from megatron_mmr1.rollout.weight_sync import DistributedWeightSender
    from mmr1_kernels import fused_logprobs

    pcfg = ParallelConfig(tp=2)
    info = parallel.initialize(pcfg)
    (model,) = build_model((ModelConfig(preset="tiny", hf_path=ckpt, tokenizer_path=tokenizer_dir), pcfg))
    model.eval()

    named = list(iter_hf_state([model]))  # collective over TP: every rank iterates
    payload = [None]
    if info.rank == 0:
        sender = DistributedWeightSender([url], backend="gloo")
        sender.update(named, weight_version="from-megatron")
        sender.close()
        from transformers import AutoTokenizer

        tok = AutoTokenizer.from_pretrained(tokenizer_dir)
        prompt_ids = tok(PROMPT, add_special_tokens=False).input_ids
        out = requests.post(url + "/generate", json={
            "input_ids": prompt_ids, "return_logprob": True,
            "sampling_params": {"max_new_tokens": max_new_tokens, "temperature": 1.0, "ignore_eos": True}},
            timeout=120).json()
        assert out["meta_info"]["weight_version"] == "from-megatron", out["meta_info"]
        served = [lp for lp, _, _ in out["meta_info"]["output_token_logprobs"]]
        payload = [(prompt_ids, out["output_ids"], served)]
    dist.broadcast_object_list(payload, src=0)
    prompt_ids, output_ids, served = payload[0]

    ids = torch.tensor([prompt_ids + output_ids])  # (1, s)
    with torch.no_grad():
        hidden = model(ids, return_hidden=True)  # (1, s, h)
        targets = ids[:, 1:]  # token t+1 is predicted at position t
        logp = fused_logprobs(hidden[:, :-1], model.output_layer_weight(), targets, temperature=1.0,
                              tp_group=mpu.get_tensor_model_parallel_group())  # (1, s-1), global over TP
    ours = logp[0, len(prompt_ids) - 1:]  # log-probs of the generated tokens
    diff = float((ours - torch.tensor(served)).abs().max())
    return diff, len(served), len(named)
