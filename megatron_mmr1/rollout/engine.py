"""Local generation behind the CPU stand-in server: transformers' Qwen2.5-VL with a KV cache.

Does what an SGLang engine does for one request, with the same semantics where the trainer can
see them: image placeholders expanded by the Qwen2.5-VL processor rules (``smart_resize`` with the
server's min/max pixels), n samples per prompt, ``log_softmax(logits / T)`` log-probs of the
sampled tokens (SGLang 0.5.23's default), stop tokens / strings, finish reasons, and weights
addressed by their Hugging Face checkpoint names (``model.layers.*``, ``visual.*``, ``lm_head.*``).
Requests run one at a time; this is a correctness stand-in, not a fast server.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import threading
from typing import Any, Iterable, Optional, Sequence

import torch

from megatron_mmr1.rollout.protocol import SamplingParams
from megatron_mmr1.utils.hf_names import to_hub, to_layout

logger = logging.getLogger(__name__)

IMAGE_PAD = "<|image_pad|>"


class EngineError(ValueError):
    """A request the engine cannot serve (answered with HTTP 400)."""


def checkpoint_to_module_name(name: str) -> str:
    """HF checkpoint name (either layout) -> transformers>=5 module name of Qwen2_5_VLForConditionalGeneration."""
    return to_layout(to_hub(name), "nested")


def decode_image_data(item: Any) -> Any:
    """SGLang ``image_data`` item -> something the image processor opens (path or bytes)."""
    if isinstance(item, dict):
        return item
    if not isinstance(item, str):
        raise EngineError(f"image_data item of type {type(item).__name__} is not supported")
    if item.startswith("data:"):
        return base64.b64decode(item.split(",", 1)[1])
    if item.startswith(("http://", "https://")):
        raise EngineError("image URLs are not fetched by the stand-in server; send base64 or a path")
    if os.path.exists(item):
        return item
    try:
        return base64.b64decode(item, validate=True)
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
        from transformers import GenerationConfig, StoppingCriteria, StoppingCriteriaList

        if self.weights_released:
            raise EngineError("weights are released (/release_memory_occupation); resume them first")
        ids, pixel_values, grid_thw = self.encode(text, input_ids, images)
        n = max(1, int(sp.n))
        x = torch.tensor([ids] * n, dtype=torch.long)  # (n, L): the n samples share the prompt
        kwargs: dict[str, Any] = {"input_ids": x, "attention_mask": torch.ones_like(x)}
        if pixel_values is not None:
            kwargs["pixel_values"] = pixel_values.to(self.dtype).repeat(n, 1)
            kwargs["image_grid_thw"] = grid_thw.repeat(n, 1)
            # transformers 5 computes Qwen2.5-VL's 3-D M-RoPE positions only when told which tokens are
            # image tokens; without this every image patch gets a plain 1-D text position (SGLang and the
            # trainer use the 3-D ones).
            kwargs["mm_token_type_ids"] = (x == self.image_token_id).int()
        greedy = sp.temperature <= 1e-5 or sp.top_k == 1
        stop_ids = set(self.eos_token_ids) | set(sp.stop_token_ids or [])
        gc = GenerationConfig(
            max_new_tokens=int(sp.max_new_tokens),
            do_sample=not greedy,
            temperature=None if greedy else float(sp.temperature),
            top_p=None if greedy else float(sp.top_p),
            top_k=None if greedy or sp.top_k is None or sp.top_k <= 0 else int(sp.top_k),
            eos_token_id=sorted(stop_ids),
            pad_token_id=self.pad_token_id,
            stop_strings=list(sp.stop) if sp.stop else None,
            output_logits=True,
            return_dict_in_generate=True,
        )
        abort, hold = self.abort_event, self.hold_event

        class _Abort(StoppingCriteria):
            def __call__(self, input_ids, scores, **kw):
                while hold.is_set() and not abort.is_set():  # paused in place: frozen, not finished
                    abort.wait(0.01)
                return torch.full((input_ids.shape[0],), abort.is_set(), dtype=torch.bool)

        seed = sp.sampling_seed
        rng_state = torch.get_rng_state()
        torch.manual_seed(int(seed) if seed is not None else int(torch.randint(0, 2**62, (1,), generator=self._gen)))
        try:
            out = self.model.generate(
                **kwargs,
                generation_config=gc,
                stopping_criteria=StoppingCriteriaList([_Abort()]),
                tokenizer=self.tokenizer if sp.stop else None,
            )
        finally:
            torch.set_rng_state(rng_state)
        new = out.sequences[:, len(ids):]  # (n, T)
        temp = 1.0 if greedy else float(sp.temperature)
        logps = None
        if return_logprob and out.logits:
            step_logits = torch.stack(out.logits, dim=1).float()  # (n, T, V) raw logits
            logps = torch.log_softmax(step_logits / temp, dim=-1).gather(-1, new[:, : step_logits.shape[1], None])[..., 0]
        return [
            self._output(new[i].tolist(), None if logps is None else logps[i].tolist(), sp, len(ids),
                         f"{rid}-{i}" if n > 1 else rid, weight_version, aborted=abort.is_set())
            for i in range(n)
        ]

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
    def load_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> int:
        """Copy tensors (HF checkpoint names) into the model; unknown names or shapes raise."""
        count = 0
        for name, tensor in named_tensors:
            key = checkpoint_to_module_name(name)
            p = self._params.get(key)
            if p is None:
                raise EngineError(f"unknown parameter {name!r}")
            if tuple(p.shape) != tuple(tensor.shape):
                raise EngineError(f"{name}: shape {tuple(tensor.shape)} != model's {tuple(p.shape)}")
            with torch.no_grad():
                p.data.copy_(tensor.to(p.dtype))
            count += 1
        return count

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
        p = self._params.get(checkpoint_to_module_name(name))
        if p is None:
            raise EngineError(f"unknown parameter {name!r}")
        return p.detach().float().cpu().numpy().tolist()[:truncate_size]

    def parameter_names(self) -> list[str]:
        return [to_hub(n) for n in self._params]

    def release_weights(self) -> None:
        """Colocated mode: give the weights' memory back (contents are lost, as with SGLang's saver)."""
        for p in self._params.values():
            p.data = torch.empty(0, dtype=p.dtype)
        self.weights_released = True

    def resume_weights(self) -> None:
        """Memory back, zero-filled: the trainer pushes the weights next (as slime does)."""
        for key, p in self._params.items():
            p.data = torch.zeros(self._shapes[key], dtype=self.dtype)
        self.weights_released = False

    @property
    def context_len(self) -> int:
        return int(getattr(self.model.config.get_text_config(), "max_position_embeddings", 32768))


def image_to_base64(img_or_path: Any) -> str:
    """Encode an image (path, bytes or PIL) as SGLang's base64 ``image_data`` string."""
    if isinstance(img_or_path, (bytes, bytearray)):
        raw = bytes(img_or_path)
    elif isinstance(img_or_path, (str, os.PathLike)):
        with open(img_or_path, "rb") as f:
            raw = f.read()
    else:
        buf = io.BytesIO()
        img_or_path.save(buf, format="PNG")
        raw = buf.getvalue()
    return base64.b64encode(raw).decode()
