"""Overlapped rollout (``training.async_rollout``): one step off-policy, never more, and the synchronous
loop untouched by it.

Reference for the order of events: slime's fully-async / one-step off-policy trainer (the generation in
flight finishes before the weight update; the next batch is sampled with the weights of the step
before). Versions are step numbers; the stand-in servers report the version they serve with every
response (SGLang's ``meta_info.weight_version``), so the test reads the version a response really came
from, not the one the trainer meant to use.
"""

from __future__ import annotations

import pytest

from megatron_mmr1.training import grpo
from tests.dist_utils import spawn
from tests.training.test_grpo import grpo_overrides

pytestmark = pytest.mark.slow

SEEDED = ("rollout.seed=7", "algorithm.entropy_coef=0.01")  # the random policy scores 0: the entropy term trains
COMPARED = ("reward/mean", "response/length_mean", "loss", "grad_norm", "policy/entropy")


def run_recorded(overrides: list[str], replay_at: int | None = None) -> dict:
    """The GRPO loop (1 rank) with, per produced batch, (step, version it was sampled for, the versions the
    server stamped on its responses). ``replay_at``: at that 0-based step, train on the batch taken one
    step earlier (an older batch than the bound allows), as a producer running ahead would."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.training import experience as xp
    from tests.training.grpo_workers import _cfg

    produced, taken = [], []
    real_produce, real_take = xp.RolloutProducer.produce, xp.RolloutProducer.take

    def produce(self, step, version):
        batch = real_produce(self, step, version)
        produced.append((step, version, sorted({str(r.weight_version) for r in batch.records})))
        return batch

    def take(self, step, version):
        batch = real_take(self, step, version)
        taken.append(batch)
        return taken[-2] if step == replay_at else batch

    xp.RolloutProducer.produce, xp.RolloutProducer.take = produce, take
    cfg = _cfg(overrides)
    out = grpo.run(cfg, parallel.initialize(cfg.parallel))
    return dict(out, produced=produced)


def values(summary: dict, key: str) -> list[float]:
    return [v for _, v in summary["history"][key]]


def test_staleness_counts_weight_versions():
    assert grpo.weight_staleness(None, None) == 0  # step 1: initial weights on both sides
    assert grpo.weight_staleness("1", None) == 1  # step 2 of an overlapped run: sampled before the first sync
    assert grpo.weight_staleness("5", "4") == 1
    assert grpo.weight_staleness("5", "5") == 0
    assert grpo.weight_staleness("5", "3") == 2


@pytest.fixture(scope="module")
def sync_run(task, tmp_path_factory):
    d = tmp_path_factory.mktemp("sync")
    (s,) = spawn(run_recorded, 1, grpo_overrides(task, d, "training.rollout_steps=3", *SEEDED), timeout_s=600)
    return s


def test_overlapped_run_is_exactly_one_version_stale(task, tmp_path, sync_run):
    (s,) = spawn(run_recorded, 1, grpo_overrides(task, tmp_path, "training.rollout_steps=3", "training.async_rollout=true",
                                                 *SEEDED), timeout_s=600)
    assert s["steps"] == 3 and s["rollouts_total"] == 3 * 16
    assert values(s, "async/staleness") == [0.0, 1.0, 1.0]
    # batch k+1 is sampled while step k trains, with the weights before step k's update
    assert [(step, version) for step, version, _ in s["produced"]] == [(0, None), (1, None), (2, "1")]
    initial = s["produced"][0][2]
    assert s["produced"][1][2] == initial and s["produced"][2][2] == ["1"], s["produced"]
    # the responses really come from older weights: the trainer's log-probs (new weights) differ from the
    # server's from step 2 on, where the on-policy run matches them to float precision
    on_policy = max(values(sync_run, "mismatch/logp_abs_mean"))
    mismatch = values(s, "mismatch/logp_abs_mean")
    assert on_policy < 1e-4 and mismatch[0] < 1e-4
    assert min(mismatch[1:]) > 100 * on_policy, (mismatch, on_policy)
    # step 1 is the synchronous step 1 (same seeds, same weights)
    for key in COMPARED:
        assert values(s, key)[0] == values(sync_run, key)[0], key


def test_training_on_older_responses_stops_the_run(task, tmp_path):
    """A batch two versions old (step 3 fed step 2's batch, sampled before any update) must not train."""
    with pytest.raises(AssertionError, match=r"step 3: rollouts are 2 weight versions old \(bound: 1\)"):
        spawn(run_recorded, 1, grpo_overrides(task, tmp_path, "training.rollout_steps=3", "training.async_rollout=true",
                                              *SEEDED), 2, timeout_s=600)


def test_synchronous_loop_is_on_policy_and_reproducible(task, tmp_path, sync_run):
    assert values(sync_run, "async/staleness") == [0.0, 0.0, 0.0]
    # every batch is sampled with the weights of the step before it, and the server says so
    assert [(step, version) for step, version, _ in sync_run["produced"]] == [(0, None), (1, "1"), (2, "2")]
    assert [v for _, _, v in sync_run["produced"][1:]] == [["1"], ["2"]]
    (again,) = spawn(run_recorded, 1, grpo_overrides(task, tmp_path, "training.rollout_steps=3",
                                                     "training.async_rollout=false", *SEEDED), timeout_s=600)
    for key in COMPARED:
        assert values(again, key) == values(sync_run, key), key
