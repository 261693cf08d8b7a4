"""The rollout half of a GRPO step, driven from global rank 0, and its hand-over to every rank.

    samples, _ = generate_scored(client, prompts, reward_cfg, pool)  # rank 0: generate, reward
    batch = collect(cfg, samples, indices)                    # rank 0: advantages, records
    batch = broadcast_batch(batch)                            # every rank: the same light records
    seqs = to_train_sequences(batch.records, dataset)         # images re-read locally, not broadcast

Only token ids, rewards, advantages and log-probs travel between ranks; each rank decodes the images
of the prompts it trains on itself (the dataset is deterministic), so a 72B job does not broadcast
pixel tensors. Also here: the VPS ``score_fn`` (fresh rollouts -> accuracy + token ids) and the
grouping of prompt-major rollouts into [G, n] tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_mmr1.algorithms.advantages import compute_grpo_advantages, dynamic_filter, reward_variance_stats
from megatron_mmr1.config import RunConfig
from megatron_mmr1.data.sample import Sample, Status
from megatron_mmr1.training.micro_batches import IGNORE_INDEX, TrainSequence, next_token_targets


def group(samples: Sequence[Sample], n: int) -> tuple[torch.Tensor, torch.Tensor, list[list[list[int]]]]:
    """Prompt-major rollouts -> (rewards [G, n], accuracy [G, n], response token ids per group)."""
    if len(samples) % n:
        raise ValueError(f"{len(samples)} rollouts do not split into groups of n={n}")
    rewards = torch.tensor([s.reward for s in samples], dtype=torch.float32).view(-1, n)  # (G, n)
    acc = torch.tensor([s.reward_info.get("accuracy", 0.0) for s in samples], dtype=torch.float32).view(-1, n)
    tokens = [[s.response_ids for s in samples[g * n:(g + 1) * n]] for g in range(len(samples) // n)]
    return rewards, acc, tokens


def generate_scored(client: Any, prompts: Sequence[Sample], reward_cfg: Any, pool: Any,
                    **sampling: Any) -> tuple[list[Sample], float]:
    """Rollouts with their rewards. Each prompt's group is scored as soon as its responses are back,
    while the other prompts still decode; returns the samples and the seconds spent scoring after the
    last response (what generation did not hide)."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    from megatron_mmr1.rewards import compute_rewards

    with ThreadPoolExecutor(1, thread_name_prefix="reward") as scorer:  # one caller of the pool at a time
        scoring = []
        samples = client.generate(prompts, on_group=lambda g: scoring.append(
            scorer.submit(compute_rewards, g, reward_cfg, pool)), **sampling)
        t0 = time.perf_counter()
        for f in scoring:
            f.result()  # rewards are set on the samples in place
    return samples, time.perf_counter() - t0


def seed_prompts(prompts: Sequence[Sample], seed: Optional[int], *keys: int) -> None:
    """``rollout.seed``: a sampling seed per prompt from (seed, keys..., prompt index), so a resumed run
    draws the same responses as an uninterrupted one."""
    if seed is None:
        return
    import zlib

    for p in prompts:
        p.metadata["sampling_seed"] = zlib.crc32(repr((seed, *keys, p.index)).encode()) & 0x7FFFFFFF


def make_score_fn(dataset: Any, client: Any, reward_cfg: Any, pool: Any, num_rollouts: int,
                  seed: Optional[int] = None, seed_key=lambda: 0):
    """VPS scoring: ``num_rollouts`` fresh rollouts per prompt -> (accuracy [G, N], token ids).
    ``seed_key()``: where the run is (e.g. the sampler's consumed batches), for ``rollout.seed``."""

    def score_fn(indices: list[int]):
        prompts = dataset.get_batch(indices).samples
        seed_prompts(prompts, seed, -1, seed_key())
        out, _ = generate_scored(client, prompts, reward_cfg, pool, n=num_rollouts)
        _, acc, tokens = group(out, num_rollouts)
        if len(prompts) != len(indices):  # skipped records: score 0 variance (they are never drawn usefully)
            full = torch.zeros(len(indices), num_rollouts)
            pos = {p.index: i for i, p in enumerate(prompts)}
            for j, idx in enumerate(indices):
                if idx in pos:
                    full[j] = acc[pos[idx]]
            return full, None
        return acc, tokens

    return score_fn


@dataclass
class RolloutRecord:
    """One response, as every rank needs it for training (no images, no text)."""

    index: int
    group: int
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logprobs: list[float]
    loss_mask: list[int]
    reward: float
    advantage: float
    accuracy: float
    format: float
    truncated: bool
    weight_version: Optional[str] = None


@dataclass
class RolloutBatch:
    records: list[RolloutRecord]
    indices: list[int]
    """Prompt indices of the step (VAS sampler order)."""
    metrics: dict[str, float] = field(default_factory=dict)
    samples_text: list[str] = field(default_factory=list)
    """A few prompt + response texts for TensorBoard (rank 0 only)."""
    version: Optional[str] = None
    """Weight version the servers held when this batch was sampled (None: the initial weights)."""


