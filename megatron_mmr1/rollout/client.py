"""Rollout client: prompts (Samples) -> n responses each, from a pool of SGLang servers.

    client = RolloutClient(cfg.rollout, max_new_tokens=cfg.data.max_response_length)
    responses = client.generate(prompts)          # len(prompts) * n Samples, prompt-major

One ``/generate`` per prompt with ``sampling_params.n`` (SGLang fans it out and shares the prefix),
``return_logprob`` so the rollout log-probs are kept for mismatch metrics. Multimodal prompts go
as ``text`` + ``image_data`` so the server expands image pads with its own processor rules (as
slime does); text-only prompts with ids go as ``input_ids``. Images go as the trainer decoded them
(EXIF-oriented, alpha on white) in PNG ``data:`` URLs: SGLang's loader would skip both steps, and
reads raw base64 of a JPEG as a file path.

Failure handling: at most ``max_inflight`` requests in flight; each has a timeout of
``request_timeout_s + request_timeout_per_token_s * max_new_tokens``; a connection error, timeout or
5xx marks that server down and the request is retried on another healthy server (on the same one
after a back-off when it is the only URL, e.g. a router), up to ``max_retries`` times. So a dead or
frozen server costs one request timeout, then is routed around. Server states live as long as the
client: ``generate`` does not probe first; a background probe of ``/health`` (with a timeout above
SGLang's own 20 s health generation) brings servers marked down back, and skips servers this process
has paused for a weight update (SGLang's /health answers 503 while paused). Requests aborted by
``/pause_generation`` are resubmitted, not counted as failures. When no server is left, or a request
runs out of retries, ``RolloutError`` names every server and its last error. Every failure is logged
and counted in ``client.stats``.

A response whose ``prompt_tokens`` differs from the trainer's ``len(sample.prompt_ids)`` stops the
step: the server expanded the prompt (its images) differently from the trainer, e.g. SGLang started
without the run's pixel limits (``--mm-process-config``, see ``tools/launch_sglang.py``).
"""

from __future__ import annotations

import asyncio
import base64
import contextvars
import copy
import logging
import os
import random
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Sequence

import aiohttp

from megatron_mmr1.config import RolloutConfig
from megatron_mmr1.data.sample import Sample, Status
from megatron_mmr1.data.vision import VisionSpec, normalized_png
from megatron_mmr1.rollout.protocol import (
    HEALTH_CHECK_TIMEOUT_S,
    GenerateOutput,
    SamplingParams,
    image_data_for,
    image_data_url,
)

logger = logging.getLogger(__name__)


_SLOTS: contextvars.ContextVar[dict] = contextvars.ContextVar("mmr1_rollout_slots", default={})


class RolloutError(RuntimeError):
    """Generation cannot go on: no healthy server left, or a request ran out of retries."""


class _BadRequest(Exception):
    """HTTP 4xx: the request itself is wrong; retrying elsewhere will not help."""


PROBE_TIMEOUT_S = HEALTH_CHECK_TIMEOUT_S + 10.0
"""/health probe timeout: above SGLang's own health-generation wait, so a slow answer is not 'down'."""

_paused_urls: set[str] = set()


def set_paused(urls: Sequence[str], paused: bool) -> None:
    """Weight sync marks the servers it paused: the client's health probe leaves them alone meanwhile."""
    for u in urls:
        (_paused_urls.add if paused else _paused_urls.discard)(u.rstrip("/"))


@dataclass
class ServerState:
    url: str
    healthy: bool = True
    inflight: int = 0
    failures: int = 0
    last_error: str = ""
    capacity: Optional[int] = None
    """Requests the server decodes at once (SGLang's ``max_running_requests`` from /get_server_info, else
    ``rollout.max_running_requests``); more are queued here, so that a request's timeout measures the
    server's work, not the queue."""


@dataclass
class RolloutStats:
    requests: int = 0
    retries: int = 0
    """Requests re-sent after a failure (each counted once per re-send)."""
    failures: dict[str, int] = field(default_factory=dict)
    """Failed attempts per server URL."""
    abort_resubmits: int = 0
    """Requests resubmitted because the server aborted them (pause during weight sync)."""


def sampling_params_from_config(cfg: RolloutConfig, max_new_tokens: int, **override: Any) -> SamplingParams:
    sp = SamplingParams(
        max_new_tokens=max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p, top_k=cfg.top_k, n=cfg.n
    )
    for k, v in override.items():
        setattr(sp, k, v)
    return sp


