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


def test_log_lines_do_not_break_a_progress_bar(tmp_path):
    """A log line during an active tqdm bar lands on a line of its own (the bar is cleared and redrawn,
    tqdm.write's contract), and the same line is appended to the log file."""
    import io

    from tqdm import tqdm

    from megatron_mmr1.utils.logging import get_logger, setup_logging

    buf = io.StringIO()
    setup_logging("INFO", log_file=tmp_path / "train.log", stream=buf)
    try:
        bar = tqdm(range(10), file=buf, desc="steps", mininterval=0, ascii=True)
        for i in bar:
            if i == 5:
                get_logger("test").info("half way")
        bar.close()
    finally:
        setup_logging("INFO")
    line = next(line for line in buf.getvalue().split("\n") if "half way" in line)
    visible = line.split("\r")[-1]  # what the terminal shows after the last carriage return
    assert visible.startswith("[") and visible.endswith("INFO megatron_mmr1.test: half way"), repr(line)
    assert "half way" in (tmp_path / "train.log").read_text()


def test_run_writes_config_and_log_and_prints_tensorboard(tmp_path):
    """The entry point leaves the resolved config.yaml and train.log in output_dir, keeps an older
    different config.yaml, and prints where TensorBoard writes with the command to view it."""
    import yaml

    (tmp_path / "config.yaml").write_text("name: an-older-run\n")
    proc = subprocess.run(
        [sys.executable, "-m", "megatron_mmr1.train", "--config", "examples/configs/tiny_cpu_smoke.yaml",
         f"output_dir={tmp_path}", "training.train_iters=1", "logging.progress=false", "optim.lr=1e-4"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    saved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert saved["optim"]["lr"] == 1e-4 and saved["output_dir"] == str(tmp_path)
    assert (tmp_path / "config.yaml.1").read_text() == "name: an-older-run\n"
    assert f"tensorboard --logdir {tmp_path / 'tensorboard'}" in proc.stdout
    assert "step 1 | loss" in (tmp_path / "train.log").read_text()
