"""Virtual pipeline stages (``parallel.vpp``, megatron's interleaved 1F1B schedule) change the schedule,
not the numbers. Reference: the same layout with one chunk per rank (PP=2, VPP=1) on the same HF weights;
gradients compare under Hugging Face names, so the chunks' own layer numbering cannot hide a swap."""

import pytest
import torch

from tests.dist_utils import spawn
from tests.training.conftest import sft_overrides
from tests.training.grpo_workers import grpo_gradient_hf, grpo_update
from tests.training.sft_workers import run_sft
from tests.training.test_grpo import ONE_UPDATE, grpo_overrides
from tests.training.test_sft import ONE_STEP, _losses, _weights, assert_close_scaled
from tests.training.vpp_workers import sft_gradient_hf

pytestmark = pytest.mark.slow

PP2 = "parallel.pp=2"


def _merged(per_rank: list[dict]) -> dict[str, torch.Tensor]:
    """Both pipeline ranks' gradients in one dict (TP=1, DP=1: every HF tensor lives on exactly one rank)."""
    out: dict[str, torch.Tensor] = {}
    for r in per_rank:
        assert not set(out) & set(r["grads"]), "a tensor on two pipeline ranks"
        out.update(r["grads"])
    return out


def _assert_same_grads(got: dict, ref: dict, what: str) -> None:
    assert got.keys() == ref.keys() and len(ref) > 10
    nonzero = 0
    for k in ref:
        assert_close_scaled(got[k], ref[k], 1e-5, f"{what}: {k}")
        nonzero += int(ref[k].abs().sum() > 0)
    assert nonzero >= len(ref) // 2, "gradients are mostly zero: the test would not see a mismatch"


# 900 tokens: 5 micro-batches, which pp=2 does not divide (one group per virtual stage); 100000: one bin,
# split to pp=2 micro-batches for the interleaved schedule (engine.min_micro_batches).
@pytest.mark.parametrize("budget,count", [(900, 5), (100000, 2)], ids=["five_micro_batches", "one_bin_split_to_pp"])
def test_vpp2_sft_loss_and_grads_equal_vpp1(task, tmp_path, budget, count):
    common = sft_overrides(task, tmp_path, PP2, "training.global_batch_size=8",
                           f"training.max_tokens_per_micro_batch={budget}")
    ref = spawn(sft_gradient_hf, 2, [*common, "parallel.vpp=1"])
    got = spawn(sft_gradient_hf, 2, [*common, "parallel.vpp=2"])
    assert [r["chunks"] for r in got] == [2, 2] and [r["chunks"] for r in ref] == [1, 1]
    assert got[0]["micro_batches"] == count
    assert got[-1]["loss"] == pytest.approx(ref[-1]["loss"], rel=1e-6)
    _assert_same_grads(_merged(got), _merged(ref), "sft vpp=2")
    if count % 2:  # and with DDP's GPU default, overlap_grad_reduce, forced on
        got = spawn(sft_gradient_hf, 2, [*common, "parallel.vpp=2"], True)
        _assert_same_grads(_merged(got), _merged(ref), "sft vpp=2 overlap_grad_reduce")


def test_vpp2_grpo_grads_equal_vpp1(task, tmp_path):
    """The trainer's GRPO path (token-budget plan, THD packing, fused loss) under interleaving."""
    common = grpo_overrides(task, tmp_path, PP2, "algorithm.use_kl_loss=false", "training.max_tokens_per_micro_batch=400")
    ref = spawn(grpo_gradient_hf, 2, [*common, "parallel.vpp=1"])
    got = spawn(grpo_gradient_hf, 2, [*common, "parallel.vpp=2"])
    assert got[0]["micro_batches"] >= 3
    _assert_same_grads(_merged(got), _merged(ref), "grpo vpp=2")


def test_vpp2_grpo_update_matches_vpp1(task, tmp_path):
    """A whole GRPO update on fixed rollouts: reference and old log-prob passes (forward-only interleaved
    schedule), the KL term against the reference policy held per chunk, the optimizer step, the export."""
    ref = spawn(grpo_update, 2, grpo_overrides(task, tmp_path / "a", *ONE_UPDATE, PP2, "parallel.vpp=1"),
                str(tmp_path / "a" / "hf"))[0]
    got = spawn(grpo_update, 2, grpo_overrides(task, tmp_path / "b", *ONE_UPDATE, PP2, "parallel.vpp=2"),
                str(tmp_path / "b" / "hf"))[0]
    assert ref["policy/kl_ref"] > 0, "the KL term must be active in this test"
    for k in ("loss", "grad_norm", "policy/kl_ref"):
        assert got[k] == pytest.approx(ref[k], rel=1e-5, abs=1e-7), k
    want, have = _weights(tmp_path / "a" / "hf"), _weights(tmp_path / "b" / "hf")
    assert have.keys() == want.keys()
    for k in want:
        assert_close_scaled(have[k], want[k], 1e-5, f"grpo export vpp=2: {k}")


def test_vpp2_sft_step_export_and_resume_match_vpp1(task, tmp_path):
    """One optimizer step (grad norm over both chunks, megatron's optimizer), the HF export from several
    chunks, and a checkpoint saved with two chunks per rank resumed with one (dist-checkpoint keys are
    global layer numbers)."""
    ckpt = tmp_path / "ckpt"
    steps = ("training.train_iters=2", "checkpoint.save_interval=1", "checkpoint.keep_last=3")
    ref = spawn(run_sft, 2, sft_overrides(task, tmp_path / "a", *ONE_STEP, PP2, *steps, "parallel.vpp=1",
                                          f"checkpoint.export_hf={tmp_path}/a/hf"))[0]
    got = spawn(run_sft, 2, sft_overrides(task, tmp_path / "b", *ONE_STEP, PP2, *steps, "parallel.vpp=2",
                                          f"checkpoint.save={ckpt}", f"checkpoint.export_hf={tmp_path}/b/hf"))[0]
    assert _losses(got) == pytest.approx(_losses(ref), rel=1e-6)
    norm = [v for _, v in got["history"]["grad_norm"]]
    assert norm == pytest.approx([v for _, v in ref["history"]["grad_norm"]], rel=1e-5)
    want, have = _weights(tmp_path / "a" / "hf"), _weights(tmp_path / "b" / "hf")
    assert have.keys() == want.keys()
    for k in want:
        assert_close_scaled(have[k], want[k], 1e-5, f"export vpp=2: {k}")
    resumed = spawn(run_sft, 2, sft_overrides(task, tmp_path / "c", *ONE_STEP, PP2, *steps, "parallel.vpp=1",
                                              f"checkpoint.load={ckpt}/iter_0000001"))[0]
    assert [s for s, _ in resumed["history"]["loss"]] == [2]
    assert _losses(resumed) == pytest.approx(_losses(ref)[1:], rel=1e-5)
