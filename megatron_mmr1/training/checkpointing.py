"""Trainer checkpoints: megatron dist_checkpointing of model + optimizer, plus the loop's own state.

Layout (``checkpoint.save``)::

    latest                      "iter_0000040" (replaced atomically after a save completes)
    iter_0000040/
        metadata.json, *.distcp  model and optimizer (megatron dist checkpoint; the model reshards)
        mmr1_model.json hf_files/   so `mmr1-convert mcore-to-hf --ckpt iter_0000040` exports it
        trainer_state.pt        step, scheduler, data position, sampler/VPS state, counters, config
        rng/rank_00000.pt       every RNG of every rank (python, numpy, torch, megatron's tracker)

A save goes to ``.tmp_iter_*`` first and is renamed when every rank has finished, so a crash mid-save
leaves the previous checkpoint (and ``latest``) untouched; ``checkpoint.keep_last`` old ones are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_mmr1.config import RunConfig, dump_yaml
from megatron_mmr1.models.checkpoint import CheckpointError, sharded_state_dict, write_meta
from megatron_mmr1.utils.logging import get_logger

logger = get_logger(__name__)

LATEST = "latest"
STATE_FILE = "trainer_state.pt"


def iter_name(step: int) -> str:
    return f"iter_{step:07d}"


def _rank0() -> bool:
    return not dist.is_initialized() or dist.get_rank() == 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def rng_state() -> dict[str, Any]:
    from megatron.core import tensor_parallel

    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state(),
             "tracker": tensor_parallel.get_cuda_rng_tracker().get_states()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    from megatron.core import tensor_parallel

    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    tensor_parallel.get_cuda_rng_tracker().set_states(state["tracker"])


def _full_state(chunks: list, optimizer, is_loading: bool) -> dict:
    model_sd = sharded_state_dict(chunks)
    return {"model": model_sd, "optimizer": optimizer.sharded_state_dict(model_sd, is_loading=is_loading)}


def save_checkpoint(cfg: RunConfig, step: int, chunks: list, optimizer, scheduler, trainer_state: dict,
                    save_dir: Optional[str] = None, hf_source: Optional[str] = None) -> Path:
    """Collective. ``trainer_state``: the loop's own picklable state (data position, sampler, counters)."""
    from megatron.core import dist_checkpointing

    root = Path(save_dir or cfg.checkpoint.save)
    final, tmp = root / iter_name(step), root / f".tmp_{iter_name(step)}"
    if _rank0():
        root.mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
    _barrier()
    dist_checkpointing.save(_full_state(chunks, optimizer, is_loading=False), str(tmp))
    rank = dist.get_rank() if dist.is_initialized() else 0
    (tmp / "rng").mkdir(exist_ok=True)
    torch.save(rng_state(), tmp / "rng" / f"rank_{rank:05d}.pt")
    if _rank0():
        src = Path(hf_source) if hf_source else None
        write_meta(tmp, src, None if src else _hf_config(cfg), None)
        torch.save({"step": step, "scheduler": scheduler.state_dict(), "trainer": trainer_state,
                    "config": dump_yaml(cfg)}, tmp / STATE_FILE)
        (tmp / "config.yaml").write_text(dump_yaml(cfg))
    _barrier()
    if _rank0():
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        pointer = root / f".{LATEST}.tmp"
        pointer.write_text(iter_name(step) + "\n")
        os.replace(pointer, root / LATEST)
        _prune(root, cfg.checkpoint.keep_last)
        logger.info("saved checkpoint %s", final)
    _barrier()
    return final


def _hf_config(cfg: RunConfig) -> dict:
    from megatron_mmr1.models.presets import hf_config_dict, resolve_model_dims

    return hf_config_dict(resolve_model_dims(cfg.model))


def _prune(root: Path, keep_last: int) -> None:
    iters = sorted(p for p in root.glob("iter_*") if p.is_dir())
    for old in iters[:-keep_last] if keep_last > 0 else []:
        shutil.rmtree(old, ignore_errors=True)


def resolve_load_dir(path: str) -> Optional[Path]:
    """``checkpoint.load``: a save root (follows ``latest``; None when nothing was saved yet) or one
    ``iter_*`` directory."""
    p = Path(path)
    if (p / STATE_FILE).is_file():
        return p
    pointer = p / LATEST
    if pointer.is_file():
        target = p / pointer.read_text().strip()
        if not (target / STATE_FILE).is_file():
            raise CheckpointError(f"{pointer} points at {target}, which is not a complete checkpoint")
        return target
    if p.is_dir() and any(p.glob(".tmp_iter_*")) and not any(p.glob("iter_*")):
        raise CheckpointError(f"{p}: only an unfinished save (.tmp_iter_*) is here; nothing to resume")
    if p.exists() and any(p.iterdir()):
        raise CheckpointError(f"{p}: neither a checkpoint ({STATE_FILE}) nor a save directory with '{LATEST}'")
    return None


