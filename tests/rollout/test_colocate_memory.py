"""Colocated runs hand GPU memory back and forth between trainer and servers: the trainer's CUDA
cache is freed on every rank before the servers resume, and the servers are released before any
trainer forward (the log-prob passes included: the planner counts them without the servers)."""

import contextlib
from types import SimpleNamespace

from megatron_mmr1.config import load_config
from tests.dist_utils import spawn
from tests.rollout.colocate_workers import colocated_sync


def test_every_rank_frees_its_cache_before_the_servers_resume(tmp_path):
    events = tmp_path / "events.log"
    spawn(colocated_sync, 2, str(events))
    lines = events.read_text().splitlines()
    assert sorted(lines[:2]) == ["empty_cache 0", "empty_cache 1"], lines
    assert lines[2:] == ["resume 0"], lines


def test_servers_are_released_before_the_logprob_passes(monkeypatch):
    from megatron_mmr1.training import grpo

    order = []
    micro = [SimpleNamespace()]
    monkeypatch.setattr(grpo, "optimizer_steps", lambda *a: ([micro, micro], 1.0, 1.0))  # two updates: old log-probs
    monkeypatch.setattr(grpo, "fill_logprobs", lambda cfg, chunks, steps, key, *a: order.append(key))
    monkeypatch.setattr(grpo, "train_step", lambda *a: order.append("train"))
    monkeypatch.setattr(grpo, "_update_metrics", lambda *a: {})

    class Reference:
        @contextlib.contextmanager
        def swapped_in(self, chunks):
            yield

    grpo.update_policy(load_config(None), SimpleNamespace(device="cpu"), [], None, None, None, Reference(), [], None, 0, False,
                       grpo.PhaseTimer(), before_train=lambda: order.append("release"))
    assert order == ["release", "old_logp", "ref_logp", "train", "train"]
