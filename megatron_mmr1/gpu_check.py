"""One-shot GPU check: six checks, each with its own time budget and one summary line.

    bash tools/gpu_check.sh             # on a machine with one CUDA GPU (make gpu-check)
    bash tools/gpu_check.sh --dry-run   # on a CPU: the same driver, each check's CPU-sized path or plan

No GPU had run this trainer before this check existed, so it covers the parts a CPU test cannot reach:
the Triton kernels on CUDA, megatron's overlapped grad reduce with the distributed optimizer, bf16
numerics against transformers, nccl checkpointing, colocated CUDA-IPC weight updates and the memory
model. The driver (this process, no torch import) runs the checks in one worker process
(``--worker``) so that torch, megatron and transformers are imported once; the worker reports each
check's start and end as JSON lines in an events file. A check that overruns its budget, or kills
its worker (a CUDA fault, a hang in a collective), is marked FAIL and a fresh worker goes on with the
checks after it. Summary lines read

    gpu-check  <name>  PASS|FAIL|SKIP  <seconds>s  <key number>

and the exit code is 1 when any check failed, 0 otherwise (SKIP is not a failure).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

from megatron_mmr1.utils.timing import median_seconds

PASS, FAIL, SKIP = "PASS", "FAIL", "SKIP"
PREFIX = "gpu-check"
TOTAL_BUDGET_S = 480.0
"""The whole run must fit in 8 minutes on one H100 (the sum of the budgets below stays under it)."""


class CheckFailed(AssertionError):
    """A check's own verdict: the message is its key number / reason."""


class CheckSkipped(Exception):
    """A check that cannot run here, with the reason (e.g. SGLang not installed)."""


@dataclass
class Result:
    name: str
    status: str
    seconds: float
    key: str
    detail: list[str] = field(default_factory=list)


@dataclass
class Check:
    name: str
    budget_s: float
    what: str
    fn: Callable[["Context"], str]
    """Returns the key number on PASS; raises CheckFailed / CheckSkipped otherwise."""


def summary_line(r: Result) -> str:
    return f"{PREFIX}  {r.name:<10} {r.status:<4} {r.seconds:6.1f}s  {r.key}"


# ================================================================================ worker side (torch here)


class Context:
    """What the checks share in the worker: device, one process group, a work dir, the tiny task."""

    def __init__(self, dry_run: bool, work_dir: Path):
        import torch

        self.dry_run = dry_run
        self.work = work_dir
        self.cuda = torch.cuda.is_available()
        self.device = torch.device("cuda" if self.cuda else "cpu")
        self._info = None
        self._task = None
        self.detail: list[str] = []

    def say(self, line: str) -> None:
        """A detail line: printed in the worker log and under the check's summary line."""
        print(line, flush=True)
        self.detail.append(line)

    def require_device(self) -> None:
        if not self.dry_run and not self.cuda:
            raise CheckFailed("no CUDA device visible (on a CPU machine run with --dry-run)")

    def dist(self):
        """World size 1, TP = PP = 1 (nccl on GPU, gloo on CPU): every check that builds a model uses it."""
        if self._info is None:
            from megatron_mmr1 import parallel
            from megatron_mmr1.config import ParallelConfig

            self._info = parallel.initialize(ParallelConfig(tp=1, pp=1, sequence_parallel=False))
        return self._info

    def task(self):
        """Synthetic image-math task (48 RL prompts, 48 SFT traces), its tokenizer and a tiny HF policy."""
        if self._task is None:
            from megatron_mmr1.data.synthetic import generate
            from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

            paths = generate(self.work / "data", num=48, seed=0, num_sft=48, tokenizer=True)
            hf = make_tiny_hf_checkpoint(self.work / "hf_tiny", paths["tokenizer"], seed=0, logit_scale=20.0)
            self._task = dict(hf=str(hf), tokenizer=str(paths["tokenizer"]), sft=str(paths["sft_train"]),
                              rl_train=str(paths["rl_train"]))
        return self._task

    def fresh_memory(self) -> None:
        import gc

        import torch

        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()


def _rel_err(got, want) -> float:
    """max |got - want| / max |want| (the kernel tests' measure); inf when got is not finite."""
    import torch

    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    if not torch.isfinite(got).all():
        return float("inf")
    return float((got - want).abs().max() / want.abs().max().clamp(min=1e-12))


# ---------------------------------------------------------------------------- 1. kernels

# The tolerances of tests/kernels/_common.py: fp32 differs by summation order only; bf16 shares the
# logits GEMM with the reference (upcast=False) and rounds dlogits / dX / dW to bf16.
KERNEL_TOL = {"float32": dict(value=1e-5, grad=1e-5), "bfloat16": dict(value=2e-3, grad=2e-2)}
GRPO_KW = dict(eps_low=0.2, eps_high=0.28, clip_c=3.0, kl_coef=0.05, kl_estimator="low_var_kl", entropy_coef=0.01,
               temperature=0.7)


