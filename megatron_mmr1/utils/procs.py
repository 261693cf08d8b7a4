"""Worker processes die with their parent.

A launcher killed with SIGKILL (``torchrun``, ``mmr1-convert``, a test runner) cannot forward the
signal, and its workers would keep the GPUs busy as orphans of PID 1. Each worker calls
:func:`die_with_parent` first thing: on Linux the kernel delivers ``sig`` when the parent exits
(``prctl(PR_SET_PDEATHSIG)``); elsewhere a daemon thread notices the new parent pid within ``poll_s``.
Torch-free, so it runs before the heavy imports.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Iterator, Optional

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PR_GET_PDEATHSIG = 2


def _prctl_pdeathsig(sig: int) -> bool:
    """Arm the kernel's parent-death signal; False where prctl is not available."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def pdeathsig() -> int:
    """The armed parent-death signal of this process (0 = none, or not Linux)."""
    if not sys.platform.startswith("linux"):
        return 0
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
    out = ctypes.c_int(0)
    libc.prctl(PR_GET_PDEATHSIG, ctypes.byref(out), 0, 0, 0)
    return out.value


def _watch_parent(parent: int, sig: int, poll_s: float) -> None:
    while os.getppid() == parent:
        time.sleep(poll_s)
    os.kill(os.getpid(), sig)


def die_with_parent(expected_parent: Optional[int] = None, sig: int = signal.SIGKILL, poll_s: float = 1.0,
                    via_kernel: bool = True) -> None:
    """Make this process receive ``sig`` (SIGKILL: an orphan has nobody to report to) when its parent exits.

    ``expected_parent``: the pid that started this process, when the caller knows it (spawned ranks);
    a parent that died before this call is then caught too. Without it a parent that died in the
    interval between this process's start and this call goes unnoticed.
    Linux sends the signal when the parent *thread* that started us exits: start workers from a thread
    that lives as long as they should (the main thread, as torchrun and multiprocessing do), or pass
    ``via_kernel=False`` (the watcher thread only) when the parent may start us from a short-lived thread.
    """
    parent = os.getppid()
    armed = via_kernel and _prctl_pdeathsig(sig)
    if expected_parent is not None and parent != expected_parent:
        os.kill(os.getpid(), sig)  # the parent is already gone; we were re-parented
    if not armed:
        threading.Thread(target=_watch_parent, args=(parent, sig, poll_s), daemon=True,
                         name="mmr1-parent-watch").start()


def launched_by_torchrun() -> bool:
    """torchrun (torch elastic) sets TORCHELASTIC_RUN_ID in every worker's environment."""
    return "TORCHELASTIC_RUN_ID" in os.environ


class Interrupted(KeyboardInterrupt):
    """SIGINT / SIGTERM turned into an exception, so the command can stop its workers and say what
    happened in one line instead of a traceback per process."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _raise_interrupted(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextmanager
def signals_raise_interrupted(signals: tuple[int, ...] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Within the block, ``signals`` raise :class:`Interrupted` (main thread only); handlers restored after."""
    previous = {s: signal.signal(s, _raise_interrupted) for s in signals}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def join_or_stop(procs: list, grace_s: float = 5.0) -> dict[int, int]:
    """Wait for ``multiprocessing`` processes; the first non-zero exit stops the others (they would wait
    forever in a collective for the rank that died). Any exception here (an :class:`Interrupted` too)
    stops them all before it propagates. Returns {index: exitcode}."""
    from multiprocessing.connection import wait

    try:
        pending = {p.sentinel: i for i, p in enumerate(procs)}
        while pending:
            for sentinel in wait(list(pending)):
                i = pending.pop(sentinel)
                procs[i].join()
                if procs[i].exitcode != 0:
                    stop(procs, grace_s)
                    pending.clear()
                    break
    finally:
        stop(procs, grace_s)
    return {i: p.exitcode for i, p in enumerate(procs)}


def stop(procs: list, grace_s: float = 5.0) -> None:
    """SIGTERM the live processes, SIGKILL whoever is still there after ``grace_s``."""
    for p in procs:
        if p.is_alive():
            p.terminate()
    end = time.monotonic() + grace_s
    for p in procs:
        p.join(max(0.0, end - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()
