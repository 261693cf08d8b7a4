"""The weight-update group forms from inside a torchrun worker.

torchrun sets ``TORCHELASTIC_USE_AGENT_STORE=True`` in its workers, and torch's ``tcp://``
rendezvous then makes rank 0 a client of a store it assumes the elastic agent hosts. The trainer
(rank 0 of the update group) must host the store on the group's own port regardless, or it and
the servers wait for each other until the timeout: the first weight sync of a torchrun GRPO run hung so.
"""

import os
import subprocess
import sys
import textwrap

from megatron_mmr1.utils.net import free_port

MEMBER = textwrap.dedent("""
    import sys
    from datetime import timedelta
    import torch, torch.distributed as dist
    from megatron_mmr1.rollout.dist_group import destroy_custom_process_group, init_custom_process_group
    rank, port = int(sys.argv[1]), int(sys.argv[2])
    pg = init_custom_process_group("gloo", f"tcp://127.0.0.1:{port}", 2, rank, "mmr1_test",
                                   timeout=timedelta(seconds=20))
    t = torch.arange(4.0) if rank == 0 else torch.zeros(4)
    dist.broadcast(t, src=0, group=pg)
    print("got", t.tolist(), flush=True)
    destroy_custom_process_group(pg)
""")


def test_update_group_forms_under_torchrun_agent_store_env():
    port = free_port("127.0.0.1")
    env = dict(os.environ, TORCHELASTIC_USE_AGENT_STORE="True")
    procs = [subprocess.Popen([sys.executable, "-c", MEMBER, str(rank), str(port)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for rank, (p, out) in enumerate(zip(procs, outs)):
        assert p.returncode == 0, f"rank {rank}:\n{out}"
        assert "got [0.0, 1.0, 2.0, 3.0]" in out, out
