"""A torch.distributed group next to (not instead of) the process's default group.

The trainer already runs its own default group (torchrun); the weight-update group joins the
trainer's sender rank with the rollout engines' ranks, rendezvousing on its own TCP address.
It mirrors the helper SGLang uses on its side (``sglang.srt.utils.common.init_custom_process_group``,
checked at SGLang 0.5.23), with one difference: the store is built here rather than through
``torch.distributed.rendezvous``. Under torchrun (``TORCHELASTIC_USE_AGENT_STORE=True``) that
rendezvous makes every rank, rank 0 included, a *client* of a store it assumes the elastic agent
hosts at the given address; nobody hosts our free port, so the trainer and the servers would wait
for each other until the timeout. Rank 0 (the trainer) always hosts the store here; the servers'
ranks are clients either way. gloo on CPU, nccl on GPU.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Optional
from urllib.parse import urlparse

import torch.distributed as dist
from torch.distributed.distributed_c10d import (
    Backend,
    PrefixStore,
    _new_process_group_helper,
    _world,
    default_pg_timeout,
)


def init_custom_process_group(
    backend: str,
    init_method: str,
    world_size: int,
    rank: int,
    group_name: str,
    timeout: Optional[timedelta] = None,
) -> dist.ProcessGroup:
    """Create a process group of ``world_size`` ranks meeting at ``init_method`` (tcp://host:port).

    Ranks inside the group are 0..world_size-1 (the trainer is 0); collectives take ``group=pg``
    and ``src`` as a group rank.
    """
    timeout = timeout or default_pg_timeout
    url = urlparse(init_method)
    if url.scheme != "tcp" or url.hostname is None or url.port is None:
        raise ValueError(f"weight-update group: init_method must be tcp://host:port, got {init_method!r}")
    store = dist.TCPStore(url.hostname, url.port, world_size, is_master=rank == 0, timeout=timeout,
                          multi_tenant=True)
    store = PrefixStore(group_name, store)  # several groups may share one TCP store
    pg, _ = _new_process_group_helper(
        world_size, rank, [], Backend(backend), store, group_name=group_name, timeout=timeout
    )
    _world.pg_group_ranks[pg] = {i: i for i in range(world_size)}
    return pg


def destroy_custom_process_group(pg: dist.ProcessGroup) -> None:
    dist.destroy_process_group(pg)