def grpo_loss_batch(B, S, H, V, dtype=None, device="cpu", seed=0, mask_p=0.8):
    """GRPO-loss inputs with old/ref log-probs near the current ones (ratios near 1: both clip branches taken);
    shared with tests/kernels."""
    import torch

    dtype = dtype or torch.float32

    from mmr1_kernels import reference_logprobs

    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(B, S, H, generator=g) * 0.5).to(dtype)
    w = (torch.randn(V, H, generator=g) * 0.5).to(dtype)
    y = torch.randint(0, V, (B, S), generator=g)
    with torch.no_grad():
        lp = reference_logprobs(x, w, y)
    old = lp + 0.3 * torch.randn(B, S, generator=g)
    ref = lp + 0.3 * torch.randn(B, S, generator=g)
    adv = torch.randn(B, 1, generator=g).expand(B, S).contiguous()
    mask = (torch.rand(B, S, generator=g) < mask_p).float()
    return [t.to(device) for t in (x, w, y, old, ref, adv, mask)]


def check_kernels(ctx: Context) -> str:
    """fused_grpo_loss, fused_logprobs (Triton on CUDA; their torch path on CPU) and the VPS statistics
    against their torch references, fp32 and bf16; then fused vs reference loss fwd+bwd time and peak memory."""
    import torch

    import mmr1_kernels as K

    ctx.require_device()
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 parity: both sides in true fp32
    dev = ctx.device
    backend = "triton" if ctx.cuda else "torch"
    B, S, H, V = (4, 96, 128, 8192) if ctx.cuda else (2, 9, 16, 200)
    worst = 0.0  # error / tolerance, over every comparison
    for dtype in (torch.float32, torch.bfloat16):
        tol = KERNEL_TOL[str(dtype).split(".")[-1]]
        x, w, y, old, ref, adv, mask = grpo_loss_batch(B, S, H, V, dtype, dev)
        x1, w1 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        out = K.fused_grpo_loss(x1, w1, y, old, ref, adv, mask, chunk_size=64, backend=backend, **GRPO_KW)
        out.loss.backward()
        x2, w2 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        want = K.reference_grpo_loss(x2, w2, y, old, ref, adv, mask, upcast=dtype == torch.float32, **GRPO_KW)
        want.loss.backward()
        x3, w3 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        lp = K.fused_logprobs(x3, w3, y, temperature=0.7, chunk_size=64, backend=backend)
        (lp * mask).sum().backward()
        x4, w4 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
        lp_ref = K.reference_logprobs(x4, w4, y, temperature=0.7, upcast=dtype == torch.float32)
        (lp_ref * mask).sum().backward()
        errs = {"grpo loss": (_rel_err(out.loss, want.loss), tol["value"]),
                "grpo logp": (_rel_err(out.logp, want.logp), tol["value"]),
                "grpo d hidden": (_rel_err(x1.grad, x2.grad), tol["grad"]),
                "grpo d weight": (_rel_err(w1.grad, w2.grad), tol["grad"]),
                "logprobs": (_rel_err(lp, lp_ref), tol["value"]),
                "logprobs d hidden": (_rel_err(x3.grad, x4.grad), tol["grad"]),
                "logprobs d weight": (_rel_err(w3.grad, w4.grad), tol["grad"])}
        for name, (err, t) in errs.items():
            ctx.say(f"  {str(dtype):<14} {name:<18} rel err {err:.2e} (tol {t:g})")
            worst = max(worst, err / t)
    # VPS statistics on the device vs the CPU path (edit distance: Triton vs torch's bit-parallel version)
    import random

    rng = random.Random(0)
    groups = [[[rng.randrange(50) for _ in range(rng.randint(5, 60))] for _ in range(8)] for _ in range(16)]
    packed = K.pack_groups(groups, device=dev)
    vps = {"edit_distance": (K.edit_distance(packed, backend=backend if ctx.cuda else "torch"),
                             K.edit_distance(groups, backend="torch")),
           "self_bleu": (K.self_bleu(packed, 3), K.self_bleu(groups, 3)),
           "distinct_n": (K.distinct_n(packed, 3), K.distinct_n(groups, 3))}
    for name, (got, want) in vps.items():
        err = float((got.cpu().double() - want.double()).abs().max())
        ctx.say(f"  vps {name:<14} max |diff| {err:.1e} (tol 1e-6)")
        worst = max(worst, err / 1e-6)
    # quick bench: the loss fwd+bwd at a production head (bf16) on GPU, a small one on CPU
    T, H, V = (4096, 3584, 152064) if ctx.cuda else (256, 64, 2048)
    dtype = torch.bfloat16 if ctx.cuda else torch.float32
    ctx.fresh_memory()
    x, w, y, old, ref, adv, mask = grpo_loss_batch(1, T, H, V, dtype, dev, seed=1)
    xr, wr = x.requires_grad_(True), w.requires_grad_(True)

    def run(impl):
        def fn():
            xr.grad = wr.grad = None
            if impl == "fused":
                loss = K.fused_grpo_loss(xr, wr, y, old, ref, adv, mask, backend=backend, **GRPO_KW).loss
            else:
                loss = K.reference_grpo_loss(xr, wr, y, old, ref, adv, mask, upcast=False, **GRPO_KW).loss
            loss.backward()
        return fn

    times, mems = {}, {}
    for impl in ("reference", "fused"):
        times[impl] = median_seconds(run(impl), repeat=3, cuda=ctx.cuda)
        if ctx.cuda:
            xr.grad = wr.grad = None
            torch.cuda.synchronize()
            base = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            run(impl)()
            torch.cuda.synchronize()
            mems[impl] = torch.cuda.max_memory_allocated() - base
    speed = times["reference"] / times["fused"]
    mem = f", peak memory fused/reference {mems['fused'] / mems['reference']:.3f}" if mems else ""
    ctx.say(f"  bench T={T} H={H} V={V} {dtype}: reference {times['reference'] * 1e3:.1f} ms, fused "
            f"{times['fused'] * 1e3:.1f} ms ({speed:.2f}x){mem}")
    key = f"worst err/tol {worst:.2f}; fused loss {speed:.2f}x the reference's speed{mem}"
    if worst > 1.0:
        raise CheckFailed(key)
    return key


