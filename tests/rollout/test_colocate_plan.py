"""Which trainer rank feeds which colocated server TP rank, node by node (megatron_mmr1.rollout.colocate).

References: SGLang 0.5.23 ``update_weights_from_tensor`` (TP rank r deserializes
``serialized_named_tensors[r]`` and opens value r of each ``LocalSerializedTensor``; a CUDA-IPC handle opens
only on the node that made it); slime ``update_weight_from_tensor.py`` (``gather_object`` over a gloo group of
the train ranks on one engine's GPUs, to the engine's first rank); ``tools/launch_sglang.py`` (a node's server
k on GPUs [k*tp, (k+1)*tp)); torchrun (rank = node * nproc_per_node + local GPU).
"""

from __future__ import annotations

import pytest

from megatron_mmr1.rollout.colocate import LayoutError, check_on_this_node, colocated_plan, standin_plan


def test_two_nodes_of_eight_one_tp8_server_each():
    """72B on 2 x 8 H100 (trainer TP8 PP1 DP2, servers TP8): node n's server is fed by ranks 8n..8n+7,
    server TP rank r by the rank on local GPU r; node n's first rank posts."""
    plan = colocated_plan(world_size=16, gpus_per_node=8, num_servers=2, server_tp=8)
    assert [n.node for n in plan] == [0, 1]
    for n in plan:
        (server,) = n.servers
        assert server.url_index == n.node and server.node == n.node
        assert server.ranks == tuple(range(8 * n.node, 8 * n.node + 8))
        assert [g % 8 for g in server.ranks] == list(range(8))  # TP rank r <- local GPU r
        assert n.sender == 8 * n.node and n.ranks == server.ranks
        assert n.feeds() == [tuple(range(8))]


def test_two_tp4_servers_per_node():
    """Trainer TP4 PP2 (any trainer layout: every rank holds the full tensors), servers TP4, two per node:
    url order is node by node, server k of a node on its GPUs 4k..4k+3."""
    plan = colocated_plan(world_size=16, gpus_per_node=8, num_servers=4, server_tp=4)
    slots = [(s.url_index, s.node, s.ranks) for n in plan for s in n.servers]
    assert slots == [(0, 0, (0, 1, 2, 3)), (1, 0, (4, 5, 6, 7)), (2, 1, (8, 9, 10, 11)), (3, 1, (12, 13, 14, 15))]
    assert [n.sender for n in plan] == [0, 8]
    assert plan[1].feeds() == [(0, 1, 2, 3), (4, 5, 6, 7)]  # group ranks of node 1's gather group
    for n in plan:  # a node's servers are fed from that node only
        assert all(g // 8 == n.node for s in n.servers for g in s.ranks)


def test_fewer_servers_than_gpus_leave_ranks_out_of_the_group():
    plan = colocated_plan(world_size=4, gpus_per_node=2, num_servers=2, server_tp=1)
    assert [(n.ranks, n.sender) for n in plan] == [((0,), 0), ((2,), 2)]


def test_standins_are_fed_by_rank_0():
    (node,) = standin_plan(3)
    assert node.ranks == (0,) and [s.ranks for s in node.servers] == [(0,)] * 3 and node.feeds() == [(0,)] * 3


@pytest.mark.parametrize("args,needle", [
    ((16, 8, 1, 16), r"^rollout.server_tp=16 is larger than a node's 8 GPUs: a colocated server would span nodes"),
    ((16, 8, 4, 3), r"^rollout.server_tp=3 does not divide a node's 8 GPUs"),
    ((16, 8, 3, 2), r"^rollout.num_servers=3 .*the same number on each of the 2 nodes"),
    ((16, 8, 6, 4), r"^rollout.num_servers=6: 3 servers of TP 4 per node need 12 GPUs, a node has 8"),
    ((12, 8, 2, 4), r"^colocated weight sync: 12 trainer ranks are not whole nodes of 8 GPUs"),
])
def test_layouts_that_cannot_work_are_one_line(args, needle):
    with pytest.raises(LayoutError, match=needle) as e:
        colocated_plan(*args)
    assert "\n" not in str(e.value)


def test_a_server_listed_under_another_node_is_refused():
    """Node n's sender can only feed servers on its own host (its CUDA-IPC handles open nowhere else)."""
    check_on_this_node(["http://127.0.0.1:30010", "http://localhost:30011"], 0)
    with pytest.raises(LayoutError, match=r"^rollout.server_urls: http://192.0.2.7:30010 is fed by node 1's trainer "
                                          r"ranks but is not on this host"):
        check_on_this_node(["http://127.0.0.1:30010", "http://192.0.2.7:30010"], 1)  # TEST-NET-1: never local
