"""What a run shows while it trains: a rank-0 progress bar with ETA, TensorBoard scalars every step, one
log line every ``logging.log_interval`` steps, per-phase timers and the end-of-run summary."""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Optional

from megatron_mmr1.config import RunConfig
from megatron_mmr1.utils.logging import TensorBoardWriter, get_logger, progress, tensorboard_dir

logger = get_logger(__name__)


class PhaseTimer:
    """Wall-clock seconds per named phase of the current step (``with timer("train"): ...``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @contextmanager
    def __call__(self, name: str) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] += time.perf_counter() - t0

    def pop(self) -> dict[str, float]:
        out, self.seconds = dict(self.seconds), defaultdict(float)
        return out


class RunMonitor:
    """Rank 0 writes; every rank may call (the others do nothing)."""

    def __init__(self, cfg: RunConfig, rank: int, total_steps: int, start_step: int, desc: str) -> None:
        self.cfg, self.rank, self.total_steps = cfg, rank, total_steps
        self.tb = TensorBoardWriter(tensorboard_dir(cfg))  # train.py prints the `tensorboard --logdir` line
        self.bar = progress(range(start_step, total_steps), desc=desc, total=total_steps - start_step,
                            enabled=cfg.logging.progress and rank == 0)
        self._bar_iter = iter(self.bar)
        self.history: dict[str, list[tuple[int, float]]] = defaultdict(list)
        self.t_start = time.time()

    def step(self, step: int, metrics: dict[str, float], line_keys: tuple[str, ...] = ()) -> None:
        """Record step ``step`` (1-based): TensorBoard, history, progress bar, and the log line."""
        next(self._bar_iter, None)
        for k, v in metrics.items():
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                self.history[k].append((step, float(v)))
        if self.rank != 0:
            return
        self.tb.add_scalars(metrics, step, prefix="train/")
        if hasattr(self.bar, "set_postfix"):
            self.bar.set_postfix({k: f"{metrics[k]:.4g}" for k in line_keys[:3] if k in metrics}, refresh=False)
        if step % max(1, self.cfg.logging.log_interval) == 0 or step == self.total_steps:
            parts = [f"{k} {metrics[k]:.4g}" for k in line_keys if k in metrics and metrics[k] is not None]
            self.write(f"step {step}/{self.total_steps} | " + " | ".join(parts))

    def write(self, line: str) -> None:
        """A log line that does not break the progress bar."""
        if self.rank != 0:
            return
        if hasattr(self.bar, "write"):
            self.bar.write(f"[{time.strftime('%H:%M:%S')}] {line}")
        else:
            logger.info(line)

    def scalars(self, metrics: dict[str, float], step: int, prefix: str) -> None:
        for k, v in metrics.items():
            self.history[f"{prefix}{k}"].append((step, float(v)))
        if self.rank == 0:
            self.tb.add_scalars(metrics, step, prefix=prefix)

    def text(self, tag: str, text: str, step: int) -> None:
        writer = getattr(self.tb, "_writer", None)
        if writer is not None:
            writer.add_text(tag, text, step)

    def first_last(self, key: str, window: int = 1) -> Optional[tuple[float, float]]:
        vals = [v for _, v in self.history.get(key, [])]
        if not vals:
            return None
        w = max(1, min(window, len(vals) // 2 or 1))
        return sum(vals[:w]) / w, sum(vals[-w:]) / w

    def summary(self, extra: dict[str, Any], keys: tuple[str, ...], window: int = 1) -> dict[str, Any]:
        """First/last value of ``keys`` (means over ``window`` steps), time, plus ``extra``; written to
        ``<output_dir>/summary.json`` and logged by rank 0."""
        out: dict[str, Any] = {"wall_s": round(time.time() - self.t_start, 2)}
        for k in keys:
            fl = self.first_last(k, window)
            if fl is not None:
                out[f"{k}_first"], out[f"{k}_last"] = fl
        out.update(extra)
        if self.rank == 0:
            if hasattr(self.bar, "close"):
                self.bar.close()
            path = Path(self.cfg.output_dir) / "summary.json"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(out, indent=2) + "\n")
            logger.info("run summary: %s", ", ".join(f"{k}={_fmt(v)}" for k, v in out.items()))
        self.tb.close()
        # per-step values stay out of summary.json (long runs) but callers (tests, tools) get them
        return dict(out, history={k: list(v) for k, v in self.history.items()})


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)
