"""Trainer -> rollout servers weight sync over SGLang's own endpoints (checked at SGLang 0.5.23).

Input is a plain iterable of ``(hf_name, full_tensor)`` pairs: the model code gathers TP shards
and renames to Hugging Face checkpoint names; only the sender rank (DP=0, TP=0, PP=0) calls this.

* ``DistributedWeightSender`` (disaggregated; slime's ``UpdateWeightFromDistributed``): once,
  ``/init_weights_update_group`` on every server + a matching group on the trainer (rank 0; gloo on
  CPU, nccl on GPU). Per update: ``/pause_generation`` -> ``/flush_cache`` -> ``/begin_weight_update``
  -> per bucket (``bucket_mb``, ~512 MiB): ``/update_weights_from_distributed`` on every server while
  the trainer broadcasts the bucket's tensors (one by one, or as one ``flattened_bucket``; on gloo
  a flattened bucket's tensors of >= 1 MiB go one by one in a request of their own, unpacked) ->
  ``/end_weight_update`` -> ``/continue_generation``.
* ``DiskWeightSender`` (fallback): safetensors into a directory every server can read, then
  ``/update_weights_from_disk``.
* ``TensorWeightSender`` (colocated): ``release()`` before training = ``/pause_generation`` (SGLang
  asserts the server is idle) -> ``/release_memory_occupation`` (all tags: weights, KV cache, CUDA
  graphs); ``update()`` after = resume ``weights`` -> session + ``/update_weights_from_tensor`` per
  bucket -> resume ``kv_cache`` and ``cuda_graph`` -> ``/continue_generation``. On GPU the tensors
  travel as CUDA IPC handles pickled with SGLang's ``monkey_patch_torch_reductions`` (the handle
  names the GPU by UUID, so a server with its own ``CUDA_VISIBLE_DEVICES`` opens the right one) and
  wrapped in ``LocalSerializedTensor`` per TP rank; on CPU as shared memory, which the stand-in
  server reads the same way. An engine of TP > 1 needs handles from the trainer rank on each of its
  GPUs: ``update(..., group=)`` gathers every rank's own (``gather_engine_payloads``, SGLang's
  ``weight_sync.utils.update_weights``). On many nodes each node's servers get their handles from that
  node's trainer ranks (``megatron_mmr1.rollout.colocate``: one sender and one gather group per node).

With ``pause_mode="in_place"`` requests stay inside the server, where ``/flush_cache`` answers 400:
the senders then skip the flush (``flush_cache=False``), as SGLang's own in-place path does.
"""

from __future__ import annotations

import base64
import concurrent.futures
import contextlib
import io
import logging
import os
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

import requests
import torch
import torch.distributed as dist

from megatron_mmr1.rollout import protocol as P
from megatron_mmr1.rollout.client import set_paused
from megatron_mmr1.rollout.dist_group import destroy_custom_process_group, init_custom_process_group
from megatron_mmr1.utils.net import free_port

logger = logging.getLogger(__name__)

NamedTensors = Iterable[tuple[str, torch.Tensor]]


class WeightSyncError(RuntimeError):
    """A server refused or failed a weight-sync call; the message names server and endpoint."""

    def __init__(self, message: str, status: Optional[int] = None):
        super().__init__(message)
        self.status = status


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).replace("torch.", "")  # "bfloat16": what SGLang's getattr(torch, ...) reads


def bucket_named_tensors(named: NamedTensors, bucket_bytes: int) -> Iterator[list[tuple[str, torch.Tensor]]]:
    """Group tensors into buckets of at most ``bucket_bytes`` (one bigger tensor gets its own).

    A new bucket also starts when the dtype changes, so every offset of a flattened bucket is
    aligned to its dtype's size (SGLang rejects unaligned offsets).
    """
    bucket: list[tuple[str, torch.Tensor]] = []
    size = 0
    for name, t in named:
        nbytes = t.numel() * t.element_size()
        if bucket and (size + nbytes > bucket_bytes or t.dtype != bucket[-1][1].dtype):
            yield bucket
            bucket, size = [], 0
        bucket.append((name, t))
        size += nbytes
    if bucket:
        yield bucket


@dataclass
class SyncStats:
    tensors: int = 0
    bytes: int = 0
    buckets: int = 0
    seconds: float = 0.0


