"""SGLang 0.5.23's own HTTP server (``sglang.srt.entrypoints.http_server.app``) on CPU, with a stub
tokenizer manager in place of the GPU engine: the contract test's far end.

    python -m tests.rollout.sglang_app --port P       # with the pinned wheel on PYTHONPATH

Everything between the socket and the tokenizer manager is SGLang's code: its routes, FastAPI /
pydantic request parsing, ``GenerateReqInput.normalize_batch_and_arguments`` (run by the stub, as
``TokenizerManager.generate_request`` runs it first), ``MultiprocessingSerializer`` with its
restricted unpickler for tensor payloads, ``init_custom_process_group`` for the update group, the
memory-saver tag rules and the ``ServerArgs`` parser. Each ``image_data`` item is loaded with
SGLang's Qwen2.5-VL image loader (its errors give SGLang's status codes) and recorded as size, mode
and pixel hash. The stub records what each call parsed to;
``GET /_contract/log`` returns the records, ``POST /_contract/server_args`` parses a launch command
line. Started by ``tests/rollout/test_sglang_contract.py`` (``make env`` installs the wheel into
``.venv/sglang-cpu`` with ``--no-deps``).

Two modules SGLang imports at load time have no CPU build for our torch here: ``torchvision``
(InternVL / NemotronVL config helpers) and ``IPython`` (notebook display helpers). They are
replaced by placeholders whose every call raises, so a path we exercise that needed them fails.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import importlib.abc
import importlib.machinery
import logging
import sys
import time
import types
from typing import Any

ABSENT_MODULES = ("torchvision", "IPython")


class _Absent:
    """Any attribute of a placeholder module: calling it raises."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str) -> "_Absent":
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Absent(f"{self._name}.{attr}")

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"{self._name}: placeholder (the module is not installed for the contract test)")

    def __mro_entries__(self, bases: tuple) -> tuple:
        return (object,)


class _AbsentModule(types.ModuleType):
    def __getattr__(self, attr: str) -> _Absent:
        if attr.startswith("__"):
            raise AttributeError(attr)
        return _Absent(f"{self.__name__}.{attr}")


class _AbsentFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ABSENT_MODULES:
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        return None

    def create_module(self, spec):
        return _AbsentModule(spec.name)

    def exec_module(self, module):
        module.__path__ = []


def install_placeholders() -> None:
    # transformers caches "torchvision available?" on first ask: ask before the placeholder exists,
    # so transformers keeps using its PIL image processors.
    from transformers.utils import import_utils

    assert not import_utils.is_torchvision_available()
    sys.meta_path.insert(0, _AbsentFinder())


