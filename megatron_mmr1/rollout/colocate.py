"""Colocated weight sync on many nodes and to servers of TP > 1: who holds, who serializes, who posts.

What the layout is (torchrun; ``tools/launch_sglang.py`` on every node, ``examples/launch/run_node.sh``):

* trainer rank ``g`` runs on node ``g // gpus_per_node``, on that node's GPU ``g % gpus_per_node``;
* ``rollout.server_urls`` lists the servers node by node (each node's url file in node order), and a node's
  server ``k`` runs on its GPUs ``[k * server_tp, (k + 1) * server_tp)``.

What SGLang needs (0.5.23, ``update_weights_from_tensor``: ``TpModelWorker`` deserializes
``serialized_named_tensors[tp_rank]``, ``weight_updater._unwrap_tensor`` opens value ``tp_rank`` of each
``LocalSerializedTensor`` and moves it to its own GPU): every TP rank gets the full tensors, and a CUDA-IPC
handle opens only on the node that made it. So, per bucket of weights (slime's ``UpdateWeightFromTensor``,
SGLang's ``weight_sync.utils.update_weights``):

* every trainer rank holds the full bucket on its own GPU: TP-gathered by ``iter_hf_state`` (all TP ranks
  gather), PP-gathered by :func:`full_model_tensors` (the owning stage broadcasts over the PP group);
* the trainer rank on the GPU of server TP rank ``r`` serializes entry ``r`` (the server's copy stays on
  its GPU);
* one sender per node (its first rank on a server GPU) gathers them over a node-local gloo group and posts
  to its own node's servers only.

The plan is pure (:func:`colocated_plan`, :func:`standin_plan`); :class:`ColocatedSync` builds the groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterator, Optional, Sequence

import torch
import torch.distributed as dist

NamedTensors = Iterator[tuple[str, torch.Tensor]]


class LayoutError(ValueError):
    """A trainer / server layout the colocated sync cannot serve (one line naming the key)."""


@dataclass(frozen=True)
class ServerSlot:
    url_index: int
    """Position in rollout.server_urls."""
    node: int
    ranks: tuple[int, ...]
    """``ranks[r]``: the trainer rank on server TP rank r's GPU (it serializes entry r)."""


@dataclass(frozen=True)
class NodeSync:
    node: int
    ranks: tuple[int, ...]
    """The node's gather group: its trainer ranks on a server GPU, in rank order."""
    servers: tuple[ServerSlot, ...]

    @property
    def sender(self) -> int:
        """The rank that gathers the node's handles and posts to its servers (group rank 0)."""
        return self.ranks[0]

    def feeds(self) -> list[tuple[int, ...]]:
        """Per server of this node: the group rank on each of its TP ranks' GPUs."""
        return [tuple(self.ranks.index(g) for g in s.ranks) for s in self.servers]


def check_servers_per_node(num_servers: int, nnodes: int) -> None:
    """Colocated servers sit on every node alike (each node's sender feeds its own)."""
    if num_servers < 1 or num_servers % nnodes:
        raise LayoutError(f"rollout.num_servers={num_servers} (or len(rollout.server_urls)): colocated servers must be "
                          f"the same number on each of the {nnodes} nodes")


def colocated_plan(world_size: int, gpus_per_node: int, num_servers: int, server_tp: int) -> list[NodeSync]:
    """Per node: its servers, the trainer rank on each server GPU, and its sender. Raises LayoutError."""
    if gpus_per_node < 1 or world_size % gpus_per_node:
        raise LayoutError(f"colocated weight sync: {world_size} trainer ranks are not whole nodes of {gpus_per_node} "
                          "GPUs (LOCAL_WORLD_SIZE); run the same number of ranks on every node")
    nnodes = world_size // gpus_per_node
    if server_tp > gpus_per_node:
        raise LayoutError(f"rollout.server_tp={server_tp} is larger than a node's {gpus_per_node} GPUs: a colocated "
                          "server would span nodes, and a CUDA-IPC handle opens only on its own node")
    if gpus_per_node % server_tp:
        raise LayoutError(f"rollout.server_tp={server_tp} does not divide a node's {gpus_per_node} GPUs: colocated "
                          "servers would not align with node boundaries")
    check_servers_per_node(num_servers, nnodes)
    per_node = num_servers // nnodes
    if per_node * server_tp > gpus_per_node:
        raise LayoutError(f"rollout.num_servers={num_servers}: {per_node} servers of TP {server_tp} per node need "
                          f"{per_node * server_tp} GPUs, a node has {gpus_per_node}")
    plan = []
    for node in range(nnodes):
        first = node * gpus_per_node
        servers = tuple(ServerSlot(node * per_node + k, node, tuple(range(first + k * server_tp, first + (k + 1) * server_tp)))
                        for k in range(per_node))
        plan.append(NodeSync(node, tuple(g for s in servers for g in s.ranks), servers))
    return plan