class _ServerCalls:
    """Synchronous admin calls to every server, in parallel threads."""

    def __init__(self, urls: Sequence[str], timeout_s: float):
        self.urls = [u.rstrip("/") for u in urls]
        self.timeout_s = timeout_s
        self.pool = concurrent.futures.ThreadPoolExecutor(max(1, len(self.urls)), thread_name_prefix="wsync")
        self._local = threading.local()

    def _session(self) -> requests.Session:
        """One keep-alive session per calling thread: an update makes 5+ calls per server, and a new
        TCP connection for each was a third of an empty update's time."""
        session = getattr(self._local, "session", None)
        if session is None:
            session = self._local.session = requests.Session()
        return session

    def call(self, url: str, path: str, body: Optional[dict] = None, method: str = "POST",
             retry_400_s: float = 0.0) -> Any:
        """One call; raise WeightSyncError on failure. ``retry_400_s``: keep retrying a 400 (busy)."""
        end = time.monotonic() + retry_400_s
        while True:
            try:
                r = self._session().request(method, url + path, json=body, timeout=self.timeout_s)
            except requests.RequestException as e:
                raise WeightSyncError(f"{url}{path}: {type(e).__name__}: {e}") from None
            if r.status_code == 400 and time.monotonic() < end:
                time.sleep(0.2)
                continue
            data: Any = None
            if r.content:
                try:
                    data = r.json()
                except ValueError:
                    data = r.text
            if r.status_code != 200 or (isinstance(data, dict) and data.get("success") is False):
                raise WeightSyncError(f"{url}{path} answered {r.status_code}: {str(data)[:500]}", r.status_code)
            return data

    def submit_all(self, path: str, body: Optional[dict] = None, **kw) -> list[concurrent.futures.Future]:
        return [self.pool.submit(self.call, u, path, body, **kw) for u in self.urls]

    def all(self, path: str, body: Optional[dict] = None, **kw) -> list[Any]:
        return [f.result() for f in self.submit_all(path, body, **kw)]

    def close(self) -> None:
        self.pool.shutdown(wait=False)
        session = getattr(self._local, "session", None)
        if session is not None:
            session.close()


def flushes(pause_mode: str) -> bool:
    """In-place pauses keep requests in the scheduler, where a flush is refused: SGLang skips it there."""
    return pause_mode != "in_place"


def pause_generation(calls: _ServerCalls, pause_mode: str) -> None:
    set_paused(calls.urls, True)  # the rollout client's health probe leaves paused servers alone
    calls.all("/pause_generation", P.to_json(P.PauseGenerationReqInput(mode=pause_mode)))


def continue_generation(calls: _ServerCalls) -> None:
    try:
        calls.all("/continue_generation", P.to_json(P.ContinueGenerationReqInput()))
    finally:
        set_paused(calls.urls, False)


class _PausedGeneration:
    """pause -> flush -> [begin session] ... [end session] -> [before_continue] -> continue, also
    when the body raises."""

    def __init__(self, calls: _ServerCalls, session: bool, pause_mode: str, flush_wait_s: float,
                 before_continue: Optional[Callable[[], None]] = None):
        self.calls, self.session, self.pause_mode, self.flush_wait_s = calls, session, pause_mode, flush_wait_s
        self.before_continue = before_continue

    def __enter__(self):
        pause_generation(self.calls, self.pause_mode)
        self.opened: list[str] = []
        try:
            if flushes(self.pause_mode):
                self.calls.all("/flush_cache", retry_400_s=self.flush_wait_s)  # slime retries 60 x 1 s
            if self.session:  # on every server at once; each opened session is closed again on failure
                futures = self.calls.submit_all("/begin_weight_update", P.to_json(P.BeginWeightUpdateReqInput()))
                error: Optional[BaseException] = None
                for url, f in zip(self.calls.urls, futures):
                    try:
                        f.result()
                        self.opened.append(url)
                    except WeightSyncError as e:
                        if e.status != 404:
                            error = error or e
                            continue
                        # SGLang before the 0.5.2x sessions: updates run without one.
                        logger.info("%s has no /begin_weight_update; updating without a session", url)
                if error is not None:
                    raise error
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc):
        try:
            futures = [self.calls.pool.submit(self.calls.call, url, "/end_weight_update", {}) for url in self.opened]
            for f in futures:
                f.result()
            if self.before_continue is not None and not any(exc):
                self.before_continue()
        finally:
            self.opened = []
            continue_generation(self.calls)


