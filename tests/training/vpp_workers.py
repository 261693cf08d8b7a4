"""Rank functions of the virtual-pipeline tests (module level, so spawned ranks can import them)."""

from __future__ import annotations

import torch


def _hf_grads(chunks) -> dict[str, torch.Tensor]:
    """This rank's gradients under Hugging Face names (the export mapping applied to main_grad), so layouts
    with other chunk/layer numbering compare name by name."""
    from megatron_mmr1.models.hf_adapter import iter_hf_state

    with torch.no_grad():
        for c in chunks:
            for p in c.parameters():
                p.copy_(p.main_grad)
    return {name: t.detach().clone() for name, t in iter_hf_state(chunks)}


def sft_gradient_hf(overrides: list[str], overlap_grad_reduce: bool = False) -> dict:
    """One SFT global batch through megatron's schedule (no update): the loss, the micro-batch and chunk
    counts, and this rank's gradients in HF names. ``overlap_grad_reduce``: DDP's GPU default forced on
    (per-chunk no_sync / grad_sync funcs in the interleaved schedule)."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.data.dataset import build_dataset
    from megatron_mmr1.data.tokenizer import load_tokenizer
    from megatron_mmr1.models.qwen2_5_vl import build_model
    from megatron_mmr1.training import engine, sft
    from tests.training.sft_workers import _cfg

    cfg = _cfg(overrides)
    info = parallel.initialize(cfg.parallel)
    ds = build_dataset(cfg.data, load_tokenizer(cfg.model.tokenizer_path))
    chunks = engine.wrap_ddp(cfg, build_model(cfg), overlap_grad_reduce=overlap_grad_reduce)
    micro, _ = sft.build_micro_batches(cfg, ds, list(range(cfg.training.global_batch_size)), info, pad_id=0)
    for c in chunks:
        c.zero_grad_buffer()
    step = engine.make_forward_step(cfg, sft.sft_loss_func, engine.varlen_attention(cfg))
    loss = engine.reduce_loss_dicts(engine.forward_backward(chunks, step, micro), info.device)["loss"]
    return {"loss": loss, "micro_batches": len(micro), "chunks": len(chunks), "grads": _hf_grads(chunks)}
