"""Checkpoint I/O: Hugging Face safetensors directories and megatron dist checkpoints.

- :class:`HFCheckpoint` opens a HF Qwen2.5-VL directory (config.json + safetensors, sharded or not,
  either key layout) and reads tensor *slices*, so each rank loads only its TP/PP shard.
- :func:`load_hf_weights` fills any TP/PP model from it; :func:`save_hf` writes one back, streaming
  tensors into ~``max_shard_bytes`` safetensors files.
- :func:`save_dist` / :func:`load_dist` wrap ``megatron.core.dist_checkpointing`` (resharding on load),
  and ``mmr1_model.json`` + ``hf_files/`` next to the shards keep the HF config and tokenizer so
  the checkpoint can go back to HF format.
Every problem with a directory is one :class:`CheckpointError` that names the path.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Iterable, Optional

import torch
from torch import Tensor

from megatron_mmr1.models import hf_adapter, unwrap
from megatron_mmr1.utils.logging import get_logger, progress

logger = get_logger(__name__)

META_FILE = "mmr1_model.json"
HF_FILES_DIR = "hf_files"
# Non-weight files of a HF checkpoint that travel with the model (tokenizer, processor, chat template).
AUX_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json", "vocab.json",
             "merges.txt", "special_tokens_map.json", "added_tokens.json", "chat_template.json",
             "chat_template.jinja", "preprocessor_config.json", "video_preprocessor_config.json",
             "processor_config.json", "hf_processor.py")
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def hf_dtype(config: dict) -> torch.dtype:
    """The weights' dtype declared by a HF config.json (float32 when it says nothing)."""
    raw = config.get("torch_dtype") or config.get("dtype") or (config.get("text_config") or {}).get("dtype")
    return _DTYPES.get(str(raw or "float32").replace("torch.", ""), torch.float32)


class CheckpointError(ValueError):
    """A checkpoint directory cannot be used; the message names the path (and tensor) and the problem.

    ``rank_specific``: only this rank can see it (a tensor of its own TP/PP shard), so each failing rank
    reports it; otherwise every rank finds the same problem and rank 0 speaks for all.
    """

    def __init__(self, message: str, rank_specific: bool = False):
        super().__init__(message)
        self.rank_specific = rank_specific


def _brief(e: BaseException) -> str:
    """``Type: first line`` of an exception from a library, for one-line reports."""
    first = (str(e).strip().splitlines() or [""])[0]
    return f"{type(e).__name__}: {first[:300]}"


def _safe_open(path: Path):
    """safetensors handle; a truncated or foreign file is a CheckpointError naming it (safetensors'
    own error does not say which file)."""
    from safetensors import safe_open

    try:
        return safe_open(str(path), "pt")
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable safetensors file ({_brief(e)})") from None


