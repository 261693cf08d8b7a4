"""mmr1-eval end to end on the stand-in server (SGLang's HTTP API, transformers generation on CPU).

The checkpoint is the demo's (``megatron_mmr1.models.tiny`` on the synthetic task's tokenizer), evaluated
as a Hugging Face directory and as a megatron dist checkpoint of the same weights side by side: greedy
decoding must give the same responses. A second run goes through ``--server-url`` to a server the test
started, and must give them again.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from megatron_mmr1.eval.cli import main
from tests.eval import fixtures as fx
from tests.rollout.helpers import ROOT, ServerProcess

MAX_NEW = 12


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    from megatron_mmr1.data.synthetic import generate
    from megatron_mmr1.models.convert import hf_to_mcore
    from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

    root = tmp_path_factory.mktemp("eval_e2e")
    data = generate(root / "data", num=30, seed=0, tokenizer=True)
    hf = make_tiny_hf_checkpoint(root / "hf_tiny", data["tokenizer"], seed=0, logit_scale=20)
    mcore = hf_to_mcore(hf, root / "mcore_tp1", tp=1, pp=1)
    return {"root": root, "hf": hf, "mcore": mcore, "val": data["rl_val"], "mathvista": fx.write_mathvista(root)}


def _run(args: list[str]) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, "-m", "megatron_mmr1.eval", *args, "--no-progress",
                           "--max-new-tokens", str(MAX_NEW), "reward.num_workers=1"],
                          capture_output=True, text=True, env=env, cwd=str(ROOT), timeout=900)


def _responses(out, model: str, bench: str) -> list[dict]:
    return [json.loads(x) for x in (out / model / f"{bench}.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def local_run(assets):
    out = assets["root"] / "out_local"
    res = _run(["--model", f"hf={assets['hf']}", "--model", f"mcore={assets['mcore']}", "--data", str(assets["val"]),
                "--data", str(assets["mathvista"]), "--backend", "local", "--out", str(out)])
    assert res.returncode == 0, res.stderr[-3000:]
    return out, res


def test_local_backend_hf_and_megatron_side_by_side(assets, local_run):
    out, res = local_run
    lines = res.stdout.splitlines()
    assert lines[2] == "| model | MathVista | rl_val | Avg |"
    assert lines[4].startswith("| hf |") and lines[5].startswith("| mcore |")
    saved = json.loads((out / "results.json").read_text())
    assert [m["model"] for m in saved["models"]] == ["hf", "mcore"]
    n_val = len(assets["val"].read_text().splitlines())
    for m in saved["models"]:
        assert {b["name"]: b["n"] for b in m["benchmarks"]} == {"mathvista": 3, "rl_val": n_val}
        assert m["settings"]["max_new_tokens"] == MAX_NEW and m["settings"]["temperature"] == 0.0
    for bench in ("rl_val", "mathvista"):
        hf, mc = _responses(out, "hf", bench), _responses(out, "mcore", bench)
        assert [r["response"] for r in hf] == [r["response"] for r in mc]  # same weights, greedy
        assert all(0 < r["response_tokens"] <= MAX_NEW and r["finish"] in ("stop", "length") for r in hf)
        # Each verdict is the scorer's on the extracted answer (the random policy writes no box).
        assert all(r["correct"] == 0.0 and r["extracted"] is None for r in hf)
    assert (out / "mcore" / "hf_from_mcore" / "config.json").is_file()
    assert (out / "results.md").read_text() == res.stdout


def test_server_url_gives_the_same_responses(assets, local_run, tmp_path):
    server = ServerProcess(assets["hf"], tmp_path).wait_healthy(180)
    try:
        res = _run(["--server-url", server.url, "--model", f"served={assets['hf']}", "--data", str(assets["val"]),
                    "--out", str(tmp_path / "out")])
    finally:
        server.kill()
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.splitlines()[4].startswith("| served |")
    got = [r["response"] for r in _responses(tmp_path / "out", "served", "rl_val")]
    assert got == [r["response"] for r in _responses(local_run[0], "hf", "rl_val")]


def test_usage_errors_are_one_line(tmp_path, capsys):
    bad = tmp_path / "other.jsonl"
    bad.write_text(json.dumps({"prompt": "q", "solution": "1"}) + "\n")
    assert main(["--server-url", "http://127.0.0.1:9", "--tokenizer", str(tmp_path), "--data", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"mmr1-eval: error: {bad}: layout not recognised")
    good = fx.write_rl(tmp_path)
    assert main(["--model", str(tmp_path / "nope"), "--data", str(good), "--out", str(tmp_path / "o")]) == 2
    assert "no such directory" in capsys.readouterr().err
    assert main(["--model", str(tmp_path), "--data", str(good), "--out", str(tmp_path / "o")]) == 2
    assert "not a Hugging Face checkpoint (no config.json) nor a megatron dist checkpoint" in capsys.readouterr().err
