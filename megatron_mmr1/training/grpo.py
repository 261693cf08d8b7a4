"""GRPO with Variance-Aware Sampling (MMR1 stage 2) on megatron-core and SGLang (or the CPU stand-ins).

One step (``training.mode=grpo``)::

    indices = sampler.next_batch()              # VAS; a due VPS refresh scores prompts with fresh rollouts
    samples = client.generate(prompts)          # n responses each, with the servers' log-probs   (rank 0)
    rewards -> advantages -> sampler.observe    # format + accuracy, group-normalised            (rank 0)
    records = broadcast_batch(...)              # token ids, advantages, log-probs to every rank
    old / ref log-probs                         # no grad; old only when the batch takes > 1 update
    for each optimizer step: train_step(grpo_loss)   # token budget micro-batches, exact token-mean
    weight sync                                 # servers serve the new weights, tagged with the step

Rank 0 drives the servers, the reward pool and the VAS sampler; every rank trains. The loss is the
fused GRPO loss from the last hidden states and the vocab-parallel head (``mmr1_kernels``).
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path
from typing import Any, Optional

import torch
import torch.distributed as dist

from megatron_mmr1.algorithms.grpo import fused_loss_kwargs
from megatron_mmr1.config import ConfigError, RunConfig
from megatron_mmr1.eval.results import EvalResult, PairedDiff, paired_difference
from megatron_mmr1.parallel import DistInfo
from megatron_mmr1.training import experience as xp
from megatron_mmr1.training import micro_batches as mbs
from megatron_mmr1.training.checkpointing import Checkpointer, export_hf, load_checkpoint, resolve_load_dir
from megatron_mmr1.training.faults import SkipCounter, StopSignal
from megatron_mmr1.training.monitor import PhaseTimer, RunMonitor
from megatron_mmr1.training.policy import ReferencePolicy, RolloutWeightSync, expected_version, fill_logprobs
from megatron_mmr1.training.engine import (build_optimizer, build_policy, build_scheduler, count_params, current_lr,
                                          make_forward_step, seq_pad_multiple, sum_metric, token_budget, token_logprobs,
                                          train_step, varlen_attention)
from megatron_mmr1.utils.logging import get_logger

logger = get_logger(__name__)


# ---- the loss ------------------------------------------------------------------------------------------

def aggregation_weights(mb: mbs.MicroBatch, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
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


def _seq_weights(mb: mbs.MicroBatch, per_seq: list[torch.Tensor]) -> torch.Tensor:
    w = torch.zeros_like(mb.loss_weight)
    for i, x in enumerate(per_seq):
        w[i, : x.numel()] = 1.0 / max(float(x.sum()), 1.0)
    return w


def grpo_loss(cfg: RunConfig, chunk: Any, mb: mbs.MicroBatch, hidden: torch.Tensor):
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


# ---- one step's micro-batches --------------------------------------------------------------------------

def optimizer_steps(cfg: RunConfig, records: list, dataset: Any, info: DistInfo, pad_id: int,
                    cache: dict) -> tuple[list[list[mbs.MicroBatch]], float, float]:
    """The step's responses in optimizer steps of ``global_batch_size`` sequences, each planned into this
    rank's micro-batches. Returns (steps, tokens computed / real tokens, plain-padding ratio)."""
    gbs = cfg.training.global_batch_size
    budget = token_budget(cfg)
    multiple = seq_pad_multiple(cfg)
    steps, computed, padded, real = [], 0.0, 0.0, 0.0
    for start in range(0, len(records), gbs):
        ids = list(range(start, min(len(records), start + gbs)))
        lengths = [len(records[i].prompt_ids) + len(records[i].response_ids) for i in ids]
        plan = mbs.plan_micro_batches(lengths, info.dp, max_tokens=budget, micro_batch_size=cfg.training.micro_batch_size)
        total = sum(lengths)
        real += total
        computed += mbs.padding_ratio(plan, lengths, packed=budget is not None) * total
        padded += len(lengths) * max(lengths)
        mine = [[ids[j] for j in mb] for mb in plan[info.dp_rank]]
        seqs = xp.to_train_sequences(records, dataset, [i for mb in mine for i in mb], cache)
        micro = [mbs.build_micro_batch([seqs[i] for i in mb], mb, budget is not None, pad_id, multiple) for mb in mine]
        steps.append([m.to(info.device) for m in micro])
    return steps, computed / max(real, 1.0), padded / max(real, 1.0)


