"""Long-CoT cold-start SFT (MMR1 stage 1) on megatron-core.

One step = ``training.global_batch_size`` conversations (the data order is a pure function of the seed
and the epoch, so a resumed run replays the same batches), planned into micro-batches by token budget
(packed rows, no attention across conversations) and balanced over DP ranks; the loss is the token
mean over the assistant tokens of the whole global batch, through the fused log-prob kernel.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Optional

import torch

from megatron_mmr1.config import ConfigError, RunConfig
from megatron_mmr1.parallel import DistInfo
from megatron_mmr1.training.engine import (forward_backward, make_forward_step, min_micro_batches, reduce_loss_dicts,
                                           seq_pad_multiple, sum_metric, token_budget, token_logprobs, train_step)
from megatron_mmr1.training.micro_batches import (MicroBatch, TrainSequence, build_micro_batch, next_token_targets,
                                                  plan_micro_batches)
from megatron_mmr1.training.trainer import Trainer
from megatron_mmr1.utils.logging import get_logger

logger = get_logger(__name__)


# ---- the loss ------------------------------------------------------------------------------------------

def sft_loss_func(cfg: RunConfig, chunk: Any, mb: MicroBatch, hidden: torch.Tensor):
    """(sum of -log p over loss tokens, their count, metrics): megatron's per-token-loss contract."""
    logp = token_logprobs(cfg, chunk, hidden, mb.targets)  # (b, T) fp32
    loss_sum = -(logp * mb.loss_weight).sum()
    n = (mb.loss_weight > 0).sum()
    return loss_sum, n.to(torch.int), {"loss": sum_metric(loss_sum, n)}


# ---- data ----------------------------------------------------------------------------------------------

def example_to_sequence(ex: Any) -> TrainSequence:
    return TrainSequence(input_ids=torch.as_tensor(ex.input_ids, dtype=torch.long),
                             targets=next_token_targets(ex.labels), pixel_values=ex.pixel_values,
                             image_grid_thw=ex.image_grid_thw)


def build_micro_batches(cfg: RunConfig, dataset: Any, indices: list[int], info: DistInfo,
                        pad_id: int) -> tuple[list[MicroBatch], int]:
    """This rank's micro-batches of the global batch ``indices`` (plan from token counts, fetch only
    this rank's conversations; rows padded to a multiple of tp under sequence parallelism).
    Returns (micro-batches, real tokens of the global batch)."""
    lengths = [int(dataset.lengths[i]) for i in indices]
    budget = token_budget(cfg)
    multiple = seq_pad_multiple(cfg)
    plan = plan_micro_batches(lengths, info.dp, max_tokens=budget, micro_batch_size=cfg.training.micro_batch_size,
                              min_count=min_micro_batches(cfg))
    mine = plan[info.dp_rank]
    wanted = [indices[j] for mb in mine for j in mb]
    fetched = {ex.index: ex for ex in dataset.get_batch(wanted).samples}  # skipped records are absent
    out = []
    for mb in mine:
        ids = [j for j in mb if indices[j] in fetched]
        seqs = [example_to_sequence(fetched[indices[j]]) for j in ids]
        out.append(build_micro_batch(seqs, ids, budget is not None, pad_id, multiple))
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
    step = make_forward_step(cfg, sft_loss_func, varlen)
    for start in range(0, len(dataset), g):
        indices = list(range(start, min(len(dataset), start + g)))
        micro, _ = build_micro_batches(cfg, dataset, indices, info, pad_id)
        reduced = reduce_loss_dicts(forward_backward(chunks, step, micro, forward_only=True), info.device)
        total += reduced.get("loss", 0.0) * reduced.get("loss__count", 0.0)
        count += reduced.get("loss__count", 0.0)
    for c in chunks:
        c.train()
    return total / max(count, 1.0)


# ---- the trainer ---------------------------------------------------------------------------------------

@dataclass
class SFTState:
    """What an SFT checkpoint carries besides weights, optimizer, scheduler and RNG."""

    data: dict
    """:class:`GlobalBatches` position (epoch, batches consumed, seed)."""
    skips: dict
    tokens_seen: int = 0


