"""Rank 0's rollout half: rewards are scored while generation goes on, and come out the same."""

import threading

import pytest

from megatron_mmr1.config import RewardConfig
from megatron_mmr1.data.sample import Sample, Status
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


def _rollouts(rewards: list[list[float]], vision_id: int) -> list[Sample]:
    """Prompt-major rewarded rollouts; response j of group g is [10, 11, ..., 12 + j]; the last response of
    group 0 generated a vision token in third place."""
    out = []
    for g, row in enumerate(rewards):
        for j, r in enumerate(row):
            ids = list(range(10, 11 + j + 2))
            if g == 0 and j == len(row) - 1:
                ids[2] = vision_id
            out.append(Sample(index=100 + g, group_index=g, prompt_ids=[1, 2], response_ids=ids,
                              rollout_logprobs=[-0.5] * len(ids), loss_mask=[1] * len(ids), reward=r,
                              reward_info={"accuracy": float(r >= 1.0), "format": 1.0}, status=Status.COMPLETED))
    return out


def test_collect_advantages_filtering_and_vision_cut():
    """Advantages per response against the written-out GRPO formula, (r - mean) / (std + eps) per group with
    the unbiased std (verl's compute_grpo_outcome_advantage); DAPO's dynamic filtering drops the groups whose
    rewards all agree; a response that generated a vision token trains on its prefix before it."""
    import torch

    from megatron_mmr1.config import load_config
    from megatron_mmr1.training.experience import collect, group, vision_token_ids

    rewards = [[2.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 2.0, 0.0, 0.0]]
    for filtering in (False, True):
        overrides = ["rollout.n=4", "training.rollout_batch_size=3", "training.global_batch_size=12",
                     "training.micro_batch_size=4", f"algorithm.dynamic_filtering={filtering}"]
        cfg = load_config("examples/configs/tiny_cpu_grpo.yaml", overrides, world_size=1)
        forbidden = vision_token_ids(cfg)
        samples = _rollouts(rewards, min(forbidden))
        batch = collect(cfg, samples, [100, 101, 102], forbidden)
        kept = [0, 2] if filtering else [0, 1, 2]
        assert sorted({r.group for r in batch.records}) == kept
        if filtering:
            assert batch.metrics["filter/kept_groups"] == 2.0
        for r, s in zip(batch.records, [s for s in samples if s.group_index in kept]):
            row = torch.tensor(rewards[r.group])
            expected = (s.reward - row.mean()) / (row.std() + cfg.algorithm.adv_eps)
            assert abs(r.advantage - float(expected)) < 1e-6
            assert r.index == 100 + r.group and r.accuracy == float(s.reward >= 1.0)
        cut = [r for r in batch.records if r.group == 0][-1]
        assert cut.response_ids == [10, 11] and len(cut.rollout_logprobs) == 2 and len(cut.loss_mask) == 2
        assert batch.metrics["response/cut_at_vision_token"] == 1.0
        assert batch.metrics["reward/mean"] == torch.tensor(rewards).mean().item()
        again = collect(cfg, samples, [100, 101, 102], forbidden, group(samples, 4))
        assert [(r.advantage, r.response_ids) for r in again.records] == [(r.advantage, r.response_ids)
                                                                          for r in batch.records]


GOOD, WRONG = "<think>a</think><answer>\\boxed{3}</answer>", "<think>b</think><answer>\\boxed{4}</answer>"


class _Dataset:
    """Prompt i, answer 3; its group of 4 is all right (i % 3 == 0), all wrong (i % 3 == 1) or mixed."""

    def get_batch(self, indices):
        from types import SimpleNamespace

        return SimpleNamespace(samples=[Sample(index=i, prompt="p", prompt_ids=[1, 2], answer="3") for i in indices])


class _GroupClient:
    """Responses by prompt kind (see _Dataset); ``all_equal`` makes every group's rewards equal."""

    def __init__(self):
        self.all_equal = False

    def generate(self, prompts, on_group=None, **kw):
        out = []
        for p in prompts:
            kind = p.index % 3 if not self.all_equal else p.index % 2
            texts = [GOOD] * 4 if kind == 0 else [WRONG] * 4 if kind == 1 else [GOOD, WRONG, WRONG, GOOD]
            group = [Sample(index=p.index, group_index=p.index, prompt=p.prompt, prompt_ids=list(p.prompt_ids),
                            answer=p.answer, response=t, response_ids=[10 + j, 11], rollout_logprobs=[-0.1, -0.2],
                            loss_mask=[1, 1], status=Status.COMPLETED) for j, t in enumerate(texts)]
            on_group(group)
            out += group
        return out


def test_dynamic_filter_with_vas_trains_on_varied_groups_and_vas_sees_all():
    """algorithm.dynamic_filtering=true with sampler.type=vas (DAPO's filter picks what is trained on, VAS what
    is rolled out): the trained records are only the groups whose rewards differ, the sampler observes every
    group's accuracy (OVS = p(1-p), MMR1 section 3, of the dropped groups too: 0), the zero-variance metrics
    count every group rolled out, and a step whose groups are all dropped gives no records without failing."""
    from megatron_mmr1.config import load_config
    from megatron_mmr1.sampling.controller import PromptSampler
    from megatron_mmr1.training.experience import RolloutProducer

    cfg = load_config("examples/configs/tiny_cpu_grpo.yaml", [
        "rollout.n=4", "training.rollout_batch_size=6", "training.global_batch_size=24", "training.micro_batch_size=4",
        "algorithm.dynamic_filtering=true", "sampler.type=vas", "vps.refresh=training", "sampler.lam=0.5",
        "reward.num_workers=0"], world_size=1)
    sampler = PromptSampler(12, 6, cfg.sampler, cfg.vps)
    client = _GroupClient()
    with reward_pool(cfg.reward) as pool:
        producer = RolloutProducer(cfg, _Dataset(), client, pool, sampler)
        batch = producer.produce(0, None)
        kinds = [i % 3 for i in batch.indices]
        assert sorted({r.index for r in batch.records}) == sorted({i for i in batch.indices if i % 3 == 2})
        assert len(batch.records) == 4 * kinds.count(2) and kinds.count(2) < len(kinds)
        observed = [i for i in batch.indices if int(sampler.store.scored_at[i]) >= 0]
        assert sorted(observed) == sorted(batch.indices)  # dropped groups were observed too
        for i in batch.indices:
            assert float(sampler.store.ovs[i]) == (0.25 if i % 3 == 2 else 0.0)
        dropped = len(batch.indices) - kinds.count(2)
        assert batch.metrics["filter/dropped_groups"] == dropped
        assert batch.metrics["vas/zero_variance_frac"] == pytest.approx(dropped / len(kinds))  # accuracy, all groups
        assert batch.metrics["vas/zero_variance_frac_total"] == pytest.approx(dropped / len(kinds))  # total reward
        assert batch.metrics["rollouts/generated"] == 4 * len(kinds)
        client.all_equal = True  # every group all right or all wrong: everything filtered out
        empty = producer.produce(1, None)
        assert empty.records == [] and empty.metrics["filter/kept_groups"] == 0
        assert all(int(sampler.store.scored_at[i]) == sampler.store.round == 2 for i in empty.indices)  # observed
        producer.close()