def to_builtin(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_builtin(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if hasattr(obj, "model_dump"):
        return obj.model_dump()
    if hasattr(obj, "__struct_fields__"):  # msgspec.Struct (SGLang's io_struct request classes)
        return {f: to_builtin(getattr(obj, f)) for f in obj.__struct_fields__}
    if isinstance(obj, (list, tuple)):
        return [to_builtin(x) for x in obj]
    if isinstance(obj, dict):
        return {str(k): to_builtin(v) for k, v in obj.items()}
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return repr(obj)


def tensor_digest(t) -> dict:
    return {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "sum": float(t.double().sum())}


def _as_list(image_data: Any) -> list:
    return [] if image_data is None else image_data if isinstance(image_data, list) else [image_data]


def image_digest(img) -> dict:
    """Size, mode and a hash of the pixels of a decoded PIL image."""
    import hashlib

    import numpy as np

    return {"size": [img.width, img.height], "mode": img.mode,
            "sha256": hashlib.sha256(np.ascontiguousarray(np.asarray(img)).tobytes()).hexdigest()}


def load_image_digest(item: Any) -> dict:
    """One ``image_data`` item through SGLang's Qwen2.5-VL loader (``_load_single_item``: ``load_image``,
    then ``convert("RGB")``), as its tokenizer manager loads it before the HF image processor. A
    client-media error is a ValueError (HTTP 400); anything else, e.g. base64 read as a missing file,
    a RuntimeError (HTTP 500)."""
    from sglang.srt.managers.schedule_batch import Modality
    from sglang.srt.multimodal.processors.qwen_vl import QwenVLImageProcessor

    return image_digest(QwenVLImageProcessor._load_single_item(item, Modality.IMAGE))


class StubTokenizerManager:
    """The attributes and coroutines http_server.py reaches on its tokenizer manager."""

    def __init__(self):
        from sglang.srt.managers.tokenizer_manager import ServerStatus

        self.log: list[dict] = []
        self.is_generation = True
        self.gracefully_exit = False
        self.server_status = ServerStatus.Up
        self.last_receive_tstamp = 0.0
        self.rid_to_state: dict = {}
        self.groups: dict = {}
        self.offload_tags: set[str] = set()
        self.paused = False
        self.startup_time = time.time()
        self.server_args = None

    async def get_internal_state(self) -> list[dict]:
        return [{"last_gen_throughput": 0.0}]

    def _record(self, endpoint: str, obj: Any, **extra: Any) -> None:
        self.log.append({"endpoint": endpoint, "fields": to_builtin(obj), **extra})

    # ---------------------------------------------------------------- generation
    async def generate_request(self, obj, request=None):
        from sglang.srt.constants import HEALTH_CHECK_RID_PREFIX

        self.last_receive_tstamp = time.time()
        obj.normalize_batch_and_arguments()  # raises ValueError -> HTTP 400, as in SGLang
        if isinstance(obj.rid, str) and obj.rid.startswith(HEALTH_CHECK_RID_PREFIX):
            yield {}
            return
        subs = [obj] if obj.is_single else [obj[i] for i in range(len(obj.rid))]
        decoded = [[load_image_digest(x) for x in _as_list(s.image_data)] for s in subs]  # may raise, as SGLang
        per_request = [{
            "text": s.text, "input_ids": s.input_ids, "sampling_params": s.sampling_params,
            "return_logprob": s.return_logprob,
            "images": None if s.image_data is None else [
                x if isinstance(x, str) else repr(x)
                for x in (s.image_data if isinstance(s.image_data, list) else [s.image_data])
            ],
            "decoded": d,
        } for s, d in zip(subs, decoded)]
        self.log.append({"endpoint": "/generate", "is_single": obj.is_single, "requests": per_request})
        outs = [self._output(s) for s in subs]
        yield outs[0] if obj.is_single else outs

    @staticmethod
    def _output(s) -> dict:
        ids = [5, 6]
        meta = {"id": s.rid, "finish_reason": {"type": "length", "length": len(ids)},
                "prompt_tokens": len(s.input_ids) if s.input_ids else 0, "completion_tokens": len(ids),
                "cached_tokens": 0, "weight_version": "default"}
        if s.return_logprob:
            meta["output_token_logprobs"] = [[-0.5, t, None] for t in ids]
        return {"text": "ok", "output_ids": ids, "meta_info": meta}

    def create_abort_task(self, obj):
        return None

    def abort_request(self, rid: str = "", abort_all: bool = False) -> None:
        self.log.append({"endpoint": "/abort_request", "fields": {"rid": rid, "abort_all": abort_all}})

    async def pause_generation(self, obj) -> None:
        self.paused = True
        self._record("/pause_generation", obj)

    async def continue_generation(self, obj) -> None:
        self.paused = False
        self._record("/continue_generation", obj)

    async def flush_cache(self, timeout_s: float = 0.0):
        self.log.append({"endpoint": "/flush_cache", "fields": {"timeout_s": timeout_s}})
        return types.SimpleNamespace(success=True, message="")

    # ---------------------------------------------------------------- weights
    async def init_weights_update_group(self, obj, request=None):
        from sglang.srt.utils.common import init_custom_process_group

        self._record("/init_weights_update_group", obj)
        self.groups[obj.group_name] = await asyncio.to_thread(
            init_custom_process_group, backend=obj.backend,
            init_method=f"tcp://{obj.master_address}:{obj.master_port}", world_size=obj.world_size,
            rank=obj.rank_offset, group_name=obj.group_name)
        return True, "Succeeded to initialize custom process group."

    async def destroy_weights_update_group(self, obj, request=None):
        import torch.distributed as dist

        self._record("/destroy_weights_update_group", obj)
        group = self.groups.pop(obj.group_name, None)
        if group is None:
            return False, "The group to be destroyed does not exist."
        dist.destroy_process_group(group)
        return True, "Succeeded to destroy custom process group."

    async def begin_weight_update(self, obj, request=None):
        self._record("/begin_weight_update", obj)
        return True, "Success"

    async def end_weight_update(self, obj, request=None):
        self._record("/end_weight_update", obj)
        return True, "Success"

    def _receive(self, obj) -> list:
        """The broadcasts of one /update_weights_from_distributed, received as SGLang's runner does."""
        import torch
        import torch.distributed as dist

        group = self.groups[obj.group_name]
        dtypes = [getattr(torch, d) for d in obj.dtypes]
        if obj.load_format == "flattened_bucket":
            sizes = [torch.Size(s).numel() * d.itemsize for s, d in zip(obj.shapes, dtypes)]
            flat = torch.empty(sum(sizes), dtype=torch.uint8)
            dist.broadcast(flat, src=0, group=group)
            parts, off = [], 0
            for size, d, shape in zip(sizes, dtypes, obj.shapes):
                parts.append(flat[off:off + size].view(d).reshape(shape))
                off += size
            return parts
        parts = [torch.empty(s, dtype=d) for s, d in zip(obj.shapes, dtypes)]
        for h in [dist.broadcast(t, src=0, group=group, async_op=True) for t in parts]:
            h.wait()
        return parts

    async def update_weights_from_distributed(self, obj, request=None):
        tensors = await asyncio.to_thread(self._receive, obj)
        self._record("/update_weights_from_distributed", obj,
                     tensors={n: tensor_digest(t) for n, t in zip(obj.names, tensors)})
        return True, "Succeeded to update parameter online."

    async def update_weights_from_tensor(self, obj, request=None):
        from sglang.srt.model_executor.model_runner_components.weight_updater import LocalSerializedTensor
        from sglang.srt.utils import MultiprocessingSerializer

        named = MultiprocessingSerializer.deserialize(obj.serialized_named_tensors[0])  # TP rank 0
        named = [(n, t.get(0) if isinstance(t, LocalSerializedTensor) else t) for n, t in named]
        self._record("/update_weights_from_tensor", obj, tensors={n: tensor_digest(t) for n, t in named})
        return True, "Success"

    async def update_weights_from_disk(self, obj, request=None):
        self._record("/update_weights_from_disk", obj)
        return True, "Succeeded to update model weights.", 0

    async def get_weights_by_name(self, obj, request=None):
        self._record("/get_weights_by_name", obj)
        return [[0.0] * 2]

    async def release_memory_occupation(self, obj, request=None):
        from sglang.srt.constants import GPU_MEMORY_ALL_TYPES

        self._record("/release_memory_occupation", obj)
        self.offload_tags.update(obj.tags or GPU_MEMORY_ALL_TYPES)  # SGLang: None or [] = all

    async def resume_memory_occupation(self, obj, request=None):
        from sglang.srt.constants import GPU_MEMORY_ALL_TYPES

        self._record("/resume_memory_occupation", obj)
        for tag in obj.tags or GPU_MEMORY_ALL_TYPES:
            self.offload_tags.remove(tag)  # SGLang's set.remove: resuming what is not released fails


def build_app(stub: StubTokenizerManager, model_dir: str):
    from fastapi.responses import JSONResponse

    from sglang.srt.entrypoints import http_server as hs
    from sglang.srt.runtime_context import publish
    from sglang.srt.server_args import ServerArgs

    stub.server_args = ServerArgs(model_path=model_dir, device="cpu")
    publish(stub.server_args, role="tokenizer")  # the config namespaces routes read (disagg, serving, ...)

    hs.set_global_state(hs._GlobalState(tokenizer_manager=stub, template_manager=None, scheduler_info={}))

    @hs.app.get("/_contract/log")
    async def contract_log():
        return JSONResponse({"log": stub.log, "offload_tags": sorted(stub.offload_tags), "paused": stub.paused})

    @hs.app.post("/_contract/server_args")
    async def contract_server_args(body: dict):
        from sglang.srt.server_args import ServerArgs

        parser = argparse.ArgumentParser()
        ServerArgs.add_cli_args(parser)
        try:
            ns = parser.parse_args(body["argv"])
        except SystemExit as e:
            return JSONResponse({"error": f"argparse exit {e.code}"}, status_code=400)
        return JSONResponse({k: to_builtin(v) for k, v in vars(ns).items()})

    return hs.app


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--model", required=True, help="HF checkpoint directory (ServerArgs.model_path)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    install_placeholders()
    import uvicorn

    app = build_app(StubTokenizerManager(), args.model)
    # No lifespan: SGLang's start-up hooks build the OpenAI serving layer on a real engine.
    uvicorn.run(app, host="127.0.0.1", port=args.port, lifespan="off", log_level="warning")


if __name__ == "__main__":
    main()
