"""Pull the final answer out of an MMR1 response, and check the response template.

The MMR1 system prompt asks for ``<think> reasoning </think>`` followed by
``<answer> ... \\boxed{final answer} ... </answer>``. The accuracy reward reads the last
well-formed ``\\boxed{...}`` of the answer block (nested braces allowed); the format reward
checks the template. Pure string code: cheap, and safe to run anywhere (no sympy).
"""

from __future__ import annotations

import re
from typing import Optional

_BOXED_CMDS = ("\\boxed", "\\fbox")
_ANSWER_RE = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)
_TAG_RE = re.compile(r"</?(think|answer)>")


def _balanced_group(text: str, open_idx: int) -> Optional[str]:
    """Content of the ``{...}`` group opening at ``text[open_idx]``; None when unbalanced.

    ``\\{`` and ``\\}`` are literal braces in LaTeX and do not count.
    """
    depth = 0
    i = open_idx
    while i < len(text):
        c = text[i]
        if c == "\\" and i + 1 < len(text) and text[i + 1] in "{}":
            i += 2
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[open_idx + 1 : i]
        i += 1
    return None


def last_boxed(text: str) -> Optional[str]:
    """Content of the last well-formed ``\\boxed{...}`` (or ``\\fbox{...}``) in ``text``.

    A trailing box with unbalanced braces (the model stopped mid-formula) is skipped in favour
    of an earlier well-formed one; None when there is none.
    """
    starts = []
    for cmd in _BOXED_CMDS:
        starts += [m.start() for m in re.finditer(re.escape(cmd) + r"\s*\{", text)]
    for start in sorted(starts, reverse=True):
        brace = text.index("{", start)
        content = _balanced_group(text, brace)
        if content is not None:
            return content.strip()
    return None


def answer_block(text: str) -> Optional[str]:
    """Content of the last ``<answer>...</answer>`` block, or None."""
    blocks = _ANSWER_RE.findall(text)
    return blocks[-1] if blocks else None


def extract_final_answer(text: str) -> Optional[str]:
    """The answer the accuracy reward grades: the last box of the answer block.

    When there is an answer block, only its box counts (a box left in the reasoning is not an
    answer). Without any answer block, the last box of the whole response is graded: the
    template is the format reward's business, not accuracy's. No box gives None (reward 0).
    """
    block = answer_block(text)
    return last_boxed(block if block is not None else text)


def format_score(text: str) -> float:
    """1.0 when ``text`` follows the MMR1 template, else 0.0.

    Template: optional whitespace, exactly one ``<think>...</think>`` (non-empty), then exactly
    one ``<answer>...</answer>`` containing a well-formed ``\\boxed{}``, then only whitespace.
    """
    tags = [m.group(0) for m in _TAG_RE.finditer(text)]
    if tags != ["<think>", "</think>", "<answer>", "</answer>"]:
        return 0.0
    stripped = text.strip()
    if not stripped.startswith("<think>") or not stripped.endswith("</answer>"):
        return 0.0
    think, rest = stripped[len("<think>") :].split("</think>", 1)
    if not think.strip():
        return 0.0
    rest = rest.strip()
    if not rest.startswith("<answer>"):
        return 0.0
    block = rest[len("<answer>") : -len("</answer>")]
    return 1.0 if last_boxed(block) is not None else 0.0
