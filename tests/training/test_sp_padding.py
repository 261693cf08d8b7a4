"""Sequence parallelism (tp > 1 under the TE spec) splits every row over the TP ranks, so both loops'
micro-batches must have row lengths that are multiples of tp; the padding carries no loss, and with
SP off the micro-batches are what they were."""

from types import SimpleNamespace

import pytest
import torch

from megatron_mmr1.config import load_config
from megatron_mmr1.training import experience as xp
from megatron_mmr1.training import grpo, sft
from megatron_mmr1.training import micro_batches as mbs

LENGTHS = [(5, 4), (3, 9), (7, 2), (4, 6), (6, 5), (2, 3)]  # (prompt, response) tokens


def _cfg(tp: int, sp: bool, packed: bool):
    extra = ["training.max_tokens_per_micro_batch=24"] if packed else ["data.packing=false"]
    return load_config(None, [f"parallel.tp={tp}", f"parallel.sequence_parallel={str(sp).lower()}",
                              "model.attention_backend=te", "model.num_query_groups=4", "training.micro_batch_size=2",
                              "training.global_batch_size=6", "training.rollout_batch_size=6", "rollout.n=1", *extra])


def _grpo_micro_batches(cfg, dp_rank: int) -> list[mbs.MicroBatch]:
    records = [xp.RolloutRecord(index=i, group=i, prompt_ids=list(range(1, p + 1)), response_ids=[7] * r,
                                rollout_logprobs=[], loss_mask=[], reward=1.0, advantage=0.5, accuracy=1.0, format=1.0,
                                truncated=False) for i, (p, r) in enumerate(LENGTHS)]
    dataset = SimpleNamespace(get_batch=lambda ids: SimpleNamespace(
        samples=[SimpleNamespace(index=i, pixel_values=None, image_grid_thw=None) for i in ids]))
    info = SimpleNamespace(dp=2, dp_rank=dp_rank, device=torch.device("cpu"))
    (steps,) = grpo.plan_updates(cfg, records, dataset, info, 0).micro_batches
    return steps


def _sft_micro_batches(cfg, dp_rank: int) -> list[mbs.MicroBatch]:
    examples = {i: SimpleNamespace(index=i, input_ids=list(range(1, p + r + 1)), labels=[-100] * p + [7] * r,
                                   pixel_values=None, image_grid_thw=None) for i, (p, r) in enumerate(LENGTHS)}
    dataset = SimpleNamespace(lengths=[p + r for p, r in LENGTHS],
                              get_batch=lambda ids: SimpleNamespace(samples=[examples[i] for i in ids]))
    info = SimpleNamespace(dp=2, dp_rank=dp_rank, device=torch.device("cpu"))
    micro, _ = sft.build_micro_batches(cfg, dataset, list(range(len(LENGTHS))), info, pad_id=0)
    return micro


@pytest.mark.parametrize("build", [_grpo_micro_batches, _sft_micro_batches], ids=["grpo", "sft"])
@pytest.mark.parametrize("packed", [True, False], ids=["packed", "padded_rows"])
@pytest.mark.parametrize("tp", [2, 4])
def test_rows_are_multiples_of_tp_under_sequence_parallel(build, packed, tp):
    for dp_rank in range(2):
        off = build(_cfg(tp, False, packed), dp_rank)
        on = build(_cfg(tp, True, packed), dp_rank)
        assert len(on) == len(off) > 0
        for a, b in zip(off, on):
            # SP off: rows as long as their sequences (packed) or the longest one (padded rows)
            assert a.input_ids.shape[1] == (sum(a.seq_lens) if packed else max(a.seq_lens))
            assert b.input_ids.shape[1] % tp == 0
            assert a.input_ids.shape[1] <= b.input_ids.shape[1] < a.input_ids.shape[1] + tp
            assert b.seq_ids == a.seq_ids and b.seq_lens == a.seq_lens
            width = a.input_ids.shape[1]
            torch.testing.assert_close(b.input_ids[:, :width], a.input_ids)
            torch.testing.assert_close(b.loss_weight[:, :width], a.loss_weight)
            assert (b.loss_weight[:, width:] == 0).all() and (b.targets[:, width:] == mbs.IGNORE_INDEX).all()
            assert b.loss_tokens() == a.loss_tokens() > 0
            for k in a.token_data:
                torch.testing.assert_close(b.token_data[k][:, :width], a.token_data[k])
            if packed:  # the padding is a segment of its own: no sequence attends to it
                assert b.cu_seqlens[-1] == b.input_ids.shape[1]
                assert b.cu_seqlens[:len(a.seq_lens) + 1].tolist() == a.cu_seqlens[:len(a.seq_lens) + 1].tolist()