def image_source(x: Any) -> Any:
    """A ``Sample.images`` entry -> what the trainer's decoder opens: a string is a ``data:`` URL, an
    existing path, or raw base64; anything else (bytes, HF struct, PIL image) is one already."""
    if not isinstance(x, str):
        return x
    if x.startswith("data:"):
        return base64.b64decode(x.split(",", 1)[1])
    if os.path.exists(x):
        return x
    try:
        return base64.b64decode(x, validate=True)
    except ValueError:
        raise ValueError(f"image {x[:40]!r}... is neither a file nor base64") from None


def server_images(sample: Sample, vision: Optional[VisionSpec] = None) -> list[str]:
    """The prompt's images as SGLang ``image_data``: the trainer's decoded pixels (EXIF-oriented, alpha
    composited on white) as PNG ``data:`` URLs, so that the server sees what the trainer trains on.

    With ``vision`` (the trainer's pixel limits, as the server got them) each image's patch grid as the
    server will compute it must equal the trainer's ``sample.image_grid_thw``: a transposed grid keeps
    the token count, so the prompt-length check would not see it.
    """
    encoded, sizes = [], []
    for x in sample.images:
        png, hw = normalized_png(image_source(x), vision)
        encoded.append(image_data_url(png))
        sizes.append(hw)
    if vision is not None and sample.image_grid_thw is not None:
        p = vision.patch_size
        server = [[1, th // p, tw // p] for th, tw in (vision.target_size(h, w) for h, w in sizes)]
        trainer = [[int(v) for v in row] for row in sample.image_grid_thw.tolist()]
        if server != trainer:
            raise RolloutError(
                f"sample {sample.index}: the rollout server would see image grids (t, h, w) {server}, the "
                f"trainer has {trainer}: the trainer's images were decoded differently from what is sent "
                "(EXIF orientation, data.min_pixels / data.max_pixels)."
            )
    return encoded


def build_payload(sample: Sample, sp: SamplingParams, return_logprob: bool = True,
                  vision: Optional[VisionSpec] = None) -> dict:
    """The /generate body for one prompt (SGLang 0.5.23 GenerateReqInput fields)."""
    body: dict[str, Any] = {"sampling_params": sp.to_json(), "return_logprob": return_logprob}
    if sample.metadata.get("sampling_seed") is not None:  # per-prompt seed (reproducible rollouts)
        body["sampling_params"]["sampling_seed"] = int(sample.metadata["sampling_seed"])
    if sample.images:
        if not sample.prompt:
            raise ValueError(f"sample {sample.index}: a multimodal prompt needs its text (sample.prompt)")
        body["text"] = sample.prompt
        body["image_data"] = image_data_for(server_images(sample, vision), sp.n)
    elif sample.prompt_ids:
        body["input_ids"] = list(sample.prompt_ids)
    elif sample.prompt:
        body["text"] = sample.prompt
    else:
        raise ValueError(f"sample {sample.index}: no prompt text or ids")
    return body


def fill_samples(prompt: Sample, outputs: list[GenerateOutput], group_index: int) -> list[Sample]:
    """n response Samples for one prompt Sample (the prompt's fields are shared, not re-sent)."""
    result = []
    for out in outputs:
        s = copy.copy(prompt)
        s.metadata = dict(prompt.metadata)
        s.group_index = group_index if prompt.group_index < 0 else prompt.group_index
        s.response, s.response_ids = out.text, list(out.output_ids)
        s.rollout_logprobs = list(out.logprobs)
        s.loss_mask = [1] * len(out.output_ids)
        s.status = Status.TRUNCATED if out.finish_type == "length" else Status.COMPLETED
        s.reward, s.reward_info = 0.0, {}
        if out.weight_version is not None:
            s.metadata["weight_version"] = out.weight_version
        result.append(s)
    return result


def check_prompt_tokens(prompt: Sample, outputs: list[GenerateOutput]) -> None:
    """Stop when the server's prompt length differs from the trainer's (images resized differently)."""
    want = len(prompt.prompt_ids)
    got = {o.prompt_tokens for o in outputs if o.prompt_tokens > 0}
    if want and got and got != {want}:
        raise RolloutError(
            f"sample {prompt.index}: the rollout server counted {sorted(got)} prompt tokens, the trainer "
            f"{want} ({len(prompt.images)} image(s)). The server resizes images with other pixel limits "
            "than data.min_pixels / data.max_pixels: start SGLang with tools/launch_sglang.py --min-pixels "
            "--max-pixels (it passes --mm-process-config), or stand-ins with --min-pixels / --max-pixels."
        )


class RolloutClient:
    """Async generation over ``urls`` (servers or routers) with retries and health checks."""

    def __init__(
        self,
        cfg: RolloutConfig,
        urls: Optional[Sequence[str]] = None,
        max_new_tokens: int = 4096,
        health_interval_s: Optional[float] = None,
        backoff_s: float = 0.5,
        max_abort_resubmits: int = 100,
        vision: Optional[VisionSpec] = None,
    ):
        urls = list(urls if urls is not None else cfg.server_urls)
        if not urls:
            raise RolloutError("no rollout server URLs (rollout.server_urls is empty)")
        self.cfg = cfg
        self.max_new_tokens = max_new_tokens
        self.servers = [ServerState(u.rstrip("/")) for u in urls]
        self.health_interval_s = cfg.health_interval_s if health_interval_s is None else health_interval_s
        self.backoff_s = backoff_s
        self.max_abort_resubmits = max_abort_resubmits
        self.stats = RolloutStats()
        self.vision = vision
        """The trainer's image spec (``VisionSpec.from_config(cfg.data)``): each image's grid is checked."""
        self._rr = 0
        self._capacity_known = False  # servers' max_running_requests read (once, on the first generate)

    def request_timeout_s(self, max_new_tokens: int) -> float:
        """Base plus a per-token allowance: a long decode is not a frozen server."""
        return self.cfg.request_timeout_s + self.cfg.request_timeout_per_token_s * max(0, int(max_new_tokens))

    # ------------------------------------------------------------------ public
    def generate(self, prompts: Sequence[Sample], on_group: Optional[Callable[[list[Sample]], Any]] = None,
                 **sampling_override: Any) -> list[Sample]:
        """Blocking wrapper of :meth:`agenerate` for the (synchronous) training loop."""
        return asyncio.run(self.agenerate(prompts, on_group, **sampling_override))

    async def agenerate(self, prompts: Sequence[Sample], on_group: Optional[Callable[[list[Sample]], Any]] = None,
                        **sampling_override: Any) -> list[Sample]:
        """Every prompt's ``n`` samples, prompt-major. ``on_group`` sees each prompt's samples as soon as
        they are back (in completion order), e.g. to start scoring them while the rest decode; it must
        not block."""
        max_new_tokens = sampling_override.pop("max_new_tokens", self.max_new_tokens)  # per-call budget (eval)
        sp = sampling_params_from_config(self.cfg, max_new_tokens, **sampling_override)
        sem = asyncio.Semaphore(self.cfg.max_inflight)
        timeout = aiohttp.ClientTimeout(total=self.request_timeout_s(sp.max_new_tokens))
        async with aiohttp.ClientSession(timeout=timeout) as session:
            prober = asyncio.create_task(self._probe_loop(session))
            await self._capacities(session)  # before any request: admission limits known up front
            # semaphores live for this call's event loop only (generate() runs a fresh loop per call)
            _SLOTS.set({s.url: asyncio.Semaphore(s.capacity) for s in self.servers if s.capacity})
            try:
                async def one(i: int, p: Sample) -> list[Sample]:
                    async with sem:  # decode + PNG encode off the event loop (Pillow drops the GIL)
                        payload = await asyncio.to_thread(build_payload, p, sp, True, self.vision)
                        outs = await self._generate_one(session, payload)
                    check_prompt_tokens(p, outs)
                    group = fill_samples(p, outs, i)
                    if on_group is not None:
                        on_group(group)
                    return group

                groups = await asyncio.gather(*(one(i, p) for i, p in enumerate(prompts)))
            finally:
                prober.cancel()
                await asyncio.gather(prober, return_exceptions=True)
        return [s for g in groups for s in g]

    async def check_health(self) -> list[ServerState]:
        """Probe every server's /health once; returns the states (for start-up checks)."""
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as session:
            await self._check_all(session)
        return self.servers

    # ------------------------------------------------------------------ internals
    async def _probe(self, session: aiohttp.ClientSession, s: ServerState) -> None:
        try:
            async with session.get(s.url + "/health", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as r:
                ok = r.status == 200
                err = "" if ok else f"/health answered {r.status}"
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
            ok, err = False, f"/health: {type(e).__name__}: {e}"
        if ok and not s.healthy:
            logger.info("rollout server %s is healthy again", s.url)
        if not ok and s.healthy:
            logger.warning("rollout server %s is unhealthy (%s)", s.url, err)
        s.healthy = ok
        if err:
            s.last_error = err

    async def _check_all(self, session: aiohttp.ClientSession) -> None:
        await asyncio.gather(*(self._probe(session, s) for s in self.servers))
        if not any(s.healthy for s in self.servers):
            raise RolloutError(self._none_left_message())

    async def _probe_loop(self, session: aiohttp.ClientSession) -> None:
        while True:
            await asyncio.sleep(self.health_interval_s)
            await asyncio.gather(*(self._probe(session, s) for s in self.servers
                                   if not s.healthy and s.url not in _paused_urls))

    def _none_left_message(self) -> str:
        lines = ", ".join(f"{s.url} ({s.last_error or 'unhealthy'})" for s in self.servers)
        return f"no healthy rollout server left: {lines}"

    def _pick(self, exclude: Optional[ServerState]) -> ServerState:
        healthy = [s for s in self.servers if s.healthy]
        if not healthy:
            raise RolloutError(self._none_left_message())
        others = [s for s in healthy if s is not exclude] or healthy
        low = min(s.inflight for s in others)
        cands = [s for s in others if s.inflight == low]
        self._rr += 1
        return cands[self._rr % len(cands)]

    async def _capacities(self, session: aiohttp.ClientSession) -> None:
        """Each server's ``max_running_requests`` (from /get_server_info), asked once per client. SGLang reports
        None there unless started with --max-running-requests: a server that answers without one gets
        ``rollout.max_running_requests``."""

        async def ask(s: ServerState) -> None:
            try:
                async with session.get(s.url + "/get_server_info", timeout=aiohttp.ClientTimeout(total=PROBE_TIMEOUT_S)) as r:
                    info = await r.json(content_type=None) if r.status == 200 else None
                cap = info.get("max_running_requests") if isinstance(info, dict) else None
                s.capacity = int(cap) if cap else (self.cfg.max_running_requests if isinstance(info, dict) else None)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, TypeError):
                s.capacity = None  # a router or an old server: no admission limit here

        if not self._capacity_known:
            await asyncio.gather(*(ask(s) for s in self.servers))
            self._capacity_known = True

    async def _post(self, session: aiohttp.ClientSession, s: ServerState, payload: dict) -> Any:
        slot = _SLOTS.get().get(s.url) if s.capacity else None  # this generate() call's admission gate
        s.inflight += 1  # queued or running: what _pick balances on
        try:
            if slot is None:
                return await self._post_now(session, s, payload)
            async with slot:
                return await self._post_now(session, s, payload)
        finally:
            s.inflight -= 1

    async def _post_now(self, session: aiohttp.ClientSession, s: ServerState, payload: dict) -> Any:
        async with session.post(s.url + "/generate", json=payload) as r:
            if 400 <= r.status < 500:
                raise _BadRequest(f"{s.url}/generate answered {r.status}: {(await r.text())[:500]}")
            if r.status != 200:
                raise aiohttp.ClientResponseError(
                    r.request_info, (), status=r.status, message=(await r.text())[:200]
                )
            return await r.json(content_type=None)

    async def _generate_one(self, session: aiohttp.ClientSession, payload: dict) -> list[GenerateOutput]:
        self.stats.requests += 1
        last: Optional[ServerState] = None
        attempt = aborts = 0
        while True:
            try:
                s = self._pick(exclude=last)
            except RolloutError:
                await self._check_all(session)  # one fresh look before giving up; raises if none
                s = self._pick(exclude=last)
            try:
                data = await self._post(session, s, payload)
            except _BadRequest as e:
                raise RolloutError(str(e)) from None
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as e:
                err = f"{type(e).__name__}: {e}" if str(e) else type(e).__name__
                s.failures += 1
                s.last_error = err
                self.stats.failures[s.url] = self.stats.failures.get(s.url, 0) + 1
                # A single URL (router) stays in use; with several, the failed one sits out until
                # the probe sees it healthy again.
                if len(self.servers) > 1:
                    s.healthy = False
                attempt += 1
                if attempt > self.cfg.max_retries:
                    raise RolloutError(
                        f"request failed {attempt} times, last on {s.url}: {err}; " + self._none_left_message()
                        if not any(x.healthy for x in self.servers) else
                        f"request failed {attempt} times (rollout.max_retries={self.cfg.max_retries}), "
                        f"last on {s.url}: {err}"
                    ) from None
                self.stats.retries += 1
                logger.warning("rollout request failed on %s (%s); retry %d/%d", s.url, err, attempt,
                               self.cfg.max_retries)
                last = s
                await asyncio.sleep(self.backoff_s * (1 + random.random()) if len(self.servers) == 1 else 0)
                continue
            outs = [GenerateOutput.from_json(d) for d in (data if isinstance(data, list) else [data])]
            if any(o.finish_type == "abort" for o in outs):
                aborts += 1
                self.stats.abort_resubmits += 1
                if aborts > self.max_abort_resubmits:
                    raise RolloutError(f"request aborted {aborts} times by {s.url}")
                logger.info("rollout request aborted by %s (weight update?); resubmitting", s.url)
                await asyncio.sleep(self.backoff_s)
                continue
            return outs
