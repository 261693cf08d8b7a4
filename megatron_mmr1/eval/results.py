"""Evaluation results: per-benchmark numbers, TensorBoard metrics, the markdown table, JSON and JSONL.

Accuracy is mean@k: the mean over questions of the fraction of its k responses that are right (k = 1:
plain accuracy); pass@k: the fraction of questions with at least one right response among k (with
exactly k samples drawn the unbiased estimator of Chen et al. 2021 reduces to this). The average is
the unweighted mean over benchmarks, as in the paper's tables.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Collection, Optional, Sequence

# The paper's column order (MMR1 tables); other benchmarks follow in the order they were given.
PAPER_ORDER = ("mathverse", "mathvista", "mathvision", "logicvista", "chartqa")
DISPLAY = {"mathverse": "MathVerse", "mathvista": "MathVista", "mathvision": "MathVision",
           "logicvista": "LogicVista", "chartqa": "ChartQA"}


@dataclass
class BenchmarkResult:
    name: str
    layout: str
    files: list[str]
    k: int
    n: int
    """Questions scored (generation failures included, as wrong)."""
    accuracy: float
    """mean@k, a fraction."""
    pass_at_k: float
    format_rate: float
    """Responses that follow the MMR1 think/answer/boxed template."""
    answered_rate: float
    """Responses with an answer (boxed, or an answer block without a box)."""
    boxed_rate: float
    truncated_rate: float
    """Responses cut at max_new_tokens."""
    response_tokens: float
    """Mean response length in tokens."""
    skipped: int = 0
    """Bad records left out (on_bad_record=skip)."""
    failed: int = 0
    """Questions whose generation failed (counted wrong)."""
    categories: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    """dimension -> category -> {"n", "accuracy"}."""
    samples: list[dict] = field(default_factory=list, repr=False)
    """One record per response: question, gold, response, extracted answer, verdict."""


def summarize(name: str, layout: str, files: list[str], k: int, groups: Sequence[list[dict]], skipped: int = 0
              ) -> BenchmarkResult:
    """Numbers of one benchmark from its per-question lists of response records."""
    responses = [r for g in groups for r in g]
    per_q = [sum(r["correct"] for r in g) / len(g) for g in groups]
    any_q = [float(any(r["correct"] for r in g)) for g in groups]
    ok = [r for r in responses if "error" not in r]

    def mean(values: Sequence[float]) -> float:
        return float(sum(values) / len(values)) if values else 0.0

    cats: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for g, acc in zip(groups, per_q):
        for dim, value in g[0].get("categories", {}).items():
            if value:
                cats[dim][value].append(acc)
    return BenchmarkResult(
        name=name, layout=layout, files=list(files), k=k, n=len(groups),
        accuracy=mean(per_q), pass_at_k=mean(any_q),
        format_rate=mean([r["format"] for r in ok]),
        answered_rate=mean([float(r["extracted"] is not None) for r in ok]),
        boxed_rate=mean([float(r["how"] == "boxed") for r in ok]),
        truncated_rate=mean([float(r["finish"] == "length") for r in ok]),
        response_tokens=mean([r["response_tokens"] for r in ok]),
        skipped=skipped, failed=sum(any("error" in r for r in g) for g in groups),
        categories={d: {c: {"n": len(v), "accuracy": mean(v)} for c, v in sorted(vals.items(), key=_natural)}
                    for d, vals in cats.items()},
        samples=responses,
    )


def _natural(kv: tuple[str, Any]) -> tuple:
    """Categories "2" < "10" (levels, difficulties), then text."""
    try:
        return (0, float(kv[0]), "")
    except ValueError:
        return (1, 0.0, kv[0])


@dataclass
class EvalResult:
    model: str
    benchmarks: list[BenchmarkResult]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def average(self) -> float:
        """Unweighted mean accuracy over benchmarks."""
        return sum(b.accuracy for b in self.benchmarks) / len(self.benchmarks) if self.benchmarks else 0.0

    def metrics(self, prefix: str = "eval") -> dict[str, float]:
        """Flat scalars for TensorBoard: ``{prefix}/{benchmark}/accuracy`` (fractions), format, answered,
        truncated, response_tokens, pass@k (k > 1), and ``{prefix}/average/accuracy``."""
        out: dict[str, float] = {}
        for b in self.benchmarks:
            p = f"{prefix}/{b.name}"
            out[f"{p}/accuracy"] = b.accuracy
            if b.k > 1:
                out[f"{p}/pass@{b.k}"] = b.pass_at_k
            out[f"{p}/format"] = b.format_rate
            out[f"{p}/answered"] = b.answered_rate
            out[f"{p}/truncated"] = b.truncated_rate
            out[f"{p}/response_tokens"] = b.response_tokens
        out[f"{prefix}/average/accuracy"] = self.average
        return out

    def benchmark(self, name: str) -> BenchmarkResult:
        for b in self.benchmarks:
            if b.name == name:
                return b
        raise KeyError(f"no benchmark '{name}' in this result ({', '.join(b.name for b in self.benchmarks)})")

    def to_dict(self) -> dict:
        """JSON-ready summary (no per-sample records)."""
        benches = []
        for b in self.benchmarks:
            d = asdict(b)
            d.pop("samples")
            benches.append(d)
        return {"model": self.model, "average": self.average, "settings": self.settings, "benchmarks": benches}


@dataclass
class PairedDiff:
    """Accuracy of B minus A on the questions both answered, with the standard error of the paired mean.

    Pairing removes the between-question variance: on a held-out set where most questions are always
    right or always wrong, the paired SE is far below the sqrt(2 p (1 - p) / n) of two independent means.
    """

    n: int
    delta: float
    se: float
    gained: int
    """Questions B gets right (mean@k higher) and A does not."""
    lost: int

    def __str__(self) -> str:
        return f"{self.delta:+.3f} (paired SE {self.se:.3f}, n={self.n}, +{self.gained}/-{self.lost} questions)"


def question_scores(b: BenchmarkResult) -> dict[tuple[str, str], float]:
    """(source, id) -> mean@k of that question, from the per-response records."""
    per: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in b.samples:
        per[(str(r.get("source", "")), str(r["id"]))].append(float(r["correct"]))
    return {q: sum(v) / len(v) for q, v in per.items()}


def paired_difference(a: BenchmarkResult, b: BenchmarkResult) -> PairedDiff:
    """B's accuracy minus A's over the questions in both (same benchmark, e.g. two steps of one run)."""
    qa, qb = question_scores(a), question_scores(b)
    common = [q for q in qa if q in qb]
    if not common:
        raise ValueError(f"benchmarks '{a.name}' and '{b.name}' share no question ids: nothing to pair")
    d = [qb[q] - qa[q] for q in common]
    n = len(d)
    mean = sum(d) / n
    var = sum((x - mean) ** 2 for x in d) / (n - 1) if n > 1 else 0.0
    return PairedDiff(n=n, delta=mean, se=(var / n) ** 0.5, gained=sum(x > 0 for x in d), lost=sum(x < 0 for x in d))


# --------------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------------


def _ordered_names(results: Sequence[EvalResult]) -> list[str]:
    names: list[str] = []
    for r in results:
        names += [b.name for b in r.benchmarks if b.name not in names]
    return sorted(names, key=lambda n: (PAPER_ORDER.index(n) if n in PAPER_ORDER else len(PAPER_ORDER),
                                        names.index(n)))


def _pct(x: float) -> str:
    return f"{100 * x:.1f}"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def markdown_report(results: Sequence[EvalResult]) -> str:
    """Paper-style table (one row per model, accuracy % per benchmark and the average), then the
    details per benchmark and the per-category breakdown with the models side by side."""
    names = _ordered_names(results)
    by_model = [{b.name: b for b in r.benchmarks} for r in results]
    rows = [[r.model] + [_pct(m[n].accuracy) if n in m else "-" for n in names] + [_pct(r.average)]
            for r, m in zip(results, by_model)]
    k = max((b.k for r in results for b in r.benchmarks), default=1)
    title = "accuracy %" if k == 1 else f"mean@{k} %"
    lines = [f"## Evaluation ({title})", ""] + _table(["model"] + [DISPLAY.get(n, n) for n in names] + ["Avg"], rows)

    detail_rows = []
    for r, m in zip(results, by_model):
        for n in names:
            if n in m:
                b = m[n]
                detail_rows.append([r.model, DISPLAY.get(n, n), str(b.n), str(b.k), _pct(b.accuracy), _pct(b.pass_at_k),
                                    _pct(b.format_rate), _pct(b.answered_rate), _pct(b.boxed_rate),
                                    _pct(b.truncated_rate), f"{b.response_tokens:.0f}", str(b.skipped), str(b.failed)])
    lines += ["", "### Details", ""] + _table(
        ["model", "benchmark", "n", "k", "mean@k", "pass@k", "format", "answered", "boxed", "truncated", "tokens",
         "skipped", "failed"], detail_rows)

    paired_rows = []
    for r, m in zip(results[1:], by_model[1:]):
        for n in names:
            if n in m and n in by_model[0]:
                try:
                    d = paired_difference(by_model[0][n], m[n])
                except ValueError:
                    continue
                paired_rows.append([r.model, DISPLAY.get(n, n), str(d.n), f"{100 * d.delta:+.1f}", f"{100 * d.se:.1f}",
                                    str(d.gained), str(d.lost)])
    if paired_rows:
        lines += ["", f"### Paired against {results[0].model} (same questions)", ""] + _table(
            ["model", "benchmark", "n", "delta", "paired SE", "gained", "lost"], paired_rows)

    cat_rows = []
    for n in names:
        dims: dict[str, list[str]] = {}
        for m in by_model:
            if n in m:
                for d, vals in m[n].categories.items():
                    dims.setdefault(d, [])
                    dims[d] += [c for c in vals if c not in dims[d]]
        for d, cats in dims.items():
            for c in cats:
                counts = [m[n].categories[d][c]["n"] for m in by_model if n in m and c in m[n].categories.get(d, {})]
                accs = [_pct(m[n].categories[d][c]["accuracy"]) if n in m and c in m[n].categories.get(d, {}) else "-"
                        for m in by_model]
                cat_rows.append([DISPLAY.get(n, n), d, c, str(counts[0])] + accs)
    if cat_rows:
        lines += ["", "### By category", ""] + _table(["benchmark", "breakdown", "category", "n"]
                                                       + [r.model for r in results], cat_rows)
    return "\n".join(lines) + "\n"


def write_outputs(results: Sequence[EvalResult], out_dir: str | Path,
                  jsonl_models: Optional[Collection[str]] = None) -> dict[str, Path]:
    """``results.md``, ``results.json`` and ``<model>/<benchmark>.jsonl`` (one line per response) for the
    models in ``jsonl_models`` (default: all; a run that adds one eval at a time writes only the new one)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / "results.md", "json": out / "results.json"}
    paths["markdown"].write_text(markdown_report(results))
    paths["json"].write_text(json.dumps({"models": [r.to_dict() for r in results]}, indent=2) + "\n")
    for r in results:
        if jsonl_models is not None and r.model not in jsonl_models:
            continue
        for b in r.benchmarks:
            p = out / _safe(r.model) / f"{_safe(b.name)}.jsonl"
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "w", encoding="utf-8") as f:
                for s in b.samples:
                    f.write(json.dumps(s, ensure_ascii=False, default=str) + "\n")
            paths[f"{r.model}/{b.name}"] = p
    return paths


def _safe(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name) or "_"
