"""GRPO with Variance-Aware Sampling (MMR1 stage 2) on megatron-core and SGLang (or the CPU stand-ins).

One step (``training.mode=grpo``, :meth:`GRPOTrainer.train_step`)::

    batch = rollout.generate(step, version)     # VAS draw (a due VPS refresh scores prompts first), n responses
                                                # each, rewards, group-normalised advantages, sampler.observe
    reclaim_gpu()                               # colocated: the servers give the GPU back, the trainer's state
                                                # returns (rollout.offload_trainer)
    old / ref log-probs                         # no grad; old only when the batch takes > 1 update
    for each optimizer step: train_step(...)    # token-budget micro-batches, exact token-mean of grpo_loss_func
    rollout.update_weights(chunks, version, offload.before_kv)  # servers serve the new weights, tagged with
                                                # the step; the trainer's state goes to the host before their KV cache

The :class:`RolloutManager` hides which rank drives the servers, the reward pool and the VAS sampler
(rank 0); every rank trains. The loss is the fused GRPO loss from the last hidden states and the
vocab-parallel head (``mmr1_kernels``).
"""

from __future__ import annotations

import contextlib
from dataclasses import asdict, dataclass
from typing import Any, Iterator, Optional

import torch

from megatron_mmr1.algorithms.grpo import fused_loss_kwargs
from megatron_mmr1.config import RunConfig
from megatron_mmr1.parallel import DistInfo
from megatron_mmr1.training.engine import (StepResult, min_micro_batches, seq_pad_multiple, sum_metric, token_budget,
                                           token_logprobs, train_step)
from megatron_mmr1.training.experience import RolloutRecord, to_train_sequences
from megatron_mmr1.training.micro_batches import MicroBatch, build_micro_batch, padding_ratio, plan_micro_batches
from megatron_mmr1.training.offload import TrainerOffload
from megatron_mmr1.training.policy import ReferencePolicy, check_rollout_versions, fill_logprobs
from megatron_mmr1.training.rollout_manager import RolloutManager
from megatron_mmr1.training.trainer import Trainer
from megatron_mmr1.utils.logging import get_logger

logger = get_logger(__name__)


# ---- the loss ------------------------------------------------------------------------------------------

