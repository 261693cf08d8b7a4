"""Killing one of two servers mid-rollout loses no request: it is retried on the other, and logged.

Once with the client talking to both servers directly (the client retries), once with the real
sglang-router in front of them (router and client retries together). A frozen server costs one
request timeout; servers paused for a weight update are not probed (SGLang's /health answers 503).
"""

import logging
import os
import re
import signal
import threading
import time

import pytest
import requests

from megatron_mmr1.config import RolloutConfig
from megatron_mmr1.data.sample import Sample
from megatron_mmr1.rollout.client import RolloutClient
from tests.rollout.helpers import RouterProcess, ServerProcess

PROMPT = "<|im_start|>user\nCount the triangles.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def victims(tiny_ckpt, tmp_path_factory):
    """Two disposable servers (started together), each killed by one test."""
    logs = tmp_path_factory.mktemp("victim_logs")
    procs = [ServerProcess(tiny_ckpt[0], logs, f"victim{i}") for i in range(2)]
    try:
        for p in procs:
            p.wait_healthy()
        yield procs
    finally:
        for p in procs:
            p.kill()


def _running(url: str) -> int:
    try:
        info = requests.get(url + "/get_server_info", timeout=5).json()
        return info["internal_states"][0]["running_requests"] + info["internal_states"][0]["served_generate_requests"]
    except requests.RequestException:
        return 0


def _rollout_and_kill(client: RolloutClient, victim: ServerProcess, n_prompts: int) -> list[Sample]:
    prompts = [Sample(index=i, prompt=PROMPT) for i in range(n_prompts)]
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(out=client.generate(prompts)), daemon=True)
    t.start()
    end = time.monotonic() + 120
    while _running(victim.url) == 0 and time.monotonic() < end:  # the victim is busy with our requests
        time.sleep(0.05)
    victim.kill()
    t.join(timeout=300)
    assert not t.is_alive(), "rollout did not finish after a server was killed"
    return result["out"]


def test_kill_one_of_two_direct(servers, victims, caplog):
    victim = victims[0]
    cfg = RolloutConfig(n=2, temperature=1.0, max_inflight=4, request_timeout_s=120.0, max_retries=3)
    client = RolloutClient(cfg, [victim.url, servers[0].url], max_new_tokens=32, health_interval_s=0.5)
    with caplog.at_level(logging.WARNING, logger="megatron_mmr1.rollout.client"):
        out = _rollout_and_kill(client, victim, n_prompts=8)
    assert len(out) == 16 and sorted({s.index for s in out}) == list(range(8))
    assert all(s.response_ids and len(s.rollout_logprobs) == len(s.response_ids) for s in out)
    assert client.stats.failures.get(victim.url, 0) >= 1 and client.stats.retries >= 1
    assert any(victim.url in r.getMessage() and "retry" in r.getMessage() for r in caplog.records)
    assert not client.servers[0].healthy and client.servers[1].healthy


def test_kill_one_of_two_behind_router(servers, victims, caplog, tmp_path):
    victim = victims[1]
    router = RouterProcess([victim.url, servers[1].url], tmp_path).wait_healthy(60)
    try:
        cfg = RolloutConfig(n=2, temperature=1.0, max_inflight=4, request_timeout_s=120.0, max_retries=5)
        client = RolloutClient(cfg, [router.url], max_new_tokens=32, backoff_s=0.5)
        with caplog.at_level(logging.WARNING, logger="megatron_mmr1.rollout.client"):
            out = _rollout_and_kill(client, victim, n_prompts=8)
        assert len(out) == 16 and sorted({s.index for s in out}) == list(range(8))
        assert all(s.response_ids for s in out)
        # The failure is logged: by our client when the router passed it on, else by the router.
        router_log = re.sub(r"\x1b\[[0-9;]*m", "", router.log_path.read_text())  # drop ANSI colours
        router_logged = any("ERROR" in line and f"worker_url={victim.url}" in line for line in router_log.splitlines())
        client_logged = any("retry" in r.getMessage() and router.url in r.getMessage() for r in caplog.records)
        assert router_logged or client_logged
    finally:
        router.kill()


