"""The rollout side of GRPO as one object on every rank (slime's ``RolloutManager`` role).

    rollout = RolloutManager(cfg, info, dataset, tokenizer, timer, total_steps)
    batch = rollout.generate(step, version)     # every rank: rank 0's rewarded rollouts, broadcast
    rollout.release_memory()                    # colocated servers give the GPU back before training
    rollout.finish_generation()                 # an in-flight (async) generation ends first
    rollout.update_weights(chunks, version, before_kv=offload.offload)  # collective: servers serve the new
                                                # weights; the trainer's state leaves the GPU before their KV cache

Global rank 0 (the driver) owns the servers, the client, the reward pool, the VAS sampler, the producer
and the held-out evaluator; every rank owns its part of the weight sync. The broadcasts are here, so
the training loop has no rank branches.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Optional

import torch.distributed as dist

from megatron_mmr1.config import RunConfig
from megatron_mmr1.parallel import DistInfo
from megatron_mmr1.training.evaluator import Evaluator
from megatron_mmr1.training.experience import RolloutBatch, RolloutProducer, broadcast_batch, make_score_fn
from megatron_mmr1.training.monitor import PhaseTimer, RunMonitor
from megatron_mmr1.training.policy import RolloutWeightSync


class RolloutManager:
    def __init__(self, cfg: RunConfig, info: DistInfo, dataset: Any, tokenizer: Any, timer: PhaseTimer,
                 total_steps: int, sampler_state: Optional[dict] = None) -> None:
        self.cfg, self.timer, self.total_steps = cfg, timer, total_steps
        self.is_driver = info.rank == 0
        self.producer: Optional[RolloutProducer] = None
        self.evaluator: Optional[Evaluator] = None
        self._stack = contextlib.ExitStack()
        try:
            urls = self._start_driver(dataset, tokenizer, sampler_state) if self.is_driver else None
            obj = [urls]
            dist.broadcast_object_list(obj, src=0)
            self.sync = RolloutWeightSync(cfg, obj[0], work_dir=cfg.output_dir)
            self._stack.callback(self.sync.close)
        except BaseException:  # servers already started are stopped, not left behind
            self._stack.close()
            raise

    def _start_driver(self, dataset: Any, tokenizer: Any, sampler_state: Optional[dict]) -> list[str]:
        """Rank 0: servers, client, reward pool, sampler, producer, evaluator; the servers' URLs."""
        from megatron_mmr1.data.vision import VisionSpec
        from megatron_mmr1.rewards import reward_pool
        from megatron_mmr1.rollout.client import RolloutClient
        from megatron_mmr1.rollout.servers import rollout_servers
        from megatron_mmr1.sampling.controller import PromptSampler

        cfg, stack = self.cfg, self._stack
        urls = stack.enter_context(rollout_servers(cfg.rollout, model_dir=cfg.model.hf_path,
                                                   log_dir=f"{cfg.output_dir}/rollout_logs",
                                                   min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels))
        client = RolloutClient(cfg.rollout, urls, max_new_tokens=cfg.data.max_response_length,
                               vision=VisionSpec.from_config(cfg.data))
        pool = stack.enter_context(reward_pool(cfg.reward))
        sampler: Any = None
        score_fn = make_score_fn(dataset, client, cfg.reward, pool, cfg.vps.num_rollouts, cfg.rollout.seed,
                                 seed_key=lambda: sampler.sampler.consumed_batches)
        sampler = PromptSampler(len(dataset), cfg.training.rollout_batch_size, cfg.sampler, cfg.vps, score_fn,
                                sync_weights=False)
        if sampler_state is not None:
            sampler.load_state_dict(sampler_state)
        self.producer = RolloutProducer(cfg, dataset, client, pool, sampler)
        stack.callback(self.producer.close)
        self.evaluator = Evaluator(cfg, client, tokenizer)
        return urls

    def generate(self, step: int, version: Optional[str]) -> RolloutBatch:
        """Step ``step``'s rollouts (0-based) on every rank; async mode starts step + 1's right away."""
        batch = None
        if self.producer is not None:
            with self.timer("rollout_wait"):
                batch = self.producer.take(step, version)
            if self.producer.async_mode and step + 1 < self.total_steps:
                self.producer.submit(step + 1, version)  # generated while this step trains: one version stale
        with self.timer("broadcast"):
            return broadcast_batch(batch)

    def release_memory(self) -> None:
        """Colocated: the servers give their memory back before any trainer forward (collective)."""
        self.sync.release()

    def finish_generation(self) -> None:
        """slime's order: the in-flight generation ends before the weights change."""
        if self.producer is not None:
            with self.timer("rollout_wait"):
                self.producer.wait()

    def update_weights(self, chunks: list, version: str, before_kv: Optional[Callable[[], None]] = None
                       ) -> dict[str, float]:
        """Collective: the servers serve ``chunks``' weights, tagged ``version``; the sync's metrics.
        ``before_kv``: run on every rank once the servers hold the weights, before their KV cache comes back
        (colocated: the trainer offloads there)."""
        with self.timer("sync"):
            self.sync.sync(chunks, version, before_kv)
        return {"sync/seconds": self.sync.last_seconds, "sync/bytes": float(self.sync.last_bytes)}

    def evaluate(self, step: int, monitor: RunMonitor, at_start: bool = False) -> None:
        """Held-out accuracy when one is due (rank 0 runs it; the other ranks go on)."""
        if self.evaluator is not None and self.evaluator.due(step, self.total_steps, at_start):
            self.evaluator(step, monitor)

    def eval_summary(self) -> dict[str, float]:
        return self.evaluator.first_last() if self.evaluator is not None else {}

    def sampler_state(self) -> Optional[dict]:
        """Rank 0's sampler state for a checkpoint (None elsewhere)."""
        return self.producer.sampler_state() if self.producer is not None else None

    def close(self) -> None:
        self._stack.close()

    def __enter__(self) -> "RolloutManager":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
