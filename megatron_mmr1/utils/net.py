"""Local ports and health polling shared by the process-group set-up, rollout servers and tools."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path
from typing import Optional


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_healthy(url: str, proc: subprocess.Popen, timeout_s: float, log: Optional[Path] = None,
                 poll_s: float = 0.2) -> None:
    """Poll ``url/health`` until it answers 200; a process that exits first is an error with its log tail."""
    import requests

    end = time.monotonic() + timeout_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            tail = Path(log).read_text()[-3000:] if log and Path(log).exists() else ""
            raise RuntimeError(f"{url}: process exited with code {proc.returncode} before it was healthy\n{tail}")
        try:
            if requests.get(url + "/health", timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(poll_s)
    raise TimeoutError(f"{url} not healthy after {timeout_s:.0f}s" + (f" (log: {log})" if log else ""))