def advantages_for(cfg: RunConfig, rewards: torch.Tensor) -> torch.Tensor:
    """[G, n] rewards -> [G, n] advantages (grpo: std-normalised; drgrpo: centred only)."""
    return compute_grpo_advantages(rewards, norm_by_std=cfg.algorithm.adv_estimator == "grpo",
                                   eps=cfg.algorithm.adv_eps)


def rollout_metrics(samples: Sequence[Sample], rewards: torch.Tensor, max_new_tokens: int) -> dict[str, float]:
    lens = torch.tensor([len(s.response_ids) for s in samples], dtype=torch.float32)
    acc = torch.tensor([s.reward_info.get("accuracy", 0.0) for s in samples])
    fmt = torch.tensor([s.reward_info.get("format", 0.0) for s in samples])
    truncated = torch.tensor([s.status == Status.TRUNCATED for s in samples], dtype=torch.float32)
    return {
        "reward/mean": float(rewards.mean()), "reward/std": float(rewards.std()) if rewards.numel() > 1 else 0.0,
        "reward/accuracy": float(acc.mean()), "reward/format": float(fmt.mean()),
        "response/length_mean": float(lens.mean()), "response/length_max": float(lens.max()),
        "response/clipped_frac": float(truncated.mean()),
        "response/aborted": float(sum(s.status == Status.ABORTED for s in samples)),
        "response/max_new_tokens": float(max_new_tokens),
    }


def total_reward_stats(rewards: torch.Tensor) -> dict[str, float]:
    """Zero-variance fraction and mean group variance of the *total* reward [G, n] (format + accuracy: what
    carries GRPO's gradient), beside the sampler's ``vas/zero_variance_frac`` of the accuracy reward (what VAS
    targets); ``rollouts/generated``: every response rolled out this step, trained on or filtered out."""
    stats = reward_variance_stats(rewards)
    return {"vas/zero_variance_frac_total": stats["zero_variance_frac"],
            "vas/reward_variance_mean_total": stats["reward_variance_mean"],
            "rollouts/generated": float(rewards.numel())}


def vision_token_ids(cfg: RunConfig) -> set[int]:
    """Token ids that mean "image here" to the model: a policy that *generates* one cannot be trained on
    the tokens after it (the model would look for image features there)."""
    from megatron_mmr1.models.presets import resolve_model_dims

    dims = resolve_model_dims(cfg.model)
    return {int(dims[k]) for k in ("image_token_id", "video_token_id", "vision_start_token_id") if k in dims}


def cut_at(ids: list[int], forbidden: set[int]) -> int:
    """Length of the prefix of ``ids`` before the first forbidden token."""
    for i, t in enumerate(ids):
        if t in forbidden:
            return i
    return len(ids)


def collect(cfg: RunConfig, samples: list[Sample], indices: list[int], forbidden: set[int] = frozenset(),
            grouped: Optional[tuple] = None) -> RolloutBatch:
    """Rewarded, prompt-major rollouts of one step -> the records every rank trains on (rank 0).
    Responses that generated a vision token train on their prefix before it (counted). ``grouped``:
    ``group(samples, n)`` when the caller has it already."""
    n = cfg.rollout.n
    rewards, _, _ = grouped or group(samples, n)
    adv = advantages_for(cfg, rewards)  # (G, n)
    metrics = rollout_metrics(samples, rewards, cfg.data.max_response_length)
    metrics.update(total_reward_stats(rewards))
    keep = torch.ones(rewards.shape[0], dtype=torch.bool)
    if cfg.algorithm.dynamic_filtering:
        keep, kept = dynamic_filter(rewards)
        metrics["filter/kept_groups"] = float(kept)
        metrics["filter/dropped_groups"] = float(rewards.shape[0] - kept)
    records, cut = [], 0
    for g in range(rewards.shape[0]):
        if not keep[g]:
            continue
        for j in range(n):
            s = samples[g * n + j]
            k = cut_at(s.response_ids, forbidden)
            cut += k < len(s.response_ids)
            records.append(RolloutRecord(
                index=s.index, group=g, prompt_ids=list(s.prompt_ids), response_ids=list(s.response_ids[:k]),
                rollout_logprobs=[float(x) for x in s.rollout_logprobs[:k]], loss_mask=list(s.loss_mask[:k]),
                reward=float(s.reward), advantage=float(adv[g, j]), accuracy=float(s.reward_info.get("accuracy", 0.0)),
                format=float(s.reward_info.get("format", 0.0)), truncated=s.status == Status.TRUNCATED,
                weight_version=s.metadata.get("weight_version")))
    metrics["response/cut_at_vision_token"] = float(cut)
    texts = [f"**prompt {s.index}** (reward {s.reward:.2f}, answer {s.answer!r})\n\n{s.response}"
             for s in samples[:: max(1, n)][: max(0, cfg.training.log_samples)]]
    return RolloutBatch(records, list(indices), metrics, texts)


