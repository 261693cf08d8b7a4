"""Local generation behind the CPU stand-in server: transformers' Qwen2.5-VL with a KV cache.

Does what an SGLang engine does for one request, with the same semantics where the trainer can
see them: image placeholders expanded by the Qwen2.5-VL processor rules (``smart_resize`` with the
server's min/max pixels), n samples per prompt, ``log_softmax(logits / T)`` log-probs of the
sampled tokens (SGLang 0.5.23's default), stop tokens / strings, finish reasons, and weights
addressed by their Hugging Face checkpoint names (``model.layers.*``, ``visual.*``, ``lm_head.*``).
Requests with the same sampling parameters are decoded together in one left-padded batch (the
server queues them while a batch runs); this is a correctness stand-in, not a fast server.
"""

from __future__ import annotations

import base64
import collections
import logging
import os
import threading
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence
from urllib.parse import unquote, urlparse

import torch

from megatron_mmr1.rollout.protocol import SamplingParams
from megatron_mmr1.utils.hf_names import to_hub, to_layout

logger = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"


class EngineError(ValueError):
    """A request the engine cannot serve (answered with HTTP 400)."""


@dataclass
class GenRequest:
    """One /generate prompt after encoding: prompt ids with expanded image pads, its vision tensors."""

    ids: list[int]
    pixel_values: Optional[torch.Tensor]
    grid_thw: Optional[torch.Tensor]
    sp: SamplingParams
    return_logprob: bool
    rid: str


def is_greedy(sp: SamplingParams) -> bool:
    return sp.temperature <= 1e-5 or sp.top_k == 1


def batch_key(sp: SamplingParams) -> tuple:
    """Requests decode in one batch only when everything that shapes their decoding is equal."""
    greedy = is_greedy(sp)
    return (greedy, None if greedy else (float(sp.temperature), float(sp.top_p), sp.top_k),
            int(sp.max_new_tokens), tuple(sorted(sp.stop_token_ids or [])), tuple(sp.stop or []))


class _RowSampler:
    """Samples every row with its own generator and hands ``generate`` (run greedy) the choice as the
    only finite logit: temperature, then top-k, then top-p, as SGLang's sampler orders them."""

    def __init__(self, gens: list[torch.Generator], temperature: float, top_p: float, top_k: Optional[int]):
        self.gens, self.temperature, self.top_p = gens, temperature, top_p
        self.top_k = int(top_k) if top_k is not None and top_k > 0 else None

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        logits = scores.float() / self.temperature
        if self.top_k is not None and self.top_k < logits.shape[-1]:
            kth = logits.topk(self.top_k, dim=-1).values[:, -1:]
            logits = logits.masked_fill(logits < kth, float("-inf"))
        probs = torch.softmax(logits, dim=-1)
        if self.top_p < 1.0:
            sorted_p, order = probs.sort(dim=-1, descending=True)
            sorted_p = sorted_p.masked_fill(sorted_p.cumsum(-1) - sorted_p > self.top_p, 0.0)
            probs = torch.zeros_like(probs).scatter_(-1, order, sorted_p)
        # inverse-CDF draw: one uniform per row from the row's own generator (a per-row multinomial call
        # over the vocabulary was most of the stand-in's sampling time)
        u = torch.cat([torch.rand(1, generator=g, dtype=torch.float64) for g in self.gens])
        cdf = probs.double().cumsum(-1)
        # first token whose cumulative probability exceeds u: never one of probability 0 (its cdf step is 0)
        choice = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).clamp_(max=probs.shape[-1] - 1)
        return torch.full_like(scores, float("-inf")).scatter_(-1, choice, 0.0)


def checkpoint_to_module_name(name: str) -> str:
    """HF checkpoint name (either layout) -> transformers>=5 module name of Qwen2_5_VLForConditionalGeneration."""
    return to_layout(to_hub(name), "nested")


IMAGE_PATH_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".gif")
"""SGLang's ``image_extension_names``: a string ending in one is read as a file path."""


def decode_image_data(item: Any) -> Any:
    """SGLang ``image_data`` item -> something the image processor opens (path or bytes).

    SGLang 0.5.23's ``load_image`` rules: ``file://``, a name ending in an image suffix, or a string
    starting with ``/`` is a file (so raw base64 of a JPEG, ``/9j/...``, is a missing file there
    and refused here); ``data:...;base64,`` and other strings are base64.
    """
    if isinstance(item, dict):
        return item
    if not isinstance(item, str):
        raise EngineError(f"image_data item of type {type(item).__name__} is not supported")
    if item.startswith(("http://", "https://")):
        raise EngineError("image URLs are not fetched by the stand-in server; send base64 or a path")
    if item.startswith("file://"):
        item = unquote(urlparse(item).path)
    if item.startswith("/") or item.lower().endswith(IMAGE_PATH_SUFFIXES):
        if not os.path.isfile(item):
            raise EngineError(f"image_data item is read as a path, and no such file exists: {item[:40]!r}")
        return item
    try:
        return base64.b64decode(item.split(",", 1)[1] if item.startswith("data:") else item, validate=True)
    except Exception:
        raise EngineError(f"image_data item is neither a file nor base64: {item[:40]!r}...") from None


