"""Reward table: real-looking MMR1 outputs -> expected (format, accuracy).

Reference: math-verify 0.9.0 decides mathematical equality (parse + verify); the template is the
MMR1 system prompt's ``<think>...</think><answer>...\\boxed{}...</answer>``.
"""

import pytest

from megatron_mmr1.config import RewardConfig
from megatron_mmr1.data.sample import Sample
from megatron_mmr1.rewards import (
    RewardPool,
    WARMUP,
    compute_rewards,
    extract_final_answer,
    last_boxed,
    score_response,
)
from tests.rewards import _slow_scores


def T(think: str, answer: str) -> str:
    return f"<think>\n{think}\n</think>\n<answer>\n{answer}\n</answer>"


R = "Let me work through the figure step by step."

# (id, response, reference answer, expected format, expected accuracy)
TABLE = [
    ("fraction_vs_decimal", T(R, "The probability is $\\boxed{\\frac{1}{2}}$."), "0.5", 1, 1),
    ("slash_vs_latex_fraction", T(R, "\\boxed{1/2}"), "\\frac{1}{2}", 1, 1),
    ("decimal_vs_fraction", T(R, "So the ratio is \\boxed{0.75}"), "3/4", 1, 1),
    ("decimal_wrong", T(R, "\\boxed{0.7}"), "3/4", 1, 0),
    ("fraction_wrong", T(R, "\\boxed{\\frac{2}{3}}"), "0.5", 1, 0),
    ("units_text", T(R, "The side is \\boxed{12\\text{ cm}}."), "12", 1, 1),
    ("units_plain", T(R, "\\boxed{12 cm}"), "12", 1, 1),
    ("degrees_circ", T(R, "\\boxed{45^\\circ}"), "45", 1, 1),
    ("degrees_symbol", T(R, "\\boxed{45°}"), "45", 1, 1),
    ("percent", T(R, "\\boxed{50\\%}"), "50", 1, 1),
    ("thousands_sep", T(R, "\\boxed{1,000}"), "1000", 1, 1),
    ("equation_vs_value", T(R, "\\boxed{x=3}"), "3", 1, 1),
    ("sqrt_nested_braces", T(R, "\\boxed{\\dfrac{\\sqrt{3}}{2}}"), "\\frac{\\sqrt3}{2}", 1, 1),
    ("set_order", T(R, "\\boxed{\\{2, 1\\}}"), "\\{1,2\\}", 1, 1),
    ("choice_letter", T(R, "The correct option is \\boxed{B}"), "B", 1, 1),
    ("choice_paren", T(R, "\\boxed{(C)}"), "C", 1, 1),
    ("choice_with_value", T(R, "\\boxed{B. 12}"), "B", 1, 1),
    ("choice_text", T(R, "\\boxed{\\text{A}}"), "(A)", 1, 1),
    ("choice_wrong", T(R, "\\boxed{B}"), "D", 1, 0),
    ("nested_box", T(R, "\\boxed{\\boxed{7}}"), "7", 1, 1),
    ("last_box_wins", T(R, "First \\boxed{3}, no wait: \\boxed{4}"), "4", 1, 1),
    ("box_only_in_think", "<think>so \\boxed{5}</think><answer>5</answer>", "5", 0, 0),
    ("no_tags_boxed", "The answer is \\boxed{5}.", "5", 0, 1),
    ("missing_box", T(R, "The answer is 5."), "5", 0, 0),
    ("malformed_unbalanced", T(R, "\\boxed{\\frac{1}{2}"), "0.5", 0, 0),
    ("malformed_latex_inside", T(R, "\\boxed{\\frac{1}{}}"), "1", 1, 0),
    ("truncated", "<think>\nLet me compute 3+4 and then mult", "7", 0, 0),
    ("empty", "", "7", 0, 0),
    ("empty_think", "<think></think><answer>\\boxed{1}</answer>", "1", 0, 1),
    ("text_after_answer", T(R, "\\boxed{1}") + " Hope this helps!", "1", 0, 1),
    ("two_answer_blocks", T(R, "\\boxed{2}") + "<answer>\\boxed{1}</answer>", "1", 0, 1),
]

HANG = [
    ("power_tower", T(R, "\\boxed{9^{9^{9^{9}}}}"), "1"),
    ("huge_polynomial", T(R, "\\boxed{(x+1)^{100000}}"), "1"),
]

CFG = RewardConfig(format_weight=1.0, accuracy_weight=1.0, timeout_s=2.0, num_workers=2)