def broadcast_batch(batch: Optional[RolloutBatch], src: int = 0) -> RolloutBatch:
    """Rank ``src``'s batch on every rank (one pickled object over the default group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        assert batch is not None
        return batch
    obj = [batch]
    dist.broadcast_object_list(obj, src=src)
    return obj[0]


def to_train_sequences(records: Sequence[RolloutRecord], dataset: Any, ids: Optional[Sequence[int]] = None,
                       cache: Optional[dict] = None) -> dict[int, TrainSequence]:
    """Records ``ids`` (all by default) -> TrainSequences keyed by record position. Position t predicts
    token t + 1, so response token j sits at position len(prompt) - 1 + j, with its advantage and its
    rollout log-prob; images come from the dataset (``cache``: prompt index -> pixel tensors)."""
    ids = range(len(records)) if ids is None else ids
    cache = {} if cache is None else cache
    need = sorted({records[i].index for i in ids} - set(cache))
    if need:
        for s in dataset.get_batch(need).samples:
            cache[s.index] = (s.pixel_values, s.image_grid_thw)
    out = {}
    for i in ids:
        r = records[i]
        p, n = len(r.prompt_ids), len(r.response_ids)
        ids_t = torch.tensor(r.prompt_ids + r.response_ids, dtype=torch.long)
        mask = r.loss_mask or [1] * n
        labels = torch.full((p + n,), IGNORE_INDEX, dtype=torch.long)
        labels[p:] = torch.tensor([t if m else IGNORE_INDEX for t, m in zip(r.response_ids, mask)], dtype=torch.long)
        adv = torch.zeros(p + n)
        adv[p - 1:p - 1 + n] = r.advantage
        rollout_lp = torch.zeros(p + n)
        if r.rollout_logprobs:
            rollout_lp[p - 1:p - 1 + n] = torch.tensor(r.rollout_logprobs[:n], dtype=torch.float32)
        pv, grid = cache.get(r.index, (None, None))
        out[i] = TrainSequence(input_ids=ids_t, targets=next_token_targets(labels), pixel_values=pv,
                               image_grid_thw=grid, token_data={"adv": adv, "rollout_logp": rollout_lp})
    return out


class RolloutProducer:
    """Rank 0's half of a step: VAS prompts -> rollouts -> rewards -> advantages -> sampler update.

    ``produce`` runs inline (synchronous loop) or in a background thread (``training.async_rollout``:
    step k+1 is generated while step k trains, with the weights of step k-1: one version stale). Each
    batch carries its phase times, the weight version it was sampled with, and the sampler state from
    before its draw (what a checkpoint taken while it is in flight must store)."""

    def __init__(self, cfg: RunConfig, dataset: Any, client: Any, pool: Any, sampler: Any) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self.cfg, self.dataset, self.client, self.pool, self.sampler = cfg, dataset, client, pool, sampler
        self.forbidden = vision_token_ids(cfg)
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="rollout") if cfg.training.async_rollout else None
        self.pending = None  # (future, sampler state before its draw)

    @property
    def async_mode(self) -> bool:
        return self._executor is not None

    def produce(self, step: int, version: Optional[str]) -> RolloutBatch:
        import time

        times, t0 = {}, time.perf_counter()
        scored_before = self.sampler.scoring_rollouts
        indices = self.sampler.next_batch()
        times["vps_scoring"] = time.perf_counter() - t0
        prompts = self.dataset.get_batch(indices).samples
        seed_prompts(prompts, self.cfg.rollout.seed, step)
        t1 = time.perf_counter()
        samples, reward_tail = generate_scored(self.client, prompts, self.cfg.reward, self.pool)
        grouped = group(samples, self.cfg.rollout.n)
        batch = collect(self.cfg, samples, indices, self.forbidden, grouped)
        _, acc, tokens = grouped
        self.sampler.observe([p.index for p in prompts], acc, tokens)
        batch.metrics.update(self.sampler.metrics())
        batch.metrics["vas/scoring_rollouts_step"] = float(self.sampler.scoring_rollouts - scored_before)
        times.update(rollout=time.perf_counter() - t1 - reward_tail, reward=reward_tail)
        batch.metrics.update({f"time/{k}_s": v for k, v in times.items()})
        batch.version = version
        return batch

    def submit(self, step: int, version: Optional[str]) -> None:
        """Start the next batch in the background (async mode only)."""
        state = self.sampler.state_dict()
        self.pending = (self._executor.submit(self.produce, step, version), state)

    def take(self, step: int, version: Optional[str]) -> RolloutBatch:
        """The batch of ``step``: the one in flight, or one made now."""
        if self.pending is None:
            return self.produce(step, version)
        future, _ = self.pending
        self.pending = None
        return future.result()

    def wait(self) -> None:
        """Let an in-flight generation finish (before the servers' weights change)."""
        if self.pending is not None:
            self.pending[0].result()

    def sampler_state(self) -> dict:
        """Sampler state to checkpoint: from before the in-flight draw, which a resumed run redoes."""
        return self.pending[1] if self.pending is not None else self.sampler.state_dict()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
