"""Is a response right? Answer extraction and the per-benchmark matching rules.

Extraction (pure string code, runs in the caller): the MMR1 reward's rule -- the last well-formed
``\\boxed{}`` of the last ``<answer>`` block, or of the whole response when there is no answer block
(:func:`megatron_mmr1.rewards.extract_final_answer`) -- and, failing that, the text of an ``<answer>``
block without a box ("unboxed"). No box and no answer block: no answer, wrong.

Matching (:func:`score_answer`, run in reward worker processes with a time limit because math-verify
can hang on adversarial output):

- choice: the predicted letter(s) ("B", "(B)", "B. 12", "\\text{B}") or the text of an option
  (normalised, numerically, or by math-verify) against the gold letter(s); several gold letters
  (LogicVista) must all and only be chosen.
- integer / float (MathVista): MathVista's own rule -- ``int(float(pred))`` for integers,
  ``round(float(pred), precision)`` for floats -- compared with the gold the same way.
- relaxed (ChartQA): numbers within 5% relative error of a non-zero gold (pix2struct's
  ``relaxed_correctness``), else case-insensitive equality.
- free: the accuracy reward (normalised equality, then math-verify).
"""

from __future__ import annotations

import re
from typing import Optional, Sequence

from megatron_mmr1.config import RewardConfig
from megatron_mmr1.rewards import accuracy_score, answer_block, choice_letter, extract_final_answer, format_score
from megatron_mmr1.rewards.math_reward import _quiet_math_verify
from megatron_mmr1.rewards.pool import RewardPool

LETTERS = "ABCDEFGHIJ"
RELAXED_TOLERANCE = 0.05
_WRAP_RE = re.compile(r"\\(?:text|textbf|mathrm|mbox|operatorname)\{([^{}]*)\}")
_NUMBER_RE = re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_UNIT_TAIL_RE = re.compile(r"^\s*(?:[a-zA-Z]+(?:\^\{?\d\}?)?\s*)*(?:\^\{?\\circ\}?|\\circ|°)?\s*\.?$")
_LETTERS_RE = re.compile(r"^\(?([A-J])\)?(?:\s*(?:,|and|&|/)?\s*\(?([A-J])\)?)*$")


def extract_answer(response: str) -> tuple[Optional[str], str]:
    """(answer text or None, how): how is "boxed", "unboxed" (answer block without a box) or "none"."""
    boxed = extract_final_answer(response)
    if boxed is not None:
        return boxed, "boxed"
    block = answer_block(response)
    if block is not None and block.strip():
        return block.strip(), "unboxed"
    return None, "none"


def _clean(s: str) -> str:
    s = _WRAP_RE.sub(r"\1", s.strip().strip("$").strip())
    return s.replace("\\%", "%").replace("\\!", "").replace("\\,", "").replace("\\ ", " ").strip()


def to_number(text: str) -> Optional[float]:
    """The number an answer states ("1,000", "12 cm", "45^\\circ", "25%", "\\frac{1}{2}", "x = 3"), else None.

    A percent sign is dropped, not divided by 100: "25%" and "25" state the same number."""
    s = _clean(text)
    s = re.sub(r"^[a-zA-Z]\s*=\s*", "", s)  # "x = 3"
    s = re.sub(r"(?<=\d),(?=\d{3}\b)", "", s).replace("%", "").strip()
    m = _NUMBER_RE.match(s)
    if m and _UNIT_TAIL_RE.match(s[m.end():]):
        return float(m.group(0))
    return _sympy_number(s)


def _sympy_number(s: str) -> Optional[float]:
    """Numeric value of a LaTeX expression through math-verify (fractions, roots, pi)."""
    if not s or len(s) > 200:
        return None
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse

    _quiet_math_verify()
    try:
        parsed = parse("\\boxed{" + s + "}", extraction_config=[LatexExtractionConfig(boxed_match_priority=0),
                                                                  ExprExtractionConfig()], parsing_timeout=None)
    except Exception:
        return None
    for expr in parsed:
        if getattr(expr, "is_number", False):
            try:
                return float(expr.evalf())
            except (TypeError, ValueError):
                return None
    return None


def _norm_text(s: str) -> str:
    return re.sub(r"\s+", " ", _clean(s)).rstrip(".").strip().lower()


def predicted_letters(pred: str, options: Sequence[str]) -> Optional[str]:
    """The option letter(s) a prediction names: letters alone ("B", "(B)", "A, C"), the text of one option,
    a letter with text ("B. 12"), the value of one option, or one option by math-verify."""
    s = _clean(pred)
    if len(s) <= 20 and _LETTERS_RE.match(s):
        return "".join(sorted(set(re.findall(r"[A-J]", s))))
    norm = _norm_text(s)
    for i, opt in enumerate(options):
        if _norm_text(opt) == norm:
            return LETTERS[i]
    one = choice_letter(s)
    if one is not None or not options:
        return one
    value = to_number(s)
    if value is not None:
        hits = [i for i, opt in enumerate(options)
                if (v := to_number(opt)) is not None and abs(v - value) <= 1e-9 * max(1.0, abs(v))]
        if len(hits) == 1:
            return LETTERS[hits[0]]
    hits = [i for i, opt in enumerate(options) if accuracy_score(s, opt) == 1.0]
    return LETTERS[hits[0]] if len(hits) == 1 else None


def _numeric_match(pred: str, gold: str, kind: str, precision: Optional[int]) -> bool:
    p, g = to_number(pred), to_number(gold)
    if p is None or g is None:
        return False
    if kind == "integer":
        return int(p) == int(g)
    return round(p, precision if precision is not None else 2) == round(g, precision if precision is not None else 2)


def relaxed_match(pred: str, gold: str, tolerance: float = RELAXED_TOLERANCE) -> bool:
    """ChartQA's relaxed accuracy: within ``tolerance`` relative error of a non-zero numeric gold."""
    p, g = to_number(pred), to_number(gold)
    if p is not None and g:
        return abs(p - g) / abs(g) <= tolerance
    return _norm_text(pred) == _norm_text(gold)


def score_answer(pred: Optional[str], gold: str, kind: str, options: Sequence[str] = (),
                 precision: Optional[int] = None) -> dict[str, float]:
    """{"correct": 0/1} for one extracted answer (the reward-worker function: top level, picklable)."""
    if pred is None or not pred.strip():
        return {"correct": 0.0}
    if kind == "choice":
        ok = predicted_letters(pred, options) == gold
    elif kind in ("integer", "float"):
        ok = _numeric_match(pred, gold, kind, precision)
    elif kind == "relaxed":
        ok = relaxed_match(pred, gold)
    else:
        ok = accuracy_score(pred, gold) == 1.0
    return {"correct": 1.0 if ok else 0.0}


def response_parts(response: str) -> dict:
    """What the caller records per response: extracted answer, how it was found, format reward."""
    pred, how = extract_answer(response)
    return {"extracted": pred, "how": how, "format": format_score(response)}


WARMUP = ("\\frac{1}{2}", "0.5", "free", (), None)


def eval_pool(cfg: RewardConfig) -> RewardPool:
    """Worker pool running :func:`score_answer` with ``reward.timeout_s`` per item; the caller closes it."""
    return RewardPool(score_answer, num_workers=cfg.num_workers, timeout_s=cfg.timeout_s, grace_s=cfg.grace_s,
                      warmup_args=WARMUP)
