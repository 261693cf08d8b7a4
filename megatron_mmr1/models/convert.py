"""``mmr1-convert``: Hugging Face Qwen2.5-VL <-> megatron dist checkpoint.

    mmr1-convert hf-to-mcore --hf /ckpt/Qwen2.5-VL-7B-Instruct --out /ckpt/q7b-mcore --tp 4 --pp 2
    mmr1-convert mcore-to-hf --ckpt /ckpt/q7b-mcore --out /ckpt/q7b-hf

hf-to-mcore runs tp*pp ranks (under torchrun, or spawned here on the CPU over gloo); each rank reads
only its own slices of the safetensors files, so the whole job holds one copy of the model in total.
The dist checkpoint it writes loads under any TP/PP (megatron resharding). mcore-to-hf loads the
checkpoint unsharded in one process (one copy of the model) and streams ~5 GB safetensors shards out.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from typing import Iterator, Optional

import torch
from torch import Tensor

from megatron_mmr1.config import ConfigError, ModelConfig, ParallelConfig
from megatron_mmr1.models.checkpoint import (CheckpointError, HFCheckpoint, hf_dtype, load_dist, load_hf_weights,
                                             read_meta, save_dist, save_hf)
from megatron_mmr1.models.hf_adapter import iter_hf_state as _iter_hf_state
from megatron_mmr1.models.hf_adapter import param_mappings
from megatron_mmr1.models.presets import read_hf_config
from megatron_mmr1.utils.procs import (Interrupted, die_with_parent, join_or_stop, launched_by_torchrun,
                                       signals_raise_interrupted)

EXIT_USER_ERROR = 2

__all__ = ["iter_hf_state", "hf_to_mcore", "mcore_to_hf", "main"]


def iter_hf_state(model_chunks: list, layout: str = "hub", dtype: Optional[torch.dtype] = None) -> Iterator[tuple[str, Tensor]]:
    """(hf_name, full tensor) of this rank's stage, gathered over TP (collective over the TP group).
    The rollout weight sync uses it; the converter writes the same stream to disk."""
    return _iter_hf_state(model_chunks, layout=layout, dtype=dtype)


def model_config_for(hf_dir: str | Path, dtype: torch.dtype) -> ModelConfig:
    """ModelConfig whose dims all come from ``hf_dir``/config.json (the 7B preset only fills gaps)."""
    return ModelConfig(preset="qwen2.5-vl-7b", hf_path=str(hf_dir),
                       params_dtype="bf16" if dtype == torch.bfloat16 else "fp32", attention_backend="local")


def _check_out_dir(out: Path) -> None:
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: output directory exists and is not empty")


def hf_to_mcore_rank(hf_dir: str, out_dir: str, tp: int, pp: int) -> None:
    """One rank of hf-to-mcore (the process group comes from torchrun-style env vars)."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.models.qwen2_5_vl import build_model

    ckpt = HFCheckpoint(hf_dir)
    parallel.initialize(ParallelConfig(tp=tp, pp=pp, backend="gloo", sequence_parallel=False))
    chunks = build_model((model_config_for(hf_dir, ckpt.dtype), ParallelConfig(tp=tp, pp=pp, sequence_parallel=False)),
                         load_hf=False, init_weights=False)
    load_hf_weights(chunks, ckpt)
    save_dist(chunks, out_dir, hf_source=ckpt.path, dtype=ckpt.dtype)