def standin_plan(num_servers: int) -> list[NodeSync]:
    """The CPU stand-ins (rollout.backend=local) are processes rank 0 started on its own node: rank 0 feeds
    every one (each its own shared-memory handles: a receiver unlinks what it maps)."""
    return [NodeSync(0, (0,), tuple(ServerSlot(i, 0, (0,)) for i in range(num_servers)))]


def full_model_tensors(stage_named: Callable[[], NamedTensors], pp_rank: int, pp: int,
                       pp_group: Optional[dist.ProcessGroup], device: torch.device,
                       bucket_bytes: int = 512 << 20) -> NamedTensors:
    """Collective over the PP group: every stage's (name, full tensor), in stage order, on every rank.

    ``stage_named`` (this rank's own stage, e.g. ``iter_hf_state``) is called on the owning stage only; it
    broadcasts each of its buckets (names, shapes, dtypes, then the tensors) to the other stages.
    """
    from megatron_mmr1.rollout.weight_sync import bucket_named_tensors

    if pp == 1:
        yield from stage_named()
        return
    for stage in range(pp):
        if stage == pp_rank:
            for bucket in bucket_named_tensors(stage_named(), bucket_bytes):
                bucket = [(n, t.detach().contiguous()) for n, t in bucket]
                dist.broadcast_object_list([[(n, tuple(t.shape), t.dtype) for n, t in bucket]],
                                           group=pp_group, group_src=stage)
                for _, t in bucket:
                    dist.broadcast(t, group=pp_group, group_src=stage)
                yield from bucket
            dist.broadcast_object_list([None], group=pp_group, group_src=stage)
            continue
        while True:
            meta: list = [None]
            dist.broadcast_object_list(meta, group=pp_group, group_src=stage)
            if meta[0] is None:
                break
            bucket = [(n, torch.empty(shape, dtype=dtype, device=device)) for n, shape, dtype in meta[0]]
            for _, t in bucket:
                dist.broadcast(t, group=pp_group, group_src=stage)
            yield from bucket


def check_on_this_node(urls: Sequence[str], node: int) -> None:
    """A node's servers must run on the node that feeds them (its handles open nowhere else): a url whose host
    is not one of this machine's addresses means rollout.server_urls is not listed node by node."""
    from urllib.parse import urlsplit

    from megatron_mmr1.rollout.servers import is_local_address

    for url in urls:
        host = urlsplit(url).hostname or ""
        if not is_local_address(host):
            raise LayoutError(f"rollout.server_urls: {url} is fed by node {node}'s trainer ranks but is not on this host; "
                              "list the servers node by node, in the trainer's node order (a CUDA-IPC handle opens "
                              "only on its own node)")


class ColocatedSync:
    """Every trainer rank builds one (collective: one gloo group per node). Ranks of a node group get a
    ``TensorWeightSender`` for the node's servers; its group rank 0 posts, the others hand their handles over."""

    def __init__(self, plan: Sequence[NodeSync], urls: Sequence[str], make_sender: Callable, rank: int):
        self.group: Optional[dist.ProcessGroup] = None
        self.node: Optional[NodeSync] = None
        for node in plan:  # every rank creates every group, in the same order
            group = dist.new_group(list(node.ranks), backend="gloo")
            if rank in node.ranks:
                self.group, self.node = group, node
        self.sender = None
        if self.node is not None:
            node_urls = [urls[s.url_index] for s in self.node.servers]
            check_on_this_node(node_urls, self.node.node)
            self.sender = make_sender(node_urls, self.node.feeds())

    @property
    def posts(self) -> bool:
        """This rank talks to its node's servers (release, resume, updates)."""
        return self.node is not None and self.node.sender == dist.get_rank()