def load_checkpoint(load_dir: Path, chunks: list, optimizer, scheduler, load_optimizer: bool = True) -> dict:
    """Collective. Restores model (any TP/PP), optimizer (same layout), scheduler and this rank's RNG;
    returns the saved ``{"step", "trainer", "config"}``."""
    from megatron.core import dist_checkpointing

    from megatron_mmr1.models import unwrap

    state_file = load_dir / STATE_FILE
    try:
        meta = torch.load(state_file, weights_only=False)
    except Exception as e:  # noqa: BLE001 - a corrupt file must name itself
        raise CheckpointError(f"{state_file}: cannot be read ({type(e).__name__}: {e})") from None
    if load_optimizer:
        sd = _full_state(chunks, optimizer, is_loading=True)
    else:
        sd = {"model": sharded_state_dict(chunks)}
    try:
        loaded = dist_checkpointing.load(sd, str(load_dir))
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"{load_dir}: megatron checkpoint does not load ({type(e).__name__}: "
                              f"{str(e).splitlines()[0] if str(e) else ''})") from None
    model_states = [loaded["model"]] if len(chunks) == 1 else [loaded["model"][f"model{i}"] for i in range(len(chunks))]
    for chunk, own in zip(chunks, model_states):
        unwrap(chunk).load_state_dict(own, strict=True)
    if load_optimizer:
        optimizer.load_state_dict(loaded["optimizer"])
        scheduler.load_state_dict(meta["scheduler"])
    rank = dist.get_rank() if dist.is_initialized() else 0
    rng_file = load_dir / "rng" / f"rank_{rank:05d}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    else:
        logger.warning("%s: no RNG state for rank %d (saved with another world size); RNG starts fresh",
                       load_dir, rank)
    logger.info("resumed from %s (step %d)", load_dir, meta["step"])
    return meta


def export_hf(cfg: RunConfig, chunks: list, out_dir: str) -> Optional[Path]:
    """Collective: the policy as a Hugging Face checkpoint. Each PP stage's first TP/DP rank writes its
    own layers (``model-ppK.safetensors``; gathered over TP); rank 0 writes the index and the
    config / tokenizer / processor files, so no rank ever holds the whole model."""
    from megatron.core import parallel_state as mpu
    from safetensors.torch import save_file

    from megatron_mmr1.models.checkpoint import ensure_processor, write_hf_side_files
    from megatron_mmr1.models.hf_adapter import iter_hf_state

    out = Path(out_dir)
    if _rank0():
        out.mkdir(parents=True, exist_ok=True)
        for old in out.glob("model*.safetensors*"):
            old.unlink()
    _barrier()
    tensors = {name: t.detach().cpu().contiguous().clone() for name, t in iter_hf_state(chunks)}  # TP collective
    pp_rank, pp = mpu.get_pipeline_model_parallel_rank(), mpu.get_pipeline_model_parallel_world_size()
    writer = mpu.get_tensor_model_parallel_rank() == 0 and mpu.get_data_parallel_rank() == 0
    fname = "model.safetensors" if pp == 1 else f"model-{pp_rank + 1:05d}-of-{pp:05d}.safetensors"
    if writer:
        save_file(tensors, str(out / fname), metadata={"format": "pt"})
    names = [(n, fname) for n in tensors] if writer else []
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, names)
    if _rank0():
        src = Path(cfg.model.hf_path) if cfg.model.hf_path else None
        if src is None and cfg.model.tokenizer_path:
            src = Path(cfg.model.tokenizer_path)
        write_hf_side_files(out, src, _hf_config(cfg) if not cfg.model.hf_path else None)
        ensure_processor(out, cfg.data.min_pixels, cfg.data.max_pixels)  # AutoProcessor loads the export
        if pp > 1:
            weight_map = dict(sorted(x for g in gathered for x in g))
            (out / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map},
                                                                         indent=2) + "\n")
        logger.info("exported Hugging Face checkpoint to %s", out)
    _barrier()
    return out


class Checkpointer:
    """What a loop does with checkpoints at its step boundaries: periodic saves (``checkpoint.save_interval``),
    the save of an interrupted run, the final save; all no-ops without ``checkpoint.save``.
    ``trainer_state()`` returns the loop's own state at the moment of a save; ``resident()`` (a context
    manager, optional) holds the weights and optimizer state on the device while a save reads them."""

    def __init__(self, cfg: RunConfig, chunks: list, optimizer, scheduler, trainer_state, resident=None) -> None:
        self.cfg, self.chunks, self.optimizer, self.scheduler = cfg, chunks, optimizer, scheduler
        self.trainer_state = trainer_state
        self.resident = resident or contextlib.nullcontext

    def save(self, step: int) -> None:
        if self.cfg.checkpoint.save:
            with self.resident():
                save_checkpoint(self.cfg, step, self.chunks, self.optimizer, self.scheduler, self.trainer_state(),
                                hf_source=self.cfg.model.hf_path)

    def periodic(self, step: int, total: int) -> None:
        """The ``save_interval`` save after ``step`` (the last step is saved by the loop's end)."""
        interval = self.cfg.checkpoint.save_interval
        if interval and step % interval == 0 and step < total:
            self.save(step)

    def interrupted(self, step: int, total: int) -> str:
        """Save an interrupted run; returns the line that says what happened."""
        self.save(step)
        where = (f"; checkpoint saved in {self.cfg.checkpoint.save}" if self.cfg.checkpoint.save else
                 " (checkpoint.save is not set: nothing saved)")
        return f"interrupted at step {step}/{total}{where}"
