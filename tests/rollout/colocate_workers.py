"""Rank bodies for tests/rollout/test_colocate_memory.py (importable by spawned processes)."""

from __future__ import annotations

import os
import time

import torch


def _log(path: str, line: str) -> None:
    with open(path, "a") as f:  # O_APPEND: one short write per event, whole lines across processes
        f.write(line + "\n")


class _RecordingSender:
    """The leader's colocated sender: logs when it would resume the servers' memory."""

    def __init__(self, path: str):
        self.path = path

    def update(self, named, weight_version=None, before_kv=None, **kw):
        for _ in named:
            pass
        _log(self.path, f"weights {os.environ['RANK']}")
        if before_kv is not None:  # TensorWeightSender: after the buckets, before the KV cache resumes
            before_kv()
        _log(self.path, f"resume {os.environ['RANK']}")

    def close(self) -> None:
        pass


def colocated_sync(events: str, offload: bool = False) -> None:
    """One colocated weight sync on every rank with torch.cuda.empty_cache spied on (after cpu_compat's
    no-op patch, which is what this CPU run would otherwise call); ``offload``: with a ``before_kv`` hook that
    logs on every rank."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.config import load_config
    from megatron_mmr1.models import hf_adapter
    from megatron_mmr1.training.policy import RolloutWeightSync

    cfg = load_config(None, ["rollout.colocate=true", "parallel.backend=gloo"])
    parallel.initialize(cfg.parallel)
    rank = os.environ["RANK"]
    torch.cuda.empty_cache = lambda: _log(events, f"empty_cache {rank}")
    hf_adapter.iter_hf_state = lambda chunks, **kw: iter([("lm_head.weight", torch.zeros(2, 2))])
    sync = RolloutWeightSync(cfg, ["http://127.0.0.1:1"], work_dir=os.path.dirname(events))
    if sync.sender is not None:
        sync.sender.close()
        sync.sender = _RecordingSender(events)

    def slow_offload() -> None:  # rank 1 slower: without the sync's barrier rank 0 would resume first
        time.sleep(1.0 if rank == "1" else 0.0)
        _log(events, f"offload {rank}")

    sync.sync([], "1", before_kv=slow_offload if offload else None)
    sync.close()
