"""Long-CoT cold-start SFT (MMR1 stage 1) on megatron-core.

One step = ``training.global_batch_size`` conversations (the data order is a pure function of the seed
and the epoch, so a resumed run replays the same batches), planned into micro-batches by token budget
(packed rows, no attention across conversations) and balanced over DP ranks; the loss is the token
mean over the assistant tokens of the whole global batch, through the fused log-prob kernel.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from megatron_mmr1.config import ConfigError, RunConfig
from megatron_mmr1.parallel import DistInfo
from megatron_mmr1.training import micro_batches as mbs
from megatron_mmr1.training.checkpointing import Checkpointer, export_hf, load_checkpoint, resolve_load_dir
from megatron_mmr1.training.faults import SkipCounter, StopSignal
from megatron_mmr1.training.monitor import PhaseTimer, RunMonitor
from megatron_mmr1.training.engine import (build_optimizer, build_policy, build_scheduler, count_params, current_lr,
                                          forward_backward, make_forward_step, reduce_loss_dicts, seq_pad_multiple,
                                          sum_metric, token_budget, token_logprobs, train_step, varlen_attention)
from megatron_mmr1.utils.logging import get_logger

logger = get_logger(__name__)


# ---- the loss ------------------------------------------------------------------------------------------

def sft_loss(cfg: RunConfig, chunk: Any, mb: mbs.MicroBatch, hidden: torch.Tensor):
    """(sum of -log p over loss tokens, their count, metrics): megatron's per-token-loss contract."""
    logp = token_logprobs(cfg, chunk, hidden, mb.targets)  # (b, T) fp32
    loss_sum = -(logp * mb.loss_weight).sum()
    n = (mb.loss_weight > 0).sum()
    return loss_sum, n.to(torch.int), {"loss": sum_metric(loss_sum, n)}


# ---- data ----------------------------------------------------------------------------------------------

def example_to_sequence(ex: Any) -> mbs.TrainSequence:
    return mbs.TrainSequence(input_ids=torch.as_tensor(ex.input_ids, dtype=torch.long),
                             targets=mbs.next_token_targets(ex.labels), pixel_values=ex.pixel_values,
                             image_grid_thw=ex.image_grid_thw)


def build_micro_batches(cfg: RunConfig, dataset: Any, indices: list[int], info: DistInfo,
                        pad_id: int) -> tuple[list[mbs.MicroBatch], int]:
    """This rank's micro-batches of the global batch ``indices`` (plan from token counts, fetch only
    this rank's conversations; rows padded to a multiple of tp under sequence parallelism).
    Returns (micro-batches, real tokens of the global batch)."""
    lengths = [int(dataset.lengths[i]) for i in indices]
    budget = token_budget(cfg)
    multiple = seq_pad_multiple(cfg)
    plan = mbs.plan_micro_batches(lengths, info.dp, max_tokens=budget, micro_batch_size=cfg.training.micro_batch_size)
    mine = plan[info.dp_rank]
    wanted = [indices[j] for mb in mine for j in mb]
    fetched = {ex.index: ex for ex in dataset.get_batch(wanted).samples}  # skipped records are absent
    out = []
    for mb in mine:
        ids = [j for j in mb if indices[j] in fetched]
        seqs = [example_to_sequence(fetched[indices[j]]) for j in ids]
        out.append(mbs.build_micro_batch(seqs, ids, budget is not None, pad_id, multiple))
    return [m.to(info.device) for m in out], sum(lengths)


class GlobalBatches:
    """Epoch-ordered global batches of dataset indices; state = (epoch, batches consumed)."""

    def __init__(self, num_items: int, global_batch_size: int, seed: int) -> None:
        from megatron_mmr1.data.loader import ResumableBatchSampler

        if num_items < global_batch_size:
            raise ConfigError(f"training.global_batch_size={global_batch_size} is larger than the "
                              f"{num_items} usable records of data.train_files")
        self.sampler = ResumableBatchSampler(num_items, global_batch_size, shuffle=True, seed=seed, drop_last=True)
        self._cache: tuple[int, list] = (-1, [])

    @property
    def per_epoch(self) -> int:
        return len(self.sampler.batches(0))

    def next(self) -> list[int]:
        s = self.sampler
        if self._cache[0] != s.epoch:
            self._cache = (s.epoch, s.batches(s.epoch))
        batches = self._cache[1]
        if s.start >= len(batches):
            s.epoch, s.start = s.epoch + 1, 0
            return self.next()
        s.start += 1
        return batches[s.start - 1]

    def state_dict(self) -> dict:
        return {"epoch": self.sampler.epoch, "batches_consumed": self.sampler.start, "seed": self.sampler.seed}

    def load_state_dict(self, state: dict) -> None:
        self.sampler.epoch, self.sampler.start, self.sampler.seed = state["epoch"], state["batches_consumed"], state["seed"]


# ---- evaluation ----------------------------------------------------------------------------------------

@torch.no_grad()
def validation_loss(cfg: RunConfig, chunks: list, dataset: Any, info: DistInfo, pad_id: int, varlen: bool) -> float:
    """Token-mean loss over the whole validation set (forward only, same micro-batching)."""
    for c in chunks:
        c.eval()
    total, count = 0.0, 0.0
    g = cfg.training.global_batch_size
    step = make_forward_step(cfg, sft_loss, varlen)
    for start in range(0, len(dataset), g):
        indices = list(range(start, min(len(dataset), start + g)))
        micro, _ = build_micro_batches(cfg, dataset, indices, info, pad_id)
        reduced = reduce_loss_dicts(forward_backward(chunks, step, micro, forward_only=True), info.device)
        total += reduced.get("loss", 0.0) * reduced.get("loss__count", 0.0)
        count += reduced.get("loss__count", 0.0)
    for c in chunks:
        c.train()
    return total / max(count, 1.0)


