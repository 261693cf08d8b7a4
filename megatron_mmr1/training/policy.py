"""The policy's side jobs in a GRPO step: per-token log-probs without gradients (old and reference
policies), the frozen reference weights, and pushing updated weights to the rollout servers.

Reference policy: slime's TensorBackuper approach. Its weights live in (pinned) host memory and are
copied into the live parameters only for the reference forward, then the policy's weights are copied
back, so it costs no GPU memory while idle (``tools/model_memory.py`` shows the numbers at 7B).

Weight sync is collective: every TP rank of a stage gathers (``iter_hf_state``), one source rank per
PP stage (DP 0, TP 0) sends. With PP > 1 each stage's source has its own update group and the stages
send one after the other between one pause / resume of generation (concurrent group set-up across
stages deadlocks SGLang engines: slime#2331). Colocated, every rank gets every stage's tensors and each
node's servers are fed by that node's ranks (``megatron_mmr1.rollout.colocate``).
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

from megatron_mmr1.config import RunConfig
from megatron_mmr1.training import micro_batches as mbs
from megatron_mmr1.models import chunks_device, unwrap
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
        self.pp_group = mpu.get_pipeline_model_parallel_group() if self.pp > 1 else None
        self.is_source = mpu.get_tensor_model_parallel_rank() == 0 and mpu.get_data_parallel_rank() == 0
        self.colocate = cfg.rollout.colocate
        self.bucket_bytes = cfg.rollout.weight_sync_bucket_mb << 20
        self.sender = None
        self.group: Optional[dist.ProcessGroup] = None
        """Colocated: this node's gather group (the ranks on its servers' GPUs); None off those GPUs."""
        self.posts = False
        if self.colocate:  # collective: every rank creates every node's group
            colocated = colocated_sync(cfg, urls)
            self.sender, self.group, self.posts = colocated.sender, colocated.group, colocated.posts
        elif self.is_source:
            self.sender = make_weight_sender(cfg.rollout, urls, work_dir=work_dir)
            if self.pp > 1:
                self.sender.group_name = f"mmr1_pp{self.pp_rank}"
        self.last_seconds = 0.0
        self.last_bytes = 0

    @property
    def leader(self) -> bool:
        return self.is_source and self.pp_rank == 0

    def release(self) -> None:
        """Colocated runs: the servers give their memory back before training (each node's sender its own)."""
        if self.colocate and self.posts:  # each node's sender releases its own node's servers
            self.sender.release()
        dist.barrier()

    def sync(self, chunks: list, version: str, before_kv: Optional[Callable[[], None]] = None) -> None:
        """Collective: push the current weights; the servers report ``version`` with later rollouts.
        ``before_kv`` (colocated): every rank runs it once the servers hold the new weights and before their
        KV cache comes back (the trainer offloads its state there: verl's order)."""
        import time

        from megatron_mmr1.models.hf_adapter import iter_hf_state

        kv_hook = None
        if before_kv is not None and not self.colocate:
            raise ValueError("before_kv is the colocated trainer offload: it needs rollout.colocate")
        if before_kv is not None:  # posting ranks run it inside their update; the others after their part
            def kv_hook() -> None:
                before_kv()
                dist.barrier()  # no server resumes its KV cache before every rank has run it
        t0, nbytes = time.perf_counter(), 0
        if self.colocate:  # before any rank's servers resume: the cached activations would stay reserved
            torch.cuda.empty_cache()
            dist.barrier()
            nbytes = self._sync_colocated(chunks, version, kv_hook)
            dist.barrier()
            self.last_seconds, self.last_bytes = time.perf_counter() - t0, nbytes
            return
        if self.pp > 1 and self.leader:
            self.sender.begin()
        dist.barrier()
        for stage in range(self.pp):
            if stage == self.pp_rank:
                named = iter_hf_state(chunks)  # TP collective: every TP rank of the stage iterates
                if self.sender is not None:
                    if self.pp > 1:  # generation paused once around all stages (begin / finish)
                        stats = self.sender.update(named, weight_version=version, manage_generation=False)
                    else:
                        stats = self.sender.update(named, weight_version=version)
                    nbytes += getattr(stats, "bytes", 0)
                else:
                    for _ in named:
                        pass
            dist.barrier()
        if self.pp > 1 and self.leader:
            self.sender.finish()
        dist.barrier()
        self.last_seconds, self.last_bytes = time.perf_counter() - t0, nbytes

    def _sync_colocated(self, chunks: list, version: str, kv_hook: Optional[Callable[[], None]]) -> int:
        """Every rank holds every stage's full tensors (PP broadcast); the ranks on server GPUs hand their
        own handles to their node's sender, which posts to that node's servers (rollout.colocate). ``kv_hook``
        runs once on every rank: inside a posting rank's update (weights in, KV cache not yet back), after
        their part on the others; its barrier holds every node's KV resume until all ranks have run it."""
        from megatron_mmr1.models import hf_adapter
        from megatron_mmr1.rollout.colocate import full_model_tensors

        named = full_model_tensors(lambda: hf_adapter.iter_hf_state(chunks), self.pp_rank, self.pp, self.pp_group,
                                   chunks_device(chunks), self.bucket_bytes)
        if self.sender is None:  # no server on this rank's GPU: only the TP gathers and PP broadcasts
            for _ in named:
                pass
            stats = None
        elif self.posts:
            stats = self.sender.update(named, weight_version=version, group=self.group, before_kv=kv_hook)
        else:
            stats = self.sender.update(named, weight_version=version, group=self.group)
        if kv_hook is not None and not self.posts:
            kv_hook()
        return getattr(stats, "bytes", 0) if self.posts else 0

    def close(self) -> None:
        if self.sender is not None:
            self.sender.close()


def colocated_sync(cfg: RunConfig, urls: Sequence[str]) -> Any:
    """This rank's part of the colocated sync (collective): SGLang servers as ``tools/launch_sglang.py`` places
    them on every node (``rollout.colocate.colocated_plan``), or the stand-ins rank 0 started (all fed by it)."""
    import os

    from megatron_mmr1.rollout.colocate import ColocatedSync, colocated_plan, standin_plan
    from megatron_mmr1.rollout.weight_sync import TensorWeightSender

    r, world = cfg.rollout, dist.get_world_size()
    if r.backend == "local":
        plan = standin_plan(len(urls))
    else:
        tp: list = [r.server_tp]
        if tp[0] is None:  # rank 0 asks the servers; every rank raises what it met
            if dist.get_rank() == 0:
                try:
                    tp[0] = _servers_tp(urls)
                except Exception as e:
                    tp[0] = f"{type(e).__name__}: {e}"
            dist.broadcast_object_list(tp, src=0)
            if isinstance(tp[0], str):
                raise ValueError(f"colocated weight sync: rollout.server_tp unset and the servers' tp_size unknown: {tp[0]}")
        plan = colocated_plan(world, int(os.environ.get("LOCAL_WORLD_SIZE", world)), len(urls), tp[0])

    def make_sender(node_urls: list[str], feeds: list) -> TensorWeightSender:
        return TensorWeightSender(node_urls, bucket_mb=r.weight_sync_bucket_mb, timeout_s=r.weight_sync_timeout_s,
                                  pause_mode=r.pause_mode, feeds=feeds)

    return ColocatedSync(plan, urls, make_sender, dist.get_rank())


def _servers_tp(urls: Sequence[str]) -> int:
    """rollout.server_tp unset: the servers' own ``tp_size`` (SGLang's /get_server_info); all must agree."""
    import requests

    sizes = {int(requests.get(u.rstrip("/") + "/get_server_info", timeout=60).json().get("tp_size", 1)) for u in urls}
    if len(sizes) != 1:
        raise ValueError(f"colocated servers report different tp_size {sorted(sizes)}: set rollout.server_tp")
    return sizes.pop()


def check_rollout_versions(records: Sequence[Any], version: Optional[str]) -> None:
    """A step trains only on responses from the weights it meant to sample with."""
    if version is None:
        return
    stale = sorted({r.weight_version for r in records if r.weight_version not in (None, version)})
    if stale:
        from megatron_mmr1.rollout.client import RolloutError

        raise RolloutError(f"rollouts came back with weight version(s) {stale}, expected {version}: a server "
                           "missed the last weight update (check its log), so this step would be off-policy")
