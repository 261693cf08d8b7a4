"""Context parallelism's sequence split (megatron_mmr1.parallel.context). References: a hand-built example of
megatron's rule (2 * cp chunks, CP rank r takes chunks r and 2cp-1-r), megatron-core's own
``get_batch_on_this_cp_rank``, and the round trip (the CP ranks' pieces concatenated back in order)."""

import pytest
import torch

from megatron_mmr1.parallel.context import (cp_chunk_ids, merge_cp_pieces, merge_packed_cp_pieces, split_for_cp_rank,
                                            split_packed_for_cp_rank)


def test_hand_built_example():
    t = torch.arange(8)[None]  # (1, 8): chunks of 2 for cp=2
    assert split_for_cp_rank(t, 2, 0).tolist() == [[0, 1, 6, 7]]
    assert split_for_cp_rank(t, 2, 1).tolist() == [[2, 3, 4, 5]]
    t = torch.arange(12)[None]  # cp=3: 6 chunks of 2
    assert [split_for_cp_rank(t, 3, r).tolist()[0] for r in range(3)] == [[0, 1, 10, 11], [2, 3, 8, 9], [4, 5, 6, 7]]
    assert cp_chunk_ids(4, 1) == (1, 6)


def test_packed_rows_split_each_sequence():
    t = torch.arange(12)[None]
    cu = torch.tensor([0, 4, 12])  # sequences of 4 and 8 tokens
    assert split_packed_for_cp_rank(t, cu, 2, 0).tolist() == [[0, 3, 4, 5, 10, 11]]
    assert split_packed_for_cp_rank(t, cu, 2, 1).tolist() == [[1, 2, 6, 7, 8, 9]]


@pytest.mark.parametrize("cp", [1, 2, 3, 4])
def test_pieces_concatenate_back_to_the_sequence(cp):
    t = torch.randn(2, 8 * cp, 3)  # (b, s, h)
    pieces = [split_for_cp_rank(t, cp, r) for r in range(cp)]
    assert all(p.shape == (2, 8, 3) for p in pieces)
    assert torch.equal(merge_cp_pieces(pieces), t)
    cu = torch.tensor([0, 2 * cp, 8 * cp])
    packed = [split_packed_for_cp_rank(t, cu, cp, r) for r in range(cp)]
    assert torch.equal(merge_packed_cp_pieces(packed, cu), t)


@pytest.mark.parametrize("cp,rank", [(2, 0), (2, 1), (4, 3)])
def test_matches_megatron_get_batch_on_this_cp_rank(monkeypatch, cp, rank):
    from megatron.core import parallel_state
    from megatron.core.utils import get_batch_on_this_cp_rank

    monkeypatch.setattr(parallel_state, "get_context_parallel_world_size", lambda: cp)
    monkeypatch.setattr(parallel_state, "get_context_parallel_rank", lambda: rank)
    tokens = torch.randint(0, 100, (2, 8 * cp))
    mask = torch.rand(2, 1, 8 * cp, 8 * cp) > 0.5
    got = get_batch_on_this_cp_rank({"tokens": tokens.clone(), "attention_mask": mask.clone()})
    assert torch.equal(split_for_cp_rank(tokens, cp, rank), got["tokens"])
    assert torch.equal(split_for_cp_rank(mask, cp, rank, dim=2), got["attention_mask"])


def test_bad_lengths_are_refused():
    with pytest.raises(ValueError, match="not divisible by 2\\*cp=4"):
        split_for_cp_rank(torch.arange(6)[None], 2, 0)
    with pytest.raises(ValueError, match="not in \\[0, cp=2\\)"):
        cp_chunk_ids(2, 2)