# ---------------------------------------------------------------------------- 2. overlapped grad reduce

def _random_sequences(n: int, lengths: list[int], vocab: int, seed: int):
    import torch

    from megatron_mmr1.training import micro_batches as mbs

    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        ids = torch.randint(0, vocab, (lengths[i % len(lengths)],), generator=g)
        out.append(mbs.TrainSequence(input_ids=ids, targets=mbs.next_token_targets(ids)))
    return out


def _engine_cfg(ctx: Context, *overrides: str):
    from megatron_mmr1.config import load_config

    return load_config(None, ["training.mode=sft", "data.kind=sft", "parallel.sequence_parallel=false",
                              f"output_dir={ctx.work / 'engine'}", "logging.progress=false", *overrides],
                       world_size=1)


def check_overlap(ctx: Context) -> str:
    """The training engine's step (megatron DDP with overlap_grad_reduce and the distributed optimizer on
    CUDA; the plain path on CPU): one global batch as 3 micro-batches (no_sync over the first two) must give
    the gradient of the same batch in 1 micro-batch (per-token loss), and a real step must move the weights."""
    import torch

    from megatron_mmr1.training import micro_batches as mbs
    from megatron_mmr1.training import engine, sft

    ctx.require_device()
    info = ctx.dist()
    cfg = _engine_cfg(ctx, "model.preset=tiny", "optim.lr=0.0", "optim.min_lr=0.0", "optim.clip_grad=0.0")
    chunks = engine.build_policy(cfg, load_hf=False)
    ddp = chunks[0].ddp_config
    ctx.say(f"  DDP overlap_grad_reduce={ddp.overlap_grad_reduce} use_distributed_optimizer="
            f"{ddp.use_distributed_optimizer} params_dtype={engine.unwrap(chunks[0]).config.params_dtype}")
    if ctx.cuda and not (ddp.overlap_grad_reduce and ddp.use_distributed_optimizer):
        raise CheckFailed("the engine did not enable overlap_grad_reduce + the distributed optimizer on CUDA")
    optimizer = engine.build_optimizer(cfg, chunks)
    scheduler = engine.build_scheduler(cfg, optimizer, 4)
    step = engine.make_forward_step(cfg, sft.sft_loss_func, engine.varlen_attention(cfg))
    seqs = _random_sequences(6, [37, 64, 21], 1000, seed=0)  # ids below the tiny vocabulary's special tokens
    one = [mbs.pack(seqs, list(range(6))).to(info.device)]
    three = [mbs.pack(seqs[i:i + 2], [i, i + 1]).to(info.device) for i in (0, 2, 4)]
    r3 = engine.train_step(cfg, chunks, optimizer, scheduler, step, three, info.device)
    r1 = engine.train_step(cfg, chunks, optimizer, scheduler, step, one, info.device)
    diff = abs(r3.grad_norm - r1.grad_norm) / max(r1.grad_norm, 1e-12)
    loss_diff = abs(r3.loss - r1.loss) / max(abs(r1.loss), 1e-12)
    ctx.say(f"  3 micro-batches: loss {r3.loss:.6f} grad norm {r3.grad_norm:.6f}; 1 micro-batch: loss {r1.loss:.6f} "
            f"grad norm {r1.grad_norm:.6f}")
    # a real update through the same engine moves the weights
    for g in optimizer.param_groups:
        g["max_lr"] = g["lr"] = 1e-3
    scheduler.max_lr = scheduler.init_lr = 1e-3
    before = [p.detach().float().clone() for p in chunks[0].parameters()]
    r = engine.train_step(cfg, chunks, optimizer, scheduler, step, three, info.device)
    moved = sum(int(not torch.equal(b, p.detach().float())) for b, p in zip(before, chunks[0].parameters()))
    tol = 2e-2 if ctx.cuda else 1e-5  # bf16 on GPU: packing changes the attention kernels' rounding
    key = f"grad-norm rel diff 3 vs 1 micro-batches {diff:.1e} (tol {tol:g}); {moved} param tensors moved"
    if r3.skipped or r1.skipped or r.skipped or not diff <= tol or not loss_diff <= tol or moved == 0:
        raise CheckFailed(key + f"; loss rel diff {loss_diff:.1e}, skipped {[r3.skipped, r1.skipped, r.skipped]}")
    return key


