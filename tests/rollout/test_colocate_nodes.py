"""Colocated weight sync on two "nodes": 4 gloo ranks as 2 nodes x 2 GPUs (LOCAL_WORLD_SIZE=2), trainer TP1
PP2 DP2 (megatron puts stage 0 on node 0, stage 1 on node 1), one server of TP 2 per node, or two of TP 1.

Checks what SGLang 0.5.23 needs from ``update_weights_from_tensor`` (``TpModelWorker``: TP rank r
deserializes ``serialized_named_tensors[r]``; ``weight_updater._unwrap_tensor(t, tp_rank=r)`` opens value r
of each ``LocalSerializedTensor``; a CUDA-IPC handle opens only on its own node), decoded here with SGLang's
own ``MultiprocessingSerializer`` and ``_unwrap_tensor`` in the stand-in servers:

* each node's server gets every weight of both pipeline stages exactly once (the other node's stage
  arrives by the PP broadcast, never as a handle from the other node);
* server TP rank r's tensors were serialized by the trainer rank on the same node's GPU r.

CPU tensors travel as shared memory, as CUDA tensors travel as IPC handles on a GPU; the pinned SGLang
wheel (``make env``) is importable in the ranks and servers, as in test_colocate_tp_payload.py.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import requests
import torch

from megatron_mmr1.utils.net import free_port, wait_healthy
from tests.rollout.helpers import ROOT
from tests.rollout.test_sglang_contract import sglang_env

SERVERS = textwrap.dedent("""
    import asyncio, sys
    from tests.rollout.sglang_app import install_placeholders
    install_placeholders()
    import torch
    from aiohttp import web
    from sglang.srt.model_executor.model_runner_components.weight_updater import _unwrap_tensor
    from sglang.srt.utils import MultiprocessingSerializer

    def app(log):
        async def handle(request):
            body = await request.json() if request.method == "POST" and request.can_read_body else None
            if request.path == "/_log":
                return web.json_response(log)
            if request.path in ("/health", "/get_server_info"):
                return web.json_response({"tp_size": int(sys.argv[1])})
            entry = {"path": request.path}
            if request.path == "/update_weights_from_tensor":  # what each of the server's TP ranks loads
                entry["tp_ranks"] = []
                for r, payload in enumerate(body["serialized_named_tensors"]):
                    named = MultiprocessingSerializer.deserialize(payload)
                    got = {n: _unwrap_tensor(t, tp_rank=r, device=torch.device("cpu")) for n, t in named}
                    origin = int(got.pop("origin"))
                    entry["tp_ranks"].append({"origin": origin, "tensors": {
                        n: [list(t.shape), str(t.dtype), float(t.double().sum())] for n, t in got.items()}})
            log.append(entry)
            return web.json_response({"success": True, "message": "ok"})
        a = web.Application(client_max_size=2**30)
        a.router.add_route("*", "/{tail:.*}", handle)
        return a

    async def main():
        for port in sys.argv[2:]:
            runner = web.AppRunner(app([]))
            await runner.setup()
            await web.TCPSite(runner, "127.0.0.1", int(port)).start()
        await asyncio.Event().wait()

    asyncio.run(main())
""")

RANK = textwrap.dedent("""
    import faulthandler, os, sys
    faulthandler.dump_traceback_later(240, exit=True)  # a hang shows where each rank waits
    rank, port, urls, work = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
    os.environ.update(RANK=str(rank), WORLD_SIZE="4", LOCAL_RANK=str(rank % 2), LOCAL_WORLD_SIZE="2",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=port, OMP_NUM_THREADS="1")
    from tests.rollout.sglang_app import install_placeholders
    install_placeholders()
    import torch
    from megatron.core import parallel_state as mpu
    from megatron_mmr1 import parallel
    from megatron_mmr1.config import load_config
    from megatron_mmr1.models import hf_adapter
    from megatron_mmr1.rollout import weight_sync
    from megatron_mmr1.training.policy import RolloutWeightSync
    from tests.rollout.test_colocate_nodes import stage_tensors

    cfg = load_config(None, ["training.mode=grpo", "rollout.colocate=true", "rollout.backend=sglang",
                             "parallel.backend=gloo", "parallel.pp=2", f"rollout.server_urls={urls}",
                             "rollout.weight_sync_bucket_mb=1"], world_size=4, nnodes=2)
    parallel.initialize(cfg.parallel)
    stage = mpu.get_pipeline_model_parallel_rank()
    assert stage == rank // 2, (rank, stage)  # megatron's order: stage 0 on node 0, stage 1 on node 1
    hf_adapter.iter_hf_state = lambda chunks, **kw: iter(stage_tensors(stage))
    make = weight_sync.rank_payload  # tag each rank's handles with the rank that made them
    weight_sync.rank_payload = lambda named: make(list(named) + [("origin", torch.tensor([rank]))])
    sync = RolloutWeightSync(cfg, urls.strip("[]").split(","), work_dir=work)
    assert sync.posts == (rank % 2 == 0), (rank, sync.posts)  # node n's first rank posts
    sync.release()
    sync.sync([], "7")
    sync.close()
    parallel.destroy()
    print("rank done", flush=True)
