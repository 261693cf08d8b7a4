"""Colocated runs hand GPU memory back and forth between trainer and servers: the trainer's CUDA
cache is freed on every rank before the servers resume, and the servers are released before any
trainer forward (the log-prob passes included: the planner counts them without the servers)."""

import contextlib
from types import SimpleNamespace

import pytest
import torch

from megatron_mmr1.config import load_config
from megatron_mmr1.training.offload import TrainerOffload
from tests.dist_utils import spawn
from tests.rollout.colocate_workers import colocated_sync


def test_every_rank_frees_its_cache_before_the_servers_resume(tmp_path):
    events = tmp_path / "events.log"
    spawn(colocated_sync, 2, str(events))
    lines = events.read_text().splitlines()
    assert sorted(lines[:2]) == ["empty_cache 0", "empty_cache 1"], lines
    assert lines[2:] == ["weights 0", "resume 0"], lines


def test_every_rank_offloads_the_trainer_after_the_weights_and_before_the_kv_cache_resumes(tmp_path):
    """rollout.offload_trainer: the sync's before_kv hook runs on every rank (the leader inside its update, the
    others after their part) and no server resumes its KV cache before all have run it."""
    events = tmp_path / "events.log"
    spawn(colocated_sync, 2, str(events), True)
    lines = events.read_text().splitlines()
    assert sorted(lines[:2]) == ["empty_cache 0", "empty_cache 1"], lines
    assert lines[-1] == "resume 0" and sorted(lines[2:-1]) == ["offload 0", "offload 1", "weights 0"], lines
    assert lines.index("weights 0") < lines.index("offload 0"), lines


@pytest.mark.parametrize("offload_trainer", [False, True])
def test_one_grpo_step_follows_algorithm_1_and_releases_the_servers_before_the_logprob_passes(monkeypatch,
                                                                                           offload_trainer):
    """GRPOTrainer.train_step's order: rollouts, servers released, trainer state reloaded, old / ref log-probs,
    the updates, the in-flight generation finished, then the weight sync (tagged with the new step), inside
    which the trainer state goes to the host (rollout.offload_trainer) before the servers' KV cache returns."""
    from megatron_mmr1.training import grpo
    from megatron_mmr1.training.engine import StepResult
    from megatron_mmr1.training.experience import RolloutBatch, RolloutRecord
    from megatron_mmr1.training.faults import SkipCounter
    from megatron_mmr1.training.monitor import PhaseTimer

    order = []
    micro = [SimpleNamespace()]
    plan = grpo.UpdatePlan([micro, micro], 1.0, 1.0)  # two updates: the old log-probs are needed
    monkeypatch.setattr(grpo, "plan_updates", lambda *a: plan)
    monkeypatch.setattr(grpo, "fill_logprobs", lambda cfg, chunks, steps, key, *a: order.append(key))
    monkeypatch.setattr(grpo, "train_step", lambda *a: order.append("train") or StepResult(0.5, 4, 1.0, False))
    record = RolloutRecord(index=0, group=0, prompt_ids=[1, 2], response_ids=[3], rollout_logprobs=[-0.1],
                           loss_mask=[1], reward=1.0, advantage=0.5, accuracy=1.0, format=1.0, truncated=False)

    class Rollout:
        def generate(self, step, version):
            order.append(f"generate {step} {version}")
            return RolloutBatch([record], [0], {"reward/mean": 1.0}, version=version)

        def release_memory(self):
            order.append("release")

        def finish_generation(self):
            order.append("finish_generation")

        def update_weights(self, chunks, version, before_kv=None):
            order.append(f"sync {version}")
            if before_kv is not None:
                before_kv()
            order.append("kv_cache")
            return {}

    class Offload(TrainerOffload):
        def offload(self):
            order.append("offload")
            super().offload()

        def reload(self):
            order.append("reload" if self.offloaded else "reload (nothing to do)")
            super().reload()

    class Reference:
        @contextlib.contextmanager
        def swapped_in(self, chunks):
            yield

    trainer = grpo.GRPOTrainer.__new__(grpo.GRPOTrainer)  # the step alone: no model, no servers
    trainer.__dict__.update(cfg=load_config(None), info=SimpleNamespace(device="cpu", dp=1, dp_rank=0), chunks=[],
                            reference=Reference(), rollout=Rollout(), timer=PhaseTimer(), skips=SkipCounter(3),
                            step=4, version="4", rollouts_total=0, monitor=SimpleNamespace(text=lambda *a: None),
                            dataset=None, pad_id=0, varlen=False, optimizer=None, scheduler=None, forward_step=None,
                            offload=Offload([torch.nn.Linear(2, 2)], None, enabled=offload_trainer))
    trainer.offload.offload()  # as after the previous step's sync (or, before the first, at start-up)
    order.clear()
    metrics = trainer.train_step()
    want = ["generate 4 4", "release", "reload", "old_logp", "ref_logp", "train", "train", "finish_generation",
            "sync 5", "offload", "kv_cache"]
    if not offload_trainer:
        want = [e for e in want if e != "offload"]
        want[want.index("reload")] = "reload (nothing to do)"
    assert order == want
    assert trainer.offload.offloaded == offload_trainer
    assert ("memory/offloaded_gib" in metrics) == offload_trainer
    assert trainer.version == "5" and metrics["optimizer_steps"] == 2.0 and metrics["rollouts_total"] == 1.0