class DistributedWeightSender:
    """Broadcast weights from this process (group rank 0) to SGLang servers, in buckets."""

    def __init__(
        self,
        urls: Sequence[str],
        backend: Optional[str] = None,
        master_address: str = "127.0.0.1",
        master_port: Optional[int] = None,
        group_name: str = P.DEFAULT_GROUP_NAME,
        bucket_mb: int = 512,
        flattened: bool = False,
        engine_tp_sizes: Optional[Sequence[int]] = None,
        timeout_s: float = 600.0,
        pause_mode: str = "abort",
        unpacked_min_mb: Optional[float] = None,
    ):
        self.calls = _ServerCalls(urls, timeout_s)
        self.backend = backend or ("nccl" if torch.cuda.is_available() else "gloo")
        if unpacked_min_mb is None and self.backend == "gloo":
            unpacked_min_mb = 1.0
        self.unpacked_min_bytes = None if unpacked_min_mb is None else int(unpacked_min_mb * 2**20)
        """Flattened mode: tensors this big are broadcast as they are (a tensor-by-tensor request), not
        packed. On gloo a copy into the bucket costs ~0.6 of the broadcast of the same bytes, and a
        broadcast of its own ~0.15 ms: from ~1 MiB packing costs more than it saves. None (NCCL,
        where a device copy is nearly free): pack every tensor."""
        self.device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        self.master_address = master_address
        self.master_port = master_port
        self.group_name = group_name
        self.bucket_bytes = int(bucket_mb) << 20
        self.flattened = flattened
        self.engine_tp_sizes = list(engine_tp_sizes) if engine_tp_sizes else None
        self.pause_mode = pause_mode
        self.group: Optional[dist.ProcessGroup] = None
        self.version = 0
        self.last_stats = SyncStats()
        self._buffers: list[Optional[torch.Tensor]] = [None, None]
        """Flattened buckets are packed into these two in turn (the next while the current is sent). Kept
        between updates on CPU, where fresh memory costs a page fault per 4 KiB (a third of a broadcast's
        time); on GPU freed after each update (the caching allocator keeps the blocks anyway)."""
        self._views: list[Optional[tuple]] = [None, None]
        """Per buffer: (layout, buffer, one view per tensor), reused while the layout stays the same."""
        self._packer: Optional[concurrent.futures.ThreadPoolExecutor] = None

    def connect(self) -> None:
        """Create the update group: trainer rank 0, server i's TP ranks from 1 + sum(tp of servers < i)."""
        tps = self.engine_tp_sizes or [int(i.get("tp_size", 1)) for i in self.calls.all("/get_server_info", method="GET")]
        world = 1 + sum(tps)
        port = self.master_port or free_port(self.master_address)
        futures, offset = [], 1
        for url, tp in zip(self.calls.urls, tps):
            body = P.to_json(P.InitWeightsUpdateGroupReqInput(
                master_address=self.master_address, master_port=port, rank_offset=offset,
                world_size=world, group_name=self.group_name, backend=self.backend))
            futures.append(self.calls.pool.submit(self.calls.call, url, "/init_weights_update_group", body))
            offset += tp
        try:
            self.group = init_custom_process_group(
                self.backend, f"tcp://{self.master_address}:{port}", world, 0, self.group_name
            )
        finally:
            for f in futures:
                f.result()
        logger.info("weight-update group %s: trainer + %d engine ranks over %s", self.group_name, world - 1, self.backend)

    def begin(self) -> None:
        """pause -> flush -> begin session. Only for ``update(manage_generation=False)`` callers."""
        self._paused = _PausedGeneration(self.calls, True, self.pause_mode, flush_wait_s=60.0)
        self._paused.__enter__()

    def finish(self) -> None:
        """end session -> continue generation (pairs with :meth:`begin`)."""
        self._paused.__exit__(None, None, None)

    def update(self, named: NamedTensors, weight_version: Optional[str] = None,
               manage_generation: bool = True) -> SyncStats:
        """Push every tensor of ``named`` to every server; generation is paused meanwhile.

        With pipeline parallelism every PP stage's source rank owns a sender (its own
        ``group_name`` and port) and calls ``update(..., manage_generation=False)`` between one
        ``begin()`` and one ``finish()`` made by a single rank (with barriers around), as slime does.
        """
        if self.group is None:
            self.connect()
        self.version += 1
        version = weight_version or str(self.version)
        stats, t0 = SyncStats(), time.perf_counter()
        paused = _PausedGeneration(self.calls, True, self.pause_mode, flush_wait_s=60.0)
        with paused if manage_generation else contextlib.nullcontext():
            buckets = bucket_named_tensors(named, self.bucket_bytes)
            sent = self._send_flattened(buckets, version) if self.flattened else self._send_tensors(buckets, version)
            for bucket in sent:
                stats.buckets += 1
                stats.tensors += len(bucket)
                stats.bytes += sum(t.numel() * t.element_size() for _, t in bucket)
        stats.seconds = time.perf_counter() - t0
        self.last_stats = stats
        logger.info("weights v%s -> %d servers: %d tensors, %.1f MiB, %d buckets, %.2fs", version,
                    len(self.calls.urls), stats.tensors, stats.bytes / 2**20, stats.buckets, stats.seconds)
        return stats

    def _post(self, bucket: list[tuple[str, torch.Tensor]], version: str, flat: bool) -> list[concurrent.futures.Future]:
        """/update_weights_from_distributed on every server: each posts its receive when the call arrives."""
        body = P.to_json(P.UpdateWeightsFromDistributedReqInput(
            names=[n for n, _ in bucket], dtypes=[dtype_name(t.dtype) for _, t in bucket],
            shapes=[list(t.shape) for _, t in bucket], group_name=self.group_name,
            flush_cache=flushes(self.pause_mode), weight_version=version,
            load_format="flattened_bucket" if flat else None,
        ))
        return self.calls.submit_all("/update_weights_from_distributed", body)

    def _one_by_one(self, bucket: list[tuple[str, torch.Tensor]], version: str) -> list:
        """One request, one broadcast per tensor (matched in order by the servers' posted receives)."""
        bucket = [(n, t.detach().to(self.device).contiguous()) for n, t in bucket]
        futures = self._post(bucket, version, flat=False)
        handles = [dist.broadcast(t, src=0, group=self.group, async_op=True) for _, t in bucket]
        for h in handles:
            h.wait()
        for f in futures:
            f.result()
        return bucket

    def _send_tensors(self, buckets: Iterable[list[tuple[str, torch.Tensor]]], version: str) -> Iterator[list]:
        for bucket in buckets:
            yield self._one_by_one(bucket, version)

    def _pack(self, tensors: list[torch.Tensor], slot: int) -> torch.Tensor:
        """The bucket's bytes back to back as one uint8 tensor: a view when they already lie so in
        one storage, else copied into buffer ``slot`` (one C++ loop over the tensors: per-tensor
        Python views cost more than the copy for small tensors). The destination views are kept
        for the next update, which has the same layout."""
        first = tensors[0]
        total = sum(t.numel() * t.element_size() for t in tensors)
        if first.device == self.device:
            pos = first.data_ptr()
            for t in tensors:
                if t.data_ptr() != pos or not t.is_contiguous():
                    break
                pos += t.numel() * t.element_size()
            else:
                storage = first.untyped_storage()
                start = first.data_ptr() - storage.data_ptr()
                if start + total <= storage.nbytes():  # one block of one storage: send it as it is
                    return torch.empty(0, dtype=torch.uint8, device=self.device).set_(storage, start, (total,))
        buf = self._buffers[slot]
        if buf is None or buf.numel() < total:
            self._buffers[slot] = buf = None  # free the old one first
            self._buffers[slot] = buf = torch.empty(total, dtype=torch.uint8, device=self.device)
        layout = tuple((t.dtype, t.shape) for t in tensors)
        cached = self._views[slot]
        if cached is None or cached[0] != layout or cached[1] is not buf:
            views, off = [], 0
            for dt, shape in layout:
                n = shape.numel() * dt.itemsize
                views.append(buf[off:off + n].view(dt).view(shape))
                off += n
            self._views[slot] = cached = (layout, buf, views)
        torch._foreach_copy_(cached[2], tensors)  # also moves CPU tensors to the GPU, makes them contiguous
        return buf[:total]

    def _send_flattened(self, buckets: Iterable[list[tuple[str, torch.Tensor]]], version: str) -> Iterator[list]:
        """One broadcast per bucket (SGLang's ``flattened_bucket``); the next bucket is packed by a helper
        thread while the current one is broadcast and loaded (torch's copy and gloo leave the GIL).
        Tensors of ``unpacked_min_bytes`` or more go as they are, in a tensor-by-tensor request of
        their own sent while the rest of their bucket is packed."""
        if self._packer is None:
            self._packer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="wsync-pack")
        big_bytes = self.unpacked_min_bytes

        def prepare(bucket: list, slot: int) -> tuple[list, list, Optional[concurrent.futures.Future]]:
            big, small = [], []
            for n, t in bucket:
                unpacked = big_bytes is not None and t.numel() * t.element_size() >= big_bytes
                (big if unpacked else small).append((n, t))
            packed = self._packer.submit(self._pack, [t.detach() for _, t in small], slot) if small else None
            return big, small, packed

        it = iter(buckets)
        nxt = next(it, None)
        pending = prepare(nxt, 0) if nxt is not None else None
        slot = 0
        try:
            while pending is not None:
                big, small, packed = pending
                if big:
                    yield self._one_by_one(big, version)
                futures = self._post(small, version, flat=True) if small else []  # receives posted meanwhile
                flat = packed.result() if packed is not None else None
                nxt = next(it, None)
                slot ^= 1
                pending = prepare(nxt, slot) if nxt is not None else None
                if flat is not None:
                    dist.broadcast(flat, src=0, group=self.group)
                    for f in futures:
                        f.result()
                    yield small
        finally:
            if pending is not None and pending[2] is not None:
                pending[2].cancel()
                with contextlib.suppress(BaseException):
                    pending[2].result()
            if self.device.type != "cpu":
                self._buffers, self._views = [None, None], [None, None]

    def close(self) -> None:
        if self.group is not None:
            try:
                self.calls.all("/destroy_weights_update_group", {"group_name": self.group_name})
            except WeightSyncError as e:
                logger.warning("destroy_weights_update_group: %s", e)
            destroy_custom_process_group(self.group)
            self.group = None
        if self._packer is not None:
            self._packer.shutdown(wait=True)
            self._packer = None
        self._buffers, self._views = [None, None], [None, None]
        self.calls.close()


