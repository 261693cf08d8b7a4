"""evaluate(): fixture files -> requests to a server with canned responses -> hand-checked numbers.

The canned server speaks SGLang 0.5.23's /generate shapes (``n`` > 1 gives a list of outputs;
``meta_info.finish_reason.type``; 400 for a request it refuses) -- the same ones
megatron_mmr1/rollout/protocol.py reads.
"""

from __future__ import annotations

import json

import pytest

from megatron_mmr1.config import DataConfig, EvalConfig, RewardConfig, RolloutConfig
from megatron_mmr1.data.chat import MMR1_SYSTEM_PROMPT, ChatFormatter
from megatron_mmr1.data.records import BadRecordError
from megatron_mmr1.eval import runner
from megatron_mmr1.eval.readers import load_benchmarks
from megatron_mmr1.eval.results import markdown_report, write_outputs
from megatron_mmr1.rollout import RolloutClient, RolloutError
from megatron_mmr1.utils.net import free_port
from tests.eval import fixtures as fx
from tests.eval.fake_server import CannedServer

GOOD = "<think>look</think>\n<answer>\\boxed{{{}}}</answer>"
RESPONSES = {
    # MathVista: gold B (= "35°"); the option text counts; the second sample names A: wrong.
    "Find the measure of angle x": [GOOD.format("35°"), GOOD.format("A")],
    "How many bars have a value above 5": [GOOD.format("7")],
    # Unboxed and wrong (gold 1.2 at precision 1): answered, not boxed, format 0.
    "length of side AB": ["<think>measure</think><answer>1.3</answer>"],
    # ChartQA: 64 is within 5% of 62.5; the second is cut off without an answer.
    "tallest bar": ["<answer>\\boxed{64}</answer>"],
    "lowest value": ["I think the answer is Chile ..."],
    "How many red circles": [GOOD.format("3")],
}


class _Tok:
    """The prompt builder only needs the Qwen2-VL special tokens to exist (no tokenisation here)."""

    unk_token_id = 0

    def convert_tokens_to_ids(self, tokens):
        return [1, 2, 3]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bench")
    rl = fx._jsonl(root / "rl" / "rl_val.jsonl", [
        {"problem": "<image>How many red circles are there?", "answer": "3", "images": ["r0.png"], "task": "count"},
        {"problem": "<image>REJECT-ME: a prompt the server refuses", "answer": "1", "images": ["r0.png"],
         "task": "count"}])
    fx._write_png(root / "rl" / "r0.png")
    return [str(fx.write_mathvista(root)), str(fx.write_chartqa(root)), str(rl)]


@pytest.fixture
def formatter():
    return ChatFormatter(_Tok(), MMR1_SYSTEM_PROMPT)


def _client(url: str, **cfg) -> RolloutClient:
    return RolloutClient(RolloutConfig(max_retries=1, **cfg), [url], max_new_tokens=4096)


def _evaluate(files, formatter, server, **ev):
    return runner.evaluate(_client(server.url), files, EvalConfig(max_new_tokens=64, **ev), DataConfig(),
                           formatter=formatter, reward_cfg=RewardConfig(num_workers=0), progress=False)


@pytest.mark.parametrize("steps", [runner.PROGRESS_STEPS, 1])
def test_greedy_scores_every_benchmark(files, formatter, monkeypatch, steps):
    # steps=1: one chunk holds every prompt; the refused one fails it, and the chunk is redone prompt by prompt.
    monkeypatch.setattr(runner, "PROGRESS_STEPS", steps)
    server = CannedServer(RESPONSES, hold_until=6 if steps > 1 else 0)
    try:
        result = _evaluate(files, formatter, server)
    finally:
        server.stop()
    mv, cq, rl = (result.benchmark(n) for n in ("mathvista", "chartqa", "rl_val"))
    assert (mv.n, mv.accuracy, mv.format_rate, mv.answered_rate, mv.boxed_rate) == (3, 2 / 3, 2 / 3, 1.0, 2 / 3)
    assert mv.categories["task"] == {"figure question answering": {"n": 1, "accuracy": 1.0},
                                     "geometry problem solving": {"n": 2, "accuracy": 0.5}}
    assert (cq.accuracy, cq.truncated_rate, cq.answered_rate, cq.format_rate) == (0.5, 0.5, 0.5, 0.0)
    assert cq.categories["source"] == {"augmented": {"n": 1, "accuracy": 0.0}, "human": {"n": 1, "accuracy": 1.0}}
    # The refused request is one failed question, counted wrong; the others are unaffected.
    assert (rl.n, rl.accuracy, rl.failed) == (2, 0.5, 1)
    failed = [s for s in rl.samples if "error" in s]
    assert len(failed) == 1 and "answered 400" in failed[0]["error"] and failed[0]["source"].endswith(":2")
    assert result.average == pytest.approx((2 / 3 + 0.5 + 0.5) / 3)

    sent = [b for b in server.bodies if "REJECT-ME" not in b["text"]]
    # One chunk: its six good prompts went out once with the refused one, and again one by one.
    assert len(sent) == (6 if steps > 1 else 12) and all(b["sampling_params"]["temperature"] == 0.0 for b in sent)
    assert all(b["sampling_params"]["n"] == 1 and b["sampling_params"]["max_new_tokens"] == 64 for b in sent)
    assert all(len(b["image_data"]) == 1 and MMR1_SYSTEM_PROMPT.strip() in b["text"] for b in sent)
    if steps > 1:  # every request was in flight at once (the server held them until all six had come)
        assert server.max_inflight == 6

    rec = next(s for s in mv.samples if s["id"] == "1")
    assert (rec["extracted"], rec["how"], rec["correct"], rec["answer"], rec["weight_version"]) == (
        "35°", "boxed", 1.0, "B", "7")

    metrics = result.metrics()
    assert metrics["eval/mathvista/accuracy"] == pytest.approx(2 / 3)
    assert metrics["eval/average/accuracy"] == pytest.approx(result.average)
    assert "eval/mathvista/pass@1" not in metrics and metrics["eval/chartqa/truncated"] == 0.5


