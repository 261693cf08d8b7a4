"""Shared fixtures and rank functions of the model tests (module-level so spawned ranks import them).

The outside reference is transformers' ``Qwen2_5_VLForConditionalGeneration`` with a tiny random
config (the ``tiny`` preset's dims), saved as a normal HF checkpoint directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from megatron_mmr1.gpu_check import PARITY_SEQ as SEQ
from megatron_mmr1.gpu_check import parity_batch



def tiny_dims(tied: bool = False) -> dict:
    from megatron_mmr1.config import ModelConfig
    from megatron_mmr1.models.presets import resolve_model_dims

    dims = resolve_model_dims(ModelConfig(preset="tiny"))
    dims["tie_word_embeddings"] = tied
    return dims


def make_hf_checkpoint(out_dir: str | Path, seed: int = 0, tied: bool = False, dtype=torch.float32) -> Path:
    """Random tiny checkpoint (models.tiny's builder) with random norms/biases, in several shards."""
    from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

    return make_tiny_hf_checkpoint(out_dir, seed=seed, tied=tied, dtype=dtype, randomize_norms=True,
                                   max_shard_size="200KB")


def make_batch(case: str, seed: int = 1) -> dict:
    """Inputs of one test case: 'images' (2 samples, 2 + 1 images of different sizes, right padding: the GPU
    check's parity batch) or 'text' (2 samples, no images)."""
    dims = tiny_dims()
    if case != "text":
        return parity_batch(dims, seed)
    gen = torch.Generator().manual_seed(seed)
    rows = [torch.randint(0, 2000, (SEQ,), generator=gen).tolist() for _ in range(2)]
    input_ids = torch.tensor(rows)
    return {"input_ids": input_ids, "attention_mask": torch.ones_like(input_ids)}


def hf_logits(hf_dir: str | Path, batch: dict) -> torch.Tensor:
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    dims = tiny_dims()
    kwargs = dict(batch)
    kwargs["mm_token_type_ids"] = (batch["input_ids"] == dims["image_token_id"]).int()
    with torch.no_grad():
        return model(**kwargs).logits


def _init(tp: int, pp: int, hf_dir: Optional[str], freeze_vision: bool = False):
    from megatron_mmr1 import parallel
    from megatron_mmr1.config import ModelConfig, ParallelConfig
    from megatron_mmr1.models.qwen2_5_vl import build_model

    pcfg = ParallelConfig(tp=tp, pp=pp, sequence_parallel=False)
    parallel.initialize(pcfg)
    mcfg = ModelConfig(preset="tiny", hf_path=hf_dir, params_dtype="fp32", freeze_vision=freeze_vision)
    return build_model((mcfg, pcfg))


def _gather_vocab(logits: torch.Tensor) -> torch.Tensor:
    from megatron.core import tensor_parallel

    return tensor_parallel.gather_from_tensor_model_parallel_region(logits)


def forward_logits(chunks, batch: dict) -> Optional[torch.Tensor]:
    """Full-vocab logits (b, s, V) through megatron's schedule (forward only), on the last stage."""
    from megatron.core import parallel_state as mpu
    from megatron.core.pipeline_parallel import get_forward_backward_func

    store = {}

    def forward_step(data_iterator, model):
        b = next(data_iterator)
        out = model(b["input_ids"], None, b["attention_mask"], pixel_values=b.get("pixel_values"),
                    image_grid_thw=b.get("image_grid_thw"))

        def loss_func(output):
            store["logits"] = _gather_vocab(output).detach()
            return output.sum() * 0, {}

        return out, loss_func

    for c in chunks:
        c.eval()
    b, s = batch["input_ids"].shape
    get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([batch]), model=chunks,
                                num_microbatches=1, seq_length=s, micro_batch_size=b, forward_only=True)
    return store.get("logits") if mpu.is_pipeline_last_stage() else None


def _grad_report(chunks) -> tuple[list[str], list[str]]:
    """(trainable params without a nonzero grad, frozen params that got a grad)."""
    missing, frozen_with_grad = [], []
    for c in chunks:
        for name, p in c.named_parameters():
            if p.requires_grad and (p.grad is None or not bool(p.grad.abs().sum() > 0)):
                missing.append(name)
            if not p.requires_grad and p.grad is not None:
                frozen_with_grad.append(name)
    return missing, frozen_with_grad


def _backward(chunks, batch) -> None:
    model = chunks[0]
    model.train()
    labels = torch.roll(batch["input_ids"], -1, dims=1)
    loss = model(batch["input_ids"], None, batch["attention_mask"], pixel_values=batch["pixel_values"],
                 image_grid_thw=batch["image_grid_thw"], labels=labels)  # (b, s) per-token loss
    (loss * batch["attention_mask"]).sum().backward()


