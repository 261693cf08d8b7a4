"""Worker processes that score responses with a per-item time limit.

Why processes: math-verify/sympy can hang on adversarial output (``9^{9^{9^{9}}}``, huge
polynomial powers) and its signal-based timeout only works in a main thread. Each worker runs
items in its main thread under its own ``setitimer`` timer (soft limit: the item scores 0 and is
counted as a timeout); a worker that does not come back by ``timeout_s + grace_s`` (stuck in C
code) is killed and replaced (hard limit, also counted). One bad item never blocks the step.
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import signal
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import Connection, wait
from typing import Any, Callable, Optional, Sequence

logger = logging.getLogger(__name__)

ScoreFn = Callable[..., dict]


class _ItemTimeout(BaseException):
    """Raised by the worker's timer; a BaseException so library ``except Exception`` cannot eat it."""


@dataclass
class ItemResult:
    parts: dict[str, float]
    """Score parts returned by the score function ({} on timeout / error)."""
    timeout: bool = False
    """The item ran past the time limit (soft or hard)."""
    error: Optional[str] = None
    """Exception text when the score function raised or the worker died."""


@dataclass
class PoolStats:
    items: int = 0
    timeouts: int = 0
    """Items stopped by the worker's own timer."""
    kills: int = 0
    """Workers killed because they ignored the timer (hard timeouts, also counted in timeouts)."""
    errors: int = 0
    busy_s: float = 0.0
    """Summed wall time of scored items (for verifications/s)."""
    per_call: list[dict] = field(default_factory=list)


def _on_alarm(signum, frame):  # pragma: no cover - runs in the worker
    raise _ItemTimeout()


def _worker_main(
    conn: Connection, score_fn: ScoreFn, timeout_s: float, warmup_args: Optional[tuple]
) -> None:  # pragma: no cover
    """Worker loop: receive (idx, args), score under a timer, send (idx, parts, timeout, error)."""
    from megatron_mmr1.utils.procs import die_with_parent

    # A killed trainer takes its workers along; the watcher thread, not prctl, because the pool may
    # (re)start workers from a rollout thread that ends before they should.
    die_with_parent(via_kernel=False)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent owns Ctrl-C
    signal.signal(signal.SIGALRM, _on_alarm)
    if warmup_args is not None:
        try:  # lazy imports and regex compilation must not be billed to the first real item
            score_fn(*warmup_args)
        except Exception:
            pass
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        idx, args = msg
        try:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
            try:
                parts = score_fn(*args)
            finally:
                signal.setitimer(signal.ITIMER_REAL, 0)
            conn.send((idx, parts, False, None))
        except _ItemTimeout:
            conn.send((idx, {}, True, None))
        except Exception as e:  # a bug in the score function must not kill the step
            conn.send((idx, {}, False, f"{type(e).__name__}: {e}"))