class DiskWeightSender:
    """Fallback: write safetensors to ``directory`` (shared with the servers) and ask them to load it."""

    def __init__(self, urls: Sequence[str], directory: str, timeout_s: float = 600.0,
                 max_shard_mb: int = 4096, pause_mode: str = "abort"):
        self.calls = _ServerCalls(urls, timeout_s)
        self.directory = directory
        self.max_shard_bytes = max_shard_mb << 20
        self.pause_mode = pause_mode
        self.version = 0

    def save(self, named: NamedTensors) -> str:
        from safetensors.torch import save_file

        os.makedirs(self.directory, exist_ok=True)
        for f in os.listdir(self.directory):
            if f.endswith(".safetensors"):
                os.remove(os.path.join(self.directory, f))
        for i, shard in enumerate(bucket_named_tensors(named, self.max_shard_bytes)):
            save_file({n: t.detach().cpu().contiguous() for n, t in shard},
                      os.path.join(self.directory, f"model-{i:05d}.safetensors"), metadata={"format": "pt"})
        return self.directory

    def update(self, named: Optional[NamedTensors] = None, weight_version: Optional[str] = None,
               model_path: Optional[str] = None) -> None:
        """Save ``named`` (or use an existing checkpoint dir ``model_path``) and load it on every server."""
        path = model_path or self.save(named or [])
        self.version += 1
        body = P.to_json(P.UpdateWeightFromDiskReqInput(model_path=path, weight_version=weight_version or str(self.version),
                                                        flush_cache=flushes(self.pause_mode)))
        with _PausedGeneration(self.calls, False, self.pause_mode, flush_wait_s=60.0):
            self.calls.all("/update_weights_from_disk", body)

    def close(self) -> None:
        self.calls.close()


