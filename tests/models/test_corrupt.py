"""Corrupt checkpoints (issue 14): each kind of damage is one line naming the file (and tensor), exit 2,
from ``mmr1-convert`` and from ``load_dist`` / ``load_hf_weights`` (through which build_model and the
trainers load)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from megatron_mmr1.models.checkpoint import CheckpointError, HFCheckpoint
from tests.models.workers import make_hf_checkpoint

REPO = Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    """A tied-embedding tiny HF checkpoint and its TP=1 dist checkpoint (written by hf-to-mcore)."""
    from megatron_mmr1.models.convert import hf_to_mcore

    root = tmp_path_factory.mktemp("corrupt")
    hf = make_hf_checkpoint(root / "hf", tied=True)
    mcore = hf_to_mcore(hf, root / "mcore", tp=1)
    return hf, mcore


def _truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def test_truncated_safetensors_names_the_file(ckpts, tmp_path):
    hf, _ = ckpts
    broken = shutil.copytree(hf, tmp_path / "hf")
    shard = sorted(broken.glob("*.safetensors"))[2]
    _truncate(shard)
    with pytest.raises(CheckpointError, match=f"{shard}: not a readable safetensors file"):
        HFCheckpoint(broken)


def _edited_hf_config(src: Path, dst: Path, **changes) -> Path:
    """Copy of an HF config dir with text-model keys changed (top level and text_config, either layout)."""
    shutil.copytree(src, dst)
    cfg = json.loads((dst / "config.json").read_text())
    for section in (cfg, cfg.get("text_config")):
        if section is not None:
            section.update(changes)
    (dst / "config.json").write_text(json.dumps(cfg))
    return dst


def _convert(*cases: list[str]) -> list[tuple[int, list[str]]]:
    """Run mmr1-convert's main() once per case in one fresh process (one import of torch/megatron):
    (exit code, stderr lines) per case."""
    code = ("import sys, json, io, contextlib\n"
            "from megatron_mmr1.models.convert import main\n"
            "out = []\n"
            f"for argv in {json.dumps(list(cases))}:\n"
            "    err = io.StringIO()\n"
            "    with contextlib.redirect_stderr(err):\n"
            "        rc = main(argv)\n"
            "    out.append((rc, [l for l in err.getvalue().splitlines() if l.strip()]))\n"
            "print(json.dumps(out))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV, cwd=REPO,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [tuple(x) for x in json.loads(proc.stdout.strip().splitlines()[-1])]


def test_each_damage_is_one_line_exit_2(ckpts, tmp_path):
    hf, mcore = ckpts
    # dist checkpoint: a truncated shard file, a missing shard file
    trunc = shutil.copytree(mcore, tmp_path / "trunc")
    distcp = sorted(trunc.glob("*.distcp"))
    _truncate(distcp[-1])
    missing = shutil.copytree(mcore, tmp_path / "missing")
    (missing / distcp[0].name).unlink()
    # a config that disagrees with the weights: FFN size (shape) / untied embeddings (a tensor the tied run lacks)
    ffn = _edited_hf_config(mcore / "hf_files", tmp_path / "ffn_cfg", intermediate_size=256)  # tiny: 128
    untied = _edited_hf_config(mcore / "hf_files", tmp_path / "untied_cfg", tie_word_embeddings=False)
    # HF side: a tensor listed nowhere (removed from the index), for hf-to-mcore's spawned rank
    no_tensor = shutil.copytree(hf, tmp_path / "hf_no_tensor")
    index = json.loads((no_tensor / "model.safetensors.index.json").read_text())
    del index["weight_map"]["model.layers.2.mlp.down_proj.weight"]
    (no_tensor / "model.safetensors.index.json").write_text(json.dumps(index))

    results = _convert(
        ["mcore-to-hf", "--ckpt", str(trunc), "--out", str(tmp_path / "o1")],
        ["mcore-to-hf", "--ckpt", str(missing), "--out", str(tmp_path / "o2")],
        ["mcore-to-hf", "--ckpt", str(mcore), "--out", str(tmp_path / "o3"), "--hf-config", str(ffn)],
        ["mcore-to-hf", "--ckpt", str(mcore), "--out", str(tmp_path / "o4"), "--hf-config", str(untied)],
        ["hf-to-mcore", "--hf", str(no_tensor), "--out", str(tmp_path / "o5")],
    )
    expected = [
        f"{distcp[-1]}: truncated shard file",
        f"{missing / distcp[0].name}: shard file listed in the checkpoint index is missing",
        "tensor language_model.decoder.layers.mlp.linear_fc2.weight has shape (4, 64, 128) in the checkpoint, "
        "the model expects (4, 64, 256)",
        "tensor language_model.output_layer.weight is missing from the checkpoint",
        f"{no_tensor}: tensor model.layers.2.mlp.down_proj.weight is missing",
    ]
    for (rc, lines), needle in zip(results, expected):
        assert rc == 2 and len(lines) == 1, (needle, lines)
        assert lines[0].startswith("mmr1-convert: error: ") and needle in lines[0], (needle, lines)


def test_sigterm_to_convert_stops_its_ranks(ckpts, tmp_path):
    """SIGTERM to the mmr1-convert parent: its spawned ranks die with it (before: they went on writing)."""
    hf, _ = ckpts
    proc = subprocess.Popen([sys.executable, "-m", "megatron_mmr1.models.convert", "hf-to-mcore", "--hf", str(hf),
                             "--out", str(tmp_path / "out"), "--tp", "2"],
                            cwd=REPO, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    parent = psutil.Process(proc.pid)
    end = time.monotonic() + 60
    ranks: list[psutil.Process] = []
    while time.monotonic() < end and len(ranks) < 2:
        ranks = [c for c in parent.children() if "spawn_main" in " ".join(c.cmdline())]
        time.sleep(0.1)
    assert len(ranks) == 2
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    gone, alive = psutil.wait_procs(ranks, timeout=5)
    for p in alive:
        p.kill()
    assert not alive, "ranks survived their parent"
    assert proc.returncode == 128 + signal.SIGTERM
    assert [line for line in err.splitlines() if line.strip()] == [
        f"mmr1-convert: stopped by SIGTERM; {tmp_path / 'out'} is incomplete"], err[-3000:]