def test_mean_and_pass_at_k(files, formatter):
    server = CannedServer(RESPONSES)
    try:
        result = _evaluate(files, formatter, server, samples=2, temperature=0.6)
    finally:
        server.stop()
    mv = result.benchmark("mathvista")
    # Per question: (1 + 0) / 2, (1 + 1) / 2, 0 -> mean@2 = 0.5; any right: 2 of 3 -> pass@2.
    assert (mv.k, mv.accuracy, mv.pass_at_k, len(mv.samples)) == (2, 0.5, 2 / 3, 6)
    assert sorted(s["sample"] for s in mv.samples) == [0, 0, 0, 1, 1, 1]
    assert all(b["sampling_params"]["n"] == 2 and b["sampling_params"]["temperature"] == 0.6 for b in server.bodies)
    assert result.metrics()["eval/mathvista/pass@2"] == pytest.approx(2 / 3)


def test_no_server_left_stops_the_evaluation(files, formatter):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens here
    with pytest.raises(RolloutError, match=url):
        runner.evaluate(_client(url), files[:1], EvalConfig(), DataConfig(), formatter=formatter,
                        reward_cfg=RewardConfig(num_workers=0), progress=False)


def test_prompt_errors_name_the_record(tmp_path, formatter):
    path = fx._jsonl(tmp_path / "two.jsonl", [
        {"problem": "<image> and <image>: which is larger?", "answer": "3", "images": ["a.png"]},
        {"problem": "<image>How many red circles are there?", "answer": "3", "images": ["a.png"]}])
    fx._write_png(tmp_path / "a.png")
    server = CannedServer(RESPONSES)
    try:
        with pytest.raises(BadRecordError, match=r"two\.jsonl:1: problem has 2 <image> placeholders but 1 images"):
            _evaluate([str(path)], formatter, server)
        skip = DataConfig(on_bad_record="skip")
        result = runner.evaluate(_client(server.url), [str(path)], EvalConfig(), skip, formatter=formatter,
                                 reward_cfg=RewardConfig(num_workers=0), progress=False)
    finally:
        server.stop()
    b = result.benchmark("two")
    assert (b.n, b.skipped, b.accuracy) == (1, 1, 1.0)


def test_report_side_by_side_and_files(files, formatter, tmp_path):
    server = CannedServer(RESPONSES)
    try:
        benches = load_benchmarks(files[:2])
        before = runner.evaluate(_client(server.url), benches, EvalConfig(), DataConfig(), formatter=formatter,
                                 reward_cfg=RewardConfig(num_workers=0), model="before", progress=False)
        server.responses = {k: [GOOD.format("1.2")] if "side AB" in k else v for k, v in RESPONSES.items()}
        after = runner.evaluate(_client(server.url), benches, EvalConfig(), DataConfig(), formatter=formatter,
                                reward_cfg=RewardConfig(num_workers=0), model="after", progress=False)
    finally:
        server.stop()
    table = markdown_report([before, after])
    lines = table.splitlines()
    assert lines[2] == "| model | MathVista | ChartQA | Avg |"  # the paper's column order
    assert lines[4] == "| before | 66.7 | 50.0 | 58.3 |"
    assert lines[5] == "| after | 100.0 | 50.0 | 75.0 |"
    assert "| MathVista | task | geometry problem solving | 2 | 50.0 | 100.0 |" in lines
    # one of three MathVista questions turned right: +33.3 points, paired SE sqrt(var(1, 0, 0) / 3) = 33.3
    assert "### Paired against before (same questions)" in lines
    assert "| after | MathVista | 3 | +33.3 | 33.3 | 1 | 0 |" in lines
    paths = write_outputs([before, after], tmp_path / "out")
    saved = json.loads(paths["json"].read_text())
    assert [m["model"] for m in saved["models"]] == ["before", "after"]
    assert saved["models"][1]["benchmarks"][0]["accuracy"] == 1.0
    rows = [json.loads(x) for x in (tmp_path / "out" / "after" / "mathvista.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and {r["id"]: r["correct"] for r in rows} == {"1": 1.0, "2": 1.0, "3": 1.0}
    assert paths["markdown"].read_text() == table
    only = write_outputs([before, after], tmp_path / "only_after", jsonl_models={"after"})
    assert (tmp_path / "only_after" / "after" / "mathvista.jsonl").exists()
    assert not (tmp_path / "only_after" / "before").exists() and "before/mathvista" not in only
