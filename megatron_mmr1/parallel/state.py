"""Process-group set-up from torchrun's environment: torch.distributed + megatron parallel_state.

Backend nccl on GPU, gloo on CPU (with :mod:`cpu_compat` active). Single-process runs without
torchrun work too (world size 1, a local rendezvous on a free port).
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron_mmr1.config import ConfigError, ParallelConfig
from megatron_mmr1.parallel import cpu_compat
from megatron_mmr1.utils.net import free_port


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    tp: int
    pp: int
    dp: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    device: torch.device
    backend: str

    @property
    def is_first_pp_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_pp_stage(self) -> bool:
        return self.pp_rank == self.pp - 1


def resolve_backend(cfg: ParallelConfig) -> str:
    if cfg.backend != "auto":
        if cfg.backend == "nccl" and not torch.cuda.is_available():
            raise ConfigError("parallel.backend=nccl needs CUDA, and no GPU is visible")
        return cfg.backend
    return "nccl" if torch.cuda.is_available() else "gloo"


def set_seed(seed: int) -> None:
    """Seed python, numpy and torch; megatron's TP RNG tracker is seeded in :func:`initialize`."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def initialize(cfg: ParallelConfig, timeout_minutes: int = 30) -> DistInfo:
    """Init torch.distributed from RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT, then megatron
    parallel_state with TP/PP/CP and the virtual pipeline size (DP is what is left), then seeds."""
    from megatron.core import parallel_state as mpu
    from megatron.core import tensor_parallel

    backend = resolve_backend(cfg)
    if backend == "gloo":
        cpu_compat.enable()
    if not dist.is_initialized():
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        if world_size == 1:
            os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
            os.environ.setdefault("MASTER_PORT", str(free_port()))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(
            backend=backend, rank=rank, world_size=world_size, timeout=timedelta(minutes=timeout_minutes)
        )
    world_size = dist.get_world_size()
    if world_size % (cfg.tp * cfg.pp * cfg.cp) != 0:
        keys, sizes = ("parallel.tp*parallel.pp*parallel.cp", f"{cfg.tp}*{cfg.pp}*{cfg.cp}") if cfg.cp > 1 else \
            ("parallel.tp*parallel.pp", f"{cfg.tp}*{cfg.pp}")
        raise ConfigError(f"world size {world_size} is not divisible by {keys}={sizes}")
    if not mpu.model_parallel_is_initialized():
        mpu.initialize_model_parallel(
            tensor_model_parallel_size=cfg.tp, pipeline_model_parallel_size=cfg.pp,
            virtual_pipeline_model_parallel_size=cfg.vpp if cfg.vpp > 1 else None,
            context_parallel_size=cfg.cp,
        )
    set_seed(cfg.seed + 100 * mpu.get_pipeline_model_parallel_rank())
    tensor_parallel.model_parallel_cuda_manual_seed(cfg.seed)
    return info(backend)


def info(backend: Optional[str] = None) -> DistInfo:
    from megatron.core import parallel_state as mpu

    backend = backend or dist.get_backend()
    device = torch.device("cuda", torch.cuda.current_device()) if backend == "nccl" else torch.device("cpu")
    return DistInfo(
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        tp=mpu.get_tensor_model_parallel_world_size(),
        pp=mpu.get_pipeline_model_parallel_world_size(),
        dp=mpu.get_data_parallel_world_size(),
        tp_rank=mpu.get_tensor_model_parallel_rank(),
        pp_rank=mpu.get_pipeline_model_parallel_rank(),
        dp_rank=mpu.get_data_parallel_rank(),
        device=device,
        backend=backend,
    )


def destroy() -> None:
    from megatron.core import parallel_state as mpu

    if mpu.model_parallel_is_initialized():
        mpu.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