def _sglang_tensor_types() -> Optional[tuple[Any, Any]]:
    """SGLang's LocalSerializedTensor / FlattenedTensorBucket when SGLang is installed (GPU nodes)."""
    try:
        from sglang.srt.model_executor.model_runner_components.weight_updater import LocalSerializedTensor
        from sglang.srt.weight_sync.tensor_bucket import FlattenedTensorBucket
    except Exception:  # not installed (CPU), or moved in another version
        return None
    return LocalSerializedTensor, FlattenedTensorBucket


def patch_cuda_ipc_reductions() -> None:
    """Pickle CUDA tensors naming their GPU by UUID, not by index (SGLang's ``monkey_patch_torch_reductions``).

    torch's IPC handle carries the sender's device index; a server started with its own
    ``CUDA_VISIBLE_DEVICES`` numbers the GPUs differently and would open the wrong one. SGLang's
    server side reads either form; its trainer-side helpers apply this patch before pickling.
    """
    try:
        from sglang.srt.utils.patch_torch import monkey_patch_torch_reductions
    except ImportError as e:
        raise WeightSyncError(
            "colocated CUDA-IPC weight updates need SGLang's torch reductions in the trainer "
            f"(sglang=={P.SGLANG_VERSION_CHECKED}, the gpu extra): without them a handle names the GPU by "
            "index and a server with its own CUDA_VISIBLE_DEVICES opens the wrong one"
        ) from e
    monkey_patch_torch_reductions()


