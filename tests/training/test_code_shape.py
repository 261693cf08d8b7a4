"""The trainer stays readable: no function in megatron_mmr1/training over 60 lines (issue: the GRPO loop
was one 134-line function), and the GRPO step has no rank branches (RolloutManager owns them)."""

import ast
import inspect
from pathlib import Path

import megatron_mmr1.training as training_pkg

MAX_LINES = 60


def _functions(path: Path):
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            yield node


def test_no_function_in_training_is_longer_than_60_lines():
    root = Path(training_pkg.__file__).parent
    long = [f"{p.name}:{f.name} ({f.end_lineno - f.lineno + 1} lines)" for p in sorted(root.glob("*.py"))
            for f in _functions(p) if f.end_lineno - f.lineno + 1 > MAX_LINES]
    assert not long, long


def test_grpo_step_reads_without_rank_branches():
    from megatron_mmr1.training.grpo import GRPOTrainer

    for method in (GRPOTrainer.train_step, GRPOTrainer.update_policy):
        src = inspect.getsource(method)
        assert "rank" not in src and "dist." not in src, method.__name__