class HFCheckpoint:
    """Read-only view of a Hugging Face Qwen2.5-VL checkpoint directory."""

    def __init__(self, path: str | Path):
        from megatron_mmr1.models.presets import read_hf_config

        self.path = Path(path)
        try:
            self.dims = read_hf_config(self.path)
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(str(e)) from None
        self.config: dict = self.dims["hf_config"]
        self.weight_map = self._weight_map()  # tensor name (as stored) -> file
        self.layout = hf_adapter.detect_layout(list(self.weight_map))
        self._hub_to_stored = {hf_adapter.to_hub(n): n for n in self.weight_map}
        self._handles: dict[str, Any] = {}

    def _weight_map(self) -> dict[str, str]:
        index = self.path / "model.safetensors.index.json"
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError) as e:
                raise CheckpointError(f"{index}: not a safetensors index ({e})") from None
            missing = sorted({f for f in weight_map.values() if not (self.path / f).is_file()})
            if missing:
                raise CheckpointError(f"{self.path}: shard file(s) {', '.join(missing)} listed in "
                                      f"{index.name} do not exist")
            for f in sorted(set(weight_map.values())):  # headers only: a truncated shard fails here, named
                with _safe_open(self.path / f) as h:
                    absent = sorted(set(k for k, v in weight_map.items() if v == f) - set(h.keys()))
                if absent:
                    raise CheckpointError(f"{self.path / f}: tensor {absent[0]} listed in {index.name} is not in "
                                          f"this file ({len(absent)} missing)")
            return dict(weight_map)
        files = sorted(self.path.glob("*.safetensors"))
        if not files:
            raise CheckpointError(f"{self.path}: no *.safetensors weight files (and no model.safetensors.index.json)")
        weight_map = {}
        for f in files:
            with _safe_open(f) as h:
                weight_map.update({k: f.name for k in h.keys()})
        return weight_map

    @property
    def dtype(self) -> torch.dtype:
        return hf_dtype(self.config)

    def has(self, hub_name: str) -> bool:
        return hub_name in self._hub_to_stored

    def _handle(self, file: str):
        if file not in self._handles:
            self._handles[file] = _safe_open(self.path / file)
        return self._handles[file]

    def read(self, hub_name: str, dim: Optional[int] = None, start: int = 0, stop: int = 0) -> Tensor:
        """A whole tensor, or rows/columns [start, stop) along ``dim``, read without loading the rest."""
        stored = self._hub_to_stored.get(hub_name)
        if stored is None:
            raise CheckpointError(f"{self.path}: tensor {hf_adapter.to_layout(hub_name, self.layout)} is missing "
                                  "from the checkpoint's safetensors files", rank_specific=True)
        file = self.path / self.weight_map[stored]
        handle = self._handle(self.weight_map[stored])
        try:
            sl = handle.get_slice(stored)
            if dim is None:
                return sl[:]
            return sl[(slice(None),) * dim + (slice(start, stop),)]
        except Exception as e:  # the index names a tensor this file lacks, or its bytes are bad
            raise CheckpointError(f"{file}: tensor {stored} cannot be read ({_brief(e)})", rank_specific=True) from None

    def names(self) -> list[str]:
        """Hub names of all tensors."""
        return list(self._hub_to_stored)


@torch.no_grad()
def load_hf_weights(model_chunks: list, hf: str | Path | HFCheckpoint) -> None:
    """Copy this rank's TP/PP shard of every parameter from a HF checkpoint (any TP/PP)."""
    from megatron.core import parallel_state as mpu

    ckpt = hf if isinstance(hf, HFCheckpoint) else HFCheckpoint(hf)
    tp, tp_rank = mpu.get_tensor_model_parallel_world_size(), mpu.get_tensor_model_parallel_rank()
    for chunk in model_chunks:
        chunk = unwrap(chunk)
        params = dict(chunk.named_parameters())
        qkv = hf_adapter.qkv_shape(chunk)
        for m in hf_adapter.param_mappings(chunk):
            p = params[m.param]
            try:
                value = hf_adapter.shard_from_hf(m, ckpt.read, tuple(p.shape), tp, tp_rank, qkv)
            except (RuntimeError, ValueError) as e:
                if isinstance(e, CheckpointError):
                    raise
                raise CheckpointError(f"{ckpt.path}: {', '.join(m.hf)} do not fit {m.param} of shape "
                                      f"{tuple(p.shape)} (tp={tp}; {_brief(e)}); config.json and weights disagree",
                                      rank_specific=True) from None
            if tuple(value.shape) != tuple(p.shape):
                raise CheckpointError(f"{ckpt.path}: {', '.join(m.hf)} gives shape {tuple(value.shape)} for "
                                      f"{m.param} of shape {tuple(p.shape)} (tp={tp}); config.json and weights disagree",
                                      rank_specific=True)
            p.copy_(value.to(p.dtype))
    logger.info("loaded %s (tp rank %d/%d, pp rank %d/%d)", ckpt.path, tp_rank, tp,
                mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_world_size())


def write_hf_side_files(dst: Path, src: Optional[Path], config: Optional[dict]) -> None:
    """Copy the tokenizer / processor / config files of ``src`` (when given) into ``dst``; ``config``
    (when given) is written as config.json and wins over the copy."""
    if src is not None:
        for name in AUX_FILES:
            if (src / name).is_file():
                shutil.copy2(src / name, dst / name)
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def ensure_processor(dst: Path, min_pixels: int = 7056, max_pixels: int = 1048576) -> bool:
    """Write the project's image + text processor (``megatron_mmr1.models.hf_processor``) into an exported HF
    directory that has a tokenizer but no processor files, so that ``AutoProcessor`` loads it without
    torchvision (TRL, plain transformers scripts); a directory with its own processor keeps it.
    Returns whether it wrote one."""
    from megatron_mmr1.models.hf_processor import save_processor

    has_processor = any((dst / n).is_file() for n in ("processor_config.json", "preprocessor_config.json"))
    if has_processor or not (dst / "tokenizer_config.json").is_file():
        return False
    save_processor(dst, min_pixels=min_pixels, max_pixels=max_pixels)
    return True


