"""The policy's side jobs in a GRPO step: per-token log-probs without gradients (old and reference
policies), the frozen reference weights, and pushing updated weights to the rollout servers.

Reference policy: slime's TensorBackuper approach. Its weights live in (pinned) host memory and are
copied into the live parameters only for the reference forward, then the policy's weights are copied
back, so it costs no GPU memory while idle (``tools/model_memory.py`` shows the numbers at 7B).

Weight sync is collective: every TP rank of a stage gathers (``iter_hf_state``), one source rank per
PP stage (DP 0, TP 0) sends. With PP > 1 each stage's source has its own update group and the stages
send one after the other between one pause / resume of generation (concurrent group set-up across
stages deadlocks SGLang engines: slime#2331).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_mmr1.config import RunConfig
from megatron_mmr1.training import micro_batches as mbs
from megatron_mmr1.models import unwrap
from megatron_mmr1.training.engine import forward_backward, make_forward_step, token_logprobs
from megatron_mmr1.utils.logging import get_logger

logger = get_logger(__name__)


# ---- log-probs without gradients ------------------------------------------------------------------------

def _store_logprobs_loss(key: str, temperature: float, cfg: RunConfig, chunk: Any, mb: mbs.MicroBatch,
                         hidden: torch.Tensor):
    with torch.no_grad():
        mb.token_data[key] = token_logprobs(cfg, chunk, hidden, mb.targets, temperature=temperature).detach()
    zero = hidden.new_zeros(())
    return zero, torch.zeros((), dtype=torch.int), {}


@torch.no_grad()
def fill_logprobs(cfg: RunConfig, chunks: list, steps: Sequence[list[mbs.MicroBatch]], key: str,
                  temperature: float, varlen: bool) -> None:
    """``mb.token_data[key]`` = log p(targets) (b, T) under the current weights, for every micro-batch of
    every optimizer step (last PP stage; the other stages only run their layers)."""
    from functools import partial

    for c in chunks:
        c.eval()
    step = make_forward_step(cfg, partial(_store_logprobs_loss, key, temperature), varlen)
    try:
        for micro in steps:
            forward_backward(chunks, step, micro, forward_only=True)
    finally:
        for c in chunks:
            c.train()


class ReferencePolicy:
    """Frozen copy of the initial weights in host memory; swapped into the model for its forward."""

    def __init__(self, chunks: list) -> None:
        pin = torch.cuda.is_available()
        self.state = [{n: _host_copy(p, pin) for n, p in unwrap(c).named_parameters()} for c in chunks]
        self.bytes = sum(t.numel() * t.element_size() for s in self.state for t in s.values())

    @contextlib.contextmanager
    def swapped_in(self, chunks: list) -> Iterator[None]:
        pin = torch.cuda.is_available()
        backup = [{n: _host_copy(p, pin) for n, p in unwrap(c).named_parameters()} for c in chunks]
        try:
            _copy_into(chunks, self.state)
            yield
        finally:
            _copy_into(chunks, backup)

    def state_dict(self) -> dict:
        return {"state": self.state}

    def load_state_dict(self, state: dict) -> None:
        self.state = state["state"]


def _host_copy(p: torch.Tensor, pin: bool) -> torch.Tensor:
    t = torch.empty(p.shape, dtype=p.dtype, device="cpu", pin_memory=pin)
    t.copy_(p.detach(), non_blocking=False)
    return t


@torch.no_grad()
def _copy_into(chunks: list, states: list[dict]) -> None:
    for c, state in zip(chunks, states):
        for n, p in unwrap(c).named_parameters():
            p.copy_(state[n], non_blocking=True)
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ---- weight sync to the rollout servers -------------------------------------------------------------------

class RolloutWeightSync:
    """Trainer -> servers after each update (``rollout.weight_sync``; colocated: release before the log-prob
    passes and training, and every rank frees its CUDA cache before the servers resume)."""

    def __init__(self, cfg: RunConfig, urls: Sequence[str], work_dir: str) -> None:
        from megatron.core import parallel_state as mpu

        from megatron_mmr1.rollout.servers import make_weight_sender

        self.pp = mpu.get_pipeline_model_parallel_world_size()
        self.pp_rank = mpu.get_pipeline_model_parallel_rank()
        self.is_source = mpu.get_tensor_model_parallel_rank() == 0 and mpu.get_data_parallel_rank() == 0
        self.colocate = cfg.rollout.colocate
        self.sender = None
        if self.is_source:
            self.sender = make_weight_sender(cfg.rollout, urls, work_dir=work_dir)
            if self.pp > 1:
                self.sender.group_name = f"mmr1_pp{self.pp_rank}"
        self.last_seconds = 0.0
        self.last_bytes = 0

    @property
    def leader(self) -> bool:
        return self.is_source and self.pp_rank == 0

    def release(self) -> None:
        """Colocated runs: the servers give their memory back before training (rank 0 drives)."""
        if self.colocate and self.leader:
            self.sender.release()
        dist.barrier()

    def sync(self, chunks: list, version: str, before_kv: Optional[Callable[[], None]] = None) -> None:
        """Collective: push the current weights; the servers report ``version`` with later rollouts.
        ``before_kv`` (colocated): every rank runs it once the servers hold the new weights and before their
        KV cache comes back (the trainer offloads its state there: verl's order)."""
        import time

        from megatron_mmr1.models.hf_adapter import iter_hf_state

        kv_hook = None
        if before_kv is not None and self.pp > 1:
            raise ValueError("before_kv needs one pipeline stage (colocated runs have one)")
        if before_kv is not None:  # the leader runs it inside its update; the others after their part
            def kv_hook() -> None:
                before_kv()
                dist.barrier()  # no server resumes its KV cache before every rank has run it
        t0, nbytes = time.perf_counter(), 0
        if self.colocate:  # before any rank's servers resume: the cached activations would stay reserved
            torch.cuda.empty_cache()
            dist.barrier()
        if self.pp > 1 and self.leader:
            self.sender.begin()
        dist.barrier()
        for stage in range(self.pp):
            if stage == self.pp_rank:
                named = iter_hf_state(chunks)  # TP collective: every TP rank of the stage iterates
                if self.sender is not None:
                    if self.pp > 1:  # generation paused once around all stages (begin / finish)
                        stats = self.sender.update(named, weight_version=version, manage_generation=False)
                    elif kv_hook is not None:
                        stats = self.sender.update(named, weight_version=version, before_kv=kv_hook)
                    else:
                        stats = self.sender.update(named, weight_version=version)
                    nbytes += getattr(stats, "bytes", 0)
                else:
                    for _ in named:
                        pass
                    if kv_hook is not None:
                        kv_hook()
            dist.barrier()
        if self.pp > 1 and self.leader:
            self.sender.finish()
        dist.barrier()
        self.last_seconds, self.last_bytes = time.perf_counter() - t0, nbytes

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()


def check_rollout_versions(records: Sequence[Any], version: Optional[str]) -> None:
    """A step trains only on responses from the weights it meant to sample with."""
    if version is None:
        return
    stale = sorted({r.weight_version for r in records if r.weight_version not in (None, version)})
    if stale:
        from megatron_mmr1.rollout.client import RolloutError

        raise RolloutError(f"rollouts came back with weight version(s) {stale}, expected {version}: a server "
                           "missed the last weight update (check its log), so this step would be off-policy")