def _dumps(obj: Any) -> str:
    """Pickle with torch's ForkingPickler, base64: CUDA tensors become IPC handles, CPU tensors shared memory.

    CPU tensors are shared by shared-memory file name: the default "file_descriptor" strategy passes
    fds through multiprocessing's resource sharer, which only trusts processes with the sender's
    authkey (its children), not an independently started server.
    """
    from multiprocessing.reduction import ForkingPickler

    import torch.multiprocessing  # noqa: F401  (registers torch's reductions)

    strategy = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        buf = io.BytesIO()
        ForkingPickler(buf).dump(obj)
    finally:
        torch.multiprocessing.set_sharing_strategy(strategy)
    return base64.b64encode(buf.getvalue()).decode()


def serialize_named_tensors(named: list[tuple[str, torch.Tensor]], tp_size: int = 1) -> list[str]:
    """``serialized_named_tensors`` of /update_weights_from_tensor for an engine of TP 1, from this rank.

    The receiving process maps the tensors without copying them through HTTP. With SGLang installed
    each tensor is wrapped in its ``LocalSerializedTensor``, as ``sglang.srt.weight_sync.utils.update_weights``
    does. An engine of TP > 1 needs one handle set per TP rank, each made by the trainer rank on that
    rank's GPU (SGLang's rank r opens only entry r): :func:`gather_tp_payload`, not this.
    """
    if tp_size != 1:
        raise WeightSyncError(f"one trainer rank cannot serve an engine of TP {tp_size}: its TP rank r loads "
                              "serialized_named_tensors[r], handles made on rank r's GPU; use gather_tp_payload")
    if any(t.is_cuda for _, t in named):
        patch_cuda_ipc_reductions()
    types = _sglang_tensor_types()
    if types is not None:
        local_cls, _ = types
        return [_dumps([(n, local_cls(values=[_dumps(t)])) for n, t in named])]
    return [_dumps(named)]


def serialize_rank_tensors(named: list[tuple[str, torch.Tensor]]) -> list[tuple[str, str]]:
    """This trainer rank's own tensors, each pickled on its own (SGLang's ``named_tensors_batch``): the
    values that engine TP rank r, on this rank's GPU, opens from every ``LocalSerializedTensor``."""
    if any(t.is_cuda for _, t in named):
        patch_cuda_ipc_reductions()
    return [(n, _dumps(t.detach())) for n, t in named]


def tp_payload(per_rank: Sequence[list[tuple[str, str]]]) -> list[str]:
    """``serialized_named_tensors`` for an engine of ``len(per_rank)`` TP ranks from every rank's
    :func:`serialize_rank_tensors` (in engine TP rank order): per tensor one ``LocalSerializedTensor``
    whose value r is rank r's, and one copy of the list per TP rank, as SGLang's ``update_weights`` builds it."""
    types = _sglang_tensor_types()
    if types is None:
        raise WeightSyncError(f"an engine of TP {len(per_rank)} reads SGLang's LocalSerializedTensor: install "
                              f"sglang=={P.SGLANG_VERSION_CHECKED} (the gpu extra) in the trainer")
    local_cls, _ = types
    names = [[n for n, _ in rank] for rank in per_rank]
    if any(ns != names[0] for ns in names):
        raise WeightSyncError("trainer ranks serialized different tensors for one engine: "
                              + "; ".join(f"rank {r}: {ns[:3]}..." for r, ns in enumerate(names)))
    named = [(group[0][0], local_cls(values=[v for _, v in group])) for group in zip(*per_rank)]
    return [_dumps(named)] * len(per_rank)


def rank_payload(named: list[tuple[str, torch.Tensor]]) -> Any:
    """This rank's handles for one server TP rank on its GPU: per tensor one serialized value (SGLang's
    ``LocalSerializedTensor`` values) when SGLang is installed; without it (the CPU stand-in) one whole
    entry, which only an engine of TP 1 can read."""
    if _sglang_tensor_types() is None:
        return serialize_named_tensors(named)[0]
    return serialize_rank_tensors(named)


