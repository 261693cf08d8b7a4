"""Score functions for the pool tests (importable by spawned workers)."""

import os
import signal
import time


def deaf_hang(response: str, answer: str) -> dict:
    """Ignore the worker's timer (like a sympy loop stuck in C code) unless the text is "ok"."""
    if response == "ok":
        return {"format": 1.0, "accuracy": 1.0}
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
    time.sleep(3600)
    return {}


def crash(response: str, answer: str) -> dict:
    """Die like an OOM-killed worker when asked to."""
    if response == "die":
        os._exit(3)
    if response == "raise":
        raise ValueError("bad input")
    return {"format": 1.0, "accuracy": 0.0}


class _Unpicklable:
    """Pickles to a reference the worker cannot import: the worker dies during start-up."""

    def __reduce__(self):
        return (__import__, ("no_such_module_for_reward_tests",))

    def __call__(self, response: str, answer: str) -> dict:
        return {}


die_on_import_marker = _Unpicklable()
