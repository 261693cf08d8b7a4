"""Benchmark evaluation: MathVista / MathVerse / MathVision / LogicVista / ChartQA files and the project's RL
records -> MMR1 prompts -> responses from rollout servers -> verdicts -> per-benchmark accuracy.

    from megatron_mmr1.eval import evaluate, eval_pool
    result = evaluate(client, cfg.data.val_files, cfg.eval, cfg.data, formatter=formatter, reward_cfg=cfg.reward)
    tb.add_scalars(result.metrics(), step)     # eval/<benchmark>/accuracy, format, ..., eval/average/accuracy

``mmr1-eval`` (``python -m megatron_mmr1.eval``) runs it on checkpoints; see docs/eval.md.
"""

from megatron_mmr1.eval.readers import Benchmark, EvalItem, LayoutError, load_benchmarks
from megatron_mmr1.eval.results import (BenchmarkResult, EvalResult, PairedDiff, markdown_report, paired_difference,
                                        write_outputs)
from megatron_mmr1.eval.runner import evaluate, generate_responses
from megatron_mmr1.eval.scoring import eval_pool, extract_answer, score_answer

__all__ = [
    "Benchmark", "EvalItem", "LayoutError", "load_benchmarks",
    "BenchmarkResult", "EvalResult", "PairedDiff", "markdown_report", "paired_difference", "write_outputs",
    "evaluate", "generate_responses",
    "eval_pool", "extract_answer", "score_answer",
]