def _rank_entry(rank: int, world: int, port: int, hf_dir: str, out_dir: str, tp: int, pp: int, parent: int,
                errors) -> None:
    """A spawned rank: dies with the command, leaves Ctrl-C to it, and hands a user error (missing or
    bad tensor of its shard) to the parent as one message instead of a traceback."""
    die_with_parent(expected_parent=parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops the ranks
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from megatron_mmr1 import parallel

    try:
        hf_to_mcore_rank(hf_dir, out_dir, tp, pp)
    except (CheckpointError, ConfigError) as e:
        errors.put((rank, type(e).__name__, str(e)))
        sys.exit(EXIT_USER_ERROR)
    finally:
        parallel.destroy()


def hf_to_mcore(hf_dir: str | Path, out_dir: str | Path, tp: int = 1, pp: int = 1) -> Path:
    """Validate, then run tp*pp ranks: in this process group under torchrun, else spawned locally."""
    from megatron_mmr1.models.qwen2_5_vl import check_parallel_dims
    from megatron_mmr1.parallel import free_port

    ckpt = HFCheckpoint(hf_dir)
    check_parallel_dims(ckpt.dims, tp, pp)
    out = Path(out_dir)
    world = tp * pp
    if "WORLD_SIZE" in os.environ:
        if int(os.environ["WORLD_SIZE"]) != world:
            raise ConfigError(f"hf-to-mcore --tp {tp} --pp {pp} needs {world} ranks, torchrun gave "
                              f"{os.environ['WORLD_SIZE']}")
        if launched_by_torchrun():
            die_with_parent()
        hf_to_mcore_rank(str(hf_dir), str(out), tp, pp)
        return out
    _check_out_dir(out)
    ctx = torch.multiprocessing.get_context("spawn")
    port = free_port()
    errors = ctx.SimpleQueue()
    procs = [ctx.Process(target=_rank_entry, args=(r, world, port, str(hf_dir), str(out), tp, pp, os.getpid(), errors))
             for r in range(world)]
    for p in procs:
        p.start()
    codes = join_or_stop(procs)  # the first failed rank stops the others (they would wait in a collective)
    failed = sorted(r for r, code in codes.items() if code != 0)
    if failed:
        reported = []
        while not errors.empty():
            reported.append(errors.get())
        if reported:
            rank, kind, message = min(reported)
            error = ConfigError if kind == "ConfigError" else CheckpointError
            raise error(message + (f" (and {len(reported) - 1} more rank(s))" if len(reported) > 1 else ""))
        raise RuntimeError(f"hf-to-mcore failed on rank(s) {failed} (see their tracebacks above)")
    return out


def mcore_to_hf(ckpt_dir: str | Path, out_dir: str | Path, hf_config: Optional[str | Path] = None,
                layout: str = "hub", max_shard_bytes: int = 5 * 1024**3) -> Path:
    """Load the dist checkpoint unsharded in this process and write HF safetensors + config + tokenizer."""
    import torch.distributed as dist

    from megatron_mmr1 import parallel
    from megatron_mmr1.models.qwen2_5_vl import build_model

    ckpt = Path(ckpt_dir)
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt}: megatron checkpoint directory does not exist")
    if hf_config is not None:
        files = Path(hf_config)
        try:
            dtype = hf_dtype(read_hf_config(files)["hf_config"])
        except (FileNotFoundError, ValueError) as e:
            raise CheckpointError(str(e)) from None
    else:
        meta = read_meta(ckpt)
        files, dtype = meta["hf_files_dir"], meta["dtype"]
    owns_pg = not dist.is_initialized()
    if owns_pg:
        parallel.initialize(ParallelConfig(tp=1, pp=1, backend="gloo", sequence_parallel=False))
    try:
        chunks = build_model((model_config_for(files, dtype), ParallelConfig(sequence_parallel=False)),
                             load_hf=False, init_weights=False)
        load_dist(chunks, ckpt)
        n = sum(len(m.hf) for m in param_mappings(chunks[0]))
        return save_hf(iter_hf_state(chunks, layout=layout, dtype=dtype), out_dir, hf_files_from=files,
                       max_shard_bytes=max_shard_bytes, total=n)
    finally:
        if owns_pg:
            parallel.destroy()


def _size(text: str) -> int:
    units = {"KB": 1024, "MB": 1024**2, "GB": 1024**3}
    for u, f in units.items():
        if text.upper().endswith(u):
            return int(float(text[:-2]) * f)
    return int(text)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="mmr1-convert", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("hf-to-mcore", help="Hugging Face dir -> megatron dist checkpoint")
    a.add_argument("--hf", required=True, help="HF Qwen2.5-VL dir (config.json + safetensors)")
    a.add_argument("--out", required=True, help="output dist-checkpoint dir (new or empty)")
    a.add_argument("--tp", type=int, default=1, help="tensor-parallel ranks used for the conversion")
    a.add_argument("--pp", type=int, default=1, help="pipeline-parallel ranks used for the conversion")
    b = sub.add_parser("mcore-to-hf", help="megatron dist checkpoint -> Hugging Face dir")
    b.add_argument("--ckpt", required=True, help="dist-checkpoint dir (from hf-to-mcore or training)")
    b.add_argument("--out", required=True, help="output HF dir")
    b.add_argument("--hf-config", default=None, help="HF dir with config.json/tokenizer when the checkpoint has none")
    b.add_argument("--layout", choices=["hub", "nested"], default="hub",
                   help="hub: model.*/visual.* (original, transformers 5); nested: model.language_model.*")
    b.add_argument("--max-shard-size", default="5GB", help="safetensors shard size, e.g. 5GB")
    args = parser.parse_args(argv)
    try:
        with signals_raise_interrupted():  # SIGINT/SIGTERM: stop the ranks, one line, 128 + signal
            if args.cmd == "hf-to-mcore":
                out = hf_to_mcore(args.hf, args.out, args.tp, args.pp)
            else:
                out = mcore_to_hf(args.ckpt, args.out, args.hf_config, args.layout, _size(args.max_shard_size))
    except (CheckpointError, ConfigError) as e:
        print(f"mmr1-convert: error: {e}", file=sys.stderr)
        return EXIT_USER_ERROR
    except Interrupted as e:
        print(f"mmr1-convert: stopped by {e.name}; {args.out} is incomplete", file=sys.stderr)
        return e.exit_code
    print(f"mmr1-convert: wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
