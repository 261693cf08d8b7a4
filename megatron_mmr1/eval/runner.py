"""Evaluate a policy served by rollout servers on benchmark files: prompts -> responses -> verdicts.

    result = evaluate(client, ["mathvista=testmini.parquet", "data/rl_val.jsonl"], cfg.eval, cfg.data,
                      formatter=formatter, reward_cfg=cfg.reward)
    writer.add_scalars(result.metrics(), step)          # eval/<benchmark>/accuracy, ...

The same call serves ``mmr1-eval`` and the trainers' ``training.eval_interval`` (through the training's
own client, after a weight sync). Every question of every benchmark is submitted at once: the client's
``agenerate`` is called on small chunks of prompts concurrently (``rollout.max_inflight`` requests in
flight in all), which gives a progress bar with ETA and keeps one bad request (a prompt the server
rejects) from failing the others: a failed chunk is retried one prompt at a time, and a prompt that
still fails is counted as wrong and logged, unless no server is left (then the evaluation stops).
"""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any, Callable, Optional, Sequence, Union

from megatron_mmr1.config import DataConfig, EvalConfig, RewardConfig
from megatron_mmr1.data.chat import ChatFormatter, PromptError
from megatron_mmr1.data.records import BadRecordError, BadRecords
from megatron_mmr1.data.sample import Sample, Status
from megatron_mmr1.eval.readers import Benchmark, EvalItem, load_benchmarks
from megatron_mmr1.eval.results import EvalResult, summarize
from megatron_mmr1.eval.scoring import eval_pool, response_parts
from megatron_mmr1.rewards.pool import RewardPool
from megatron_mmr1.rollout.client import RolloutClient, RolloutError

logger = logging.getLogger(__name__)

PROGRESS_STEPS = 100
"""About this many progress-bar updates per evaluation (sets the chunk size)."""


def chunk_size(n: int, max_inflight: int) -> int:
    return max(1, min(math.ceil(n / PROGRESS_STEPS), max_inflight))


