"""The trainer's device memory handed to colocated rollout servers while they generate (verl's
``offload_megatron_model_to_cpu`` / ``offload_megatron_optimizer``, slime's colocated offload).

    offload = TrainerOffload(chunks, optimizer, enabled=cfg.rollout.offload_trainer, timer=timer)
    offload.offload()     # weights and optimizer state copied to (pinned) host memory, device storage freed
    ...servers resume their KV cache and generate, then release...
    offload.reload()      # storage back on the device, copied in: bitwise the state before

What moves, found by walking megatron's objects each time (the optimizer state is created at the first step):

* kept (copied out and back): the model params (megatron DDP's ``param_data`` buffer with the distributed
  optimizer, else each param's own storage), the optimizer's params (fp32 main params of the mixed-precision
  and distributed optimizers) and every tensor of its state (Adam ``exp_avg``, ``exp_avg_sq``, ``step``);
* dropped (freed, zeros on reload): DDP's ``grad_data`` buffers and the optimizer params' ``.grad``. Gradients
  are dead between steps (``train_step`` zeroes them first), so they cost no PCIe traffic, as in verl and
  megatron's own ``offload_to_cpu``.

Each storage is handled once, whole (``untyped_storage().resize_(0)`` frees it and every view of it,
``resize_(n)`` brings the same storage back), so views (params in a buffer, ``main_grad``, bucket shards)
stay valid. Only storages on the params' device move: state an optimizer already keeps on the host
(``optim.cpu_offload``) stays where it is. A CPU storage in shared memory (a gloo trainer's weights after the
stand-in's tensor sync mapped them) cannot be resized and stays resident. On CPU the same code frees and
restores host storage, which is how the tests exercise it.
"""

from __future__ import annotations

import time
from contextlib import nullcontext
from typing import Any, Callable, Iterator, Optional

import torch

from megatron_mmr1.models import chunks_device

GIB = float(1 << 30)


def optimizer_parts(optimizer: Any) -> list:
    """megatron's optimizers behind ``optimizer`` (a ChainedOptimizer's members, or itself)."""
    return list(getattr(optimizer, "chained_optimizers", [optimizer]))


def ddp_buffers(chunk: Any) -> list:
    """megatron DDP's ``_ParamAndGradBuffer``s of one chunk (dense and expert-parallel)."""
    from megatron.core.distributed import DistributedDataParallel

    if not isinstance(chunk, DistributedDataParallel):
        return []
    return list(chunk.buffers) + list(chunk.expert_parallel_buffers)


def kept_tensors(chunks: list, optimizer: Any) -> Iterator[torch.Tensor]:
    """Tensors whose values must survive: params (and their buffers), optimizer params and state."""
    for c in chunks:
        for buf in ddp_buffers(c):
            if buf.param_data is not None:
                yield buf.param_data
        yield from c.parameters()
    for part in optimizer_parts(optimizer):
        inner = getattr(part, "optimizer", None)
        if inner is None:  # no params on this rank
            continue
        for group in inner.param_groups:
            yield from group["params"]
        for state in inner.state.values():
            yield from (v for v in state.values() if torch.is_tensor(v))


def dropped_tensors(chunks: list, optimizer: Any) -> Iterator[torch.Tensor]:
    """Gradients: freed on offload, zeros on reload."""
    for c in chunks:
        for buf in ddp_buffers(c):
            if buf.grad_data is not None:
                yield buf.grad_data
    for part in optimizer_parts(optimizer):
        inner = getattr(part, "optimizer", None)
        for group in inner.param_groups if inner is not None else []:
            yield from (p.grad for p in group["params"] if p.grad is not None)


def _whole(storage: torch.UntypedStorage) -> torch.Tensor:
    """A uint8 tensor over all of ``storage``."""
    return torch.empty(0, dtype=torch.uint8, device=storage.device).set_(storage)


class _Moved:
    """One device storage while offloaded: its size, and its host copy (None: dropped, zeros on reload)."""

    def __init__(self, storage: torch.UntypedStorage, host: Optional[torch.Tensor]) -> None:
        self.storage, self.nbytes, self.host = storage, storage.nbytes(), host