def update_policy(cfg: RunConfig, info: DistInfo, chunks: list, optimizer, scheduler, forward_step, reference,
                  records: list, dataset: Any, pad_id: int, varlen: bool, timer: PhaseTimer,
                  before_train=None, skips: Optional[SkipCounter] = None, step: int = 0) -> dict[str, float]:
    """Train on one rollout batch: old / reference log-probs (no grad), then its optimizer steps."""
    if before_train is not None:  # colocated: the servers give their memory back before any trainer forward
        before_train()
    with timer("logprob"):
        steps, ratio, pad_ratio = optimizer_steps(cfg, records, dataset, info, pad_id, {})
        if len(steps) > 1:  # later updates of this batch need the log-probs of the weights that sampled it
            fill_logprobs(cfg, chunks, steps, "old_logp", cfg.rollout.temperature, varlen)
        if reference is not None:
            with reference.swapped_in(chunks):
                fill_logprobs(cfg, chunks, steps, "ref_logp", cfg.rollout.temperature, varlen)
    with timer("train"):
        results = [train_step(cfg, chunks, optimizer, scheduler, forward_step, micro, info.device) for micro in steps]
    for r in results:
        if skips is not None:
            skips.update(r.skipped, step, r.loss, r.grad_norm)
    return _update_metrics(results, ratio, pad_ratio, steps)


# ---- the loop ------------------------------------------------------------------------------------------

def _check(cfg: RunConfig) -> None:
    if cfg.data.kind != "rl":
        raise ConfigError("training.mode=grpo needs data.kind=rl (problem/answer records)")
    if not cfg.data.train_files:
        raise ConfigError("training.mode=grpo needs data.train_files")
    if not (cfg.model.tokenizer_path or cfg.model.hf_path):
        raise ConfigError("training.mode=grpo needs model.hf_path (or model.tokenizer_path with rollout.server_urls)")
    if not cfg.rollout.server_urls and not cfg.model.hf_path:
        raise ConfigError("stand-in rollout servers load model.hf_path: set it, or rollout.server_urls")


