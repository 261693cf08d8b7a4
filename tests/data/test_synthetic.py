"""Synthetic image-math task: deterministic, verifiable integer answers, difficulty spread, MMR1 format."""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict

from megatron_mmr1.data.synthetic import TASKS, cot_trace, generate, main, make_item

# MMR1's format reward (verl/utils/reward_score/math.py in the MMR1 repository).
MMR1_FORMAT = re.compile(r"<think>.*</think>.*\\boxed\{.*\}.*", re.DOTALL)


def _rows(path):
    return [json.loads(line) for line in open(path)]


def test_cli_writes_rl_sft_and_tokenizer(tmp_path):
    main(["--out", str(tmp_path), "--num", "12", "--num-sft", "5", "--seed", "3", "--tokenizer"])
    rl, val, sft = (_rows(tmp_path / f) for f in ("rl_train.jsonl", "rl_val.jsonl", "sft_train.jsonl"))
    assert len(rl) + len(val) == 12 and len(val) == 1 and len(sft) == 5
    for r in rl + val:
        assert r["problem"].startswith("<image>") and r["answer"].lstrip("-").isdigit()
        assert (tmp_path / r["images"][0]).is_file() and not r["images"][0].startswith("/")
    for r in sft:
        assert [m["role"] for m in r["messages"]] == ["user", "assistant"]
        assert r["messages"][0]["content"].count("<image>") == len(r["images"]) == 1
    assert (tmp_path / "tokenizer" / "tokenizer.json").is_file()


def test_deterministic_and_independent_of_num(tmp_path):
    a = generate(tmp_path / "a", num=8, seed=11, val_fraction=0.0, num_sft=0)
    b = generate(tmp_path / "b", num=8, seed=11, val_fraction=0.0, num_sft=0)
    c = generate(tmp_path / "c", num=4, seed=11, val_fraction=0.0, num_sft=0)
    assert open(a["rl_train"]).read() == open(b["rl_train"]).read()
    assert _rows(a["rl_train"])[:4] == _rows(c["rl_train"])
    for i in range(8):
        assert (tmp_path / f"a/images/{i:06d}.png").read_bytes() == (tmp_path / f"b/images/{i:06d}.png").read_bytes()
    assert _rows(generate(tmp_path / "d", num=8, seed=12, val_fraction=0.0, num_sft=0)["rl_train"]) != _rows(a["rl_train"])


def _answer_from_facts(item):
    nums = [int(n) for f in item.facts for n in re.findall(r"-?\d+", f.split(" at the ")[0])]
    q = item.question
    if item.task == "count":
        return sum("number" in f for f in item.facts)
    if item.task == "sides":
        return nums[0]
    if item.task == "digits":
        return nums[0] if "What number" in q else (nums[0] * nums[1] if "product" in q else sum(nums))
    vals = nums[1::2]  # "bar i reaches v"
    if "How many bars" in q:
        return len(vals)
    if "tallest bar?" in q:
        return max(vals)
    if "first bar" in q:
        return vals[0]
    if "difference" in q:
        return max(vals) - min(vals)
    return sum(vals)


def test_answers_follow_from_what_is_drawn():
    for i in range(300):
        item = make_item(0, i)
        assert isinstance(item.answer, int) and item.answer == _answer_from_facts(item), (i, item.task, item.facts)
        assert 56 <= min(item.image.size) and max(item.image.size) <= 224


def test_difficulty_spread():
    """Every task at every level; a prior-only guesser (majority answer per task and level) passes
    about half of the easiest prompts and almost none of the hardest: pass rates spread over 0..1."""
    answers = defaultdict(list)
    for i in range(2000):
        item = make_item(1, i)
        answers[(item.task, item.difficulty)].append(item.answer)
    assert set(answers) == {(t, d) for t in TASKS for d in range(1, 6)}
    majority = {k: Counter(v).most_common(1)[0][1] / len(v) for k, v in answers.items()}
    for t in TASKS:
        assert majority[(t, 1)] > majority[(t, 5)], t
    assert max(majority.values()) > 0.45 and min(majority.values()) < 0.1


def test_cot_trace_has_mmr1_format_and_the_answer():
    for i in range(50):
        item = make_item(2, i)
        trace = cot_trace(item)
        assert MMR1_FORMAT.fullmatch(trace)
        assert re.findall(r"\\boxed\{(.*?)\}", trace) == [str(item.answer)]
        assert trace.index("</think>") < trace.index("<answer>") < trace.index("</answer>")
        assert "double-check" in trace  # a reflection step, as in long-CoT traces