def check_offload(ctx: Context) -> str:
    """rollout.offload_trainer's TrainerOffload on the engine of check_overlap (DDP param buffer and the
    distributed optimizer on CUDA): after a step, offload must free about what it moved (allocator bytes),
    reload must restore every param and optimizer tensor bitwise, and the next step must run."""
    import torch

    from megatron_mmr1.training import micro_batches as mbs
    from megatron_mmr1.training import engine, sft
    from megatron_mmr1.training.offload import TrainerOffload, kept_tensors

    ctx.require_device()
    info = ctx.dist()
    cfg = _engine_cfg(ctx, "model.preset=tiny", "optim.lr=1e-3")
    chunks = engine.build_policy(cfg, load_hf=False)
    optimizer = engine.build_optimizer(cfg, chunks)
    scheduler = engine.build_scheduler(cfg, optimizer, 4)
    step = engine.make_forward_step(cfg, sft.sft_loss_func, engine.varlen_attention(cfg))
    batch = [mbs.pack(_random_sequences(4, [37, 64, 21], 1000, seed=0), list(range(4))).to(info.device)]
    engine.train_step(cfg, chunks, optimizer, scheduler, step, batch, info.device)
    before = [t.detach().clone() for t in kept_tensors(chunks, optimizer)]
    ctx.fresh_memory()
    allocated = torch.cuda.memory_allocated() if ctx.cuda else 0
    offload = TrainerOffload(chunks, optimizer)
    offload.offload()
    freed = allocated - (torch.cuda.memory_allocated() if ctx.cuda else 0)
    moved = offload.last_bytes["copied"] + offload.last_bytes["dropped"]
    offload.reload()
    equal = all(torch.equal(b, t) for b, t in zip(before, kept_tensors(chunks, optimizer)))
    r = engine.train_step(cfg, chunks, optimizer, scheduler, step, batch, info.device)
    ctx.say(f"  moved {moved / 2**20:.1f} MiB (copied {offload.last_bytes['copied'] / 2**20:.1f}), allocator freed "
            f"{freed / 2**20:.1f} MiB; offload {offload.last_seconds['offload']:.3f} s, reload "
            f"{offload.last_seconds['reload']:.3f} s")
    key = f"offload moved {moved / 2**20:.1f} MiB, freed {freed / 2**20:.1f} MiB, reload bitwise {equal}"
    if not equal or r.skipped or moved == 0 or (ctx.cuda and freed < 0.9 * moved):
        raise CheckFailed(key + f"; next step skipped {r.skipped}")
    return key


# ---------------------------------------------------------------------------- 3. logits parity

PARITY_GRIDS = [(1, 12, 16), (1, 8, 8)]
PARITY_SEQ = 96
PARITY_TOL = {"fp32": 1e-3, "bf16": 5e-2}
"""max |logit diff| / max |logit|: fp32 on CPU measures ~1e-6 (test_parity.py's 1e-4 absolute); bf16 rounds
activations to 8 mantissa bits at every layer of both models."""


