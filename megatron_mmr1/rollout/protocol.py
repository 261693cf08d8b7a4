"""SGLang's HTTP API for RL, as typed request bodies: one definition for client and stand-in.

Checked against SGLang 0.5.23 (``python/sglang/srt/managers/io_struct.py`` and
``python/sglang/srt/entrypoints/http_server.py`` of the 0.5.23 wheel). Field names and defaults
below are theirs. Things of that version a caller must know:

* ``/generate`` takes ``text`` or ``input_ids`` (one prompt or a list), ``image_data`` (per prompt:
  one image or a list; path, URL, or base64), ``sampling_params`` (``n`` > 1 turns a single prompt
  into a batch of n: the response is then a *list* of n outputs) and ``return_logprob``. Each output
  is ``{"text", "output_ids", "meta_info"}``; ``meta_info`` has ``id``, ``finish_reason`` (``{"type":
  "stop", "matched": id|str}``, ``{"type": "length", "length": n}``, ``{"type": "abort", ...}``),
  ``prompt_tokens``, ``completion_tokens``, ``cached_tokens``, ``weight_version`` and, with
  ``return_logprob``, ``output_token_logprobs`` = ``[[logprob, token_id, text|None], ...]``.
  Log-probs are ``log_softmax(logits / temperature)`` of the sampled token (raw logits when greedy).
* ``/update_weights_from_distributed`` and ``/update_weights_from_tensor`` only run inside a
  weight-update session: ``/begin_weight_update`` before, ``/end_weight_update`` after (new in the
  0.5.2x line). ``/update_weights_from_disk`` needs none.
* ``load_format="flattened_bucket"`` on ``/update_weights_from_distributed`` receives one uint8
  broadcast per bucket (tensors back to back, each at an offset aligned to its dtype's size)
  instead of one broadcast per tensor.
* ``/flush_cache`` answers 400 while requests are running or waiting; ``/pause_generation`` takes
  ``mode`` = ``abort`` (default: in-flight requests return with ``finish_reason.type == "abort"``),
  ``retract`` or ``in_place``.
* ``/release_memory_occupation`` / ``/resume_memory_occupation`` take ``tags`` (``weights``,
  ``kv_cache``, ``cuda_graph``; None = all three) and need the server flag ``--enable-memory-saver``.
  Release asserts the server is idle (waiting requests are ignored only while generation is
  paused); resuming a tag that is not released fails (SGLang removes it from a set).
* ``image_data`` of a request that is a batch (a list of prompts, or one prompt with ``n`` > 1) must
  have one entry per prompt: a list of that prompt's images (``[[a, b]]``), or one image. A flat
  ``[a, b]`` there is read as one image per prompt and refused ("The length of image_data should be
  equal to the batch size"). A single prompt with ``n`` = 1 takes its images flat.
* ``/health`` runs a one-token generation (``SGLANG_ENABLE_HEALTH_ENDPOINT_GENERATION`` defaults on):
  while generation is paused it waits up to ``HEALTH_CHECK_TIMEOUT_S`` and answers 503.
* Qwen2.5-VL image resizing uses the checkpoint's preprocessor limits unless the server gets
  ``--mm-process-config '{"image": {...}}'``, whose ``image`` dict goes to the HF image processor,
  with torchvision unless the server gets ``--image-processor-backend pil`` (the trainer resizes
  with Pillow).
* An ``image_data`` string is read by ``load_image`` (``sglang/srt/utils/common.py``): one starting
  with ``/`` or ending in ``.png``/``.jpg``/... is a file path, so raw base64 of a JPEG (``/9j/...``)
  fails with HTTP 500; ``data:image/<fmt>;base64,...`` is unambiguous. The loader ignores EXIF
  orientation, drops alpha without compositing (``convert("RGB")``) and decodes JPEG with nvJPEG
  when CUDA is up: the client sends the trainer's decoded image as PNG (:func:`image_data_url`).
"""

from __future__ import annotations

import base64
import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal, Optional

SGLANG_VERSION_CHECKED = "0.5.23"
DEFAULT_GROUP_NAME = "weight_update_group"
GPU_MEMORY_TYPES = ("kv_cache", "weights", "cuda_graph")
"""SGLang's memory-saver tags (``sglang.srt.constants.GPU_MEMORY_ALL_TYPES``)."""
HEALTH_CHECK_TIMEOUT_S = 20.0
"""SGLang's ``SGLANG_HEALTH_CHECK_TIMEOUT`` default: the longest a /health generation waits."""


def mm_process_config(min_pixels: int, max_pixels: int) -> dict:
    """``--mm-process-config`` that makes SGLang resize images with the trainer's pixel limits.

    SGLang passes the ``image`` dict to the HF Qwen2-VL image processor call; ``size`` with
    ``shortest_edge`` / ``longest_edge`` is that processor's (non-deprecated) name for min/max pixels.
    """
    return {"image": {"size": {"shortest_edge": int(min_pixels), "longest_edge": int(max_pixels)}}}


def image_data_url(png: bytes) -> str:
    """An ``image_data`` item SGLang cannot mistake for a path: a ``data:`` URL of PNG bytes."""
    return "data:image/png;base64," + base64.b64encode(png).decode()


def image_data_for(images: list, n: int) -> list:
    """``image_data`` of one prompt: flat when the request stays single (n = 1), else one list per prompt."""
    return list(images) if n <= 1 else [list(images)]