async def _generate_all(client: RolloutClient, make: Callable[[int], Sample], n: int, k: int,
                        sampling: dict[str, Any], progress: bool, desc: str) -> list[Union[list[Sample], str]]:
    from tqdm.auto import tqdm

    size = chunk_size(n, client.cfg.max_inflight)
    gate = asyncio.Semaphore(max(1, client.cfg.max_inflight // size))
    out: list[Union[list[Sample], str]] = [""] * n
    bar = tqdm(total=n, desc=desc, unit="question", disable=not progress, dynamic_ncols=True)

    async def run(idx: range) -> None:
        try:
            samples = await client.agenerate([make(i) for i in idx], **sampling)
        except RolloutError as e:
            if len(idx) > 1:  # find the culprit: each prompt of the chunk on its own
                await asyncio.gather(*(run(range(i, i + 1)) for i in idx))
                return
            await client.check_health()  # raises when no server is left: that stops the evaluation
            out[idx[0]] = str(e)
            logger.warning("eval: generation failed for question %d (%s); counted as wrong",
                           idx[0], make(idx[0]).metadata.get("source", ""))
            bar.update(1)
            return
        for j, i in enumerate(idx):
            out[i] = samples[j * k : (j + 1) * k]
        bar.update(len(idx))

    async def gated(idx: range) -> None:
        async with gate:
            await run(idx)

    try:
        await asyncio.gather(*(gated(range(s, min(s + size, n))) for s in range(0, n, size)))
    finally:
        bar.close()
    return out


def generate_responses(client: RolloutClient, prompts: Sequence[Sample] | Callable[[int], Sample], n: Optional[int] = None,
                       k: int = 1, temperature: float = 0.0, max_new_tokens: Optional[int] = None,
                       progress: bool = True, desc: str = "eval") -> list[Union[list[Sample], str]]:
    """k responses per prompt (a list of Samples), or the error text of a prompt that failed.

    ``prompts`` may be a function index -> Sample, so that images are read only when their chunk is sent."""
    make = prompts if callable(prompts) else prompts.__getitem__
    n = len(prompts) if n is None else n  # type: ignore[arg-type]
    sampling: dict[str, Any] = {"n": k, "temperature": temperature}
    if max_new_tokens is not None:
        sampling["max_new_tokens"] = max_new_tokens
    if n == 0:
        return []
    return asyncio.run(_generate_all(client, make, n, k, sampling, progress, desc))


def _prompt_sample(index: int, item: EvalItem, prompt: str, bench: str) -> Sample:
    return Sample(index=index, prompt=prompt, answer=item.answer, images=list(item.images),
                  metadata={"benchmark": bench, "id": item.id, "source": item.source})


def _record(bench: str, item: EvalItem, j: int, s: Optional[Sample], error: Optional[str] = None) -> dict:
    rec = {"benchmark": bench, "id": item.id, "source": item.source, "sample": j, "categories": item.categories,
           "question": item.question, "answer": item.answer, "kind": item.kind}
    if item.options:
        rec["options"] = item.options
    if s is None:
        rec.update(response="", extracted=None, how="none", format=0.0, correct=0.0, finish="error",
                   response_tokens=0, error=error)
        return rec
    rec.update(response=s.response, **response_parts(s.response),
               finish="length" if s.status == Status.TRUNCATED else "stop", response_tokens=len(s.response_ids))
    if "weight_version" in s.metadata:
        rec["weight_version"] = s.metadata["weight_version"]
    return rec


def _score(records: list[dict], items: list[EvalItem], pool: RewardPool) -> None:
    """Fill ``correct`` of every generated response through the worker pool (time-limited)."""
    todo = [(r, it) for r, it in zip(records, items) if "error" not in r]
    results = pool.map([(r["extracted"], it.answer, it.kind, tuple(it.options), it.precision) for r, it in todo])
    timeouts = errors = 0
    for (r, _), res in zip(todo, results):
        r["correct"] = float(res.parts.get("correct", 0.0))
        if res.timeout:
            r["score_timeout"] = True
            timeouts += 1
        if res.error:
            r["score_error"] = res.error
            errors += 1
    if timeouts or errors:
        logger.warning("eval scoring: %d of %d answers timed out, %d raised; they count as wrong",
                       timeouts, len(todo), errors)


def _prompts(benches: Sequence[Benchmark], formatter: ChatFormatter, bad_policy: str
             ) -> tuple[list[tuple[Benchmark, EvalItem, str]], dict[str, int]]:
    """(benchmark, item, MMR1 chat prompt) per question, and the records skipped per benchmark: a prompt
    error names its record (raised, or skipped + counted with on_bad_record=skip)."""
    out, skipped = [], {}
    for b in benches:
        bad = BadRecords(bad_policy, logger)
        for item in b.items:
            try:
                out.append((b, item, formatter.rl_prompt(item.question, len(item.images))))
            except PromptError as e:
                bad.handle(BadRecordError(item.source, str(e), "prompt"))
        skipped[b.name] = b.skipped + bad.total
    return out, skipped


def evaluate(
    client: RolloutClient,
    data: Sequence[Union[str, Benchmark]],
    eval_cfg: Optional[EvalConfig] = None,
    data_cfg: Optional[DataConfig] = None,
    *,
    formatter: Optional[ChatFormatter] = None,
    tokenizer: Any = None,
    reward_cfg: Optional[RewardConfig] = None,
    pool: Optional[RewardPool] = None,
    model: str = "policy",
    progress: bool = True,
) -> EvalResult:
    """Accuracy of the policy behind ``client`` on ``data`` ([NAME=]paths or loaded :class:`Benchmark`s).

    ``eval_cfg``: samples (k), temperature, max_new_tokens (None = data.max_response_length), max_samples
    per file. ``formatter`` (or ``tokenizer``, to build one from ``data_cfg``) gives the MMR1 prompt.
    ``pool``: a pool from :func:`scoring.eval_pool` kept across calls; None starts one for this call.
    """
    eval_cfg = eval_cfg or EvalConfig()
    data_cfg = data_cfg or DataConfig()
    reward_cfg = reward_cfg or RewardConfig()
    if formatter is None:
        if tokenizer is None:
            raise ValueError("evaluate() needs a ChatFormatter or a tokenizer to build the MMR1 prompts")
        formatter = ChatFormatter.from_config(tokenizer, data_cfg)
    k = eval_cfg.samples
    if k < 1:
        raise ValueError(f"eval.samples={k} must be >= 1")
    if k > 1 and eval_cfg.temperature == 0:
        logger.warning("eval.samples=%d with temperature 0: greedy responses are identical, so mean@k = pass@k", k)
    max_new = eval_cfg.max_new_tokens or data_cfg.max_response_length
    benches = [d for d in data if isinstance(d, Benchmark)]
    paths = [d for d in data if not isinstance(d, Benchmark)]
    if paths:
        benches += load_benchmarks(paths, data_cfg, eval_cfg.max_samples)
    prompts, prompt_skips = _prompts(benches, formatter, data_cfg.on_bad_record)

    outputs = generate_responses(
        client, lambda i: _prompt_sample(i, prompts[i][1], prompts[i][2], prompts[i][0].name), len(prompts),
        k=k, temperature=eval_cfg.temperature, max_new_tokens=max_new, progress=progress,
        desc=f"eval {model}")
    groups: list[list[dict]] = []
    records, rec_items = [], []
    for (b, item, _), out in zip(prompts, outputs):
        if isinstance(out, str):
            g = [_record(b.name, item, 0, None, out)]
        else:
            g = [_record(b.name, item, j, s) for j, s in enumerate(out)]
        groups.append(g)
        records += g
        rec_items += [item] * len(g)
    own = pool is None
    pool = eval_pool(reward_cfg) if own else pool
    try:
        _score(records, rec_items, pool)
    finally:
        if own:
            pool.close()

    results = []
    for b in benches:
        mine = [g for (bb, _, _), g in zip(prompts, groups) if bb is b]
        if not mine:
            raise ValueError(f"benchmark '{b.name}': every record was skipped ({prompt_skips[b.name]})")
        results.append(summarize(b.name, b.layout, b.files, k, mine, prompt_skips[b.name]))
    settings = {"samples": k, "temperature": eval_cfg.temperature, "max_new_tokens": max_new,
                "max_samples": eval_cfg.max_samples, "system_prompt_mode": data_cfg.system_prompt_mode}
    return EvalResult(model, results, settings)
