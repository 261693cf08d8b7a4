"""Rollout servers for a run: given URLs (SGLang / router), or stand-ins started here on CPU,
and the weight sender that ``rollout.weight_sync`` asks for.

    with rollout_servers(cfg.rollout, model_dir=hf_dir) as urls:
        client = RolloutClient(cfg.rollout, urls, max_new_tokens=cfg.data.max_response_length)
        sender = make_weight_sender(cfg.rollout, urls, work_dir=cfg.output_dir)
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, Optional, Sequence, Union


from megatron_mmr1.config import RolloutConfig
from megatron_mmr1.rollout.weight_sync import (
    DiskWeightSender,
    DistributedWeightSender,
    TensorWeightSender,
)
from megatron_mmr1.utils.net import free_port, wait_healthy

logger = logging.getLogger(__name__)

WeightSender = Union[DistributedWeightSender, DiskWeightSender, TensorWeightSender]


class LocalServerGroup:
    """``num`` stand-in servers (``python -m megatron_mmr1.rollout.local_server``) on 127.0.0.1."""

    def __init__(self, model_dir: str, num: int = 1, log_dir: Optional[str] = None, extra_args: Sequence[str] = ()):
        self.model_dir, self.num = model_dir, num
        self.log_dir = Path(log_dir or os.path.join("outputs", "rollout_logs"))
        self.extra_args = list(extra_args)
        self.procs: list[subprocess.Popen] = []
        self.urls: list[str] = []
        self._logs: list = []

    def start(self, timeout_s: float = 300.0) -> list[str]:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "1"))
        for i in range(self.num):
            port = free_port()
            log = open(self.log_dir / f"standin{i}-{port}.log", "w")
            self._logs.append(log)
            self.procs.append(subprocess.Popen(
                [sys.executable, "-m", "megatron_mmr1.rollout.local_server", "--model", self.model_dir,
                 "--port", str(port), *self.extra_args], stdout=log, stderr=subprocess.STDOUT, env=env))
            self.urls.append(f"http://127.0.0.1:{port}")
        end = time.monotonic() + timeout_s
        try:
            for url, proc, log in zip(self.urls, self.procs, self._logs):
                wait_healthy(url, proc, max(end - time.monotonic(), 0.0), Path(log.name))
        except (RuntimeError, TimeoutError):
            self.stop()
            raise
        logger.info("stand-in rollout servers: %s", ", ".join(self.urls))
        return self.urls

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self._logs:
            log.close()
        self.procs, self._logs = [], []


@contextlib.contextmanager
def rollout_servers(cfg: RolloutConfig, model_dir: Optional[str] = None, log_dir: Optional[str] = None,
                    min_pixels: Optional[int] = None, max_pixels: Optional[int] = None) -> Iterator[list[str]]:
    """``cfg.server_urls`` when given; otherwise ``cfg.num_servers`` stand-ins on ``model_dir``, resizing
    images with the run's ``data.min_pixels`` / ``data.max_pixels`` (pass them: the trainer's counts)."""
    if cfg.server_urls:
        yield list(cfg.server_urls)
        return
    if cfg.backend == "sglang":
        raise ValueError("rollout.backend=sglang needs rollout.server_urls (start them with tools/launch_sglang.py)")
    if model_dir is None:
        raise ValueError("stand-in rollout servers need a Hugging Face checkpoint directory (model.hf_path)")
    pixels = [f for flag, v in (("--min-pixels", min_pixels), ("--max-pixels", max_pixels)) if v is not None
              for f in (flag, str(v))]
    group = LocalServerGroup(model_dir, cfg.num_servers, log_dir, extra_args=pixels)
    try:
        yield group.start()
    finally:
        group.stop()


def make_weight_sender(cfg: RolloutConfig, urls: Sequence[str], work_dir: str = "outputs",
                       master_address: Optional[str] = None) -> WeightSender:
    """The sender for ``rollout.weight_sync`` (distributed / tensor / disk), bucketed by ``weight_sync_bucket_mb``.

    ``master_address`` must be reachable from the servers (the trainer node's address in multi-node runs).
    ``disk`` writes under ``work_dir`` / weight_sync, which the servers must be able to read.
    """
    timeout_s = cfg.weight_sync_timeout_s
    if cfg.colocate or cfg.weight_sync == "tensor":
        return TensorWeightSender(urls, bucket_mb=cfg.weight_sync_bucket_mb, timeout_s=timeout_s,
                                  pause_mode=cfg.pause_mode)
    if cfg.weight_sync == "disk":
        return DiskWeightSender(urls, os.path.join(work_dir, "weight_sync"), timeout_s=timeout_s,
                                pause_mode=cfg.pause_mode)
    master_address = master_address or cfg.weight_sync_master_address or "127.0.0.1"
    return DistributedWeightSender(urls, master_address=master_address, bucket_mb=cfg.weight_sync_bucket_mb,
                                   flattened=cfg.weight_sync_flattened, timeout_s=timeout_s,
                                   pause_mode=cfg.pause_mode)