# ---- the loop ------------------------------------------------------------------------------------------

def run(cfg: RunConfig, info: DistInfo) -> dict[str, Any]:
    from megatron_mmr1.data.dataset import build_dataset
    from megatron_mmr1.data.tokenizer import load_tokenizer

    if cfg.data.kind != "sft":
        raise ConfigError("training.mode=sft needs data.kind=sft (conversation records)")
    if not cfg.data.train_files:
        raise ConfigError("training.mode=sft needs data.train_files")
    tok_path = cfg.model.tokenizer_path or cfg.model.hf_path
    if not tok_path:
        raise ConfigError("training.mode=sft needs model.tokenizer_path or model.hf_path")
    tokenizer = load_tokenizer(tok_path)
    train_ds = build_dataset(cfg.data, tokenizer)
    val_ds = build_dataset(cfg.data, tokenizer, files=cfg.data.val_files) if cfg.data.val_files else None
    pad_id = getattr(train_ds.formatter, "endoftext_id", 0) or 0
    batches = GlobalBatches(len(train_ds), cfg.training.global_batch_size, cfg.data.seed)
    total = cfg.training.epochs * batches.per_epoch if cfg.training.epochs else cfg.training.train_iters
    varlen = varlen_attention(cfg)

    chunks = build_policy(cfg)
    optimizer = build_optimizer(cfg, chunks)
    scheduler = build_scheduler(cfg, optimizer, total)
    skips = SkipCounter(cfg.training.max_skipped_steps)
    start, tokens_seen = 0, 0
    load_dir = resolve_load_dir(cfg.checkpoint.load) if cfg.checkpoint.load else None
    if load_dir is not None:
        meta = load_checkpoint(load_dir, chunks, optimizer, scheduler)
        start = int(meta["step"])
        batches.load_state_dict(meta["trainer"]["data"])
        skips.load_state_dict(meta["trainer"]["skips"])
        tokens_seen = int(meta["trainer"].get("tokens_seen", 0))
    logger.info("SFT: %d conversations, %d steps (%d per epoch) from step %d, %.2fM params/rank, tp=%d pp=%d dp=%d, "
                "%s micro-batches", len(train_ds), total, batches.per_epoch, start,
                count_params(chunks) / 1e6, info.tp, info.pp, info.dp,
                f"packed to {token_budget(cfg)} tokens" if token_budget(cfg) else
                f"{cfg.training.micro_batch_size}-sequence")

    def trainer_state() -> dict:
        return {"data": batches.state_dict(), "skips": skips.state_dict(), "tokens_seen": tokens_seen}

    ckpt = Checkpointer(cfg, chunks, optimizer, scheduler, trainer_state)

    monitor = RunMonitor(cfg, info.rank, total, start, desc="sft")
    forward_step = make_forward_step(cfg, sft_loss, varlen)
    timer = PhaseTimer()
    val_first = None
    if val_ds is not None:
        val_first = validation_loss(cfg, chunks, val_ds, info, pad_id, varlen)
        monitor.scalars({"loss": val_first}, start, prefix="val/")
        monitor.write(f"validation loss at step {start}: {val_first:.4f}")
    step = start
    interrupted = False
    with StopSignal() as stop:
        while step < total:
            t0 = time.perf_counter()
            with timer("data"):
                micro, real_tokens = build_micro_batches(cfg, train_ds, batches.next(), info, pad_id)
            with timer("train"):
                result = train_step(cfg, chunks, optimizer, scheduler, forward_step, micro, info.device)
            step += 1
            skips.update(result.skipped, step, result.loss, result.grad_norm)
            tokens_seen += real_tokens
            dt = time.perf_counter() - t0
            metrics = {"loss": result.loss, "lr": current_lr(optimizer), "grad_norm": result.grad_norm,
                       "tokens_per_s": real_tokens / max(dt, 1e-9), "tokens": real_tokens,
                       "loss_tokens": result.num_tokens, "micro_batches": len(micro),
                       "skipped_steps": skips.total, "step_s": dt,
                       **{f"time/{k}_s": v for k, v in timer.pop().items()}}
            monitor.step(step, metrics, ("loss", "grad_norm", "lr", "tokens_per_s"))
            if val_ds is not None and cfg.training.eval_interval and step % cfg.training.eval_interval == 0 \
                    and step < total:
                val = validation_loss(cfg, chunks, val_ds, info, pad_id, varlen)
                monitor.scalars({"loss": val}, step, prefix="val/")
                monitor.write(f"validation loss at step {step}: {val:.4f}")
            if stop.should_stop(info.device):
                interrupted = True
                break
            ckpt.periodic(step, total)
    if interrupted:
        monitor.write(ckpt.interrupted(step, total))
        return monitor.summary({"interrupted_at": step, "tokens_seen": tokens_seen}, ("loss",))
    val_last = validation_loss(cfg, chunks, val_ds, info, pad_id, varlen) if val_ds is not None else None
    if val_last is not None:
        monitor.scalars({"loss": val_last}, step, prefix="val/")
    if step > start:
        ckpt.save(step)
    if cfg.checkpoint.export_hf:
        export_hf(cfg, chunks, cfg.checkpoint.export_hf)
    extra = {"steps": step, "tokens_seen": tokens_seen, "skipped_steps": skips.total}
    if val_first is not None:
        extra.update(val_loss_first=val_first, val_loss_last=val_last)
    return monitor.summary(extra, ("loss", "step_s", "tokens_per_s"), window=max(1, min(5, (step - start) // 4)))
