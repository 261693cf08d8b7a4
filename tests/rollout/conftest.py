from types import SimpleNamespace

import pytest

from megatron_mmr1.rollout.servers import LocalServerGroup
from tests.rollout.helpers import RouterProcess, make_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_ckpt(tmp_path_factory):
    """(dir, model, tokenizer) of a random tiny Qwen2.5-VL saved in HF format."""
    d = tmp_path_factory.mktemp("tiny_qwen25vl")
    model, tok = make_tiny_checkpoint(d, seed=0)
    return d, model, tok


@pytest.fixture(scope="session")
def servers(tiny_ckpt, tmp_path_factory):
    """Two stand-in servers on the tiny checkpoint, shared by all rollout tests (start-up is the
    slow part). Tests that change their weights put the checkpoint back; none kills them."""
    group = LocalServerGroup(str(tiny_ckpt[0]), 2, str(tmp_path_factory.mktemp("server_logs")),
                             extra_args=["--log-level", "WARNING"])
    try:
        yield [SimpleNamespace(url=u) for u in group.start(timeout_s=180)]
    finally:
        group.stop()


@pytest.fixture(scope="session")
def router(servers, tmp_path_factory):
    r = RouterProcess([s.url for s in servers], tmp_path_factory.mktemp("router_logs"))
    try:
        yield r.wait_healthy(60)
    finally:
        r.kill()