class LocalEngine:
    """A Qwen2.5-VL checkpoint directory loaded with transformers, serving SGLang-style requests."""

    def __init__(
        self,
        model_path: str,
        dtype: torch.dtype = torch.float32,
        min_pixels: Optional[int] = None,
        max_pixels: Optional[int] = None,
        seed: int = 0,
    ):
        from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

        from megatron_mmr1.data.vision import PillowImageProcessor, VisionSpec

        self.model_path = model_path
        self.dtype = dtype
        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model_path, dtype=dtype).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)
        spec = VisionSpec()
        if min_pixels is not None:
            spec.min_pixels = min_pixels
        if max_pixels is not None:
            spec.max_pixels = max_pixels
        self.image_processor = PillowImageProcessor(spec)
        self.image_token_id = int(self.model.config.image_token_id)
        eos = self.model.generation_config.eos_token_id or self.model.config.get_text_config().eos_token_id
        self.eos_token_ids = set(eos if isinstance(eos, list) else [eos]) - {None}
        if self.tokenizer.eos_token_id is not None:
            self.eos_token_ids.add(self.tokenizer.eos_token_id)
        self.pad_token_id = self.tokenizer.pad_token_id
        if self.pad_token_id is None:
            self.pad_token_id = min(self.eos_token_ids)
        self.weights_released = False
        self.abort_event = threading.Event()
        self.hold_event = threading.Event()
        """Set while generation is paused in place: running requests wait at their next token."""
        self._gen = torch.Generator().manual_seed(seed)
        self._params = dict(self.model.named_parameters())
        self._shapes = {k: tuple(p.shape) for k, p in self._params.items()}
        self._shape_lists = {k: list(v) for k, v in self._shapes.items()}
        self._keys: dict[str, str] = {}
        """Checkpoint name -> module name, cached (a weight update looks up every name)."""
        self._arena: dict[str, tuple[int, int]] = {}
        """Module name -> (arena id, byte offset) for parameters laid out back to back in one uint8
        arena, in the order a flattened bucket sent them (see ``receive_target``)."""
        self._arenas: dict[int, torch.Tensor] = {}

    # ------------------------------------------------------------------ prompts
    def encode(self, text: Optional[str], input_ids: Optional[list[int]], images: Sequence[Any]):
        """Prompt ids with every image pad expanded to its token count, plus the vision tensors."""
        if input_ids is None:
            if text is None:
                raise EngineError("one of text / input_ids is required")
            input_ids = self.tokenizer(text, add_special_tokens=False).input_ids
        ids = list(input_ids)
        if not images:
            if self.image_token_id in ids:
                raise EngineError("prompt has image pads but no image_data")
            return ids, None, None
        processed = self.image_processor([decode_image_data(x) for x in images])
        counts = processed.num_image_tokens(self.image_processor.spec.merge_size)
        n_pads = ids.count(self.image_token_id)
        if n_pads == sum(counts):
            return ids, processed.pixel_values, processed.image_grid_thw  # already expanded
        if n_pads != len(images):
            raise EngineError(f"prompt has {n_pads} {IMAGE_PAD} tokens for {len(images)} images")
        out, k = [], 0
        for t in ids:
            if t == self.image_token_id:
                out += [t] * counts[k]
                k += 1
            else:
                out.append(t)
        return out, processed.pixel_values, processed.image_grid_thw

    # ------------------------------------------------------------------ generation
    def prepare(self, text: Optional[str], input_ids: Optional[list[int]], images: Sequence[Any],
                sp: SamplingParams, return_logprob: bool, rid: str) -> "GenRequest":
        """One request, encoded: errors here are this request's alone (the batch it would join goes on)."""
        ids, pixel_values, grid_thw = self.encode(text, input_ids, images)
        return GenRequest(ids, pixel_values, grid_thw, sp, return_logprob, rid)

    @torch.no_grad()
    def generate(
        self,
        text: Optional[str],
        input_ids: Optional[list[int]],
        images: Sequence[Any],
        sp: SamplingParams,
        return_logprob: bool,
        rid: str,
        weight_version: str,
    ) -> list[dict]:
        """The ``sp.n`` outputs of one prompt, as SGLang's /generate output dicts."""
        return self.generate_batch([self.prepare(text, input_ids, images, sp, return_logprob, rid)], weight_version)[0]

    @torch.no_grad()
    def generate_batch(self, reqs: Sequence["GenRequest"], weight_version: str) -> list[list[dict]]:
        """Several requests of one :func:`batch_key` decoded together (their ``n`` samples each are rows of
        one left-padded batch), as SGLang's scheduler batches running requests. Every row samples with its
        own generator, seeded from its request's ``sampling_seed`` and its sample index, so a request's
        tokens do not depend on what it was batched with."""
        from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

        if self.weights_released:
            raise EngineError("weights are released (/release_memory_occupation); resume them first")
        keys = {batch_key(r.sp) for r in reqs}
        if len(keys) != 1:
            raise EngineError(f"one batch needs one set of sampling parameters, got {len(keys)}")
        sp = reqs[0].sp
        rows = [(r, i) for r in reqs for i in range(max(1, int(r.sp.n)))]
        width = max(len(r.ids) for r in reqs)
        x = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(x)
        for j, (r, _) in enumerate(rows):  # left padding: every row's prompt ends at the same column
            x[j, width - len(r.ids):] = torch.tensor(r.ids)
            mask[j, width - len(r.ids):] = 1
        kwargs: dict[str, Any] = {"input_ids": x, "attention_mask": mask}
        with_images = [r for r, _ in rows if r.pixel_values is not None]
        if with_images:
            kwargs["pixel_values"] = torch.cat([r.pixel_values.to(self.dtype) for r in with_images])
            kwargs["image_grid_thw"] = torch.cat([r.grid_thw for r in with_images])
            # transformers 5 computes Qwen2.5-VL's 3-D M-RoPE positions only when told which tokens are
            # image tokens; without this every image patch gets a plain 1-D text position (SGLang and the
            # trainer use the 3-D ones).
            kwargs["mm_token_type_ids"] = (x == self.image_token_id).int()
        greedy = is_greedy(sp)
        stop_ids = set(self.eos_token_ids) | set(sp.stop_token_ids or [])
        gc = GenerationConfig(
            max_new_tokens=int(sp.max_new_tokens),
            do_sample=False,  # sampling happens in _RowSampler
            eos_token_id=sorted(stop_ids),
            pad_token_id=self.pad_token_id,
            stop_strings=list(sp.stop) if sp.stop else None,
            output_logits=True,
            return_dict_in_generate=True,
        )
        processors = LogitsProcessorList()
        if not greedy:
            gens = [torch.Generator().manual_seed(self._row_seed(r, i)) for r, i in rows]
            processors.append(_RowSampler(gens, float(sp.temperature), float(sp.top_p), sp.top_k))
        abort, hold = self.abort_event, self.hold_event

        class _Abort(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                while hold.is_set() and not abort.is_set():  # paused in place: frozen, not finished
                    abort.wait(0.01)
                return torch.full((input_ids.shape[0],), abort.is_set(), dtype=torch.bool)

        out = self.model.generate(
            **kwargs,
            generation_config=gc,
            logits_processor=processors,
            stopping_criteria=StoppingCriteriaList([_Abort()]),
            tokenizer=self.tokenizer if sp.stop else None,
        )
        new = out.sequences[:, width:]  # (rows, T)
        temp = 1.0 if greedy else float(sp.temperature)
        logps = None
        if any(r.return_logprob for r in reqs) and out.logits:
            step_logits = torch.stack(out.logits, dim=1).float()  # (rows, T, V) raw logits
            logps = torch.log_softmax(step_logits / temp, dim=-1).gather(-1, new[:, : step_logits.shape[1], None])[..., 0]
        results: list[list[dict]] = [[] for _ in reqs]
        slot = {id(r): k for k, r in enumerate(reqs)}
        for j, (r, i) in enumerate(rows):
            lps = None if logps is None or not r.return_logprob else logps[j].tolist()
            results[slot[id(r)]].append(self._output(
                new[j].tolist(), lps, r.sp, len(r.ids), f"{r.rid}-{i}" if int(r.sp.n) > 1 else r.rid,
                weight_version, aborted=abort.is_set()))
        return results

    def _row_seed(self, req: "GenRequest", i: int) -> int:
        seed = req.sp.sampling_seed
        if seed is None:
            seed = int(torch.randint(0, 2**62, (1,), generator=self._gen))
        return (int(seed) * 1_000_003 + i) % (2**63 - 1)

    def _output(self, toks, lps, sp, prompt_len, rid, weight_version, aborted) -> dict:
        stop_ids = set(self.eos_token_ids) | set(sp.stop_token_ids or [])
        finish: dict[str, Any] = {"type": "length", "length": len(toks)}
        cut = len(toks)
        for j, t in enumerate(toks):
            if t in stop_ids:
                cut, finish = j + 1, {"type": "stop", "matched": int(t)}
                break
        toks = toks[:cut]
        text = self.tokenizer.decode(toks, skip_special_tokens=sp.skip_special_tokens)
        if finish["type"] == "length" and sp.stop:
            for s in sp.stop:
                pos = text.find(s)
                if pos >= 0:
                    finish = {"type": "stop", "matched": s}
                    if not sp.no_stop_trim:
                        text = text[:pos]
                    break
        if aborted and finish["type"] == "length" and len(toks) < sp.max_new_tokens:
            finish = {"type": "abort", "message": "Abort before finishing (pause_generation)."}
        meta: dict[str, Any] = {
            "id": rid,
            "finish_reason": finish,
            "prompt_tokens": prompt_len,
            "completion_tokens": len(toks),
            "cached_tokens": 0,
            "weight_version": weight_version,
        }
        if lps is not None:
            meta["output_token_logprobs"] = [[float(lp), int(t), None] for lp, t in zip(lps[:cut], toks)]
            meta["output_token_logprobs_length"] = len(toks)
        return {"text": text, "output_ids": toks, "meta_info": meta}

    # ------------------------------------------------------------------ weights
    def _key(self, name: str) -> str:
        key = self._keys.get(name)
        if key is None:
            key = self._keys[name] = checkpoint_to_module_name(name)
        return key

    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy tensors (HF checkpoint names) into the model; unknown names or shapes raise."""
        if self.weights_released:
            raise EngineError("weights are released (/release_memory_occupation); resume them first")
        count = 0
        with torch.no_grad():
            for name, tensor in named_tensors:
                key = self._check([name], [tensor.shape])[0]
                self._params[key].data.copy_(tensor)  # copy_ casts the dtype
                count += 1
        return count

    def _check(self, names: Sequence[str], shapes: Sequence[Sequence[int]]) -> list[str]:
        """Module names of ``names``; unknown names or shapes raise."""
        keys = [self._key(n) for n in names]
        want = self._shape_lists
        for name, key, shape in zip(names, keys, shapes):
            w = want.get(key)
            if w != shape and w != list(shape):  # shapes come as JSON lists or torch.Size
                if w is None:
                    raise EngineError(f"unknown parameter {name!r}")
                raise EngineError(f"{name}: shape {tuple(shape)} != model's {tuple(w)}")
        return keys

    def _in_order(self, keys: Sequence[str]) -> bool:
        """Do these parameters lie back to back, in this order, in one arena?"""
        first = self._arena.get(keys[0])
        if first is None:
            return False
        aid, off = first
        for key in keys:
            if self._arena.get(key) != (aid, off):
                return False
            off += self._nbytes(key)
        return True

    def _nbytes(self, key: str) -> int:
        p = self._params[key]
        return p.numel() * p.element_size()

    def _arrange(self, keys: Sequence[str]) -> None:
        """Move these parameters into one new arena, back to back in this order (one copy of them)."""
        sizes = [self._nbytes(k) for k in keys]
        arena = torch.empty(sum(sizes), dtype=torch.uint8)
        aid, off = id(arena), 0
        with torch.no_grad():
            for key, size in zip(keys, sizes):
                p = self._params[key]
                view = arena[off:off + size].view(p.dtype).view(p.shape)
                view.copy_(p.data)
                p.data = view
                self._arena[key] = (aid, off)
                off += size
        self._arenas[aid] = arena
        live = {a for a, _ in self._arena.values()}
        for a in [a for a in self._arenas if a not in live]:  # arenas whose parameters all moved on
            del self._arenas[a]

    def receive_target(self, names: Sequence[str], dtypes: Sequence[torch.dtype],
                       shapes: Sequence[Sequence[int]]) -> Optional[torch.Tensor]:
        """Where a flattened bucket can be received straight into the parameters: a uint8 view of
        the model's memory holding exactly these parameters back to back, in this order; None when
        the bucket cannot land there (a name twice, a dtype other than the model's: the caller
        receives into a buffer and ``load_flat`` copies). Unknown names or shapes raise.

        The first bucket of a given order moves its parameters into one arena in that order (one
        copy of their values); later updates in the same order - every update of a trainer - then
        need no copy at all. Generation is paused meanwhile, as for any weight update.
        """
        keys = self._check(names, shapes)
        if not keys or self.weights_released or len(set(keys)) != len(keys):
            return None
        if any(self._params[k].dtype != dt for k, dt in zip(keys, dtypes)):
            return None
        if not self._in_order(keys):
            self._arrange(keys)
        aid, off = self._arena[keys[0]]
        return self._arenas[aid][off:off + sum(self._nbytes(k) for k in keys)]

    def receive_targets(self, names: Sequence[str], dtypes: Sequence[torch.dtype],
                        shapes: Sequence[Sequence[int]]) -> list[Optional[torch.Tensor]]:
        """Per tensor of a tensor-by-tensor update: the parameter itself when the tensor can be
        received straight into it (its name once in the request, the model's dtype), else None
        (received into a new tensor and loaded with ``load_weights``). Unknown names or shapes raise."""
        keys = self._check(names, shapes)
        if self.weights_released:
            return [None] * len(keys)
        counts = collections.Counter(keys)
        out: list[Optional[torch.Tensor]] = []
        for key, dt in zip(keys, dtypes):
            p = self._params[key].data
            out.append(p if counts[key] == 1 and p.dtype == dt and p.is_contiguous() else None)
        return out

    def load_flat(self, names: Sequence[str], dtypes: Sequence[torch.dtype], shapes: Sequence[Sequence[int]],
                  flat: torch.Tensor) -> int:
        """Load a received flattened bucket (uint8, tensors back to back) into the parameters.

        The bucket's parameters are arranged in an arena in the order of their first appearance
        (once), so runs of tensors in that order are copied as one block each; a tensor of another
        dtype than the model's is copied (and cast) on its own.
        """
        keys = self._check(names, shapes)
        if not keys:
            return 0
        if self.weights_released:
            raise EngineError("weights are released (/release_memory_occupation); resume them first")
        same = [self._params[k].dtype == dt for k, dt in zip(keys, dtypes)]
        order = list(dict.fromkeys(k for k, ok in zip(keys, same) if ok))
        if order and not self._in_order(order):
            self._arrange(order)
        runs: list[list] = []  # [arena id, dst offset, src offset, bytes]
        src = 0
        with torch.no_grad():
            for key, dt, ok in zip(keys, dtypes, same):
                p = self._params[key]
                size = p.numel() * dt.itemsize
                if ok:
                    aid, dst = self._arena[key]
                    last = runs[-1] if runs else None
                    if last is not None and last[0] == aid and last[1] + last[3] == dst and last[2] + last[3] == src:
                        last[3] += size
                    else:
                        runs.append([aid, dst, src, size])
                else:
                    p.data.copy_(flat[src:src + size].view(dt).view(p.shape))
                src += size
            for aid, dst, s0, size in runs:
                self._arenas[aid][dst:dst + size].copy_(flat[s0:s0 + size])
        return len(keys)

    def load_from_disk(self, model_path: str) -> int:
        """Read every ``*.safetensors`` file of a checkpoint directory into the model."""
        from safetensors.torch import load_file

        files = sorted(f for f in os.listdir(model_path) if f.endswith(".safetensors"))
        if not files:
            raise EngineError(f"no .safetensors files in {model_path}")
        n = 0
        for f in files:
            n += self.load_weights(load_file(os.path.join(model_path, f)).items())
        self.model_path = model_path
        return n

    def get_weights_by_name(self, name: str, truncate_size: int = 100) -> list:
        """SGLang's answer: the parameter as float lists, first ``truncate_size`` rows (or values)."""
        p = self._params.get(self._key(name))
        if p is None:
            raise EngineError(f"unknown parameter {name!r}")
        return p.detach().float().cpu().numpy().tolist()[:truncate_size]

    def parameter_names(self) -> list[str]:
        return [to_hub(n) for n in self._params]

    def release_weights(self) -> None:
        """Colocated mode: give the weights' memory back (contents are lost, as with SGLang's saver)."""
        for p in self._params.values():
            p.data = torch.empty(0, dtype=p.dtype)
        self._arena.clear()
        self._arenas.clear()
        self.weights_released = True

    def resume_weights(self) -> None:
        """Memory back, zero-filled: the trainer pushes the weights next (as slime does)."""
        for key, p in self._params.items():
            p.data = torch.zeros(self._shapes[key], dtype=self.dtype)
        self._arena.clear()
        self._arenas.clear()
        self.weights_released = False

    @property
    def context_len(self) -> int:
        return int(getattr(self.model.config.get_text_config(), "max_position_embeddings", 32768))