def run(cfg: RunConfig, info: DistInfo) -> dict[str, Any]:
    from megatron_mmr1.data.dataset import build_dataset
    from megatron_mmr1.data.tokenizer import load_tokenizer

    _check(cfg)
    rank0 = info.rank == 0
    tokenizer = load_tokenizer(cfg.model.tokenizer_path or cfg.model.hf_path)
    dataset = build_dataset(cfg.data, tokenizer)
    pad_id = getattr(dataset.formatter, "endoftext_id", 0) or 0
    updates_per_step = (cfg.training.rollout_batch_size * cfg.rollout.n) // cfg.training.global_batch_size
    total = cfg.training.train_iters
    varlen = varlen_attention(cfg)

    chunks = build_policy(cfg)
    reference = ReferencePolicy(chunks) if cfg.algorithm.use_kl_loss else None  # the initial (SFT) weights
    optimizer = build_optimizer(cfg, chunks)
    scheduler = build_scheduler(cfg, optimizer, total * updates_per_step)
    skips = SkipCounter(cfg.training.max_skipped_steps)
    start, version, meta = 0, None, None
    load_dir = resolve_load_dir(cfg.checkpoint.load) if cfg.checkpoint.load else None
    if load_dir is not None:
        meta = load_checkpoint(load_dir, chunks, optimizer, scheduler)
        start, version = int(meta["step"]), meta["trainer"].get("weight_version")
        skips.load_state_dict(meta["trainer"]["skips"])

    with contextlib.ExitStack() as stack:
        client = pool = sampler = None
        urls = None
        if rank0:
            from megatron_mmr1.data.vision import VisionSpec
            from megatron_mmr1.rewards import reward_pool
            from megatron_mmr1.rollout.client import RolloutClient
            from megatron_mmr1.rollout.servers import rollout_servers
            from megatron_mmr1.sampling.controller import PromptSampler

            urls = stack.enter_context(rollout_servers(cfg.rollout, model_dir=cfg.model.hf_path,
                                                       log_dir=f"{cfg.output_dir}/rollout_logs",
                                                       min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels))
            client = RolloutClient(cfg.rollout, urls, max_new_tokens=cfg.data.max_response_length,
                                   vision=VisionSpec.from_config(cfg.data))
            pool = stack.enter_context(reward_pool(cfg.reward))
            score_fn = xp.make_score_fn(dataset, client, cfg.reward, pool, cfg.vps.num_rollouts, cfg.rollout.seed,
                                        seed_key=lambda: sampler.sampler.consumed_batches)
            sampler = PromptSampler(len(dataset), cfg.training.rollout_batch_size, cfg.sampler, cfg.vps,
                                    score_fn, sync_weights=False)
            if meta is not None:
                sampler.load_state_dict(meta["trainer"]["sampler"])
            producer = xp.RolloutProducer(cfg, dataset, client, pool, sampler)
            stack.callback(producer.close)
        obj = [urls]
        dist.broadcast_object_list(obj, src=0)
        sync = RolloutWeightSync(cfg, obj[0], work_dir=cfg.output_dir)
        stack.callback(sync.close)
        if load_dir is not None:  # the servers still hold the initial weights
            sync.sync(chunks, version or str(start))
            version = version or str(start)

        logger.info("GRPO: %d prompts, %d steps from step %d (%d prompts x %d responses, %d optimizer step(s) "
                    "each), %.2fM params/rank, tp=%d pp=%d dp=%d, sampler %s, refresh %s", len(dataset), total,
                    start, cfg.training.rollout_batch_size, cfg.rollout.n, updates_per_step,
                    count_params(chunks) / 1e6, info.tp, info.pp, info.dp, cfg.sampler.type, cfg.vps.refresh)
        monitor = RunMonitor(cfg, info.rank, total, start, desc="grpo")
        forward_step = make_forward_step(cfg, grpo_loss, varlen)
        timer = PhaseTimer()
        evaluator = _Evaluator(cfg, client, tokenizer, monitor) if rank0 else None
        if evaluator is not None and evaluator.enabled and start == 0 and cfg.eval.at_start:
            evaluator(0)

        def trainer_state() -> dict:
            return {"sampler": producer.sampler_state() if rank0 else None, "skips": skips.state_dict(),
                    "weight_version": version, "rollouts": rollouts_total}

        ckpt = Checkpointer(cfg, chunks, optimizer, scheduler, trainer_state)

        rollouts_total = int(meta["trainer"].get("rollouts", 0)) if meta else 0
        step, interrupted = start, False
        with StopSignal() as stop:
            while step < total:
                t0 = time.perf_counter()
                batch = None
                if rank0:
                    with timer("rollout_wait"):
                        batch = producer.take(step, version)
                    if producer.async_mode and step + 1 < total:
                        producer.submit(step + 1, version)  # generated while this step trains: one version stale
                with timer("broadcast"):
                    batch = xp.broadcast_batch(batch)
                expected_version(batch.records, batch.version)
                staleness = _staleness(version, batch.version)
                if staleness > 1:
                    raise RuntimeError(f"step {step + 1}: rollouts are {staleness} weight versions old (bound: 1)")
                rollouts_total += len(batch.records)
                metrics: dict[str, float] = dict(batch.metrics, **{"async/staleness": float(staleness)})
                if batch.records:
                    metrics.update(update_policy(cfg, info, chunks, optimizer, scheduler, forward_step, reference,
                                                 batch.records, dataset, pad_id, varlen, timer, sync.release,
                                                 skips, step + 1))
                else:
                    monitor.write(f"step {step + 1}: every group had equal rewards; nothing to train on")
                step += 1
                if rank0:
                    with timer("rollout_wait"):
                        producer.wait()  # slime's order: the in-flight generation ends before weights change
                with timer("sync"):
                    version = str(step)
                    sync.sync(chunks, version)
                dt = time.perf_counter() - t0
                tokens = sum(len(r.prompt_ids) + len(r.response_ids) for r in batch.records)
                metrics.update({"lr": current_lr(optimizer), "tokens_per_s": tokens / max(dt, 1e-9), "step_s": dt,
                                "rollouts_total": float(rollouts_total), "skipped_steps": float(skips.total),
                                "sync/seconds": sync.last_seconds, "sync/bytes": float(sync.last_bytes),
                                **{f"time/{k}_s": v for k, v in timer.pop().items()}})
                monitor.step(step, metrics, ("reward/mean", "reward/accuracy", "loss", "grad_norm",
                                             "vas/zero_variance_frac", "mismatch/logp_abs_mean"))
                for i, text in enumerate(batch.samples_text if rank0 else []):
                    monitor.text(f"samples/{i}", text, step)
                if evaluator is not None and evaluator.due(step, total):
                    evaluator(step)
                if stop.should_stop(info.device):
                    interrupted = True
                    break
                ckpt.periodic(step, total)
        if interrupted:
            monitor.write(ckpt.interrupted(step, total))
        elif step > start:
            ckpt.save(step)
        if cfg.checkpoint.export_hf and not interrupted:
            export_hf(cfg, chunks, cfg.checkpoint.export_hf)
        extra: dict[str, Any] = {"steps": step, "rollouts_total": rollouts_total, "skipped_steps": skips.total}
        if interrupted:
            extra["interrupted_at"] = step
        if evaluator is not None:
            extra.update(evaluator.first_last())
        window = max(1, min(10, (step - start) // 4))
        return monitor.summary(extra, ("reward/mean", "reward/accuracy", "reward/format", "loss", "grad_norm",
                                       "vas/zero_variance_frac", "mismatch/logp_abs_mean", "step_s"), window)


def _staleness(current: Optional[str], sampled_with: Optional[str]) -> int:
    """Weight versions between the rollouts' and the policy's (versions are step numbers; None = 0)."""
    return int(current or 0) - int(sampled_with or 0)


def _update_metrics(results: list, ratio: float, pad_ratio: float, steps: list) -> dict[str, float]:
    ok = [r for r in results if not r.skipped] or results
    out = {"loss": sum(r.loss for r in ok) / len(ok), "grad_norm": max(r.grad_norm for r in ok),
           "optimizer_steps": float(len(results)), "micro_batches": float(sum(len(s) for s in steps)),
           "batching/computed_over_real": ratio, "batching/padded_over_real": pad_ratio}
    for k in sorted({k for r in ok for k in r.metrics}):
        vals = [r.metrics[k] for r in ok if k in r.metrics]
        out[k] = max(vals) if k.endswith("_max") else sum(vals) / len(vals)
    return out


class _Evaluator:
    """Held-out accuracy on ``data.val_files`` through the training's own servers (rank 0).

    Every eval is kept per response under ``output_dir/eval`` (one ``step_N`` column per eval in
    results.md), so the first and last evals can be compared question by question (paired)."""

    def __init__(self, cfg: RunConfig, client: Any, tokenizer: Any, monitor: RunMonitor) -> None:
        self.cfg, self.client, self.tokenizer, self.monitor = cfg, client, tokenizer, monitor
        self.enabled = bool(cfg.data.val_files) and bool(cfg.training.eval_interval)
        self.benchmarks = None
        self.results: list[tuple[int, EvalResult]] = []

    def due(self, step: int, total: int) -> bool:
        return self.enabled and (step % self.cfg.training.eval_interval == 0 or step == total)

    def __call__(self, step: int) -> None:
        from megatron_mmr1.eval import evaluate, load_benchmarks, write_outputs

        if self.benchmarks is None:
            self.benchmarks = load_benchmarks(self.cfg.data.val_files, self.cfg.data, self.cfg.eval.max_samples)
        result = evaluate(self.client, self.benchmarks, self.cfg.eval, self.cfg.data, tokenizer=self.tokenizer,
                          reward_cfg=self.cfg.reward, model=f"step_{step}", progress=False)
        self.results = [(s, r) for s, r in self.results if s != step] + [(step, result)]
        write_outputs([r for _, r in self.results], Path(self.cfg.output_dir) / "eval", jsonl_models={result.model})
        for _, r in self.results[1:-1]:  # on disk already; pairing needs only the first and the latest in memory
            for b in r.benchmarks:
                b.samples = []
        m = result.metrics()
        self.monitor.scalars({k.split("eval/", 1)[-1]: v for k, v in m.items()}, step, prefix="eval/")
        acc = {k: v for k, v in m.items() if k.endswith("/accuracy")}
        line = f"eval at step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(acc.items()))
        if len(self.results) > 1:
            line += " | vs step {}: {}".format(self.results[0][0], "; ".join(
                f"{b} {d}" for b, d in self.paired(self.results[0][1], result).items()))
        self.monitor.write(line)

    @staticmethod
    def paired(first: EvalResult, last: EvalResult) -> dict[str, PairedDiff]:
        return {b.name: paired_difference(b, last.benchmark(b.name)) for b in first.benchmarks}

    def first_last(self) -> dict[str, float]:
        if not self.results:
            return {}
        (s0, r0), (s1, r1) = self.results[0], self.results[-1]
        first, last = r0.metrics(), r1.metrics()
        key = "eval/average/accuracy"
        out: dict[str, float] = {"eval_step_first": s0, "eval_step_last": s1}
        for k in (key, *[k for k in first if k.endswith("/format")]):
            if k in first and k in last:
                name = k.replace("eval/", "eval_").replace("/", "_")
                out[f"{name}_first"], out[f"{name}_last"] = first[k], last[k]
        if s1 != s0:
            for b, d in self.paired(r0, r1).items():
                out.update({f"eval_{b}_paired_delta": d.delta, f"eval_{b}_paired_se": d.se, f"eval_{b}_n": d.n,
                            f"eval_{b}_gained": d.gained, f"eval_{b}_lost": d.lost})
        return out
