"""CPU stand-in for an SGLang server: the same HTTP API (SGLang 0.5.23) over local generation.

    python -m megatron_mmr1.rollout.local_server --model DIR --port 30000 [--host 127.0.0.1]

Serves /generate, /health, /health_generate, /get_server_info (+ /server_info),
/get_model_info (+ /model_info), /v1/models, /flush_cache, /pause_generation,
/continue_generation, /abort_request, /init_weights_update_group, /destroy_weights_update_group,
/begin_weight_update, /end_weight_update, /update_weights_from_distributed (backend gloo),
/update_weights_from_tensor, /update_weights_from_disk, /get_weights_by_name,
/release_memory_occupation, /resume_memory_occupation, /update_weight_version,
/get_weight_version - with the request and response fields of SGLang (see ``protocol``), so the
rollout client, the weight sync and sglang-router run the very code paths they run on a GPU.

Generation runs on one engine thread; the HTTP loop stays free for health checks and control
calls. Binds 127.0.0.1 unless told otherwise: /update_weights_from_tensor unpickles its payload
(with an allow-list of tensor-rebuild globals, as SGLang's ``SafeUnpickler``), so the port must not be
reachable by strangers.

Requests are judged by SGLang's rules (``tests/rollout/test_sglang_contract.py`` sends the same
bodies to SGLang's own app and to this server): ``GenerateReqInput.normalize_batch_and_arguments``
(batch size, ``image_data`` per prompt, ``n``), the memory-saver tags (release needs an idle server;
resuming what is not released fails; nothing generates while anything is released), ``/health`` as
a one-token generation (waits while paused, 503 after ``--health-check-timeout``), in-place pauses
that keep requests running (so ``/flush_cache`` answers 400 meanwhile).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import concurrent.futures
import io
import logging
import pickle
import time
import uuid
from typing import Any, Optional

import torch
import torch.multiprocessing  # noqa: F401  (tensor rebuild functions for /update_weights_from_tensor)
from aiohttp import web

from megatron_mmr1.rollout import protocol as P
from megatron_mmr1.rollout.dist_group import destroy_custom_process_group, init_custom_process_group
from megatron_mmr1.rollout.engine import EngineError, GenRequest, LocalEngine, batch_key

logger = logging.getLogger("megatron_mmr1.rollout.local_server")

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _as_list(x: Any, n: int, name: str) -> list:
    if not isinstance(x, list):
        return [x] * n
    if len(x) != n:
        raise P.ProtocolError(f"The length of {name} should be equal to the batch size.")
    return list(x)


def _batch_images(image_data: Any, batch: int) -> list[list]:
    """SGLang's ``_normalize_image_data`` for a batch: one entry per prompt, a list or one image."""
    if image_data is None or image_data == []:
        return [[] for _ in range(batch)]
    if not isinstance(image_data, list):
        return [[image_data] for _ in range(batch)]
    if len(image_data) != batch:
        raise P.ProtocolError("The length of image_data should be equal to the batch size.")
    if isinstance(image_data[0], list):
        return [[] if x is None or x == [None] else list(x) for x in image_data]
    return [[x] for x in image_data]


