"""Accuracy and format scores of one response (math-verify 0.9.0, checked here).

``score_response`` is what a reward worker process runs per item. math-verify's own timeouts
(``signal.alarm``, whole seconds, main thread only, and swallowed into a plain ``False``) are
switched off here: the worker wraps each item in its own timer so that a timeout is *counted*,
and the pool kills a worker that still hangs (a C-level loop in sympy never sees a signal).
"""

from __future__ import annotations

import logging
import re
from typing import Optional

from megatron_mmr1.rewards.extract import extract_final_answer, format_score

_CHOICE_RE = re.compile(r"^\(?([A-J])\)?(?:[.:)\s]|$)")
_TEXT_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox)\{([^{}]*)\}")


def _quiet_math_verify() -> None:
    # math-verify logs every failed parse / timeout at WARNING; the pool counts them instead.
    for name in ("math_verify", "math_verify.parser", "math_verify.grader", "math_verify.utils"):
        logging.getLogger(name).setLevel(logging.ERROR)


def _strip_wrappers(s: str) -> str:
    s = s.strip().strip("$").strip()
    s = _TEXT_RE.sub(r"\1", s)
    return s.strip()


def choice_letter(s: str) -> Optional[str]:
    """Multiple-choice letter of an answer ("B", "(B)", "B. 12", "\\text{B}"), else None."""
    m = _CHOICE_RE.match(_strip_wrappers(s))
    return m.group(1) if m else None


def _normalize_text(s: str) -> str:
    s = _strip_wrappers(s).replace("°", "^\\circ").replace("\\left", "").replace("\\right", "")
    return re.sub(r"\s+", "", s).rstrip(".").lower()


def accuracy_score(pred: Optional[str], gold: str) -> float:
    """1.0 when the boxed prediction ``pred`` equals the reference ``gold``, else 0.0.

    Order: a multiple-choice reference (a single letter A-J) compares letters; otherwise an
    exact match after light normalisation, then math-verify (both sides parsed as LaTeX inside
    ``\\boxed{}`` and as plain expressions, so "1/2", "0.5" and "\\frac12" agree, and a trailing
    unit or ``^\\circ`` is ignored). No timeout here: callers bound it (see rewards.pool).
    """
    if pred is None or not gold.strip():
        return 0.0
    gold_letter = choice_letter(gold) if len(_strip_wrappers(gold)) <= 3 else None
    if gold_letter is not None:
        return 1.0 if choice_letter(pred) == gold_letter else 0.0
    if _normalize_text(pred) == _normalize_text(gold):
        return 1.0

    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    _quiet_math_verify()
    cfg = [LatexExtractionConfig(boxed_match_priority=0), ExprExtractionConfig()]
    pred = pred.replace("°", "^\\circ")
    pred_parsed = parse("\\boxed{" + pred + "}", extraction_config=cfg, parsing_timeout=None)
    if not pred_parsed:
        return 0.0
    for gold_text in ("\\boxed{" + gold + "}", gold):
        gold_parsed = parse(gold_text, extraction_config=cfg, parsing_timeout=None)
        if gold_parsed and verify(gold_parsed, pred_parsed, timeout_seconds=None):
            return 1.0
    return 0.0


def score_response(response: str, answer: str) -> dict[str, float]:
    """Reward parts of one response: {"format": 0/1, "accuracy": 0/1}."""
    return {
        "format": format_score(response),
        "accuracy": accuracy_score(extract_final_answer(response), answer),
    }
