"""Logging used everywhere: one logger format with the rank, progress bars and TensorBoard on rank 0."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any, Iterable, Optional, TextIO

_FORMAT = "[%(asctime)s rank{rank}] %(levelname)s %(name)s: %(message)s"
_configured = False


def _rank() -> int:
    """The process-group rank once torch.distributed is up, torchrun's RANK before (never imports torch:
    the entry point logs before its heavy imports)."""
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


class TqdmHandler(logging.StreamHandler):
    """Writes each record through ``tqdm.write``: an active progress bar is cleared, the line printed,
    and the bar redrawn below it, instead of the line being glued to the bar."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=self.stream)
            self.flush()
        except Exception:  # logging must never raise into the caller
            self.handleError(record)


def setup_logging(level: str = "INFO", all_ranks: bool = False, log_file: Optional[str | Path] = None,
                  stream: Optional[TextIO] = None) -> None:
    """Configure the ``megatron_mmr1`` logger; ranks other than 0 log warnings only.

    Lines go to ``stream`` (stdout) through tqdm, and, with ``log_file``, are appended to that file too
    (the run's ``train.log``; written by the calling rank only).
    """
    global _configured
    root = logging.getLogger("megatron_mmr1")
    rank = _rank()
    formatter = logging.Formatter(_FORMAT.format(rank=rank), datefmt="%H:%M:%S")
    handlers: list[logging.Handler] = [TqdmHandler(stream or sys.stdout)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file, encoding="utf-8"))
    for h in root.handlers:
        h.close()
    for h in handlers:
        h.setFormatter(formatter)
    root.handlers[:] = handlers
    root.setLevel(level if (rank == 0 or all_ranks) else max(logging.WARNING, logging.getLevelName(level)))
    root.propagate = False
    _configured = True


def get_logger(name: str) -> logging.Logger:
    if not _configured:
        setup_logging(os.environ.get("MMR1_LOG_LEVEL", "INFO"))
    if not name.startswith("megatron_mmr1"):
        name = f"megatron_mmr1.{name}"
    return logging.getLogger(name)


def progress(iterable: Iterable, desc: str = "", total: Optional[int] = None, enabled: bool = True, **kwargs: Any):
    """tqdm progress bar on rank 0 (stderr), a plain iterable elsewhere or when disabled."""
    if not enabled or _rank() != 0:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, desc=desc, total=total, dynamic_ncols=True, **kwargs)


def tensorboard_dir(cfg: Any) -> str:
    """Where a run's TensorBoard events go: ``logging.tensorboard_dir``, else ``<output_dir>/tensorboard``."""
    return cfg.logging.tensorboard_dir or str(Path(cfg.output_dir) / "tensorboard")


class TensorBoardWriter:
    """SummaryWriter on rank 0, a no-op elsewhere (and when ``log_dir`` is None)."""

    def __init__(self, log_dir: Optional[str]):
        self._writer = None
        if log_dir is not None and _rank() == 0:
            from torch.utils.tensorboard import SummaryWriter

            self._writer = SummaryWriter(log_dir=log_dir)

    def add_scalars(self, metrics: dict[str, float], step: int, prefix: str = "") -> None:
        if self._writer is None:
            return
        for key, value in metrics.items():
            if value is not None:
                self._writer.add_scalar(f"{prefix}{key}", float(value), step)

    def flush(self) -> None:
        if self._writer is not None:
            self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