def _normalize_generate(req: P.GenerateReqInput) -> tuple[bool, list[dict]]:
    """SGLang 0.5.23's ``GenerateReqInput.normalize_batch_and_arguments`` for the fields served here:
    (is_single, per-prompt dicts). A single prompt with n > 1 is a batch of one."""
    if req.text is None and req.input_ids is None:
        raise P.ProtocolError("Either text, input_ids or input_embeds should be provided.")
    if req.text is not None:
        single = isinstance(req.text, str)
        prompts = [req.text] if single else list(req.text)
        key = "text"
    else:
        if len(req.input_ids) == 0:
            raise P.ProtocolError("input_ids cannot be empty.")
        single = not isinstance(req.input_ids[0], list)
        prompts = [req.input_ids] if single else list(req.input_ids)
        key = "input_ids"
    batch = len(prompts)
    sps = req.sampling_params
    n = (sps or {}).get("n", 1) if not isinstance(sps, list) else (sps[0].get("n", 1) if sps else 1)
    if isinstance(sps, list) and any(sp.get("n", 1) != n for sp in sps):
        raise P.ProtocolError("The parallel_sample_num should be the same for all samples in sample params.")
    if single and n == 1:  # images stay as given: the prompt's own list (or one image)
        images = [[] if req.image_data is None else
                  (list(req.image_data) if isinstance(req.image_data, list) else [req.image_data])]
    else:
        images = _batch_images(req.image_data, batch)
    sps = _as_list(sps or {}, batch, "sampling_params")
    lps = _as_list(req.return_logprob, batch, "return_logprob")
    rids = _as_list(req.rid, batch, "rid") if req.rid is not None else [uuid.uuid4().hex for _ in range(batch)]
    items = [
        {key: prompts[i], "images": images[i], "sp": sps[i], "logprob": bool(lps[i]), "rid": str(rids[i])}
        for i in range(batch)
    ]
    return single and n == 1, items