class ProtocolError(ValueError):
    """A request body that SGLang would reject (missing or mistyped field)."""


def _body(obj: Any) -> dict:
    """Field -> value, top level copied only (``dataclasses.asdict`` deep-copies every list: 80 ms
    for the names and shapes of a 10k-tensor weight bucket)."""
    return {f.name: _body(v) if dataclasses.is_dataclass(v := getattr(obj, f.name)) else v
            for f in dataclasses.fields(obj)}


def parse_body(cls: type, body: Optional[dict]) -> Any:
    """Build ``cls`` from a JSON body; missing required fields raise ProtocolError (HTTP 400)."""
    body = dict(body or {})
    names = {f.name for f in dataclasses.fields(cls)}
    missing = [
        f.name for f in dataclasses.fields(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
        and f.name not in body
    ]
    if missing:
        raise ProtocolError(f"{cls.__name__}: missing field(s) {missing}")
    return cls(**{k: v for k, v in body.items() if k in names})


@dataclass
class SamplingParams:
    """The ``sampling_params`` keys we send (SGLang's sampling_params.py has more)."""

    max_new_tokens: int = 128
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1
    n: int = 1
    stop: Optional[list[str]] = None
    stop_token_ids: Optional[list[int]] = None
    skip_special_tokens: bool = True
    no_stop_trim: bool = False
    sampling_seed: Optional[int] = None

    def to_json(self) -> dict:
        return {k: v for k, v in _body(self).items() if v is not None}


@dataclass
class GenerateReqInput:
    text: Optional[Any] = None
    input_ids: Optional[Any] = None
    image_data: Optional[Any] = None
    sampling_params: Optional[Any] = None
    return_logprob: Optional[Any] = None
    logprob_start_len: Optional[Any] = None
    top_logprobs_num: Optional[Any] = None
    return_text_in_logprobs: bool = False
    stream: bool = False
    rid: Optional[Any] = None


@dataclass
class InitWeightsUpdateGroupReqInput:
    master_address: str
    master_port: int
    rank_offset: int
    world_size: int
    group_name: str = DEFAULT_GROUP_NAME
    backend: str = "nccl"


@dataclass
class DestroyWeightsUpdateGroupReqInput:
    group_name: str = DEFAULT_GROUP_NAME


@dataclass
class UpdateWeightsFromDistributedReqInput:
    names: list[str]
    dtypes: list[str]
    shapes: list[list[int]]
    group_name: str = DEFAULT_GROUP_NAME
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    load_format: Optional[str] = None
    selector: Literal["target", "draft", "all"] = "all"
    torch_empty_cache: bool = False


@dataclass
class UpdateWeightsFromTensorReqInput:
    serialized_named_tensors: list[str]
    """One base64 string per engine TP rank (MultiprocessingSerializer output)."""
    load_format: Optional[str] = None
    flush_cache: bool = True
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    selector: Literal["target", "draft", "all"] = "all"
    torch_empty_cache: bool = False


@dataclass
class UpdateWeightFromDiskReqInput:
    model_path: str
    load_format: Optional[str] = None
    abort_all_requests: bool = False
    weight_version: Optional[str] = None
    is_async: bool = False
    torch_empty_cache: bool = False
    keep_pause: bool = False
    recapture_cuda_graph: bool = False
    token_step: int = 0
    flush_cache: bool = True


@dataclass
class BeginWeightUpdateReqInput:
    selector: Literal["target", "draft", "all"] = "all"


@dataclass
class EndWeightUpdateReqInput:
    pass


@dataclass
class GetWeightsByNameReqInput:
    name: str
    truncate_size: int = 100


@dataclass
class MemoryOccupationReqInput:
    """Body of both /release_memory_occupation and /resume_memory_occupation (tags: GPU_MEMORY_TYPES)."""

    tags: Optional[list[str]] = None


@dataclass
class PauseGenerationReqInput:
    mode: Literal["abort", "retract", "in_place"] = "abort"


@dataclass
class ContinueGenerationReqInput:
    torch_empty_cache: bool = True


def to_json(req: Any) -> dict:
    """Request body for ``requests``/``aiohttp`` (``None`` optionals are sent as null, as SGLang accepts)."""
    return _body(req)


@dataclass
class GenerateOutput:
    """One generated sequence, parsed from a /generate output dict."""

    text: str
    output_ids: list[int]
    logprobs: list[float] = field(default_factory=list)
    finish_type: str = "stop"
    """stop, length or abort."""
    prompt_tokens: int = 0
    weight_version: Optional[str] = None

    @classmethod
    def from_json(cls, out: dict) -> "GenerateOutput":
        meta = out.get("meta_info", {})
        finish = meta.get("finish_reason") or {}
        lps = meta.get("output_token_logprobs") or []
        ids = out.get("output_ids")
        if ids is None:  # older servers: ids only through the logprob triples
            ids = [int(t[1]) for t in lps]
        return cls(
            text=out.get("text", ""),
            output_ids=list(ids),
            logprobs=[float(t[0]) for t in lps],
            finish_type=finish.get("type", "stop") if isinstance(finish, dict) else str(finish),
            prompt_tokens=int(meta.get("prompt_tokens", 0)),
            weight_version=meta.get("weight_version"),
        )