def save_hf(named_tensors: Iterable[tuple[str, Tensor]], out_dir: str | Path, hf_files_from: Optional[Path] = None,
            config: Optional[dict] = None, max_shard_bytes: int = 5 * 1024**3, dtype: Optional[torch.dtype] = None,
            total: Optional[int] = None) -> Path:
    """Stream (hf_name, tensor) pairs into ``model-0000i-of-0000n.safetensors`` + index + config/tokenizer.

    Holds at most one shard (~max_shard_bytes) of tensors at a time. ``hf_files_from``: a directory whose
    tokenizer/processor/config files are copied; ``config``: config.json content (wins over the copy).
    """
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("model*.safetensors*"):
        old.unlink()
    write_hf_side_files(out, hf_files_from, config)
    ensure_processor(out)

    files: list[list[str]] = []
    weight_map: dict[str, str] = {}
    pending: dict[str, Tensor] = {}
    size = 0
    total_size = 0

    def flush():
        nonlocal pending, size
        if pending:
            name = f"model-{len(files) + 1:05d}.safetensors"  # renamed to -of-N once N is known
            save_file(pending, str(out / name), metadata={"format": "pt"})
            files.append(list(pending))
            pending, size = {}, 0

    for name, tensor in progress(named_tensors, desc="write HF shards", total=total):
        tensor = tensor.detach().to("cpu", dtype or tensor.dtype).contiguous().clone()
        nbytes = tensor.numel() * tensor.element_size()
        if pending and size + nbytes > max_shard_bytes:
            flush()
        if name in pending or name in weight_map:
            raise ValueError(f"tensor {name} written twice")
        pending[name] = tensor
        size += nbytes
        total_size += nbytes
    flush()
    n = len(files)
    for i, names in enumerate(files, start=1):
        final = "model.safetensors" if n == 1 else f"model-{i:05d}-of-{n:05d}.safetensors"
        (out / f"model-{i:05d}.safetensors").rename(out / final)
        weight_map.update({k: final for k in names})
    if n > 1:
        index = {"metadata": {"total_size": total_size}, "weight_map": dict(sorted(weight_map.items()))}
        (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    logger.info("wrote %d tensors (%.2f GB) in %d file(s) to %s", len(weight_map), total_size / 1e9, n, out)
    return out


# ---- megatron dist checkpoints -----------------------------------------------------------------------

def sharded_state_dict(model_chunks: list) -> dict:
    """This rank's sharded state dict: the chunk's own for one chunk, {"model<i>": ...} for virtual
    stages (megatron's convention; the checkpoint keys inside use global layer numbers either way)."""
    if len(model_chunks) == 1:
        return unwrap(model_chunks[0]).sharded_state_dict()
    return {f"model{i}": unwrap(c).sharded_state_dict() for i, c in enumerate(model_chunks)}


def save_dist(model_chunks: list, ckpt_dir: str | Path, hf_source: Optional[Path] = None,
              hf_config: Optional[dict] = None, dtype: Optional[torch.dtype] = None) -> None:
    """Collective: write a megatron dist checkpoint, then (rank 0) mmr1_model.json + hf_files/."""
    import torch.distributed as dist
    from megatron.core import dist_checkpointing

    ckpt = Path(ckpt_dir)
    ckpt.mkdir(parents=True, exist_ok=True)
    dist_checkpointing.save(sharded_state_dict(model_chunks), str(ckpt))
    if not dist.is_initialized() or dist.get_rank() == 0:
        write_meta(ckpt, hf_source, hf_config, dtype)
    if dist.is_initialized():
        dist.barrier()


def write_meta(ckpt: Path, hf_source: Optional[Path], hf_config: Optional[dict], dtype: Optional[torch.dtype]) -> None:
    files = ckpt / HF_FILES_DIR
    files.mkdir(exist_ok=True)
    write_hf_side_files(files, hf_source, hf_config)
    dtype_name = str(dtype or torch.float32).replace("torch.", "")
    (ckpt / META_FILE).write_text(json.dumps({"format": "megatron_mmr1/qwen2_5_vl", "hf_dtype": dtype_name,
                                              "hf_files": HF_FILES_DIR}, indent=2) + "\n")


def read_meta(ckpt_dir: str | Path) -> dict:
    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: megatron checkpoint directory does not exist")
    meta = ckpt / META_FILE
    if not meta.is_file():
        raise CheckpointError(f"{ckpt}: no {META_FILE} (not written by mmr1-convert/save_dist); pass --hf-config "
                              "with the model's Hugging Face config dir")
    try:
        out = json.loads(meta.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta}: not valid JSON ({e})") from None
    out["hf_files_dir"] = ckpt / out.get("hf_files", HF_FILES_DIR)
    out["dtype"] = _DTYPES.get(out.get("hf_dtype", "float32"), torch.float32)
    return out


def check_dist_checkpoint(ckpt_dir: str | Path, sharded: Optional[dict] = None) -> None:
    """What loading will need, checked before megatron reads a byte: the index (``.metadata``), every
    shard file it lists at its full length, and (given this rank's sharded state dict) each tensor's
    presence and global shape. Every rank finds the same problem, named with its file or tensor."""
    from torch.distributed.checkpoint import FileSystemReader
    from torch.distributed.checkpoint.metadata import TensorStorageMetadata

    ckpt = Path(ckpt_dir)
    if not (ckpt / "metadata.json").is_file():
        raise CheckpointError(f"{ckpt}: not a megatron dist checkpoint (no metadata.json)")
    try:
        meta = FileSystemReader(str(ckpt)).read_metadata()
    except Exception as e:
        raise CheckpointError(f"{ckpt / '.metadata'}: unreadable checkpoint index ({_brief(e)})") from None
    need: dict[str, int] = {}  # shard file -> bytes the index says it holds
    for info in meta.storage_data.values():
        need[info.relative_path] = max(need.get(info.relative_path, 0), info.offset + info.length)
    for rel, size in sorted(need.items()):
        f = ckpt / rel
        if not f.is_file():
            raise CheckpointError(f"{f}: shard file listed in the checkpoint index is missing")
        if f.stat().st_size < size:
            raise CheckpointError(f"{f}: truncated shard file ({f.stat().st_size} bytes, the index needs {size})")
    if sharded is None:
        return
    from megatron.core.dist_checkpointing.dict_utils import nested_values
    from megatron.core.dist_checkpointing.mapping import ShardedTensor

    for sh in nested_values(sharded):
        if not isinstance(sh, ShardedTensor):
            continue
        found = meta.state_dict_metadata.get(sh.key)
        if found is None:
            raise CheckpointError(f"{ckpt}: tensor {sh.key} is missing from the checkpoint")
        if isinstance(found, TensorStorageMetadata) and tuple(found.size) != tuple(sh.global_shape):
            raise CheckpointError(f"{ckpt}: tensor {sh.key} has shape {tuple(found.size)} in the checkpoint, the "
                                  f"model expects {tuple(sh.global_shape)} (another model size or config?)")


def load_dist(model_chunks: list, ckpt_dir: str | Path) -> None:
    """Collective: load a megatron dist checkpoint saved under any TP/PP into these chunks.

    Files and shapes are checked first (:func:`check_dist_checkpoint`); anything megatron still
    rejects is a :class:`CheckpointError` naming the directory.
    """
    from megatron.core import dist_checkpointing

    ckpt = Path(ckpt_dir)
    sharded = sharded_state_dict(model_chunks)
    check_dist_checkpoint(ckpt, sharded)
    try:
        state = dist_checkpointing.load(sharded, str(ckpt))
        states = [state] if len(model_chunks) == 1 else [state[f"model{i}"] for i in range(len(model_chunks))]
        for chunk, own in zip(model_chunks, states):
            unwrap(chunk).load_state_dict(own, strict=True)
    except Exception as e:
        raise CheckpointError(f"{ckpt}: cannot be loaded into this model ({_brief(e)})") from e