def parity_batch(dims: dict, seed: int = 1) -> dict:
    """Two samples, 2 + 1 images of different sizes, right padding (tests/models/workers.py's 'images' case)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    img, start, end = dims["image_token_id"], dims["vision_start_token_id"], dims["vision_end_token_id"]

    def text(n):
        return torch.randint(0, 2000, (n,), generator=gen).tolist()

    def image(grid):
        t, h, w = grid
        return [start] + [img] * (t * h * w // 4) + [end]

    g0, g1 = PARITY_GRIDS
    a = text(5) + image(g0) + text(7) + image(g1) + text(PARITY_SEQ - 5 - 50 - 7 - 18)
    b = text(3) + image(g1) + text(20)
    rows = [a, b + [dims["bos_token_id"]] * (PARITY_SEQ - len(b))]
    mask = torch.zeros(2, PARITY_SEQ, dtype=torch.long)
    mask[0, :len(a)], mask[1, :len(b)] = 1, 1
    thw = torch.tensor([g0, g1, g1])
    return {"input_ids": torch.tensor(rows), "attention_mask": mask,
            "pixel_values": torch.randn(int(thw.prod(-1).sum()), 3 * 2 * 14 * 14, generator=gen), "image_grid_thw": thw}


def hf_logits(hf_dir: str, batch: dict, dims: dict, dtype, device) -> Any:
    """transformers' Qwen2_5_VLForConditionalGeneration (the outside reference); mm_token_type_ids for M-RoPE."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(hf_dir, dtype=dtype).to(device).eval()
    kw = {k: v.to(device) for k, v in batch.items()}
    kw["pixel_values"] = kw["pixel_values"].to(dtype)
    kw["mm_token_type_ids"] = (kw["input_ids"] == dims["image_token_id"]).int()
    with torch.no_grad():
        return model(**kw).logits.float().cpu()


def megatron_logits(chunks: list, batch: dict, device) -> Any:
    """Full-vocab logits through megatron's schedule (forward only, TP = PP = 1)."""
    import torch
    from megatron.core.pipeline_parallel import get_forward_backward_func

    store = {}
    b = {k: v.to(device) for k, v in batch.items()}

    def forward_step(data_iterator, model):
        d = next(data_iterator)
        out = model(d["input_ids"], None, d["attention_mask"], pixel_values=d["pixel_values"],
                    image_grid_thw=d["image_grid_thw"])

        def loss_func(output):
            store["logits"] = output.detach()
            return output.sum() * 0, {}

        return out, loss_func

    for c in chunks:
        c.eval()
    with torch.no_grad():
        get_forward_backward_func()(forward_step_func=forward_step, data_iterator=iter([b]), model=chunks,
                                    num_microbatches=1, seq_length=b["input_ids"].shape[1],
                                    micro_batch_size=b["input_ids"].shape[0], forward_only=True)
    return store["logits"].float().cpu()


def check_parity(ctx: Context) -> str:
    """The megatron Qwen2.5-VL (vision tower, merger, M-RoPE GPT) vs transformers on the same random tiny
    checkpoint, fp32 and bf16, logits on the real (unpadded) positions."""
    import torch

    from megatron_mmr1.config import ModelConfig, ParallelConfig
    from megatron_mmr1.models.presets import resolve_model_dims
    from megatron_mmr1.models.qwen2_5_vl import build_model
    from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

    ctx.require_device()
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    ctx.dist()
    hf = str(make_tiny_hf_checkpoint(ctx.work / "hf_parity", seed=0, randomize_norms=True))
    dims = resolve_model_dims(ModelConfig(preset="tiny"))
    batch = parity_batch(dims)
    real = batch["attention_mask"].bool()
    worst, parts = 0.0, []
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        ref = hf_logits(hf, batch, dims, dtype, ctx.device)
        chunks = build_model((ModelConfig(preset="tiny", hf_path=hf, params_dtype=name),
                              ParallelConfig(tp=1, pp=1, sequence_parallel=False)))
        ours = megatron_logits(chunks, batch, ctx.device)
        del chunks
        if ours.shape != ref.shape:
            raise CheckFailed(f"{name}: logits shape {tuple(ours.shape)} vs transformers {tuple(ref.shape)}")
        diff = float((ours - ref)[real].abs().max())
        rel = diff / float(ref[real].abs().max())
        ctx.say(f"  {name}: max |logit diff| {diff:.3g} (max |logit| {float(ref[real].abs().max()):.3g}), "
                f"rel {rel:.2e} (tol {PARITY_TOL[name]:g})")
        worst = max(worst, rel / PARITY_TOL[name])
        parts.append(f"{name} rel {rel:.1e}")
    key = ", ".join(parts) + f" (worst err/tol {worst:.2f})"
    if not worst <= 1.0:
        raise CheckFailed(key)
    return key


# ---------------------------------------------------------------------------- 4. SFT with save / resume

def _sft_cfg(ctx: Context, out: str, *extra: str):
    from megatron_mmr1.config import load_config

    t = ctx.task()
    return load_config("examples/configs/tiny_cpu_sft.yaml", [
        f"model.hf_path={t['hf']}", f"model.tokenizer_path={t['tokenizer']}", f"data.train_files=[{t['sft']}]",
        f"output_dir={ctx.work / out}", "logging.progress=false", "training.global_batch_size=8",
        "training.micro_batch_size=2", "training.eval_interval=null", "parallel.backend=auto", *extra],
        world_size=1)