class _Worker:
    def __init__(self, ctx, score_fn: ScoreFn, timeout_s: float, warmup_args: Optional[tuple]):
        self.conn, child = ctx.Pipe(duplex=True)
        self.proc = ctx.Process(
            target=_worker_main, args=(child, score_fn, timeout_s, warmup_args), daemon=True
        )
        self.proc.start()
        child.close()
        self.ready = False
        self.item: Optional[int] = None
        self.deadline = 0.0
        self.started = 0.0

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class RewardPool:
    """``num_workers`` processes running ``score_fn(*args)`` with a per-item time limit.

    ``score_fn`` must be a picklable top-level function returning a dict of floats.
    ``num_workers=0`` scores inline in the calling process (no time limit: debugging only).
    ``warmup_args`` is scored once by each new worker before it takes items. A script that
    creates a pool needs the usual ``if __name__ == "__main__":`` guard (spawned workers
    re-import the main module).
    """

    def __init__(
        self,
        score_fn: ScoreFn,
        num_workers: int = 2,
        timeout_s: float = 5.0,
        grace_s: float = 2.0,
        mp_context: str = "spawn",
        warmup_args: Optional[tuple] = None,
        max_start_failures: int = 3,
    ):
        if timeout_s <= 0:
            raise ValueError(f"reward timeout_s={timeout_s} must be > 0")
        self.score_fn = score_fn
        self.num_workers = num_workers
        self.timeout_s = timeout_s
        self.grace_s = grace_s
        self.warmup_args = warmup_args
        self.stats = PoolStats()
        self._start_failures = 0
        self.max_start_failures = max_start_failures
        # spawn: the trainer process holds torch/aiohttp threads, which fork would copy mid-state.
        self._ctx = mp.get_context(mp_context)
        self._workers: list[_Worker] = [self._spawn() for _ in range(num_workers)]

    def _spawn(self) -> _Worker:
        return _Worker(self._ctx, self.score_fn, self.timeout_s, self.warmup_args)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until every worker has imported its modules (so start-up is not billed to items)."""
        end = time.monotonic() + timeout
        for w in self._workers:
            while not w.ready:
                left = end - time.monotonic()
                if left <= 0 or not w.conn.poll(left):
                    raise RuntimeError(f"reward worker pid {w.proc.pid} did not start in {timeout:.0f}s")
                w.conn.recv()
                w.ready = True

    def map(self, items: Sequence[tuple]) -> list[ItemResult]:
        """Score every ``items[i]`` (a tuple of score_fn args); results keep the input order."""
        if self.num_workers == 0:
            return [self._inline(args) for args in items]
        results: list[Optional[ItemResult]] = [None] * len(items)
        todo = deque(range(len(items)))
        done = 0
        t0 = time.monotonic()
        while done < len(items):
            now = time.monotonic()
            for w in self._workers:
                if w.ready and w.item is None and todo:
                    idx = todo.popleft()
                    w.item, w.started = idx, now
                    w.deadline = now + self.timeout_s + self.grace_s
                    w.conn.send((idx, items[idx]))
            busy = [w for w in self._workers if w.item is not None]
            waits = [w.deadline - now for w in busy]
            ready = wait([w.conn for w in self._workers], timeout=max(0.0, min(waits)) if waits else None)
            for i, w in enumerate(list(self._workers)):
                if w.conn in ready:
                    done += self._receive(i, w, results)
            now = time.monotonic()
            for i, w in enumerate(list(self._workers)):
                if w.item is not None and now > w.deadline:
                    results[w.item] = ItemResult({}, timeout=True)
                    self.stats.kills += 1
                    self.stats.timeouts += 1
                    logger.warning(
                        "reward worker pid %s ignored its %.1fs timer; killed and replaced (item %d)",
                        w.proc.pid, self.timeout_s, w.item,
                    )
                    self._replace(i)
                    done += 1
        self.stats.items += len(items)
        self.stats.per_call.append({"items": len(items), "wall_s": time.monotonic() - t0})
        return results  # type: ignore[return-value]

    def _receive(self, i: int, w: _Worker, results: list) -> int:
        try:
            msg = w.conn.recv()
        except (EOFError, OSError):
            # The worker died (OOM-killed, segfault): its item scores 0, counted as an error.
            if w.item is not None:
                results[w.item] = ItemResult({}, error=f"reward worker pid {w.proc.pid} died")
                self.stats.errors += 1
                logger.warning("reward worker pid %s died on item %d; replaced", w.proc.pid, w.item)
                self._replace(i)
                return 1
            self._start_failures += 1
            if self._start_failures > self.max_start_failures:
                raise RuntimeError(
                    f"reward workers keep dying before they are ready (last pid {w.proc.pid}, exit code "
                    f"{w.proc.exitcode}): cannot import the score function? {self.score_fn!r}"
                )
            self._replace(i)
            return 0
        if msg[0] == "ready":
            self._start_failures = 0
            w.ready = True
            return 0
        idx, parts, timed_out, error = msg
        self.stats.busy_s += time.monotonic() - w.started
        w.item = None
        results[idx] = ItemResult(parts, timeout=timed_out, error=error)
        if timed_out:
            self.stats.timeouts += 1
        if error:
            self.stats.errors += 1
            logger.warning("reward item %d raised %s", idx, error)
        return 1

    def _replace(self, i: int) -> None:
        self._workers[i].kill()
        self._workers[i] = self._spawn()

    def _inline(self, args: tuple) -> ItemResult:
        try:
            return ItemResult(self.score_fn(*args))
        except Exception as e:
            self.stats.errors += 1
            return ItemResult({}, error=f"{type(e).__name__}: {e}")

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, BrokenPipeError):
                pass
        for w in self._workers:
            w.proc.join(timeout=2)
            w.kill()
        self._workers = []

    def __enter__(self) -> "RewardPool":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