class SFTTrainer(Trainer):
    """Cold-start SFT: global batches in a seeded epoch order, token-mean loss over assistant tokens."""

    desc = "sft"
    line_keys = ("loss", "grad_norm", "lr", "tokens_per_s")
    summary_keys = ("loss", "step_s", "tokens_per_s")

    def __init__(self, cfg: RunConfig, info: DistInfo) -> None:
        from megatron_mmr1.data.dataset import build_dataset
        from megatron_mmr1.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.tokenizer_path or cfg.model.hf_path)
        self.train_ds = build_dataset(cfg.data, tokenizer)
        self.val_ds = build_dataset(cfg.data, tokenizer, files=cfg.data.val_files) if cfg.data.val_files else None
        self.pad_id = getattr(self.train_ds.formatter, "endoftext_id", 0) or 0
        self.batches = GlobalBatches(len(self.train_ds), cfg.training.global_batch_size, cfg.data.seed)
        total = cfg.training.epochs * self.batches.per_epoch if cfg.training.epochs else cfg.training.train_iters
        super().__init__(cfg, info, total, 1, sft_loss_func)
        self.tokens_seen = 0
        self.val_first: Optional[float] = None
        self.val_last: Optional[float] = None
        self.resume()
        logger.info("SFT: %d conversations, %d steps (%d per epoch) from step %d, %.2fM params/rank, tp=%d pp=%d "
                    "dp=%d, %s micro-batches", len(self.train_ds), total, self.batches.per_epoch, self.step,
                    self.params_m, info.tp, info.pp, info.dp,
                    f"packed to {token_budget(cfg)} tokens" if token_budget(cfg) else
                    f"{cfg.training.micro_batch_size}-sequence")

    def train_step(self) -> dict[str, float]:
        with self.timer("data"):
            micro, real_tokens = build_micro_batches(self.cfg, self.train_ds, self.batches.next(), self.info,
                                                     self.pad_id)
        with self.timer("train"):
            result = train_step(self.cfg, self.chunks, self.optimizer, self.scheduler, self.forward_step, micro,
                                self.info.device)
        self.skips.update(result.skipped, self.step + 1, result.loss, result.grad_norm)
        self.tokens_seen += real_tokens
        return {"loss": result.loss, "grad_norm": result.grad_norm, "tokens": real_tokens,
                "loss_tokens": result.num_tokens, "micro_batches": len(micro)}

    def validate(self) -> Optional[float]:
        """Validation loss at the current step, logged (None without ``data.val_files``)."""
        if self.val_ds is None:
            return None
        val = validation_loss(self.cfg, self.chunks, self.val_ds, self.info, self.pad_id, self.varlen)
        self.monitor.scalars({"loss": val}, self.step, prefix="val/")
        self.monitor.write(f"validation loss at step {self.step}: {val:.4f}")
        return val

    def on_start(self) -> None:
        self.val_first = self.validate()

    def after_step(self, metrics: dict[str, float]) -> None:
        interval = self.cfg.training.eval_interval
        if interval and self.step % interval == 0 and self.step < self.total_steps:
            self.validate()

    def on_end(self) -> None:
        self.val_last = self.validate()

    def summary_extra(self) -> dict[str, Any]:
        out: dict[str, Any] = {"tokens_seen": self.tokens_seen}
        if self.val_first is not None and self.val_last is not None:
            out.update(val_loss_first=self.val_first, val_loss_last=self.val_last)
        return out

    def state_dict(self) -> dict[str, Any]:
        return asdict(SFTState(data=self.batches.state_dict(), skips=self.skips.state_dict(),
                               tokens_seen=self.tokens_seen))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        st = SFTState(**state)
        self.batches.load_state_dict(st.data)
        self.skips.load_state_dict(st.skips)
        self.tokens_seen = int(st.tokens_seen)


def run(cfg: RunConfig, info: DistInfo) -> dict[str, Any]:
    return SFTTrainer(cfg, info).train()
