"""Rollout server processes: the one place that starts stand-in servers and sglang-router, keeps a
fleet of them serving, and picks the weight sender that ``rollout.weight_sync`` asks for.

    with rollout_servers(cfg.rollout, model_dir=hf_dir) as urls:
        client = RolloutClient(cfg.rollout, urls, max_new_tokens=cfg.data.max_response_length)
        sender = make_weight_sender(cfg.rollout, urls, work_dir=cfg.output_dir)

``tools/launch_sglang.py`` (SGLang or stand-ins, with the router) and the tests start their
processes through ``Launch`` / ``ManagedProcess`` / ``Fleet`` here.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
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

ROUTER_HEALTH_ARGS = ("--health-check-timeout-secs", "30", "--health-check-interval-secs", "10",
                      "--health-failure-threshold", "3")
"""Router health checks: a timeout above SGLang's 20 s health generation (a busy server is not
dead); a frozen worker leaves the rotation after three failed checks."""


@dataclass
class Launch:
    """One process to start: a rollout server or the router in front of them."""

    name: str
    cmd: list[str]
    url: str
    env: dict[str, str] = field(default_factory=dict)


def standin_launch(model_dir: str, port: int, host: str = "127.0.0.1", name: str = "server",
                   extra: Sequence[str] = (), url_host: Optional[str] = None) -> Launch:
    """The CPU stand-in server (``python -m megatron_mmr1.rollout.local_server``)."""
    cmd = [sys.executable, "-m", "megatron_mmr1.rollout.local_server", "--model", str(model_dir),
           "--host", host, "--port", str(port), *extra]
    return Launch(name, cmd, f"http://{url_host or host}:{port}", {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})


def router_launch(worker_urls: Sequence[str], port: int, host: str = "127.0.0.1", policy: str = "round_robin",
                  prometheus_port: Optional[int] = None, extra: Sequence[str] = (),
                  url_host: Optional[str] = None) -> Launch:
    """sglang-router in front of ``worker_urls``. Two routers on one node need their own metrics port."""
    cmd = [sys.executable, "-m", "sglang_router.launch_router", "--worker-urls", *worker_urls, "--policy", policy,
           "--host", host, "--port", str(port), *ROUTER_HEALTH_ARGS]
    if prometheus_port is not None:
        cmd += ["--prometheus-port", str(prometheus_port)]
    return Launch("router", cmd + list(extra), f"http://{url_host or host}:{port}")


class ManagedProcess:
    """A started Launch: its process, log file, health wait, restart and stop."""

    def __init__(self, launch: Launch, log_dir: Union[str, Path], new_session: bool = False):
        self.launch, self.url, self.name = launch, launch.url, launch.name
        self.port = int(launch.url.rsplit(":", 1)[1])
        self.log_path = Path(log_dir) / f"{launch.name}-{self.port}.log"
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.new_session = new_session
        self.restarts = 0
        self.proc = self._spawn("w")

    def _spawn(self, mode: str) -> subprocess.Popen:
        with open(self.log_path, mode) as log:
            return subprocess.Popen(self.launch.cmd, stdout=log, stderr=subprocess.STDOUT,
                                    env={**os.environ, **self.launch.env}, start_new_session=self.new_session)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait_healthy(self, timeout_s: float = 300.0) -> "ManagedProcess":
        wait_healthy(self.url, self.proc, timeout_s, self.log_path)
        return self

    def restart(self) -> None:
        """Start the same command again (same port; the log goes on)."""
        self.stop()
        self.restarts += 1
        self.proc = self._spawn("a")

    def stop(self, timeout_s: float = 30.0) -> None:
        if self.alive:
            self.proc.terminate()
        try:
            self.proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        if self.alive:
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


class LocalServerGroup:
    """``num`` stand-in servers (``python -m megatron_mmr1.rollout.local_server``) on 127.0.0.1."""

    def __init__(self, model_dir: str, num: int = 1, log_dir: Optional[str] = None, extra_args: Sequence[str] = ()):
        self.model_dir, self.num = model_dir, num
        self.log_dir = Path(log_dir or os.path.join("outputs", "rollout_logs"))
        self.extra_args = list(extra_args)
        self.members: list[ManagedProcess] = []
        self.urls: list[str] = []

    def start(self, timeout_s: float = 300.0) -> list[str]:
        self.members = [ManagedProcess(standin_launch(self.model_dir, free_port(), name=f"standin{i}",
                                                      extra=self.extra_args), self.log_dir) for i in range(self.num)]
        self.urls = [m.url for m in self.members]
        end = time.monotonic() + timeout_s
        try:
            for m in self.members:
                m.wait_healthy(max(end - time.monotonic(), 0.0))
        except (RuntimeError, TimeoutError):
            self.stop()
            raise
        logger.info("stand-in rollout servers: %s", ", ".join(self.urls))
        return self.urls

    def stop(self) -> None:
        for m in self.members:
            if m.alive:
                m.proc.terminate()
        for m in self.members:
            m.stop()
        self.members = []


class Fleet:
    """Rollout servers, then the router once they are healthy, kept serving.

    One server dying does not take the others (or the router) down: it is logged and, with
    ``restart``, started again on its port. The fleet ends when the router dies, or every server
    is gone and none restarts. ``state_file`` (JSON: ``servers``, ``router``, ``pids``, ``launcher_pid``)
    is what ``stop_fleet`` and multi-node scripts read.
    """

    def __init__(self, launches: Sequence[Launch], log_dir: Union[str, Path], restart: bool = False,
                 state_file: Optional[Union[str, Path]] = None, detach: bool = False):
        self.launches, self.log_dir, self.restart = list(launches), Path(log_dir), restart
        self.state_file = Path(state_file) if state_file else None
        self.detach = detach
        self.members: list[ManagedProcess] = []
        self._reported: set[str] = set()

    @property
    def servers(self) -> list[ManagedProcess]:
        return [m for m in self.members if m.name != "router"]

    @property
    def router(self) -> Optional[ManagedProcess]:
        return next((m for m in self.members if m.name == "router"), None)

    def start(self, timeout_s: float = 900.0) -> None:
        for launch in self.launches:
            if launch.name == "router":  # the router checks its workers at start: they must be up
                for m in self.members:
                    m.wait_healthy(timeout_s)
            self.members.append(ManagedProcess(launch, self.log_dir, new_session=self.detach))
        for m in self.members:
            m.wait_healthy(timeout_s)
        self.write_state()

    def write_state(self) -> None:
        if self.state_file is None:
            return
        state = {"servers": [m.url for m in self.servers], "router": self.router.url if self.router else None,
                 "pids": {m.name: m.pid for m in self.members}, "launcher_pid": None if self.detach else os.getpid()}
        tmp = self.state_file.with_name(self.state_file.name + ".tmp")  # atomic: readers act on it at once
        tmp.write_text(json.dumps(state) + "\n")
        tmp.replace(self.state_file)

    def check(self, health_timeout_s: float = 900.0) -> bool:
        """One look at every process; restarts the dead when asked. False when the fleet cannot serve."""
        for m in self.members:
            if m.alive:
                continue
            code = m.proc.returncode
            if not self.restart:
                if m.name not in self._reported:
                    logger.error("%s (%s) exited with code %s; the rest keep serving", m.name, m.url, code)
                    self._reported.add(m.name)
                continue
            logger.error("%s (%s) exited with code %s; restarting it", m.name, m.url, code)
            m.restart()
            try:
                m.wait_healthy(health_timeout_s)
            except (RuntimeError, TimeoutError) as e:
                logger.error("%s did not come back: %s", m.name, e)
                continue
            self.write_state()
            logger.info("%s is serving again (pid %d)", m.name, m.pid)
        router_dead = self.router is not None and not self.router.alive
        return not router_dead and any(m.alive for m in self.servers)

    def watch(self, poll_s: float = 1.0, health_timeout_s: float = 900.0) -> int:
        """Until the fleet cannot serve (1)."""
        while self.check(health_timeout_s):
            time.sleep(poll_s)
        logger.error("no rollout server (or the router) is left; stopping")
        return 1

    def stop(self) -> None:
        for m in reversed(self.members):
            if m.alive:
                m.proc.terminate()
        for m in self.members:
            m.stop()
        if self.state_file is not None:
            self.state_file.unlink(missing_ok=True)


def stop_fleet(state_file: Union[str, Path], timeout_s: float = 60.0) -> list[int]:
    """Stop what ``state_file`` lists: the foreground launcher (it stops its processes), else each
    process. Returns the pids signalled; removes the file."""
    state = json.loads(Path(state_file).read_text())
    pids = [state["launcher_pid"]] if state.get("launcher_pid") else list(state.get("pids", {}).values())
    sent = []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            sent.append(pid)
    end = time.monotonic() + timeout_s
    for pid in sent:
        while time.monotonic() < end and _running(pid):
            time.sleep(0.2)
        if _running(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    Path(state_file).unlink(missing_ok=True)
    return sent


def _running(pid: int) -> bool:
    """Alive and not a zombie (an exited child its parent has not reaped yet)."""
    import psutil

    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


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


NODE_ADDR_ENV = "MMR1_NODE_ADDR"
"""The address of the node a trainer rank runs on, as the servers reach it (examples/launch/run_node.sh sets it
per node)."""


def is_local_address(address: str) -> bool:
    """Whether this host can bind ``address`` (one of its own interfaces, or a name resolving to one)."""
    try:
        with socket.socket() as s:
            s.bind((address, 0))
        return True
    except OSError:
        return False


def local_sync_address(configured: Optional[str]) -> str:
    """The address this rank's update group binds on: its own node's, which the servers dial.

    ``rollout.weight_sync_master_address`` names trainer node 0; a pipeline stage's sender on another node
    cannot bind it (EADDRNOTAVAIL). Order: ``$MMR1_NODE_ADDR`` (set per node by the launcher); the configured
    address when it is this host's; else this host's address on the route towards the configured one (the
    network the servers share with node 0), or its hostname's address.
    """
    own = os.environ.get(NODE_ADDR_ENV)
    if own:
        return own
    if configured is None:
        return "127.0.0.1"
    if is_local_address(configured):
        return configured
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect((configured, 9))  # UDP: picks the outgoing interface, sends nothing
            address = s.getsockname()[0]
    except OSError:
        address = socket.gethostbyname(socket.gethostname())
    logger.info("rollout.weight_sync_master_address=%s is another host's: this node's sender binds %s "
                "(set %s per node to choose)", configured, address, NODE_ADDR_ENV)
    return address


def make_weight_sender(cfg: RolloutConfig, urls: Sequence[str], work_dir: str = "outputs",
                       master_address: Optional[str] = None) -> WeightSender:
    """The sender for ``rollout.weight_sync`` (distributed / tensor / disk), bucketed by ``weight_sync_bucket_mb``.

    ``master_address`` must be reachable from the servers; None: this node's (:func:`local_sync_address`).
    ``disk`` writes under ``work_dir`` / weight_sync, which the servers must be able to read.
    """
    timeout_s = cfg.weight_sync_timeout_s
    if cfg.colocate or cfg.weight_sync == "tensor":
        return TensorWeightSender(urls, bucket_mb=cfg.weight_sync_bucket_mb, timeout_s=timeout_s,
                                  pause_mode=cfg.pause_mode)
    if cfg.weight_sync == "disk":
        return DiskWeightSender(urls, os.path.join(work_dir, "weight_sync"), timeout_s=timeout_s,
                                pause_mode=cfg.pause_mode)
    master_address = master_address or local_sync_address(cfg.weight_sync_master_address)
    # The stand-in server receives into CPU tensors over gloo, also when the trainer has a GPU (nccl needs both ends on CUDA).
    backend = "gloo" if cfg.backend == "local" else None
    return DistributedWeightSender(urls, backend=backend, master_address=master_address,
                                   bucket_mb=cfg.weight_sync_bucket_mb,
                                   flattened=cfg.weight_sync_flattened, timeout_s=timeout_s,
                                   pause_mode=cfg.pause_mode)