def engine_payload(per_rank: Sequence[Any]) -> list[str]:
    """``serialized_named_tensors`` for one engine from its TP ranks' :func:`rank_payload` (TP rank order)."""
    if any(isinstance(p, str) for p in per_rank):
        if len(per_rank) == 1:
            return [per_rank[0]]
        raise WeightSyncError(f"an engine of TP {len(per_rank)} reads SGLang's LocalSerializedTensor: install "
                              f"sglang=={P.SGLANG_VERSION_CHECKED} (the gpu extra) in the trainer")
    return tp_payload(per_rank)


def gather_engine_payloads(named: list[tuple[str, torch.Tensor]], group: dist.ProcessGroup,
                           feeds: Sequence[Sequence[int]]) -> Optional[list[list[str]]]:
    """Collective over ``group`` (the trainer ranks on some engines' GPUs). ``feeds[i][r]``: the group rank on
    engine i's TP rank r's GPU. Each rank serializes its own tensors once per engine TP rank it feeds; group
    rank 0 gets every engine's ``serialized_named_tensors`` (None elsewhere). The tensors must stay alive
    until the engines have loaded them."""
    rank, size = dist.get_rank(group), dist.get_world_size(group)
    mine = {(i, r): rank_payload(named) for i, ranks in enumerate(feeds) for r, g in enumerate(ranks) if g == rank}
    gathered: Optional[list] = [None] * size if rank == 0 else None
    dist.gather_object(mine, gathered, group=group, group_dst=0)
    if gathered is None:
        return None
    merged = {k: v for part in gathered for k, v in part.items()}
    return [engine_payload([merged[(i, r)] for r in range(len(ranks))]) for i, ranks in enumerate(feeds)]


def gather_tp_payload(named: list[tuple[str, torch.Tensor]], group: dist.ProcessGroup) -> Optional[list[str]]:
    """One engine of TP = group size, group rank r on TP rank r's GPU: its ``serialized_named_tensors`` on
    group rank 0 (None elsewhere); :func:`gather_engine_payloads` for one engine."""
    out = gather_engine_payloads(named, group, [tuple(range(dist.get_world_size(group)))])
    return out[0] if out is not None else None


