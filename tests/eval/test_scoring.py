"""Answer extraction and matching rules on hand-checked cases.

References: the MMR1 reward's extraction (megatron_mmr1/rewards), MathVista's own scorer
(``int(float(x))`` for integers, ``round(float(x), precision)`` for floats), ChartQA's relaxed accuracy
(pix2struct ``relaxed_correctness``: 5% relative error, string equality otherwise).
"""

from __future__ import annotations

import pytest

from megatron_mmr1.config import RewardConfig
from megatron_mmr1.eval.scoring import eval_pool, extract_answer, predicted_letters, score_answer, to_number


@pytest.mark.parametrize("response, expected", [
    ("<think>try \\boxed{5}</think>\n<answer>so \\boxed{7}</answer>", ("7", "boxed")),
    # A box left in the reasoning is not the answer; the answer block without a box is ("unboxed").
    ("<think>\\boxed{5}</think><answer> 7 </answer>", ("7", "unboxed")),
    ("no template at all, so \\boxed{12}", ("12", "boxed")),
    ("<answer>\\boxed{\\frac{1}{2}}</answer>", ("\\frac{1}{2}", "boxed")),
    ("I think it is 12", (None, "none")),
    ("<think>x</think><answer>  </answer>", (None, "none")),
    ("<answer>\\boxed{3", (None, "none")),  # cut off mid-box, no closed answer block
])
def test_extract_answer(response, expected):
    assert extract_answer(response) == expected


OPTIONS = ["145°", "35°", "55°"]


@pytest.mark.parametrize("pred, correct", [
    ("B", True), ("(B)", True), ("\\text{B}", True), ("B. 35°", True),     # by letter
    ("35°", True), ("35^\\circ", True), ("35", True),                     # by option text / value
    ("A", False), ("145", False), ("B, C", False), ("the second one", False), ("", False),
])
def test_multiple_choice_letter_or_option_text(pred, correct):
    assert score_answer(pred, "B", "choice", OPTIONS)["correct"] == float(correct)


def test_multiple_choice_several_gold_letters():
    assert score_answer("A, C", "AC", "choice")["correct"] == 1.0
    assert score_answer("C and A", "AC", "choice")["correct"] == 1.0
    assert score_answer("A", "AC", "choice")["correct"] == 0.0
    # Without known option texts only letters count.
    assert score_answer("35°", "B", "choice")["correct"] == 0.0


@pytest.mark.parametrize("pred, gold, kind, precision, correct", [
    ("7", "7", "integer", None, True), ("7 bars", "7", "integer", None, True), ("7.0", "7", "integer", None, True),
    ("6.9", "7", "integer", None, False),   # MathVista truncates: int(6.9) = 6
    ("seven", "7", "integer", None, False),
    ("1.2", "1.2", "float", 1, True), ("1.23", "1.2", "float", 1, True), ("1.2 cm", "1.2", "float", 1, True),
    ("\\frac{6}{5}", "1.2", "float", 1, True), ("1.3", "1.2", "float", 1, False),
    ("1/3", "0.33", "float", 2, True), ("0.34", "0.33", "float", 2, False),
])
def test_numeric_with_precision(pred, gold, kind, precision, correct):
    assert score_answer(pred, gold, kind, (), precision)["correct"] == float(correct)


@pytest.mark.parametrize("pred, gold, correct", [
    ("62.5", "62.5", True), ("64", "62.5", True), ("66", "62.5", False),    # 2.4% vs 5.6% off
    ("62.5%", "62.5", True), ("peru", "Peru", True), ("Peru.", "Peru", True), ("Chile", "Peru", False),
    ("0", "0", True),  # a zero gold falls back to string equality, as in the reference
])
def test_chartqa_relaxed_accuracy(pred, gold, correct):
    assert score_answer(pred, gold, "relaxed")["correct"] == float(correct)


@pytest.mark.parametrize("pred, gold, correct", [
    ("\\frac{8\\pi}{3}", "\\frac{8}{3}\\pi", True), ("x = 3", "3", True), ("0.5", "\\frac{1}{2}", True),
    ("4", "3", False), (None, "3", False),
])
def test_free_form_math_verify(pred, gold, correct):
    assert score_answer(pred, gold, "free")["correct"] == float(correct)


def test_to_number_forms():
    assert [to_number(s) for s in ["1,000", "12 cm", "45^\\circ", "25%", "x = 3", "-0.5", "\\text{12 m}"]] == [
        1000.0, 12.0, 45.0, 25.0, 3.0, -0.5, 12.0]
    assert to_number("\\frac{1}{2}") == pytest.approx(0.5) and to_number("abc") is None


def test_predicted_letters_prefers_exact_option_text():
    # "A cat" is option C's text, not the letter A followed by words.
    assert predicted_letters("A cat", ["a dog", "a bird", "A cat"]) == "C"


def test_scoring_runs_in_reward_workers():
    with eval_pool(RewardConfig(num_workers=1, timeout_s=5.0)) as pool:
        res = pool.map([("35°", "B", "choice", tuple(OPTIONS), None), ("1.3", "1.2", "float", (), 1)])
    assert [r.parts for r in res] == [{"correct": 1.0}, {"correct": 0.0}]