def aggregation_weights(mb: MicroBatch, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token weights w and the normaliser count of this micro-batch, so that the step's loss is
    sum(w * l) / sum(count) over the whole optimizer step: token-mean (w = 1, count = tokens),
    seq-mean-token-mean (w = 1 / len_i, count = sequences), seq-mean-token-sum (w = 1, count = sequences)."""
    base = mb.loss_weight
    active = base > 0
    if mode == "token-mean":
        return base, active.sum()
    per_seq = mb.unpack(active.float())
    n_seqs = sum(int(x.sum() > 0) for x in per_seq)
    if mode == "seq-mean-token-sum":
        return base, torch.tensor(n_seqs)
    inv = torch.cat([torch.full_like(x, 1.0 / max(float(x.sum()), 1.0)) for x in per_seq] or [base.new_zeros(0)])
    w = torch.zeros_like(base).reshape(-1)
    w[: inv.numel()] = inv  # packed: sequences first, padding last; padded rows: see _seq_weights
    w = w.reshape(base.shape) if mb.packed else _seq_weights(mb, per_seq)
    return w * base, torch.tensor(n_seqs)


def _seq_weights(mb: MicroBatch, per_seq: list[torch.Tensor]) -> torch.Tensor:
    w = torch.zeros_like(mb.loss_weight)
    for i, x in enumerate(per_seq):
        w[i, : x.numel()] = 1.0 / max(float(x.sum()), 1.0)
    return w


def grpo_loss_func(cfg: RunConfig, chunk: Any, mb: MicroBatch, hidden: torch.Tensor):
    """(sum of weighted per-token GRPO losses, normaliser count, metric sums): megatron's per-token
    contract, so the optimizer step's loss is exactly the configured aggregation over all its tokens."""
    from megatron.core import parallel_state as mpu
    from mmr1_kernels import fused_grpo_loss

    a, temp = cfg.algorithm, cfg.rollout.temperature
    # None: one update per rollout batch, the policy *is* the old policy (ratio 1); the loss kernel takes
    # the current log-probs as old in the same pass instead of a second LM-head GEMM here
    old = mb.token_data.get("old_logp")
    ref = mb.token_data.get("ref_logp") if a.use_kl_loss else None
    w, count = aggregation_weights(mb, a.loss_agg_mode)
    active = mb.loss_weight > 0
    rollout = mb.token_data.get("rollout_logp")
    if a.tis_clip is not None and rollout is not None:  # truncated importance sampling vs the rollout engine
        if old is None:  # the weights need the old log-probs before the loss pass
            with torch.no_grad():
                old = token_logprobs(cfg, chunk, hidden.detach(), mb.targets, temperature=temp)
        w = w * torch.exp(old - rollout).clamp(max=a.tis_clip) * active
    kwargs = dict(fused_loss_kwargs(a), loss_agg_mode="token-mean")
    out = fused_grpo_loss(hidden, chunk.output_layer_weight(), mb.targets.clamp(min=0), old, ref,
                          mb.token_data["adv"], w, temperature=temp, tp_group=mpu.get_tensor_model_parallel_group(),
                          **kwargs)
    if old is None:
        old = out.logp
    loss_sum = out.loss * w.sum()
    n_tok = active.sum()
    metrics = {"loss": sum_metric(loss_sum, count),
               "policy/clip_frac": sum_metric(out.clip_frac * n_tok, n_tok),
               "policy/approx_kl": sum_metric(out.approx_kl * n_tok, n_tok),
               "policy/kl_ref": sum_metric(out.kl * n_tok, n_tok),
               "policy/entropy": sum_metric((out.entropy * active).sum(), n_tok)}
    if rollout is not None:
        diff = (old - rollout).abs() * active
        metrics["mismatch/logp_abs_mean"] = sum_metric(diff.sum(), n_tok)
        metrics["mismatch/logp_abs_max"] = sum_metric(diff.max(), torch.tensor(1.0))
    return loss_sum, count.to(torch.int), metrics


# ---- one rollout batch's micro-batches -----------------------------------------------------------------

@dataclass
class UpdatePlan:
    """A rollout batch split into optimizer steps of ``global_batch_size`` sequences, each planned into this
    rank's micro-batches."""

    micro_batches: list[list[MicroBatch]]
    """Per optimizer step, this rank's micro-batches."""
    computed_over_real: float
    """Tokens computed (with padding) / real tokens."""
    padded_over_real: float
    """What plain padding to the longest sequence would compute / real tokens."""


def plan_updates(cfg: RunConfig, records: list[RolloutRecord], dataset: Any, info: DistInfo, pad_id: int,
                 cache: Optional[dict] = None) -> UpdatePlan:
    gbs = cfg.training.global_batch_size
    budget = token_budget(cfg)
    multiple = seq_pad_multiple(cfg)
    cache = {} if cache is None else cache
    steps, computed, padded, real = [], 0.0, 0.0, 0.0
    for start in range(0, len(records), gbs):
        ids = list(range(start, min(len(records), start + gbs)))
        lengths = [len(records[i].prompt_ids) + len(records[i].response_ids) for i in ids]
        plan = plan_micro_batches(lengths, info.dp, max_tokens=budget, micro_batch_size=cfg.training.micro_batch_size,
                                  min_count=min_micro_batches(cfg))
        total = sum(lengths)
        real += total
        computed += padding_ratio(plan, lengths, packed=budget is not None) * total
        padded += len(lengths) * max(lengths)
        mine = [[ids[j] for j in mb] for mb in plan[info.dp_rank]]
        seqs = to_train_sequences(records, dataset, [i for mb in mine for i in mb], cache)
        micro = [build_micro_batch([seqs[i] for i in mb], mb, budget is not None, pad_id, multiple) for mb in mine]
        steps.append([m.to(info.device) for m in micro])
    return UpdatePlan(steps, computed / max(real, 1.0), padded / max(real, 1.0))


def update_metrics(results: list[StepResult], plan: UpdatePlan) -> dict[str, float]:
    """One rollout batch's optimizer steps -> the step's metrics (skipped steps left out when others ran)."""
    ok = [r for r in results if not r.skipped] or results
    out = {"loss": sum(r.loss for r in ok) / len(ok), "grad_norm": max(r.grad_norm for r in ok),
           "optimizer_steps": float(len(results)), "micro_batches": float(sum(len(s) for s in plan.micro_batches)),
           "batching/computed_over_real": plan.computed_over_real, "batching/padded_over_real": plan.padded_over_real}
    for k in sorted({k for r in ok for k in r.metrics}):
        vals = [r.metrics[k] for r in ok if k in r.metrics]
        out[k] = max(vals) if k.endswith("_max") else sum(vals) / len(vals)
    return out


def weight_staleness(current: Optional[str], sampled_with: Optional[str]) -> int:
    """Weight versions between the rollouts' and the policy's (versions are step numbers; None = 0)."""
    return int(current or 0) - int(sampled_with or 0)


# ---- the trainer ---------------------------------------------------------------------------------------

@dataclass
class GRPOState:
    """What a GRPO checkpoint carries besides weights, optimizer, scheduler and RNG."""

    sampler: Optional[dict]
    """Rank 0's VAS sampler (VPS scores, RNG, position); None on the other ranks."""
    skips: dict
    weight_version: Optional[str] = None
    """The version the servers hold (the step of the last sync)."""
    rollouts: int = 0
    """Training rollouts so far."""


class GRPOTrainer(Trainer):
    """GRPO + VAS (MMR1 stage 2). ``with_rollout=False``: no servers, for training on given records."""

    desc = "grpo"
    line_keys = ("reward/mean", "reward/accuracy", "loss", "grad_norm", "vas/zero_variance_frac",
                 "mismatch/logp_abs_mean")
    summary_keys = ("reward/mean", "reward/accuracy", "reward/format", "loss", "grad_norm",
                    "vas/zero_variance_frac", "mismatch/logp_abs_mean", "step_s")
    summary_window = 10

    def __init__(self, cfg: RunConfig, info: DistInfo, with_rollout: bool = True) -> None:
        from megatron_mmr1.data.dataset import build_dataset
        from megatron_mmr1.data.tokenizer import load_tokenizer

        tokenizer = load_tokenizer(cfg.model.tokenizer_path or cfg.model.hf_path)
        self.dataset = build_dataset(cfg.data, tokenizer)
        self.pad_id = getattr(self.dataset.formatter, "endoftext_id", 0) or 0
        t = cfg.training
        updates = (t.rollout_batch_size * cfg.rollout.n) // t.global_batch_size
        super().__init__(cfg, info, t.rollout_steps, updates, grpo_loss_func)
        # the initial (SFT) weights, taken before a resume loads the trained ones
        self.reference = ReferencePolicy(self.chunks) if cfg.algorithm.use_kl_loss else None
        self.offload = TrainerOffload(self.chunks, self.optimizer, enabled=with_rollout and cfg.rollout.offload_trainer,
                                      timer=self.timer)
        self.version: Optional[str] = None
        self.rollouts_total = 0
        self._sampler_state: Optional[dict] = None
        resumed = self.resume() is not None
        self.rollout: Optional[RolloutManager] = None
        if with_rollout:
            self.offload.offload()  # the servers start on a GPU without the trainer's state
            self.rollout = RolloutManager(cfg, info, self.dataset, tokenizer, self.timer, self.total_steps,
                                          self._sampler_state)
            if resumed:  # the servers start with the initial weights
                self.version = self.version or str(self.step)
                self.reclaim_gpu()
                self.rollout.update_weights(self.chunks, self.version, self.offload.before_kv)
            self.timer.pop()  # not the first step's times
        logger.info("GRPO: %d prompts, %d steps from step %d (%d prompts x %d responses, %d optimizer step(s) "
                    "each), %.2fM params/rank, tp=%d pp=%d dp=%d, sampler %s, refresh %s", len(self.dataset),
                    self.total_steps, self.step, t.rollout_batch_size, cfg.rollout.n, updates, self.params_m,
                    info.tp, info.pp, info.dp, cfg.sampler.type, cfg.vps.refresh)

    def train_step(self) -> dict[str, float]:
        """One iteration of MMR1's Algorithm 1."""
        batch = self.rollout.generate(self.step, self.version)  # VAS draw, rollouts, rewards, advantages
        check_rollout_versions(batch.records, batch.version)
        staleness = weight_staleness(self.version, batch.version)
        if staleness > 1:
            raise RuntimeError(f"step {self.step + 1}: rollouts are {staleness} weight versions old (bound: 1)")
        self.rollouts_total += len(batch.records)
        metrics = dict(batch.metrics, **{"async/staleness": float(staleness)})
        self.reclaim_gpu()  # colocated: servers give the GPU back, trainer state returns (before any forward)
        if batch.records:
            metrics.update(self.update_policy(batch.records))
        else:
            self.monitor.write(f"step {self.step + 1}: every group had equal rewards; nothing to train on")
        self.rollout.finish_generation()
        self.version = str(self.step + 1)
        # the servers take the new weights; the trainer's state leaves the GPU before their KV cache returns
        metrics.update(self.rollout.update_weights(self.chunks, self.version, self.offload.before_kv))
        metrics.update(self.offload.metrics())
        for i, text in enumerate(batch.samples_text):
            self.monitor.text(f"samples/{i}", text, self.step + 1)
        tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in batch.records)
        return dict(metrics, tokens=float(tokens), rollouts_total=float(self.rollouts_total))

    def update_policy(self, records: list[RolloutRecord]) -> dict[str, float]:
        """Train on one rollout batch: old / reference log-probs (no grad), then its optimizer steps."""
        cfg, temperature = self.cfg, self.cfg.rollout.temperature
        with self.timer("logprob"):
            plan = plan_updates(cfg, records, self.dataset, self.info, self.pad_id)
            if len(plan.micro_batches) > 1:  # later updates of this batch need the log-probs that sampled it
                fill_logprobs(cfg, self.chunks, plan.micro_batches, "old_logp", temperature, self.varlen)
            if self.reference is not None:
                with self.reference.swapped_in(self.chunks):
                    fill_logprobs(cfg, self.chunks, plan.micro_batches, "ref_logp", temperature, self.varlen)
        results = []
        with self.timer("train"):
            for micro in plan.micro_batches:
                results.append(train_step(cfg, self.chunks, self.optimizer, self.scheduler, self.forward_step, micro,
                                          self.info.device))
                self.skips.update(results[-1].skipped, self.step + 1, results[-1].loss, results[-1].grad_norm)
        return update_metrics(results, plan)

    def on_start(self) -> None:
        self.rollout.evaluate(self.step, self.monitor, at_start=True)

    def after_step(self, metrics: dict[str, float]) -> None:
        self.rollout.evaluate(self.step, self.monitor)

    def summary_extra(self) -> dict[str, Any]:
        return {"rollouts_total": self.rollouts_total, **self.rollout.eval_summary()}

    def reclaim_gpu(self) -> None:
        """Colocated: the servers give the GPU back, then the trainer's state returns from the host."""
        self.rollout.release_memory()
        self.offload.reload()

    @contextlib.contextmanager
    def resident(self) -> Iterator[None]:
        """A save or export while the trainer's state is on the host: the servers release the GPU, the state
        returns, and after the save the servers get the same weights back (the state leaving before their KV
        cache), so trainer state and KV cache never share the GPU. Costs one reload and one weight sync."""
        if not self.offload.offloaded:
            yield
            return
        self.reclaim_gpu()
        yield  # a failed save ends the run: no sync after it
        self.rollout.update_weights(self.chunks, self.version, self.offload.before_kv)

    def state_dict(self) -> dict[str, Any]:
        sampler = self.rollout.sampler_state() if self.rollout is not None else None
        return asdict(GRPOState(sampler=sampler, skips=self.skips.state_dict(),
                                weight_version=self.version, rollouts=self.rollouts_total))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        st = GRPOState(**state)
        self.skips.load_state_dict(st.skips)
        self.version, self.rollouts_total, self._sampler_state = st.weight_version, int(st.rollouts), st.sampler

    def close(self) -> None:
        if self.rollout is not None:
            self.rollout.close()


def run(cfg: RunConfig, info: DistInfo) -> dict[str, Any]:
    trainer = GRPOTrainer(cfg, info)
    try:
        return trainer.train()
    finally:
        trainer.close()