class TrainerOffload:
    """Moves the trainer's state off its device and back (see the module doc); does nothing when not ``enabled``."""

    def __init__(self, chunks: list, optimizer: Any, enabled: bool = True, timer: Any = None) -> None:
        self.chunks, self.optimizer, self.enabled = chunks, optimizer, enabled
        self.timer = timer
        self.moved: list[_Moved] = []
        self.offloaded = False
        self._host: dict[int, torch.Tensor] = {}  # host buffers by storage, reused (pinning is slow)
        self.last_bytes = {"copied": 0, "dropped": 0}
        self.last_seconds = {"offload": 0.0, "reload": 0.0}

    @property
    def before_kv(self) -> Optional[Callable[[], None]]:
        """What the weight sync runs before the servers' KV cache comes back: :meth:`offload`, or None when off."""
        return self.offload if self.enabled else None

    def _time(self, name: str):
        return self.timer(name) if self.timer is not None else nullcontext()

    def _storages(self, tensors: Iterator[torch.Tensor], device: torch.device, seen: set) -> list:
        out = []
        for t in tensors:
            s = t.untyped_storage()
            key = s._cdata
            if key in seen or s.device != device or s.nbytes() == 0 or (s.device.type == "cpu" and s.is_shared()):
                continue
            seen.add(key)
            out.append(s)
        return out

    def _host_buffer(self, storage: torch.UntypedStorage) -> torch.Tensor:
        buf = self._host.get(storage._cdata)
        if buf is None or buf.numel() != storage.nbytes():
            pin = storage.device.type == "cuda"
            buf = self._host[storage._cdata] = torch.empty(storage.nbytes(), dtype=torch.uint8, pin_memory=pin)
        return buf

    @torch.no_grad()
    def offload(self) -> None:
        """Copy the kept state to the host and free the device storage of all of it (idempotent)."""
        if not self.enabled or self.offloaded:
            return
        with self._time("offload"):
            t0 = time.perf_counter()
            device = chunks_device(self.chunks)
            seen: set = set()
            kept = self._storages(kept_tensors(self.chunks, self.optimizer), device, seen)
            dropped = self._storages(dropped_tensors(self.chunks, self.optimizer), device, seen)
            self.moved = [_Moved(s, self._host_buffer(s)) for s in kept] + [_Moved(s, None) for s in dropped]
            for m in self.moved:
                if m.host is not None:
                    m.host.copy_(_whole(m.storage), non_blocking=True)
            _synchronize(device)
            for m in self.moved:
                m.storage.resize_(0)
            if device.type == "cuda":
                torch.cuda.empty_cache()  # back to the driver, for the servers
            self.offloaded = True
            self.last_bytes = {"copied": sum(m.nbytes for m in self.moved if m.host is not None),
                               "dropped": sum(m.nbytes for m in self.moved if m.host is None)}
            self.last_seconds["offload"] = time.perf_counter() - t0

    @torch.no_grad()
    def reload(self) -> None:
        """Every freed storage back at its size; kept ones copied in, gradients zeroed (idempotent)."""
        if not self.offloaded:
            return
        with self._time("reload"):
            t0 = time.perf_counter()
            for m in self.moved:
                m.storage.resize_(m.nbytes)
                whole = _whole(m.storage)
                if m.host is None:
                    whole.zero_()
                else:
                    whole.copy_(m.host, non_blocking=True)
            _synchronize(self.moved[0].storage.device if self.moved else torch.device("cpu"))
            self.moved, self.offloaded = [], False
            self.last_seconds["reload"] = time.perf_counter() - t0

    def metrics(self) -> dict[str, float]:
        """The last offload's device memory freed and host bytes copied (each way), in GiB."""
        if not self.enabled:
            return {}
        b = self.last_bytes
        return {"memory/offloaded_gib": (b["copied"] + b["dropped"]) / GIB, "memory/offload_copied_gib": b["copied"] / GIB}


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
