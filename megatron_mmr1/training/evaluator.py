"""Held-out accuracy during GRPO, through the training's own rollout servers (rank 0)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from megatron_mmr1.config import RunConfig
from megatron_mmr1.eval.results import EvalResult, PairedDiff, paired_difference
from megatron_mmr1.training.monitor import RunMonitor


class Evaluator:
    """Held-out accuracy on ``data.val_files`` through the training's own servers (rank 0).

    Every eval is kept per response under ``output_dir/eval`` (one ``step_N`` column per eval in
    results.md), so the first and last evals can be compared question by question (paired)."""

    def __init__(self, cfg: RunConfig, client: Any, tokenizer: Any) -> None:
        self.cfg, self.client, self.tokenizer = cfg, client, tokenizer
        self.enabled = bool(cfg.data.val_files) and bool(cfg.training.eval_interval)
        self.benchmarks = None
        self.results: list[tuple[int, EvalResult]] = []

    def due(self, step: int, total: int, at_start: bool = False) -> bool:
        """``at_start``: the eval before a fresh run's first step (``eval.at_start``)."""
        if at_start:
            return self.enabled and step == 0 and self.cfg.eval.at_start
        return self.enabled and (step % self.cfg.training.eval_interval == 0 or step == total)

    def __call__(self, step: int, monitor: RunMonitor) -> None:
        from megatron_mmr1.eval import evaluate, load_benchmarks, write_outputs

        if self.benchmarks is None:
            self.benchmarks = load_benchmarks(self.cfg.data.val_files, self.cfg.data, self.cfg.eval.max_samples)
        result = evaluate(self.client, self.benchmarks, self.cfg.eval, self.cfg.data, tokenizer=self.tokenizer,
                          reward_cfg=self.cfg.reward, model=f"step_{step}", progress=False)
        self.results = [(s, r) for s, r in self.results if s != step] + [(step, result)]
        write_outputs([r for _, r in self.results], Path(self.cfg.output_dir) / "eval", jsonl_models={result.model})
        for _, r in self.results[1:-1]:  # on disk already; pairing needs only the first and the latest in memory
            for b in r.benchmarks:
                b.samples = []
        m = result.metrics()
        monitor.scalars({k.split("eval/", 1)[-1]: v for k, v in m.items()}, step, prefix="eval/")
        acc = {k: v for k, v in m.items() if k.endswith("/accuracy")}
        line = f"eval at step {step}: " + ", ".join(f"{k} {v:.3f}" for k, v in sorted(acc.items()))
        if len(self.results) > 1:
            line += " | vs step {}: {}".format(self.results[0][0], "; ".join(
                f"{b} {d}" for b, d in self.paired(self.results[0][1], result).items()))
        monitor.write(line)

    @staticmethod
    def paired(first: EvalResult, last: EvalResult) -> dict[str, PairedDiff]:
        return {b.name: paired_difference(b, last.benchmark(b.name)) for b in first.benchmarks}

    def first_last(self) -> dict[str, float]:
        if not self.results:
            return {}
        (s0, r0), (s1, r1) = self.results[0], self.results[-1]
        first, last = r0.metrics(), r1.metrics()
        key = "eval/average/accuracy"
        out: dict[str, float] = {"eval_step_first": s0, "eval_step_last": s1}
        for k in (key, *[k for k in first if k.endswith("/format")]):
            if k in first and k in last:
                name = k.replace("eval/", "eval_").replace("/", "_")
                out[f"{name}_first"], out[f"{name}_last"] = first[k], last[k]
        if s1 != s0:
            for b, d in self.paired(r0, r1).items():
                out.update({f"eval_{b}_paired_delta": d.delta, f"eval_{b}_paired_se": d.se, f"eval_{b}_n": d.n,
                            f"eval_{b}_gained": d.gained, f"eval_{b}_lost": d.lost})
        return out