def _hidden_path_grad_diff(chunks, batch) -> float:
    """return_hidden + output_layer_weight through mmr1_kernels.fused_logprobs (the fused-loss consumer,
    which all-reduces d hidden over TP) gives the gradients of the logits/labels path; max rel diff."""
    from megatron.core import parallel_state as mpu

    from mmr1_kernels.fused_logprobs import fused_logprobs

    model = chunks[0]
    ref = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    labels = torch.roll(batch["input_ids"], -1, dims=1)
    hidden = model(batch["input_ids"], None, batch["attention_mask"], pixel_values=batch["pixel_values"],
                   image_grid_thw=batch["image_grid_thw"], return_hidden=True)  # (b, s, h)
    logp = fused_logprobs(hidden, model.output_layer_weight(), labels, backend="torch",
                          tp_group=mpu.get_tensor_model_parallel_group())
    (-logp * batch["attention_mask"]).sum().backward()
    return max(float((p.grad - ref[n]).abs().max() / (ref[n].abs().max() + 1e-12))
               for n, p in model.named_parameters())


def tp2_worker(hf_dir: str, mcore_dir: str) -> dict:
    """TP=2: HF weights loaded straight into the shards -> logits (both cases), hidden-state path,
    gradients (vision trained / frozen), hf-to-mcore's rank function, iter_hf_state round trip."""
    from megatron.core import parallel_state as mpu

    from megatron_mmr1.config import ModelConfig, ParallelConfig
    from megatron_mmr1.models.checkpoint import HFCheckpoint
    from megatron_mmr1.models.convert import hf_to_mcore_rank, iter_hf_state
    from megatron_mmr1.models.qwen2_5_vl import build_model

    chunks = _init(2, 1, hf_dir)
    out = {case: forward_logits(chunks, make_batch(case)) for case in ("images", "text")}
    out["n_params"] = sum(p.numel() for p in chunks[0].parameters())

    # return_hidden + output_layer_weight reproduce this rank's vocab-parallel logits.
    batch = make_batch("images")
    model = chunks[0].eval()
    with torch.no_grad():
        args = (batch["input_ids"], None, batch["attention_mask"])
        kw = dict(pixel_values=batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
        shard_logits = model(*args, **kw)
        hidden = model(*args, **kw, return_hidden=True)
    out["hidden_shape"] = tuple(hidden.shape)
    out["hidden_vs_logits"] = float((hidden @ model.output_layer_weight().T - shard_logits).abs().max())

    _backward(chunks, batch)
    out["missing_grads"], _ = _grad_report(chunks)
    # Replicated vision params must get the same gradient on every TP rank (no extra all-reduce needed).
    out["vision_grads"] = {n: p.grad.clone() for n, p in chunks[0].named_parameters() if n.startswith("vision_model.")}
    out["hidden_path_grad_diff"] = _hidden_path_grad_diff(chunks, batch)
    frozen = build_model((ModelConfig(preset="tiny", hf_path=hf_dir, params_dtype="fp32", freeze_vision=True),
                          ParallelConfig(tp=2, sequence_parallel=False)))
    _backward(frozen, batch)
    missing, frozen_with_grad = _grad_report(frozen)
    out["frozen_missing_grads"] = missing
    out["frozen_vision_trainable"] = [n for n, p in frozen[0].named_parameters()
                                      if n.startswith("vision_model.") and p.requires_grad]
    out["frozen_with_grad"] = frozen_with_grad

    hf_to_mcore_rank(hf_dir, mcore_dir, 2, 1)  # the converter's own per-rank step (HF -> dist ckpt)

    ref = HFCheckpoint(hf_dir)
    seen, diffs = set(), []
    for name, tensor in iter_hf_state(chunks):
        seen.add(name)
        if not torch.equal(tensor, ref.read(name)):
            diffs.append(name)
    out["sync_not_bitwise"] = diffs
    out["sync_missing"] = sorted(set(ref.names()) - seen)
    out["tp_rank"] = mpu.get_tensor_model_parallel_rank()
    return out


def pp2_worker(hf_dir: str, mcore_dir: str, tied_hf_dir: str) -> dict:
    """PP=2: logits with HF weights loaded directly, then after loading the TP=2 dist checkpoint
    (resharding TP=2 -> PP=2); a tied-embedding model (3B style) across two stages."""
    from megatron_mmr1.config import ModelConfig, ParallelConfig
    from megatron_mmr1.models.checkpoint import load_dist
    from megatron_mmr1.models.qwen2_5_vl import build_model

    chunks = _init(1, 2, hf_dir)
    out = {"direct": {case: forward_logits(chunks, make_batch(case)) for case in ("images", "text")}}
    with torch.no_grad():
        for p in chunks[0].parameters():
            p.zero_()
    load_dist(chunks, mcore_dir)
    out["dist"] = {case: forward_logits(chunks, make_batch(case)) for case in ("images", "text")}
    tied = build_model((ModelConfig(preset="tiny", hf_path=tied_hf_dir, params_dtype="fp32"),
                        ParallelConfig(pp=2, sequence_parallel=False)))
    out["tied"] = forward_logits(tied, make_batch("images"))
    out["n_params"] = sum(p.numel() for p in chunks[0].parameters())
    out["n_params_tied"] = sum(p.numel() for p in tied[0].parameters())
    return out


def tp1_worker(hf_dir: str, mcore_dir: str, out_hf: str) -> dict:
    """mcore-to-hf of the TP=2 checkpoint (one process), then TP=1 logits from the HF dir."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.models.convert import mcore_to_hf

    mcore_to_hf(mcore_dir, out_hf)
    parallel.destroy()
    chunks = _init(1, 1, hf_dir)
    return {case: forward_logits(chunks, make_batch(case)) for case in ("images", "text")}
