"""Where a weight sender binds its update group: its own node's address, never another host's.

In a multi-node run every pipeline stage's source rank opens its own update group; the stages on
nodes other than node 0 cannot bind ``rollout.weight_sync_master_address`` (node 0's address)."""


import pytest

from megatron_mmr1.config import RolloutConfig
from megatron_mmr1.rollout.servers import NODE_ADDR_ENV, is_local_address, local_sync_address, make_weight_sender

OTHER_HOST = "10.255.255.1"  # a private address no interface of this machine has



def test_stage_on_another_node_binds_its_own_address(monkeypatch):
    monkeypatch.delenv(NODE_ADDR_ENV, raising=False)
    assert not is_local_address(OTHER_HOST)
    sender = make_weight_sender(RolloutConfig(weight_sync_master_address=OTHER_HOST), ["http://127.0.0.1:1"])
    try:
        assert sender.master_address != OTHER_HOST
        assert is_local_address(sender.master_address)  # the update group can listen there
    finally:
        sender.close()


def test_the_launchers_node_address_wins(monkeypatch):
    monkeypatch.setenv(NODE_ADDR_ENV, "127.0.0.1")
    sender = make_weight_sender(RolloutConfig(weight_sync_master_address=OTHER_HOST), ["http://127.0.0.1:1"])
    try:
        assert sender.master_address == "127.0.0.1"
    finally:
        sender.close()


@pytest.mark.parametrize("configured,expected", [(None, "127.0.0.1"), ("127.0.0.1", "127.0.0.1"),
                                                 ("localhost", "localhost")])
def test_an_address_of_this_host_is_kept(monkeypatch, configured, expected):
    monkeypatch.delenv(NODE_ADDR_ENV, raising=False)
    assert local_sync_address(configured) == expected