""")


def stage_tensors(stage: int) -> list[tuple[str, torch.Tensor]]:
    """Pipeline stage ``stage``'s full HF tensors: 5 x 300 KiB fp32 (buckets of 1 MiB: several per stage)
    and a bf16 bias (a dtype change starts a bucket)."""
    g = torch.Generator().manual_seed(10 + stage)
    out = [(f"model.layers.{stage}.mlp.w{i}.weight", torch.randn(256, 300, generator=g)) for i in range(5)]
    return out + [(f"model.layers.{stage}.self_attn.q_proj.bias", torch.randn(96, generator=g).to(torch.bfloat16))]


@pytest.mark.parametrize("server_tp,per_node", [(2, 1), (1, 2)], ids=["one-tp2-server-per-node", "two-tp1-servers-per-node"])
def test_each_node_server_gets_all_stages_once_from_its_own_nodes_gpus(tmp_path, server_tp, per_node):
    env = sglang_env()
    ports = [free_port() for _ in range(2 * per_node)]
    log = open(tmp_path / "servers.log", "w")
    servers = subprocess.Popen([sys.executable, "-W", "ignore", "-c", SERVERS, str(server_tp), *map(str, ports)], env=env,
                               cwd=str(ROOT), stdout=log, stderr=subprocess.STDOUT)
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        for u in urls:
            wait_healthy(u, servers, 300, tmp_path / "servers.log")
        master = free_port()
        outs = [tmp_path / f"rank{r}.log" for r in range(4)]
        ranks = [subprocess.Popen([sys.executable, "-W", "ignore", "-c", RANK, str(r), str(master),
                                   "[" + ",".join(urls) + "]", str(tmp_path)], env=env, cwd=str(ROOT),
                                  stdout=open(outs[r], "w"), stderr=subprocess.STDOUT) for r in range(4)]
        for r, p in enumerate(ranks):
            p.wait(timeout=300)
            out = outs[r].read_text()
            assert p.returncode == 0 and "rank done" in out, f"rank {r}:\n{out[-3000:]}"
        logs = [requests.get(u + "/_log", timeout=30).json() for u in urls]
    finally:
        servers.terminate()
        servers.wait(timeout=30)
        log.close()

    want = {n: [list(t.shape), str(t.dtype), float(t.double().sum())] for s in (0, 1) for n, t in stage_tensors(s)}
    for i, calls in enumerate(logs):  # server i: node i // per_node, GPUs from (i % per_node) * server_tp
        node, first_gpu = i // per_node, (i % per_node) * server_tp
        paths = [c["path"] for c in calls]
        assert paths[:2] == ["/pause_generation", "/release_memory_occupation"], paths
        assert paths[-2:] == ["/resume_memory_occupation", "/continue_generation"], paths
        updates = [c for c in calls if c["path"] == "/update_weights_from_tensor"]
        assert len(updates) >= 4, paths  # several buckets
        for r in range(server_tp):
            got: dict = {}
            for u in updates:
                part = u["tp_ranks"][r]
                assert part["origin"] == 2 * node + first_gpu + r, (i, r, part["origin"])  # same node, same GPU
                assert not set(part["tensors"]) & set(got), "a tensor arrived twice"
                got.update(part["tensors"])
            assert got.keys() == want.keys(), (node, r, sorted(got))
            for n in want:
                assert got[n][:2] == want[n][:2] and abs(got[n][2] - want[n][2]) < 1e-6 * max(1, abs(want[n][2])), n
