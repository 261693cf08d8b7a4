"""Prompt selection for the GRPO loop: sampler + VPS store + refresh schedule, one checkpointable object.

    prompts = PromptSampler(len(dataset), cfg.training.rollout_batch_size, cfg.sampler, cfg.vps, score_fn)
    for step in range(start, cfg.training.rollout_steps):
        batch = prompts.next_batch()                    # refreshes VPS first when a refresh is due
        mine = prompts.rank_slice(batch, dp_rank, dp_size)
        ... generate, reward ...
        prompts.observe(batch, acc_rewards, response_ids)   # [B, n] accuracy + token ids
        log(prompts.metrics())

Refresh (every ``vps.update_interval`` steps, starting at step 0, VAS only):
  full     (the paper) re-score every prompt with ``vps.num_rollouts`` fresh rollouts through
           ``score_fn``, in chunks of ``vps.scoring_batch_size`` prompts;
  online   scores come from the training rollouts passed to :meth:`observe`; at a refresh only prompts
           scored more than ``vps.stale_after`` refreshes ago are re-scored through ``score_fn``.
           Prompts never seen keep ``vps.prior``.
  training scores come from the training rollouts only (the n of each group); the weights are
           recomputed before *every* batch and nothing is ever re-scored: zero extra rollouts, no
           ``score_fn`` needed. Prompts never seen keep ``vps.prior``.
``score_fn(prompt_indices) -> (acc_rewards [G, N], token ids [G][N][L] or None)`` is the trainer's
bridge to the rollout engine. It must return the same values on every DP rank (or the weights are
broadcast from rank 0 afterwards when torch.distributed is initialised: ``sync_weights``).
"""

from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

import torch

from megatron_mmr1.algorithms.advantages import reward_variance_stats
from megatron_mmr1.config import SamplerConfig, VPSConfig
from megatron_mmr1.sampling.vas import VASSampler, build_sampler, rank_slice
from megatron_mmr1.sampling.vps import TokenGroups, VPSStore, weight_entropy

logger = logging.getLogger(__name__)

ScoreFn = Callable[[list[int]], tuple[torch.Tensor, Optional[TokenGroups]]]


class PromptSampler:
    """Which prompts each GRPO step trains on, and the VPS bookkeeping behind that choice."""

    def __init__(
        self,
        num_prompts: int,
        batch_size: int,
        sampler_cfg: SamplerConfig,
        vps_cfg: VPSConfig,
        score_fn: Optional[ScoreFn] = None,
        sync_weights: bool = True,
    ):
        self.sampler: VASSampler = build_sampler(num_prompts, batch_size, sampler_cfg)
        self.vas = sampler_cfg.type == "vas"
        self.vps_cfg = vps_cfg
        self.store = VPSStore(num_prompts, vps_cfg) if self.vas else None
        if self.vas and vps_cfg.refresh == "full" and score_fn is None:
            raise ValueError("vps.refresh=full needs a score_fn (fresh rollouts to re-score all prompts)")
        self.score_fn = score_fn
        self.sync_weights = sync_weights
        self.scoring_rollouts = 0
        """Extra rollouts spent on scoring so far (cost of VAS beyond training rollouts)."""
        self._last_batch_stats: dict[str, float] = {}
        self._refreshed_this_step = False
        if self.store is not None:
            self.sampler.set_weights(self.store.weights)

    # ------------------------------------------------------------------ schedule
    def refresh_due(self) -> bool:
        if not self.vas:
            return False
        if self.vps_cfg.refresh == "training":  # free: no scoring rollouts, so before every batch
            return True
        return self.sampler.consumed_batches % self.vps_cfg.update_interval == 0

    @property
    def learns_from_training(self) -> bool:
        """Whether :meth:`observe` updates the VPS store (online and training refresh)."""
        return self.store is not None and self.vps_cfg.refresh in ("online", "training")

    def _score(self, prompt_indices: Sequence[int]) -> None:
        assert self.store is not None and self.score_fn is not None
        chunk = self.vps_cfg.scoring_batch_size
        for start in range(0, len(prompt_indices), chunk):
            part = [int(i) for i in prompt_indices[start:start + chunk]]
            acc, tokens = self.score_fn(part)
            acc = torch.as_tensor(acc, dtype=torch.float32)
            if acc.dim() != 2 or acc.shape[0] != len(part):
                raise ValueError(f"score_fn returned rewards of shape {tuple(acc.shape)} for {len(part)} prompts")
            self.store.update(part, acc, tokens)
            self.scoring_rollouts += acc.numel()

    def refresh(self) -> None:
        """Re-score (all prompts, or the stale ones), recompute weights, hand them to the sampler."""
        assert self.store is not None
        if self.vps_cfg.refresh == "full":
            todo = list(range(self.store.num_prompts))
        elif self.vps_cfg.refresh == "training":
            todo = []
        else:
            todo = self.store.stale().tolist()
            if todo and self.score_fn is None:
                logger.warning("online VPS: %d stale prompts but no score_fn; keeping their old scores", len(todo))
                todo = []
        if todo:
            self._score(todo)
        weights = self.store.recompute_weights()
        if self.sync_weights and torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.broadcast(weights, src=0)
        self.sampler.set_weights(weights)

    # ------------------------------------------------------------------ per step
    def next_batch(self) -> list[int]:
        self._refreshed_this_step = self.refresh_due()
        if self._refreshed_this_step:
            self.refresh()
        return self.sampler.next_batch()

    rank_slice = staticmethod(rank_slice)

    def observe(
        self,
        prompt_indices: Sequence[int],
        acc_rewards: torch.Tensor,
        response_token_ids: Optional[TokenGroups] = None,
    ) -> None:
        """Training rollouts of this step (every group rolled out, also those a dynamic filter drops): batch
        statistics of the accuracy reward, and VPS updates in online and training mode."""
        acc = torch.as_tensor(acc_rewards, dtype=torch.float32)
        self._last_batch_stats = reward_variance_stats(acc)
        if self.learns_from_training:
            self.store.update(prompt_indices, acc, response_token_ids)

    def metrics(self) -> dict[str, float]:
        """Per-step scalars for TensorBoard (zero-variance fraction, reward variance, VPS, entropy)."""
        out = {f"vas/{k}": v for k, v in self._last_batch_stats.items()}
        out.update(self.sampler.metrics())
        if self.store is not None:
            out.update(self.store.metrics())
            stale = self.store.stale().numel() if self.vps_cfg.refresh == "online" else 0  # only online re-scores
            out["vps/stale_count"] = float(stale)
        else:
            out["vps/weight_entropy"] = weight_entropy(torch.ones(self.sampler.num_prompts))
        out["vas/scoring_rollouts"] = float(self.scoring_rollouts)
        out["vas/refreshed"] = float(self._refreshed_this_step)
        return out

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict:
        return {
            "sampler": self.sampler.state_dict(),
            "store": None if self.store is None else self.store.state_dict(),
            "scoring_rollouts": self.scoring_rollouts,
        }

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state["sampler"])
        if self.store is not None:
            if state["store"] is None:
                raise ValueError("checkpoint was written by a uniform sampler; this run uses VAS")
            self.store.load_state_dict(state["store"])
        self.scoring_rollouts = int(state["scoring_rollouts"])