class _TensorUnpickler(pickle.Unpickler):
    """Only what a tensor payload needs (SGLang's ``SafeUnpickler`` allows these and more)."""

    ALLOWED = {
        ("builtins", n) for n in ("list", "tuple", "dict", "str", "int", "float", "bool", "bytes", "bytearray")
    } | {
        ("collections", "OrderedDict"), ("torch", "Size"), ("torch", "Tensor"), ("torch", "device"),
        ("torch.storage", "UntypedStorage"), ("torch.storage", "TypedStorage"), ("torch", "UntypedStorage"),
        ("torch._utils", "_rebuild_tensor_v2"), ("torch._utils", "_rebuild_parameter"),
        ("torch._tensor", "_rebuild_from_type_v2"), ("torch.nn.parameter", "Parameter"),
    } | {("torch.multiprocessing.reductions", n) for n in (
        "rebuild_tensor", "rebuild_cuda_tensor", "rebuild_storage_fd", "rebuild_storage_filename",
        "rebuild_storage_empty", "rebuild_typed_storage", "rebuild_typed_storage_child")
    } | {
        ("sglang.srt.model_executor.model_runner_components.weight_updater", "LocalSerializedTensor"),
        ("sglang.srt.weight_sync.tensor_bucket", "FlattenedTensorMetadata"),
        ("sglang.srt.weight_sync.tensor_bucket", "FlattenedTensorBucket"),
        ("sglang.srt.utils.patch_torch", "_rebuild_cuda_tensor_modified"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED or (module == "torch" and isinstance(getattr(torch, name, None), torch.dtype)):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"Blocked unsafe global ({module}.{name}) during pickle deserialization")


def _unpickle(payload: Any) -> Any:
    data = base64.b64decode(payload) if isinstance(payload, str) else payload
    return _TensorUnpickler(io.BytesIO(data)).load()


class StandInServer:
    """The HTTP app and the state SGLang keeps per server (pause flag, update groups, version)."""

    def __init__(self, engine: LocalEngine, host: str, port: int, enable_memory_saver: bool = True,
                 health_check_timeout_s: float = P.HEALTH_CHECK_TIMEOUT_S, max_running_requests: int = 16,
                 batch_wait_s: float = 0.02):
        self.engine = engine
        self.max_running_requests = max(1, int(max_running_requests))
        """Requests decoded in one batch (SGLang's ``--max-running-requests``); the client queues the rest."""
        self.batch_wait_s = batch_wait_s
        """How long an idle engine waits for a burst of concurrent requests before it starts a batch."""
        self.pending: list[tuple[GenRequest, asyncio.Future]] = []
        self._drain_task: Optional[asyncio.Future] = None
        """Decodes ``pending`` until it is empty; held here (the event loop keeps weak references)."""
        self.health_check_timeout_s = health_check_timeout_s
        self.released: set[str] = set()
        """Memory-saver tags released and not resumed yet."""
        self.host, self.port = host, port
        self.enable_memory_saver = enable_memory_saver
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="engine")
        # Weight and memory calls run beside generation: a request paused in place holds the engine
        # thread at its next token while SGLang's scheduler goes on serving control requests.
        self.control = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="control")
        self.weight_version = "default"
        self.groups: dict[str, Any] = {}
        self._recv_buf: Optional[torch.Tensor] = None
        self.session_open = False
        self.running = 0
        self.served = 0
        self.batches = 0
        self.unpaused = asyncio.Event()
        self.unpaused.set()
        self.started = time.time()
        self.app = web.Application(client_max_size=1 << 31)
        r = self.app.router
        for path, fn in [
            ("/health", self.health), ("/health_generate", self.health),
            ("/get_server_info", self.server_info), ("/server_info", self.server_info),
            ("/get_model_info", self.model_info), ("/model_info", self.model_info),
            ("/v1/models", self.models), ("/get_weight_version", self.get_weight_version),
        ]:
            r.add_get(path, fn)
        for path, fn in [("/generate", self.generate)]:
            r.add_post(path, fn)
            r.add_put(path, fn)
        for path, fn in [
            ("/flush_cache", self.flush_cache), ("/get_weights_by_name", self.get_weights_by_name),
            ("/release_memory_occupation", self.release_memory),
            ("/resume_memory_occupation", self.resume_memory),
        ]:
            r.add_get(path, fn)
            r.add_post(path, fn)
        for path, fn in [
            ("/pause_generation", self.pause), ("/continue_generation", self.continue_),
            ("/abort_request", self.abort_request),
            ("/init_weights_update_group", self.init_group), ("/destroy_weights_update_group", self.destroy_group),
            ("/begin_weight_update", self.begin_update), ("/end_weight_update", self.end_update),
            ("/update_weights_from_distributed", self.update_from_distributed),
            ("/update_weights_from_tensor", self.update_from_tensor),
            ("/update_weights_from_disk", self.update_from_disk),
            ("/update_weight_version", self.update_weight_version),
        ]:
            r.add_post(path, fn)

    # ------------------------------------------------------------------ helpers
    async def _run(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.pool, fn, *args)

    async def _control(self, fn, *args):
        return await asyncio.get_running_loop().run_in_executor(self.control, fn, *args)

    @staticmethod
    async def _json(request: web.Request) -> dict:
        if not request.can_read_body:
            return {}
        try:
            body = await request.json()
        except Exception:
            raise web.HTTPBadRequest(text="request body is not JSON") from None
        return body or {}

    @staticmethod
    def _result(success: bool, message: str, **extra) -> web.Response:
        return web.json_response({"success": success, "message": message, **extra}, status=200 if success else 400)

    # ------------------------------------------------------------------ info
    async def health(self, request: web.Request) -> web.Response:
        """SGLang's /health generates one token: it waits while generation is paused, 503 at the timeout."""
        try:
            await asyncio.wait_for(self.unpaused.wait(), self.health_check_timeout_s)
        except asyncio.TimeoutError:
            return web.Response(status=503)
        return web.Response(status=200)

    async def server_info(self, request: web.Request) -> web.Response:
        e = self.engine
        return web.json_response({
            "model_path": e.model_path, "tokenizer_path": e.model_path, "served_model_name": e.model_path,
            "host": self.host, "port": self.port, "tp_size": 1, "dp_size": 1, "pp_size": 1,
            "device": "cpu", "context_length": e.context_len, "enable_memory_saver": self.enable_memory_saver,
            # SGLang's ServerArgs field: requests decoded in one batch
            "max_running_requests": self.max_running_requests,
            "skip_tokenizer_init": False, "startup_time": self.started,
            "internal_states": [{"last_gen_throughput": 0.0, "running_requests": self.running,
                                 "served_generate_requests": self.served, "decode_batches": self.batches,
                                 "memory_released": sorted(self.released)}],  # stand-in extra
            "version": f"{P.SGLANG_VERSION_CHECKED}-megatron-mmr1-standin", "frontend": "python",
        })

    async def model_info(self, request: web.Request) -> web.Response:
        e = self.engine
        cfg = e.model.config
        return web.json_response({
            "model_path": e.model_path, "served_model_name": e.model_path, "tokenizer_path": e.model_path,
            "is_generation": True, "preferred_sampling_params": None, "weight_version": self.weight_version,
            "load_format": "auto", "has_image_understanding": True, "has_audio_understanding": False,
            "model_type": getattr(cfg, "model_type", None), "architectures": getattr(cfg, "architectures", None),
        })

    async def models(self, request: web.Request) -> web.Response:
        name = self.engine.model_path
        return web.json_response({"object": "list", "data": [{
            "id": name, "object": "model", "created": int(self.started), "owned_by": "sglang",
            "root": name, "parent": None, "max_model_len": self.engine.context_len,
        }]})

    async def get_weight_version(self, request: web.Request) -> web.Response:
        return web.json_response({"weight_version": self.weight_version})

    # ------------------------------------------------------------------ generation
    async def generate(self, request: web.Request) -> web.Response:
        try:
            req = P.parse_body(P.GenerateReqInput, await self._json(request))
            if req.stream:
                raise P.ProtocolError("the stand-in server does not stream")
            single, items = _normalize_generate(req)
        except P.ProtocolError as e:
            return web.json_response({"error": {"message": str(e)}}, status=400)
        await self.unpaused.wait()  # SGLang holds new requests while paused
        if self.released:
            return web.json_response({"error": {"message": f"memory released ({sorted(self.released)}); "
                                                           "/resume_memory_occupation first"}}, status=400)
        self.running += 1
        try:
            loop, futures = asyncio.get_running_loop(), []
            for it in items:
                sp = P.parse_body(P.SamplingParams, it["sp"])
                req = self.engine.prepare(it.get("text"), it.get("input_ids"), it["images"], sp, it["logprob"], it["rid"])
                futures.append(loop.create_future())
                self.pending.append((req, futures[-1]))
            if self._drain_task is None or self._drain_task.done():
                self._drain_task = asyncio.ensure_future(self._drain())
            outs: list[dict] = []
            for f in futures:
                outs += await f
        except (EngineError, P.ProtocolError, TypeError) as e:
            return web.json_response({"error": {"message": str(e)}}, status=400)
        finally:
            self.running -= 1
        self.served += 1
        return web.json_response(outs[0] if single else outs)

    async def _drain(self) -> None:
        """Decode the queued requests, a batch of equal sampling parameters at a time (oldest first).
        Returns when the queue is empty, with no await after that check: a request queued later sees
        this task done and starts another."""
        await asyncio.sleep(self.batch_wait_s)
        while self.pending:
            key = batch_key(self.pending[0][0].sp)
            batch = [p for p in self.pending if batch_key(p[0].sp) == key][: self.max_running_requests]
            for p in batch:
                self.pending.remove(p)
            self.batches += 1
            try:
                results = await self._run(self.engine.generate_batch, [r for r, _ in batch], self.weight_version)
            except Exception as e:  # noqa: BLE001 (handed to every waiting request)
                results = [e] * len(batch)
            for (_, fut), res in zip(batch, results):
                if fut.done():  # the client went away
                    continue
                if isinstance(res, Exception):
                    fut.set_exception(res)
                else:
                    fut.set_result(res)

    async def flush_cache(self, request: web.Request) -> web.Response:
        if self.running:
            return web.Response(status=400, text="Flush cache failed: requests are running or waiting.\n")
        return web.Response(status=200, text="Cache flushed.\n")

    async def pause(self, request: web.Request) -> web.Response:
        req = P.parse_body(P.PauseGenerationReqInput, await self._json(request))
        self.unpaused.clear()
        if req.mode == "in_place":  # running requests stay where they are, frozen
            self.engine.hold_event.set()
        if req.mode == "abort":
            self.engine.abort_event.set()
            while self.running:  # in-flight requests return with finish_reason abort
                await asyncio.sleep(0.01)
        return web.json_response({"message": "Generation paused successfully.", "status": "ok"})

    async def continue_(self, request: web.Request) -> web.Response:
        self.engine.abort_event.clear()
        self.engine.hold_event.clear()
        self.unpaused.set()
        return web.json_response({"message": "Generation continued successfully.", "status": "ok"})

    async def abort_request(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if body.get("abort_all"):
            self.engine.abort_event.set()
            while self.running:
                await asyncio.sleep(0.01)
            self.engine.abort_event.clear()
        return web.Response(status=200)

    # ------------------------------------------------------------------ weights
    async def init_group(self, request: web.Request) -> web.Response:
        req = P.parse_body(P.InitWeightsUpdateGroupReqInput, await self._json(request))
        rank = req.rank_offset  # + tp_rank; the stand-in is one rank
        try:
            pg = await self._control(
                init_custom_process_group, req.backend, f"tcp://{req.master_address}:{req.master_port}",
                req.world_size, rank, req.group_name,
            )
        except Exception as e:
            return self._result(False, f"Failed to initialize custom process group: {e}.")
        self.groups[req.group_name] = pg
        return self._result(True, "Succeeded to initialize custom process group.")

    async def destroy_group(self, request: web.Request) -> web.Response:
        req = P.parse_body(P.DestroyWeightsUpdateGroupReqInput, await self._json(request))
        pg = self.groups.pop(req.group_name, None)
        if pg is None:
            return self._result(False, "The group to be destroyed does not exist.")
        await self._control(destroy_custom_process_group, pg)
        return self._result(True, "Succeeded to destroy custom process group.")

    async def begin_update(self, request: web.Request) -> web.Response:
        if self.session_open:
            return self._result(False, "a weight-update session is already open; call end_weight_update() first")
        self.session_open = True
        return self._result(True, "Success")

    async def end_update(self, request: web.Request) -> web.Response:
        if not self.session_open:
            return self._result(False, "no weight-update session is open; call begin_weight_update() first")
        self.session_open = False
        return self._result(True, "Success")

    def _after_update(self, flush: bool, version: Optional[str], success: bool, message: str) -> web.Response:
        if success and version is not None:
            self.weight_version = version
            message += f" Weight version updated to {version}."
        if success and flush and self.running:
            return self._result(False, "Weights were updated, but the cache was not flushed because "
                                       "requests are still running or queued.")
        return self._result(success, message)

    def _receive_buffer(self, nbytes: int) -> torch.Tensor:
        """A uint8 receive buffer kept between updates (fresh memory costs a page fault per 4 KiB)."""
        if self._recv_buf is None or self._recv_buf.numel() < nbytes:
            self._recv_buf = torch.empty(nbytes, dtype=torch.uint8)
        return self._recv_buf[:nbytes]

    def _receive(self, req: P.UpdateWeightsFromDistributedReqInput) -> int:
        pg = self.groups[req.group_name]
        dtypes = [_DTYPES.get(d) or getattr(torch, d) for d in req.dtypes]
        if req.load_format == "flattened_bucket":
            off = 0
            for name, dt, shape in zip(req.names, dtypes, req.shapes):
                if off % dt.itemsize:
                    raise EngineError(f"Unaligned received tensor {name}: byte offset {off}, dtype {dt}")
                n = 1
                for d in shape:
                    n *= d
                off += n * dt.itemsize
            # straight into the parameters when the bucket matches their layout, else via a buffer
            try:
                target = self.engine.receive_target(req.names, dtypes, req.shapes)
            except EngineError:  # an unknown name or shape: receive anyway (the trainer is sending), then fail
                target = None
            if target is not None and target.numel() == off:
                torch.distributed.broadcast(target, src=0, group=pg)
                return len(req.names)
            flat = self._receive_buffer(off)
            torch.distributed.broadcast(flat, src=0, group=pg)
            return self.engine.load_flat(req.names, dtypes, req.shapes, flat)
        try:  # straight into the parameters where the tensor can land there
            targets = self.engine.receive_targets(req.names, dtypes, req.shapes)
        except EngineError:  # an unknown name or shape: receive anyway (the trainer is sending), then fail
            targets = [None] * len(req.names)
        tensors = [t if t is not None else torch.empty(shape, dtype=dt)
                   for t, dt, shape in zip(targets, dtypes, req.shapes)]
        handles = [torch.distributed.broadcast(t, src=0, group=pg, async_op=True) for t in tensors]
        for h in handles:
            h.wait()
        rest = [(n, t) for n, t, target in zip(req.names, tensors, targets) if target is None]
        return len(req.names) - len(rest) + self.engine.load_weights(rest)

    async def update_from_distributed(self, request: web.Request) -> web.Response:
        req = P.parse_body(P.UpdateWeightsFromDistributedReqInput, await self._json(request))
        if not self.session_open:
            return self._result(False, "update_weights_from_distributed must run between "
                                       "begin_weight_update() and end_weight_update()")
        if req.group_name not in self.groups:
            return self._result(False, f"Group {req.group_name} not in {list(self.groups)}. "
                                       "Please call `init_weights_update_group` first.")
        try:
            await self._control(self._receive, req)
        except Exception as e:
            return self._result(False, f"Failed to receive weights: {e}")
        return self._after_update(req.flush_cache, req.weight_version, True, "Succeeded to update parameter online.")

    async def update_from_tensor(self, request: web.Request) -> web.Response:
        req = P.parse_body(P.UpdateWeightsFromTensorReqInput, await self._json(request))
        if not self.session_open:
            return self._result(False, "update_weights_from_tensor must run between "
                                       "begin_weight_update() and end_weight_update()")
        try:
            named = _unpickle(req.serialized_named_tensors[0])  # tp rank 0: the stand-in is one rank
            if req.load_format == "flattened_bucket":
                flat, meta = named["flattened_tensor"], named["metadata"]
                named = [(m.name, flat[m.start_idx:m.end_idx].view(m.dtype).reshape(m.shape)) for m in meta]
            named = [(n, _local_tensor(t)) for n, t in named]
            await self._control(self.engine.load_weights, named)
        except Exception as e:
            return self._result(False, f"Failed to update weights from tensor: {e}")
        return self._after_update(req.flush_cache, req.weight_version, True, "Success")

    async def update_from_disk(self, request: web.Request) -> web.Response:
        req = P.parse_body(P.UpdateWeightFromDiskReqInput, await self._json(request))
        try:
            await self._control(self.engine.load_from_disk, req.model_path)
        except Exception as e:
            return self._result(False, f"Failed to update weights: {e}", num_paused_requests=0)
        resp = self._after_update(req.flush_cache, req.weight_version, True, "Succeeded to update model weights.")
        return resp if resp.status != 200 else self._result(True, "Succeeded to update model weights.",
                                                            num_paused_requests=0)

    async def update_weight_version(self, request: web.Request) -> web.Response:
        body = await self._json(request)
        if "new_version" not in body:
            return web.json_response({"error": {"message": "missing field new_version"}}, status=400)
        self.weight_version = str(body["new_version"])
        return web.json_response({"success": True, "message": f"Weight version updated to {self.weight_version}"})

    async def get_weights_by_name(self, request: web.Request) -> web.Response:
        try:
            req = P.parse_body(P.GetWeightsByNameReqInput, await self._json(request))
            values = await self._control(self.engine.get_weights_by_name, req.name, req.truncate_size)
        except (EngineError, P.ProtocolError) as e:
            return web.json_response({"error": {"message": str(e)}}, status=400)
        return web.json_response(values)

    async def release_memory(self, request: web.Request) -> web.Response:
        req = P.parse_body(P.MemoryOccupationReqInput, await self._json(request))
        if not self.enable_memory_saver:
            return web.json_response({"error": {"message": "start the server with --enable-memory-saver"}}, status=400)
        if self.running:  # SGLang: assert is_fully_idle(ignore_waiting=paused)
            return web.json_response({"error": {"message": "release_memory_occupation should be called only "
                                                           "when server is idle."}}, status=400)
        tags = set(req.tags or P.GPU_MEMORY_TYPES)
        self.released |= tags
        if "weights" in tags and not self.engine.weights_released:
            await self._control(self.engine.release_weights)
        return web.json_response(None)

    async def resume_memory(self, request: web.Request) -> web.Response:
        req = P.parse_body(P.MemoryOccupationReqInput, await self._json(request))
        tags = list(req.tags or P.GPU_MEMORY_TYPES)
        missing = [t for t in tags if t not in self.released]
        if missing:  # SGLang removes each tag from its offload set: a KeyError for one not released
            return web.json_response({"error": {"message": f"{missing[0]!r} is not released"}}, status=400)
        self.released -= set(tags)
        if "weights" in tags:
            await self._control(self.engine.resume_weights)
        return web.json_response(None)


def _local_tensor(t: Any) -> torch.Tensor:
    """A tensor, or SGLang's LocalSerializedTensor (``values`` = one serialized tensor per TP rank)."""
    if torch.is_tensor(t):
        return t
    return _unpickle(t.values[0])  # the stand-in is TP rank 0


@web.middleware
async def _protocol_errors(request: web.Request, handler):
    try:
        return await handler(request)
    except P.ProtocolError as e:
        return web.json_response({"error": {"message": str(e)}}, status=400)


def build_app(engine: LocalEngine, host: str = "127.0.0.1", port: int = 0, **kw) -> tuple[web.Application, StandInServer]:
    server = StandInServer(engine, host, port, **kw)
    server.app.middlewares.append(_protocol_errors)
    return server.app, server


def main(argv: Optional[list[str]] = None) -> None:
    ap = argparse.ArgumentParser(description="CPU stand-in for an SGLang server (same HTTP API).")
    ap.add_argument("--model", "--model-path", dest="model", required=True, help="HF Qwen2.5-VL checkpoint dir")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=30000)
    ap.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
    ap.add_argument("--min-pixels", type=int, default=None)
    ap.add_argument("--max-pixels", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--disable-memory-saver", action="store_true")
    ap.add_argument("--max-running-requests", type=int, default=16,
                    help="requests decoded together in one batch (their n samples are its rows)")
    ap.add_argument("--health-check-timeout", type=float, default=P.HEALTH_CHECK_TIMEOUT_S,
                    help="seconds /health waits for paused generation before 503 (SGLANG_HEALTH_CHECK_TIMEOUT)")
    ap.add_argument("--log-level", default="INFO")
    args = ap.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    torch.set_num_threads(1)
    engine = LocalEngine(args.model, _DTYPES[args.dtype], args.min_pixels, args.max_pixels, args.seed)
    app, _ = build_app(engine, args.host, args.port, enable_memory_saver=not args.disable_memory_saver,
                       health_check_timeout_s=args.health_check_timeout,
                       max_running_requests=args.max_running_requests)
    logger.info("stand-in SGLang server for %s on http://%s:%d", args.model, args.host, args.port)
    web.run_app(app, host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
