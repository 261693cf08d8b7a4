"""TensorBoard events from the LM smoke run (rank 0), read back with tensorboard's own reader."""

import subprocess
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def test_lm_smoke_writes_tensorboard(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_mmr1.train", "--config", "examples/configs/tiny_cpu_smoke.yaml",
         f"output_dir={tmp_path}", "training.train_iters=3", "logging.progress=false"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    losses = [e.value for e in acc.Scalars("train/loss")]
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3]
    assert losses[-1] < losses[0]  # lr 3e-3 on a learnable token pattern: three steps reduce the loss
    assert "step 3 | loss" in proc.stdout