class _HangingServer:
    """Answers /health but never /generate: a wedged engine."""

    def __init__(self):
        import asyncio

        from aiohttp import web

        from tests.rollout.helpers import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()

        async def health(_):
            return web.Response(status=200)

        async def hang(_):
            await asyncio.sleep(3600)

        app = web.Application()
        app.router.add_get("/health", health)
        app.router.add_post("/generate", hang)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)  # do not wait for the hung handler
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self):
        import asyncio

        async def shutdown():
            await self.runner.cleanup()
            for t in asyncio.all_tasks():
                if t is not asyncio.current_task():
                    t.cancel()

        asyncio.run_coroutine_threadsafe(shutdown(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


def test_request_timeout_moves_to_another_server(servers, caplog):
    hung = _HangingServer()
    try:
        cfg = RolloutConfig(n=1, temperature=1.0, max_inflight=2, request_timeout_s=2.0, max_retries=2)
        client = RolloutClient(cfg, [hung.url, servers[0].url], max_new_tokens=4, health_interval_s=60)
        with caplog.at_level(logging.WARNING, logger="megatron_mmr1.rollout.client"):
            out = client.generate([Sample(index=i, prompt=PROMPT) for i in range(2)])
        assert len(out) == 2 and all(s.response_ids for s in out)
        assert client.stats.failures.get(hung.url, 0) >= 1
        assert any(hung.url in r.getMessage() and "TimeoutError" in r.getMessage() for r in caplog.records)
    finally:
        hung.stop()


@pytest.fixture(scope="module")
def quick_health_server(tiny_ckpt, tmp_path_factory):
    """A stand-in whose /health gives up on a paused generation after 1 s (SGLang: 20 s)."""
    p = ServerProcess(tiny_ckpt[0], tmp_path_factory.mktemp("quick_logs"), "quick", extra=("--health-check-timeout", "1"))
    try:
        yield p.wait_healthy()
    finally:
        p.kill()


def test_servers_paused_for_a_weight_update_are_not_marked_down(quick_health_server):
    """SGLang's /health answers 503 while generation is paused; the client must not probe then (it
    used to probe every server before each generate and stop with 'no healthy rollout server left')."""
    url = quick_health_server.url
    client = RolloutClient(RolloutConfig(n=1, max_retries=0), [url], max_new_tokens=4, health_interval_s=0.2)
    assert requests.post(url + "/pause_generation", json={"mode": "abort"}, timeout=30).status_code == 200
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(out=client.generate([Sample(index=0, prompt=PROMPT)])),
                         daemon=True)
    try:
        t.start()
        t.join(2.5)  # longer than the server's health wait: a probe now would have failed
        assert requests.get(url + "/health", timeout=10).status_code == 503  # paused, as in SGLang
    finally:
        requests.post(url + "/continue_generation", json={}, timeout=30)
    t.join(120)
    assert len(result.get("out", [])) == 1 and result["out"][0].response_ids
    assert client.servers[0].healthy and client.stats.failures == {}


def test_frozen_server_costs_one_timeout_then_is_routed_around(servers, tiny_ckpt, tmp_path):
    """A SIGSTOPped server: each request sent to it times out once and moves; it then stays out
    (its probe times out too), and later generate calls do not wait on it."""
    frozen = ServerProcess(tiny_ckpt[0], tmp_path, "frozen").wait_healthy()
    os.kill(frozen.pid, signal.SIGSTOP)
    try:
        cfg = RolloutConfig(n=1, max_inflight=4, request_timeout_s=2.0, request_timeout_per_token_s=0.0,
                            max_retries=2)
        client = RolloutClient(cfg, [frozen.url, servers[0].url], max_new_tokens=4, health_interval_s=0.5)
        out = client.generate([Sample(index=i, prompt=PROMPT) for i in range(6)])
        assert len(out) == 6 and all(s.response_ids for s in out)
        timeouts = client.stats.failures.get(frozen.url, 0)
        assert 1 <= timeouts <= 2 and client.stats.retries == timeouts  # only the first requests sent there
        assert not client.servers[0].healthy and client.servers[1].healthy
        again = client.generate([Sample(index=i, prompt=PROMPT) for i in range(4)])
        assert len(again) == 4 and client.stats.failures.get(frozen.url, 0) == timeouts
    finally:
        os.kill(frozen.pid, signal.SIGCONT)
        frozen.kill()


def test_request_timeout_scales_with_max_new_tokens():
    cfg = RolloutConfig(request_timeout_s=30.0, request_timeout_per_token_s=0.05)
    client = RolloutClient(cfg, ["http://127.0.0.1:1"])
    assert client.request_timeout_s(0) == 30.0 and client.request_timeout_s(4096) == pytest.approx(30.0 + 204.8)
