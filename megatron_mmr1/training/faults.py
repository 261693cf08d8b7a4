"""What a long run survives: preemption signals and non-finite steps.

SIGTERM (a cluster preempting the job, torchrun stopping its workers) and SIGINT (Ctrl-C) only set a
flag; the loop checks it at the next step boundary, where every rank agrees (an all-reduce), saves a
checkpoint and returns normally, so each rank exits 0 with nothing half-written.

A step whose loss or grad norm is not finite is skipped (no update, no scheduler advance) and
counted; ``training.max_skipped_steps`` in a row stop the run, naming the step.
"""

from __future__ import annotations

import signal
from typing import Optional

import torch
import torch.distributed as dist

from megatron_mmr1.utils.logging import get_logger

logger = get_logger(__name__)


class TrainingError(RuntimeError):
    """The run cannot go on; the message says why and at which step."""


class StopSignal:
    """Turns SIGTERM / SIGINT into a flag read at step boundaries (a second Ctrl-C still interrupts)."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignal":
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread (e.g. a test runner thread): no handler, no flag
                pass
        return self

    def __exit__(self, *exc) -> None:
        for sig, prev in self._previous.items():
            signal.signal(sig, prev)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        if self.received == signal.SIGINT and signum == signal.SIGINT:
            raise KeyboardInterrupt  # the user insists
        if self.received is None:
            logger.warning("received %s: saving a checkpoint and stopping at the next step boundary",
                           signal.Signals(signum).name)
        self.received = signum

    def should_stop(self, device: torch.device) -> bool:
        """Collective: True on every rank when any rank got a signal."""
        flag = torch.tensor([1 if self.received is not None else 0], dtype=torch.int32, device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())


class SkipCounter:
    """Counts skipped (non-finite) steps; raises after ``max_in_row`` consecutive ones."""

    def __init__(self, max_in_row: int, total: int = 0) -> None:
        self.max_in_row = max_in_row
        self.total = total
        self.in_row = 0

    def update(self, skipped: bool, step: int, loss: float, grad_norm: float) -> None:
        if not skipped:
            self.in_row = 0
            return
        self.total += 1
        self.in_row += 1
        logger.warning("step %d: non-finite loss %.4g / grad norm %.4g, update skipped (%d in a row, %d in total)",
                       step, loss, grad_norm, self.in_row, self.total)
        if self.max_in_row > 0 and self.in_row >= self.max_in_row:
            raise TrainingError(f"step {step}: {self.in_row} steps in a row had a non-finite loss or grad norm "
                                f"(training.max_skipped_steps={self.max_in_row}); stopping. Check these steps' data, "
                                "or lower optim.lr / optim.clip_grad")

    def state_dict(self) -> dict:
        return {"total": self.total, "in_row": self.in_row}

    def load_state_dict(self, state: dict) -> None:
        self.total, self.in_row = int(state["total"]), int(state["in_row"])