class TensorWeightSender:
    """Colocated mode: servers and trainer share the devices of a node (many nodes: one sender per node,
    megatron_mmr1.rollout.colocate).

        sender.release()                      # before training: servers give their GPU memory back
        ...train...
        sender.update(named, weight_version)  # after: weights back in, KV cache + graphs, generation on
    """

    def __init__(self, urls: Sequence[str], bucket_mb: int = 512, timeout_s: float = 600.0,
                 engine_tp_size: int = 1, pause_mode: str = "abort",
                 feeds: Optional[Sequence[Sequence[int]]] = None):
        self.calls = _ServerCalls(urls, timeout_s)
        self.bucket_bytes = int(bucket_mb) << 20
        self.engine_tp_size = engine_tp_size
        self.feeds = [tuple(f) for f in feeds] if feeds is not None else None
        """With ``update(..., group=)``: per url, the group rank on each of its TP ranks' GPUs
        (:func:`gather_engine_payloads`); None: every url is one engine of ``engine_tp_size`` over the group."""
        self.pause_mode = pause_mode
        self.version = 0
        self.released: Optional[set[str]] = None
        """Memory tags the servers hold released (set by release(), cleared by update())."""

    def release(self, tags: Optional[Sequence[str]] = None) -> None:
        """Before training: pause generation (SGLang asserts an idle server), then release ``tags``
        (default: weights, KV cache and CUDA graphs). Needs ``--enable-memory-saver`` on the servers."""
        pause_generation(self.calls, self.pause_mode)
        try:
            self.calls.all("/release_memory_occupation",
                           P.to_json(P.MemoryOccupationReqInput(tags=list(tags) if tags else None)))
        except BaseException:
            continue_generation(self.calls)
            raise
        self.released = set(tags or P.GPU_MEMORY_TYPES)

    def _resume(self, tags: list[str]) -> None:
        if tags:
            self.calls.all("/resume_memory_occupation", P.to_json(P.MemoryOccupationReqInput(tags=tags)))
            self.released = (self.released or set()) - set(tags)

    def update(self, named: NamedTensors, weight_version: Optional[str] = None,
               before_kv: Optional[Callable[[], None]] = None,
               group: Optional[dist.ProcessGroup] = None) -> SyncStats:
        """After training: resume weights, push buckets, resume the rest of what release() freed
        (KV cache, CUDA graphs), then continue generation (slime's order).

        ``before_kv`` runs after the weights are in and before the KV cache comes back (the trainer
        offloads its own state there). Without a preceding release() only the update runs.

        ``group``: the trainer ranks on the servers' GPUs (``feeds``; without it one engine of
        ``engine_tp_size``, group rank r on TP rank r's GPU); every one calls ``update`` with its own full
        tensors, group rank 0 (whose ``urls`` name the servers) posts each server its gathered payload
        (:func:`gather_engine_payloads`).
        """
        if group is not None:
            if self.feeds is None and dist.get_world_size(group) != self.engine_tp_size:
                raise WeightSyncError(f"engine TP {self.engine_tp_size} needs a group of as many trainer ranks, "
                                      f"got {dist.get_world_size(group)}")
            if dist.get_rank(group) != 0:
                return self._share_tp(named, group)
        self.version += 1
        version = weight_version or str(self.version)
        stats, t0 = SyncStats(), time.perf_counter()
        released = set(self.released or ())
        self._resume([t for t in ("weights",) if t in released])

        def resume_rest() -> None:
            if before_kv is not None:
                before_kv()
            self._resume([t for t in P.GPU_MEMORY_TYPES if t in released and t != "weights"])

        with _PausedGeneration(self.calls, True, self.pause_mode, flush_wait_s=60.0, before_continue=resume_rest):
            for bucket in bucket_named_tensors(named, self.bucket_bytes):
                keep = [(n, t.detach().contiguous()) for n, t in bucket]  # alive until the server has read them
                if group is not None:
                    error: Optional[str] = None
                    try:
                        payloads = gather_engine_payloads(keep, group, self._feeds(group))
                        assert payloads is not None  # group rank 0
                        futures = [self.calls.pool.submit(
                            self.calls.call, url, "/update_weights_from_tensor", P.to_json(P.UpdateWeightsFromTensorReqInput(
                                serialized_named_tensors=payload, flush_cache=flushes(self.pause_mode),
                                weight_version=version))) for url, payload in zip(self.calls.urls, payloads)]
                        for f in futures:
                            f.result()
                    except BaseException as e:
                        error = f"{type(e).__name__}: {e}"
                        raise
                    finally:  # the other ranks keep their tensors until the engine has loaded them
                        dist.broadcast_object_list([error], group=group, group_src=0)
                else:
                    def body() -> dict:
                        return P.to_json(P.UpdateWeightsFromTensorReqInput(
                            serialized_named_tensors=serialize_named_tensors(keep, self.engine_tp_size),
                            flush_cache=flushes(self.pause_mode), weight_version=version))

                    if keep and keep[0][1].is_cuda:
                        self.calls.all("/update_weights_from_tensor", body())
                    else:  # CPU shared memory is unlinked once a receiver maps it: one handle set per server
                        for url in self.calls.urls:
                            self.calls.call(url, "/update_weights_from_tensor", body())
                stats.buckets += 1
                stats.tensors += len(keep)
                stats.bytes += sum(t.numel() * t.element_size() for _, t in keep)
        self.released = None
        stats.seconds = time.perf_counter() - t0
        return stats

    def _share_tp(self, named: NamedTensors, group: dist.ProcessGroup) -> SyncStats:
        """A group rank other than 0: hand this rank's tensors to group rank 0, bucket by bucket (the same
        buckets, the tensors being the same), each kept alive until the engine has loaded it."""
        stats, t0 = SyncStats(), time.perf_counter()
        for bucket in bucket_named_tensors(named, self.bucket_bytes):
            keep = [(n, t.detach().contiguous()) for n, t in bucket]
            gather_engine_payloads(keep, group, self._feeds(group))
            result: list = [None]
            dist.broadcast_object_list(result, group=group, group_src=0)
            if result[0] is not None:
                raise WeightSyncError(f"engine TP rank 0's sender failed: {result[0]}")
            stats.buckets += 1
            stats.tensors += len(keep)
            stats.bytes += sum(t.numel() * t.element_size() for _, t in keep)
        stats.seconds = time.perf_counter() - t0
        return stats

    def _feeds(self, group: dist.ProcessGroup) -> list[tuple[int, ...]]:
        if self.feeds is not None:
            return self.feeds
        return [tuple(range(dist.get_world_size(group)))] * len(self.calls.urls)

    def close(self) -> None:
        self.calls.close()
