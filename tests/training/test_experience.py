"""Rank 0's rollout half: rewards are scored while generation goes on, and come out the same."""

import threading

from megatron_mmr1.config import RewardConfig
from megatron_mmr1.data.sample import Sample
from megatron_mmr1.rewards import compute_rewards, reward_pool
from megatron_mmr1.training.experience import generate_scored

RESPONSES = ["<think>a</think><answer>\\boxed{3}</answer>", "no template 3", "<think>b</think><answer>\\boxed{4}</answer>"]


def _group(i: int) -> list[Sample]:
    return [Sample(index=i, group_index=i, prompt="p", answer=str(3 + i % 2), response=r) for r in RESPONSES]


class _Client:
    """Returns group 0, then waits until its rewards exist before it returns group 1 (as a slow decode would)."""

    def __init__(self):
        self.overlapped = False

    def generate(self, prompts, on_group=None, **kw):
        first = _group(0)
        on_group(first)
        for _ in range(500):  # up to 5 s
            if first[0].reward_info:
                self.overlapped = True
                break
            threading.Event().wait(0.01)
        second = _group(1)
        on_group(second)
        return first + second


def test_groups_are_scored_while_generation_continues():
    cfg = RewardConfig(num_workers=0)
    client = _Client()
    with reward_pool(cfg) as pool:
        samples, tail_s = generate_scored(client, [Sample(index=0), Sample(index=1)], cfg, pool)
        expected = compute_rewards(_group(0) + _group(1), cfg, pool)
    assert client.overlapped, "group 0 was not scored before generation returned"
    assert tail_s >= 0
    assert [s.reward for s in samples] == [s.reward for s in expected]
    assert [s.reward_info for s in samples] == [s.reward_info for s in expected]
    assert [s.reward for s in samples][:3] == [2.0, 0.0, 1.0]  # format + accuracy (answer 3), the paper's weights