@pytest.fixture(scope="module")
def pool():
    p = RewardPool(score_response, num_workers=2, timeout_s=CFG.timeout_s, warmup_args=WARMUP)
    p.wait_ready()
    yield p
    p.close()


def test_extraction_nested_and_escaped_braces():
    assert last_boxed("a \\boxed{\\frac{1}{\\sqrt{2}}} b") == "\\frac{1}{\\sqrt{2}}"
    assert last_boxed("\\boxed{\\{1,2\\}}") == "\\{1,2\\}"
    assert last_boxed("\\boxed{1} then \\boxed{2") == "1"  # unbalanced last box skipped
    assert last_boxed("\\fbox{3}") == "3"
    assert last_boxed("no box") is None
    assert extract_final_answer("<answer>x</answer>") is None


def test_table(pool):
    samples = [Sample(response=r, answer=a) for _, r, a, _, _ in TABLE]
    compute_rewards(samples, CFG, pool=pool)
    got = {row[0]: (s.reward_info["format"], s.reward_info["accuracy"]) for row, s in zip(TABLE, samples)}
    want = {name: (float(f), float(a)) for name, _, _, f, a in TABLE}
    wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
    assert not wrong, f"(got, want) per row: {wrong}"
    for s, (_, _, _, f, a) in zip(samples, TABLE):
        assert s.reward == f + a and s.reward_info["timeout"] == 0.0


def test_weights_are_applied(pool):
    cfg = RewardConfig(format_weight=0.25, accuracy_weight=2.0, timeout_s=CFG.timeout_s)
    s = [Sample(response=T(R, "\\boxed{4}"), answer="4"), Sample(response="\\boxed{4}", answer="4"),
         Sample(response=T(R, "\\boxed{5}"), answer="4")]
    compute_rewards(s, cfg, pool=pool)
    assert [x.reward for x in s] == [2.25, 2.0, 0.25]


def test_pathological_inputs_time_out_and_are_counted(pool):
    before = pool.stats.timeouts
    normal = [Sample(response=T(R, "\\boxed{2}"), answer="2") for _ in range(4)]
    hangs = [Sample(response=r, answer=a) for _, r, a in HANG]
    compute_rewards(hangs + normal, CFG, pool=pool)
    assert [s.reward for s in hangs] == [0.0, 0.0]
    assert all(s.reward_info["timeout"] == 1.0 for s in hangs)
    assert pool.stats.timeouts - before == len(HANG)
    # the step goes on: the other items are scored normally, by the same pool
    assert [s.reward for s in normal] == [2.0] * 4


def test_worker_deaf_to_timer_is_killed_and_replaced():
    with RewardPool(_slow_scores.deaf_hang, num_workers=1, timeout_s=0.3, grace_s=0.3) as p:
        p.wait_ready()
        res = p.map([("ok", ""), ("hang", ""), ("ok", "")])
        assert [r.timeout for r in res] == [False, True, False]
        assert res[2].parts == {"format": 1.0, "accuracy": 1.0}  # scored by the replacement worker
        assert p.stats.kills == 1 and p.stats.timeouts == 1


def test_worker_crash_and_exception_score_zero_not_raise():
    with RewardPool(_slow_scores.crash, num_workers=1, timeout_s=5.0) as p:
        res = p.map([("die", ""), ("fine", ""), ("raise", "")])
        assert res[0].error and "died" in res[0].error
        assert res[1].parts == {"format": 1.0, "accuracy": 0.0} and res[1].error is None
        assert res[2].error.startswith("ValueError")
        assert p.stats.errors == 2
    cfg = RewardConfig()
    from megatron_mmr1.rewards import combine
    assert combine(res[0], cfg) == (0.0, {"format": 0.0, "accuracy": 0.0, "timeout": 0.0, "error": 1.0})


def test_workers_that_cannot_start_raise_instead_of_looping():
    with RewardPool(_slow_scores.die_on_import_marker, num_workers=1, timeout_s=1.0, max_start_failures=1) as p:
        with pytest.raises(RuntimeError, match="keep dying"):
            p.map([("x", "")])


def test_one_off_call_builds_and_closes_its_own_pool():
    """Without a pool, compute_rewards scores through a pool of its own and leaves no worker behind."""
    import multiprocessing as mp

    before = len(mp.active_children())
    s = Sample(response="<think>2+2</think><answer>\\boxed{4}</answer>", answer="4")
    compute_rewards([s], RewardConfig(num_workers=1, timeout_s=5.0))
    assert s.reward == 2.0 and s.reward_info["accuracy"] == 1.0 and s.reward_info["format"] == 1.0
    assert len(mp.active_children()) == before
