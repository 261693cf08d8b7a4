"""An in-process HTTP server answering /generate with canned responses, in SGLang 0.5.23's shapes.

``responses`` maps a substring of the prompt text to the list of responses to give (the i-th of the n
outputs of a request gets ``responses[i % len]``); a prompt containing ``reject`` gets HTTP 400, as
SGLang answers a request it cannot take (e.g. a prompt longer than the context). It records the most
/generate requests that were in flight at the same time and every request body.
"""

from __future__ import annotations

import asyncio
import threading

from aiohttp import web

from megatron_mmr1.utils.net import free_port


class CannedServer:
    def __init__(self, responses: dict[str, list[str]], reject: str = "REJECT-ME", hold_until: int = 0,
                 hold_timeout_s: float = 20.0):
        """``hold_until``: keep each request open until that many are in flight at once (or the timeout):
        they then all come back, which shows they were sent together without timing anything."""
        self.responses, self.reject = responses, reject
        self.hold_until, self.hold_timeout_s = hold_until, hold_timeout_s
        self._all_in = asyncio.Event()
        self.bodies: list[dict] = []
        self.inflight = self.max_inflight = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_post("/generate", self._generate)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _canned(self, text: str) -> list[str]:
        for key, answers in self.responses.items():
            if key in text:
                return answers
        return ["<think>no idea</think><answer>none</answer>"]

    async def _generate(self, request: web.Request) -> web.Response:
        body = await request.json()
        self.bodies.append(body)
        text = body.get("text", "")
        if self.reject in text:
            return web.json_response({"error": {"message": "The input is longer than the context"}}, status=400)
        self.inflight += 1
        self.max_inflight = max(self.max_inflight, self.inflight)
        if self.inflight >= self.hold_until:
            self._all_in.set()
        try:
            await asyncio.wait_for(self._all_in.wait(), self.hold_timeout_s)
        except asyncio.TimeoutError:
            pass
        finally:
            self.inflight -= 1
        n = body["sampling_params"].get("n", 1)
        answers = self._canned(text)
        outs = []
        for i in range(n):
            resp = answers[i % len(answers)]
            ids = list(range(1, len(resp.split()) + 1))
            truncated = resp.endswith("...")
            outs.append({"text": resp, "output_ids": ids,
                         "meta_info": {"finish_reason": {"type": "length" if truncated else "stop"},
                                       "output_token_logprobs": [[-0.1, t, None] for t in ids],
                                       "prompt_tokens": 10, "weight_version": "7"}})
        return web.json_response(outs if n > 1 else outs[0])

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
