"""Colocated weight sync to an engine of TP 2: each trainer rank serializes its own tensors, group rank 0
gathers them into SGLang's ``serialized_named_tensors`` (one entry per TP rank), and SGLang's own loader
code (``TpModelWorker.deserialize_own_rank``'s ``MultiprocessingSerializer.deserialize(payload[tp_rank])``,
then ``weight_updater._unwrap_tensor(t, tp_rank)``) gives each TP rank the tensors of the trainer rank on
its GPU. Before, one rank sent one handle set for every rank: TP rank 1 opened rank 0's tensors.

Two gloo ranks in subprocesses with the pinned SGLang wheel importable (tests/rollout/sglang_app.py's
placeholders); CPU tensors travel as shared memory, as CUDA tensors travel as IPC handles on a GPU.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from megatron_mmr1.rollout.weight_sync import WeightSyncError, serialize_named_tensors
from megatron_mmr1.utils.net import free_port
from tests.rollout.helpers import ROOT
from tests.rollout.test_sglang_contract import sglang_env

RANK = textwrap.dedent("""
    import sys
    from datetime import timedelta
    from tests.rollout.sglang_app import install_placeholders
    install_placeholders()
    import torch, torch.distributed as dist
    from megatron_mmr1.rollout.weight_sync import gather_tp_payload

    rank, port = int(sys.argv[1]), int(sys.argv[2])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", world_size=2, rank=rank,
                            timeout=timedelta(seconds=60))

    def named(r):  # trainer rank r's full tensors: different on every rank, so a mix-up shows
        g = torch.Generator().manual_seed(100 + r)
        return [("model.layers.0.mlp.up_proj.weight", torch.randn(4, 6, generator=g)),
                ("lm_head.weight", torch.randn(3, 6, generator=g).to(torch.bfloat16))]

    mine = named(rank)
    payload = gather_tp_payload(mine, dist.group.WORLD)
    if rank == 0:
        from sglang.srt.model_executor.model_runner_components.weight_updater import _unwrap_tensor
        from sglang.srt.utils import MultiprocessingSerializer
        assert len(payload) == 2 and all(isinstance(p, str) for p in payload)
        for tp_rank in range(2):  # what SGLang's TP rank tp_rank loads
            got = MultiprocessingSerializer.deserialize(payload[tp_rank])
            got = [(n, _unwrap_tensor(t, tp_rank=tp_rank, device=torch.device("cpu"))) for n, t in got]
            want = named(tp_rank)
            assert [n for n, _ in got] == [n for n, _ in want], got
            for (n, a), (_, b) in zip(got, want):
                assert a.dtype == b.dtype and torch.equal(a, b), (tp_rank, n)
        print("per-rank ok", flush=True)
    else:
        assert payload is None
    dist.barrier()  # rank 1's tensors stay alive until rank 0 has opened them
    dist.destroy_process_group()
""")


def test_tp2_payload_gives_each_engine_rank_its_own_trainer_rank_tensors():
    port = free_port("127.0.0.1")
    env = sglang_env()
    procs = [subprocess.Popen([sys.executable, "-W", "ignore", "-c", RANK, str(r), str(port)], env=env, cwd=str(ROOT),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    for r, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {r}:\n{out[-3000:]}"
    assert "per-rank ok" in outs[0], outs[0][-3000:]


def test_one_rank_cannot_serve_an_engine_of_tp2():
    """One rank's handles would be opened by every TP rank (SGLang reads entry tp_rank): refused."""
    with pytest.raises(WeightSyncError, match="cannot serve an engine of TP 2.*gather_tp_payload"):
        serialize_named_tensors([("w", torch.ones(2))], tp_size=2)
