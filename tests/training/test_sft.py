"""The SFT trainer on megatron-core, CPU over gloo: layout and split invariance, resume, faults.

Reference for "exact": megatron's per-token-loss contract (the loss function returns (sum, count) and
``finalize_model_grads`` divides by the global count), which makes the gradient independent of how the
global batch is split; the tests below fail if any micro-batch or DP rank averaged on its own.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.dist_utils import spawn
from tests.training.conftest import sft_overrides
from tests.training.sft_workers import run_sft, split_gradients

pytestmark = pytest.mark.slow


def _weights(d) -> dict[str, torch.Tensor]:
    return {k: v for f in sorted(Path(d).glob("*.safetensors")) for k, v in load_file(f).items()}


def assert_close_scaled(got: torch.Tensor, ref: torch.Tensor, rtol: float, msg: str) -> None:
    """max |got - ref| <= rtol * max |ref|: fp32 summation-order noise sits at ~1e-7 of a tensor's
    scale, while any real normalisation or sharding error shows up at 1e-2 or more."""
    err = float((got.float() - ref.float()).abs().max())
    scale = float(ref.float().abs().max()) or 1.0
    assert err <= rtol * scale, f"{msg}: max |diff| {err:.3g} > {rtol} * {scale:.3g}"


def _losses(summary: dict) -> list[float]:
    return [v for _, v in summary["history"]["loss"]]


def test_split_and_packing_give_the_same_gradient(task, tmp_path):
    plans = {
        "one": {"training": {"max_tokens_per_micro_batch": 100000}},
        "two": {"training": {"max_tokens_per_micro_batch": None, "micro_batch_size": 4}, "data": {"packing": False}},
        "seven": {"training": {"max_tokens_per_micro_batch": 700}},
        "packed_rows_of_one": {"training": {"max_tokens_per_micro_batch": 1}},
    }
    (out,) = spawn(split_gradients, 1, sft_overrides(task, tmp_path, "training.global_batch_size=8"), plans)
    counts = {k: int(v["__num_micro_batches"]) for k, v in out.items()}
    assert counts["one"] == 1 and counts["two"] == 2 and counts["packed_rows_of_one"] == 8
    assert 3 <= counts["seven"] <= 8
    ref = out["one"]
    for name, grads in out.items():
        assert torch.allclose(grads["__loss"], ref["__loss"], rtol=1e-6), name
        for k, g in ref.items():
            if not k.startswith("__"):
                assert_close_scaled(grads[k], g, 1e-5, f"{name}: {k}")


# Adam's first update is lr * g / (|g| + eps): with the default eps=1e-8 it is ~lr * sign(g), which turns
# fp32 summation noise in near-zero gradients (~1e-10) into a visible fraction of lr and hides the
# gradient's size. eps = lr = 1 makes the update ~g (|g| << 1), so the weights show the gradient the
# layouts computed: a missing shard or a wrong normaliser moves them by far more than the tolerance.
ONE_STEP = ("training.train_iters=1", "optim.adam_eps=1.0", "optim.lr=1.0", "optim.min_lr=1.0",
            "optim.lr_warmup_fraction=0.0")


@pytest.fixture(scope="module")
def one_step_reference(task, tmp_path_factory):
    d = tmp_path_factory.mktemp("ref")
    (s,) = spawn(run_sft, 1, sft_overrides(task, d, *ONE_STEP, f"checkpoint.export_hf={d}/hf"))
    return s, _weights(d / "hf")


@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2", "parallel.tp=1"])  # tp=1 on 2 ranks: DP=2
def test_one_step_updates_weights_as_single_rank(task, tmp_path, one_step_reference, layout):
    ref_summary, ref = one_step_reference
    summaries = spawn(run_sft, 2, sft_overrides(task, tmp_path, *ONE_STEP, layout,
                                                 f"checkpoint.export_hf={tmp_path}/hf"))
    assert _losses(summaries[0]) == pytest.approx(_losses(ref_summary), rel=1e-6)
    norm = [v for _, v in summaries[0]["history"]["grad_norm"]]
    assert norm == pytest.approx([v for _, v in ref_summary["history"]["grad_norm"]], rel=1e-5)
    got = _weights(tmp_path / "hf")
    assert got.keys() == ref.keys()
    for k in ref:
        assert_close_scaled(got[k], ref[k], 1e-5, f"{layout}: {k}")
    # the export loads in transformers (checked on the reference in test_export_generates)


def test_resume_reproduces_the_uninterrupted_run(task, tmp_path):
    ckpt = tmp_path / "ckpt"
    common = ("training.train_iters=4", "checkpoint.save_interval=2", "checkpoint.keep_last=3")
    (full,) = spawn(run_sft, 1, sft_overrides(task, tmp_path / "a", *common, f"checkpoint.save={ckpt}"))
    assert sorted(p.name for p in ckpt.glob("iter_*")) == ["iter_0000002", "iter_0000004"]
    assert (ckpt / "latest").read_text().strip() == "iter_0000004"
    # the same run, stopped after step 2 and resumed from its checkpoint
    (resumed,) = spawn(run_sft, 1, sft_overrides(task, tmp_path / "b", *common, f"checkpoint.save={tmp_path}/b/ckpt",
                                                  f"checkpoint.load={ckpt}/iter_0000002"))
    assert [s for s, _ in resumed["history"]["loss"]] == [3, 4]
    assert _losses(resumed) == pytest.approx(_losses(full)[2:], rel=1e-6, abs=1e-6)
    assert [v for _, v in resumed["history"]["lr"]] == pytest.approx([v for _, v in full["history"]["lr"]][2:])


def test_nan_steps_are_skipped_and_counted_then_stop_the_run(task, tmp_path):
    (s,) = spawn(run_sft, 1, sft_overrides(task, tmp_path, "training.train_iters=4"), (2,))
    assert s["skipped_steps"] == 1 and s["steps"] == 4
    lr = s["history"]["lr"]
    assert lr[1][1] == lr[0][1], "a skipped step must not advance the LR schedule"
    with pytest.raises(AssertionError, match=r"step 3: 2 steps in a row .*max_skipped_steps=2"):
        spawn(run_sft, 1, sft_overrides(task, tmp_path, "training.train_iters=5", "training.max_skipped_steps=2"),
              (2, 3))


def test_crash_mid_save_leaves_the_previous_checkpoint(task, tmp_path):
    ckpt = tmp_path / "ckpt"
    common = ("training.train_iters=3", "checkpoint.save_interval=1", f"checkpoint.save={ckpt}")
    with pytest.raises(AssertionError, match="injected crash mid-save"):
        spawn(run_sft, 1, sft_overrides(task, tmp_path, *common), (), 2)
    assert (ckpt / "latest").read_text().strip() == "iter_0000001"
    (resumed,) = spawn(run_sft, 1, sft_overrides(task, tmp_path, *common, f"checkpoint.load={ckpt}"))
    assert [s for s, _ in resumed["history"]["loss"]] == [2, 3]


def test_sigterm_saves_at_the_step_boundary_and_resumes(task, tmp_path):
    """torchrun with 2 ranks; SIGTERM to the workers (what a scheduler preempting the job sends)."""
    import psutil

    ckpt = tmp_path / "ckpt"
    args = sft_overrides(task, tmp_path, "training.train_iters=200", f"checkpoint.save={ckpt}", "parallel.tp=2",
                         "logging.log_interval=1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "megatron_mmr1.train",
           "--config", "examples/configs/tiny_cpu_sft.yaml", *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    lines = []
    deadline = time.time() + 240
    for line in proc.stdout:
        lines.append(line)
        if "step 2/200" in line or time.time() > deadline:
            break
    workers = psutil.Process(proc.pid).children(recursive=True)
    assert len(workers) >= 2, "".join(lines)
    for w in workers:
        w.send_signal(signal.SIGTERM)
    rest, _ = proc.communicate(timeout=240)
    out = "".join(lines) + rest
    assert proc.returncode == 0, out
    assert "interrupted at step" in out, out
    step = int((ckpt / "latest").read_text().strip().split("_")[1])
    assert 2 <= step < 200
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
    resumed = spawn(run_sft, 2, sft_overrides(task, tmp_path, f"training.train_iters={step + 1}",
                                              f"checkpoint.save={ckpt}", f"checkpoint.load={ckpt}",
                                              "parallel.tp=2"))[0]
    assert [s for s, _ in resumed["history"]["loss"]] == [step + 1]


def test_export_generates_in_transformers(task, tmp_path, one_step_reference):
    """The HF export of a trained policy loads in transformers' Qwen2_5_VLForConditionalGeneration and generates."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    (s,) = spawn(run_sft, 1, sft_overrides(task, tmp_path, "training.train_iters=1",
                                           f"checkpoint.export_hf={tmp_path}/hf"))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "hf")).eval()
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
    ids = tok("<|im_start|>user\nHow many sides?<|im_end|>\n<|im_start|>assistant\n", return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=5, do_sample=False)
    assert out.shape[1] == ids.shape[1] + 5
    trained = _weights(tmp_path / "hf")
    initial = _weights(task.hf)
    assert any(not torch.equal(trained[k], initial[k]) for k in initial), "training changed no weight"


def test_resume_under_another_tp_layout(task, tmp_path):
    """Saved at TP=1, resumed at TP=2: megatron's dist checkpointing reshards model and optimizer state."""
    ckpt = tmp_path / "ckpt"
    common = ("training.train_iters=3", "checkpoint.save_interval=2", "checkpoint.keep_last=3")
    (full,) = spawn(run_sft, 1, sft_overrides(task, tmp_path / "a", *common, f"checkpoint.save={ckpt}"))
    resumed = spawn(run_sft, 2, sft_overrides(task, tmp_path / "b", *common, "parallel.tp=2",
                                              f"checkpoint.save={tmp_path}/b/ckpt",
                                              f"checkpoint.load={ckpt}/iter_0000002"))[0]
    assert [s for s, _ in resumed["history"]["loss"]] == [3]
    assert _losses(resumed) == pytest.approx(_losses(full)[2:], rel=1e-5)
