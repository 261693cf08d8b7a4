"""Logging used everywhere: one logger format with the rank, progress bars and TensorBoard on rank 0."""

from __future__ import annotations

import logging
import os
import sys
from typing import Any, Iterable, Optional

_FORMAT = "[%(asctime)s rank{rank}] %(levelname)s %(name)s: %(message)s"
_configured = False


def _rank() -> int:
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank()
    except Exception:  # pragma: no cover - torch always importable here
        pass
    return int(os.environ.get("RANK", "0"))


def setup_logging(level: str = "INFO", all_ranks: bool = False) -> None:
    """Configure the ``megatron_mmr1`` logger once; ranks other than 0 log warnings only."""
    global _configured
    root = logging.getLogger("megatron_mmr1")
    rank = _rank()
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter(_FORMAT.format(rank=rank), datefmt="%H:%M:%S"))
    root.handlers[:] = [handler]
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