def check_sft(ctx: Context) -> str:
    """examples/configs/tiny_cpu_sft.yaml on this device (nccl on GPU): N steps with checkpoints, then the
    same run resumed from the middle checkpoint must replay the last steps' losses and learning rates."""
    from megatron_mmr1.training import sft

    ctx.require_device()
    info = ctx.dist()
    n = 4 if ctx.cuda else 2
    ckpt = ctx.work / "sft_ckpt"
    common = (f"training.train_iters={n}", f"checkpoint.save_interval={n // 2}", "checkpoint.keep_last=3")
    full = sft.run(_sft_cfg(ctx, "sft_full", *common, f"checkpoint.save={ckpt}"), info)
    resumed = sft.run(_sft_cfg(ctx, "sft_resumed", *common, f"checkpoint.save={ctx.work / 'sft_ckpt2'}",
                               f"checkpoint.load={ckpt}/iter_{n // 2:07d}"), info)
    losses = [v for _, v in full["history"]["loss"]]
    again = [v for _, v in resumed["history"]["loss"]]
    steps = [s for s, _ in resumed["history"]["loss"]]
    ctx.say(f"  losses {['%.5f' % v for v in losses]}; resumed at step {n // 2}: {['%.5f' % v for v in again]}")
    if steps != list(range(n // 2 + 1, n + 1)):
        raise CheckFailed(f"resumed run trained steps {steps}, expected {n // 2 + 1}..{n}")
    diff = max(abs(a - b) / max(abs(b), 1e-12) for a, b in zip(again, losses[n // 2:]))
    tol = 1e-3 if ctx.cuda else 1e-6  # GPU kernels need not be bitwise deterministic
    key = f"{n} steps, loss {losses[0]:.3f} -> {losses[-1]:.3f}; resume rel diff {diff:.1e} (tol {tol:g})"
    if not diff <= tol:
        raise CheckFailed(key)
    return key


# ---------------------------------------------------------------------------- 5. colocated GRPO

def _grpo_overrides(ctx: Context) -> list[str]:
    t = ctx.task()
    return [f"model.hf_path={t['hf']}", f"data.train_files=[{t['rl_train']}]", f"output_dir={ctx.work / 'grpo'}",
            "logging.progress=false", "training.rollout_steps=2", "training.rollout_batch_size=4", "rollout.n=4",
            "training.global_batch_size=16", "data.max_response_length=24", "vps.num_rollouts=4",
            "vps.scoring_batch_size=64", "training.eval_interval=null", "rollout.backend=local",
            "rollout.colocate=true", "rollout.weight_sync=tensor", "parallel.backend=auto"]


def check_grpo(ctx: Context) -> str:
    """examples/configs/tiny_cpu_grpo.yaml colocated on one GPU: the stand-in server (SGLang's HTTP API) and
    the trainer share the device; after each update the weights travel as CUDA-IPC handles
    (/update_weights_from_tensor), which needs SGLang's torch reductions in the trainer."""
    import importlib.util

    from megatron_mmr1.config import load_config

    ctx.require_device()
    overrides = _grpo_overrides(ctx)
    cfg = load_config("examples/configs/tiny_cpu_grpo.yaml", overrides, world_size=1)  # validated: the plan
    ctx.say(f"  plan: {cfg.training.rollout_steps} GRPO steps, {cfg.training.rollout_batch_size} prompts x "
            f"{cfg.rollout.n}, rollout.colocate={cfg.rollout.colocate} weight_sync={cfg.rollout.weight_sync}")
    if ctx.dry_run:  # the CPU path (shared memory instead of IPC) is tests/training/test_grpo.py's; ~20 s here
        raise CheckSkipped("dry-run: plan validated, not run (CUDA-IPC weight updates need a GPU)")
    if importlib.util.find_spec("sglang") is None:
        raise CheckSkipped("SGLang is not installed: CUDA-IPC handles need its torch reductions "
                           "(sglang==0.5.23, pip install -e .[gpu])")
    from megatron_mmr1.training import grpo

    summary = grpo.run(cfg, ctx.dist())
    steps = summary.get("steps")
    # after a weight update the servers' log-probs of their own samples must be the trainer's (bf16 vs the
    # stand-in's fp32 copy of the same weights): a failed or partial IPC update shows up here
    mismatch = summary.get("mismatch/logp_abs_mean_last", float("nan"))
    key = f"{steps} steps, {summary.get('rollouts_total')} rollouts, trainer vs server |logp diff| {mismatch:.1e} (tol 0.05)"
    if steps != cfg.training.rollout_steps or summary.get("skipped_steps") or not mismatch <= 0.05:
        raise CheckFailed(key)
    return key


# ---------------------------------------------------------------------------- 6. 3B-shaped step vs the memory model

MEM_PRESET, MEM_LAYERS, MEM_TOKENS = "qwen2.5-vl-3b", 4, 4096


def check_memory(ctx: Context) -> str:
    """A 3B-shaped policy cut to a few layers (full vocab, full vision tower, bf16, distributed optimizer):
    one packed micro-batch's training step time and allocator peak vs models/memory.py's estimate (the
    model behind tools/model_memory.py) without its fixed allowance for the CUDA context."""
    from megatron_mmr1.config import ModelConfig
    from megatron_mmr1.models.memory import FRAMEWORK_OVERHEAD, GIB, MicroBatchShape, trainer_memory
    from megatron_mmr1.models.presets import resolve_model_dims

    ctx.require_device()
    dims = resolve_model_dims(ModelConfig(preset=MEM_PRESET, num_layers=MEM_LAYERS))
    est = trainer_memory(dims, 1, 1, 1, MicroBatchShape(tokens=MEM_TOKENS, patches=0, count=1), recompute=None,
                         use_reference=False)
    est_alloc = est.train_peak - FRAMEWORK_OVERHEAD
    ctx.say(f"  plan: {MEM_PRESET} with {MEM_LAYERS} layers ({est.params / 1e9:.2f} B params), one micro-batch of "
            f"{MEM_TOKENS} tokens; estimate {est_alloc / GIB:.2f} GiB allocated (weights {est.weights / GIB:.2f}, "
            f"grads {est.grads / GIB:.2f}, Adam {est.optimizer / GIB:.2f}, activations {est.activations / GIB:.2f}, "
            f"logits {est.logits / GIB:.2f}) + {FRAMEWORK_OVERHEAD / GIB:.0f} GiB allowance")
    if ctx.dry_run:
        raise CheckSkipped(f"dry-run: plan only; estimate {est_alloc / GIB:.2f} GiB")
    import torch

    from megatron_mmr1.training import engine, sft
    from megatron_mmr1.training import micro_batches as mbs

    info = ctx.dist()
    ctx.fresh_memory()
    base = torch.cuda.memory_allocated()
    cfg = _engine_cfg(ctx, f"model.preset={MEM_PRESET}", f"model.num_layers={MEM_LAYERS}", "model.params_dtype=bf16")
    chunks = engine.build_policy(cfg, load_hf=False)
    optimizer = engine.build_optimizer(cfg, chunks)
    scheduler = engine.build_scheduler(cfg, optimizer, 4)
    step = engine.make_forward_step(cfg, sft.sft_loss_func, engine.varlen_attention(cfg))
    seqs = _random_sequences(4, [MEM_TOKENS // 4], 150000, seed=0)
    micro = [mbs.pack(seqs, list(range(4))).to(info.device)]
    times = []
    for _ in range(2):  # the first step also creates Adam's state
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = engine.train_step(cfg, chunks, optimizer, scheduler, step, micro, info.device)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() - base
    ratio = peak / est_alloc
    key = (f"step {times[-1]:.2f} s, peak {peak / GIB:.2f} GiB vs estimate {est_alloc / GIB:.2f} GiB "
           f"(x{ratio:.2f}), loss {r.loss:.3f}")
    if r.skipped or ratio > 1.0:
        raise CheckFailed(key + ("; the memory model underestimates" if ratio > 1.0 else "; step skipped"))
    return key


CHECKS = [
    Check("kernels", 60, "Triton kernels vs torch references + quick bench", check_kernels),
    Check("overlap", 60, "overlap_grad_reduce / no_sync step, distributed optimizer", check_overlap),
    Check("offload", 30, "trainer offload to host and back (rollout.offload_trainer)", check_offload),
    Check("parity", 60, "megatron vs transformers logits, fp32 and bf16", check_parity),
    Check("sft", 90, "tiny SFT, save and resume", check_sft),
    Check("grpo", 120, "tiny colocated GRPO, CUDA-IPC weight updates", check_grpo),
    Check("memory_3b", 60, "3B-shaped step: time and peak vs the memory model", check_memory),
]
assert sum(c.budget_s for c in CHECKS) <= TOTAL_BUDGET_S


def run_one(check: Check, ctx: Context) -> Result:
    ctx.detail = []
    t0 = time.perf_counter()
    try:
        key, status = check.fn(ctx), PASS
    except CheckSkipped as e:
        key, status = str(e), SKIP
    except CheckFailed as e:
        key, status = str(e), FAIL
    except Exception as e:  # any other error fails this check only
        traceback.print_exc()
        key, status = f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}", FAIL
    return Result(check.name, status, time.perf_counter() - t0, key, list(ctx.detail))


def worker(names: list[str], dry_run: bool, work_dir: Path, events: Path) -> int:
    """Run the named checks in order, appending start / end events to ``events`` (one JSON per line)."""
    os.chdir(Path(__file__).resolve().parents[1])  # configs are named relative to the repository root

    def emit(**e):
        with open(events, "a") as f:
            f.write(json.dumps(e) + "\n")

    ctx = Context(dry_run, work_dir)
    by_name = {c.name: c for c in CHECKS}
    for name in names:
        emit(event="start", name=name, t=time.time())
        print(f"== {name}: {by_name[name].what}", flush=True)
        r = run_one(by_name[name], ctx)
        emit(event="end", **asdict(r))
    return 0


# ================================================================================ driver side (no torch)


def _read_events(path: Path, seen: int) -> tuple[list[dict], int]:
    if not path.exists():
        return [], seen
    lines = path.read_text().splitlines()
    out = []
    for line in lines[seen:]:
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line being written: read it next time
            break
    return out, seen + len(out)


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def drive(checks: list[Check], dry_run: bool, work_dir: Path, log_path: Path,
          python: str = sys.executable, poll_s: float = 0.2) -> list[Result]:
    """Run ``checks`` in worker processes with their budgets; a timeout or a dead worker fails that check
    and a new worker continues with the rest."""
    results: list[Result] = []
    pending = list(checks)
    env = dict(os.environ)
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the CPU-sized paths, even on a GPU machine
    attempt = 0
    while pending:
        attempt += 1
        events = work_dir / f"events_{attempt}.jsonl"
        cmd = [python, "-m", "megatron_mmr1.gpu_check", "--worker", "--work-dir", str(work_dir),
               "--events", str(events), "--only", ",".join(c.name for c in pending)] + (["--dry-run"] if dry_run else [])
        with open(log_path, "a") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True,
                                    cwd=str(Path(__file__).resolve().parents[1]))
        seen, current, started = 0, None, time.time()
        startup_budget = 120.0  # imports before the first check starts
        while True:
            new, seen = _read_events(events, seen)
            for e in new:
                if e["event"] == "start":
                    current, started = e["name"], time.time()
                else:
                    r = Result(e["name"], e["status"], e["seconds"], e["key"], e.get("detail", []))
                    results.append(r)
                    _print_result(r)
                    pending = [c for c in pending if c.name != r.name]
                    current = None
            if not pending:
                proc.wait()
                break
            check = next(c for c in pending if c.name == current) if current else None
            limit = check.budget_s if check else startup_budget
            over = time.time() - started > limit
            dead = proc.poll() is not None
            if over or dead:
                new, seen = _read_events(events, seen)  # an end written just before
                if new:
                    continue
                if over:
                    _kill(proc)
                name = current or pending[0].name
                why = (f"timed out after its {limit:.0f} s budget" if over else
                       f"worker died with exit code {proc.returncode}") + f" (log: {log_path})"
                r = Result(name, FAIL, time.time() - started, why)
                results.append(r)
                _print_result(r)
                pending = [c for c in pending if c.name != name]
                break
            time.sleep(poll_s)
    return results


def _print_result(r: Result) -> None:
    for line in r.detail:
        print(f"    {line.strip()}", flush=True)
    print(summary_line(r), flush=True)


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="gpu_check", description=__doc__.split("\n\n")[0])
    ap.add_argument("--dry-run", action="store_true",
                    help="CPU: the same driver, each check's CPU-sized path or its plan (CI runs this)")
    ap.add_argument("--only", default=None, help="comma-separated check names (default: all, in order)")
    ap.add_argument("--work-dir", default=None, help="scratch folder (default: a new temporary one)")
    ap.add_argument("--list", action="store_true", help="print the checks and their budgets, then exit")
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--events", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    known = [c.name for c in CHECKS]
    names = args.only.split(",") if args.only else known
    unknown = [n for n in names if n not in known]
    if unknown:
        print(f"gpu_check: unknown check(s) {unknown} (known: {', '.join(known)})", file=sys.stderr)
        return 2
    checks = [c for c in CHECKS if c.name in names]
    if args.list:
        for c in checks:
            print(f"{c.name:<10} {c.budget_s:>4.0f} s  {c.what}")
        return 0
    work = Path(args.work_dir or tempfile.mkdtemp(prefix="mmr1_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.worker:
        return worker(names, args.dry_run, work, Path(args.events))
    log = work / "gpu_check.log"
    mode = "dry run (CPU-sized paths and plans)" if args.dry_run else "GPU run"
    print(f"{PREFIX}: {mode}, {len(checks)} checks, budgets {sum(c.budget_s for c in checks):.0f} s "
          f"(limit {TOTAL_BUDGET_S:.0f} s); worker log {log}", flush=True)
    t0 = time.time()
    results = drive(checks, args.dry_run, work, log)
    failed = [r.name for r in results if r.status == FAIL]
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, SKIP)}
    print(f"{PREFIX}: {counts[PASS]} PASS, {counts[FAIL]} FAIL, {counts[SKIP]} SKIP in {time.time() - t0:.0f} s"
          + (f"; failed: {', '.join(failed)}" if failed else ""), flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
