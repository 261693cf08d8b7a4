"""Micro-batch planning and packing: pure functions, no process group."""

import pytest
import torch

from megatron_mmr1.training import micro_batches as mbs


def _seq(n: int, start: int = 0) -> mbs.TrainSequence:
    ids = torch.arange(start, start + n)
    return mbs.TrainSequence(input_ids=ids, targets=mbs.next_token_targets(ids),
                             token_data={"adv": torch.full((n,), float(n))})


@pytest.mark.parametrize("dp,budget", [(1, 100), (2, 100), (2, 37), (3, 64), (4, 1000)])
def test_plan_same_count_per_rank_budget_and_coverage(dp, budget):
    lengths = [int(x) for x in torch.randint(5, 60, (23,), generator=torch.Generator().manual_seed(dp))]
    plan = mbs.plan_micro_batches(lengths, dp, max_tokens=budget)
    assert len(plan) == dp
    assert len({len(r) for r in plan}) == 1, "every DP rank must run the same number of micro-batches"
    flat = sorted(i for r in plan for mb in r for i in mb)
    assert flat == list(range(len(lengths))), "each sequence exactly once"
    for r in plan:
        for mb in r:
            assert len(mb) <= 1 or sum(lengths[i] for i in mb) <= budget


def test_plan_balances_tokens_across_ranks():
    lengths = [100, 90, 80, 70, 60, 50, 40, 30, 20, 10]
    plan = mbs.plan_micro_batches(lengths, 2, max_tokens=1000)
    tokens = [sum(lengths[i] for mb in r for i in mb) for r in plan]
    assert abs(tokens[0] - tokens[1]) <= 10
    contiguous = mbs.plan_micro_batches(lengths, 2, max_tokens=1000, balance=False)
    ctoks = [sum(lengths[i] for mb in r for i in mb) for r in contiguous]
    assert abs(ctoks[0] - ctoks[1]) > abs(tokens[0] - tokens[1])


def test_plan_pads_ranks_with_empty_micro_batches_when_too_few_sequences():
    plan = mbs.plan_micro_batches([50, 50, 50], 2, max_tokens=50)
    assert [len(r) for r in plan] == [2, 2]
    assert sum(1 for r in plan for mb in r if not mb) == 1


def test_fixed_size_micro_batches():
    plan = mbs.plan_micro_batches([10] * 8, 2, micro_batch_size=2)
    assert [len(r) for r in plan] == [2, 2] and all(len(mb) == 2 for r in plan for mb in r)


def test_pack_and_unpack_round_trip_with_padding():
    seqs = [_seq(5), _seq(3, 100)]
    mb = mbs.pack(seqs, [0, 1], pad_id=7, pad_to_multiple_of=4)
    assert mb.input_ids.shape == (1, 8) and mb.cu_seqlens.tolist() == [0, 5, 8]
    mb = mbs.pack(seqs, [0, 1], pad_id=7, pad_to_multiple_of=3)
    assert mb.input_ids.shape == (1, 9) and mb.cu_seqlens.tolist() == [0, 5, 8, 9]
    assert mb.input_ids[0, -1] == 7 and mb.targets[0, -1] == mbs.IGNORE_INDEX and mb.loss_weight[0, -1] == 0
    # the last token of each sequence has no target inside the sequence
    assert mb.targets[0, 4] == mbs.IGNORE_INDEX and mb.targets[0, 7] == mbs.IGNORE_INDEX
    parts = mb.unpack(mb.token_data["adv"])
    assert [p.tolist() for p in parts] == [[5.0] * 5, [3.0] * 3]
    empty = mbs.pack([], [], pad_id=0)
    assert empty.input_ids.shape == (1, 1) and empty.loss_tokens() == 0


def test_block_causal_mask_keeps_attention_inside_each_sequence():
    mask = mbs.block_causal_mask(torch.tensor([0, 2, 5]), 5, torch.device("cpu"))[0, 0]
    allowed = ~mask
    assert allowed[1, 0] and not allowed[0, 1]  # causal
    assert not allowed[2, 1] and not allowed[4, 0]  # no attention across sequences
    assert allowed[4, 2] and allowed[3, 2]


def test_padding_ratio_packed_vs_padded():
    lengths = [10, 100, 12, 90, 11]
    plan = mbs.plan_micro_batches(lengths, 1, micro_batch_size=5, balance=False)
    assert mbs.padding_ratio(plan, lengths, packed=True) == 1.0
    assert mbs.padding_ratio(plan, lengths, packed=False) == pytest.approx(500 / 223)
