"""overlap_grad_reduce (megatron DDP's GPU default) gives the same gradients as the synchronous reduce
when the number of micro-batches changes between steps, on 2 DP ranks over gloo.

megatron's bucket groups record, in the first step, how often each parameter's grad hook fires on the
"last" micro-batch and start the reduce when a later step reaches that count; without
``config.no_sync_func`` every micro-batch counts as the last, so a step with fewer micro-batches never
issues the reduce and one with more reduces before its last micro-batch's gradients are in.
"""

import torch

from tests.dist_utils import spawn
from tests.parallel import grad_sync_workers as w


def test_overlap_grad_reduce_matches_sync_reduce_with_varying_micro_batches():
    ranks = spawn(w.train_grads, 2, [3, 2, 4])
    for per_rank in ranks:
        sync, overlap = per_rank[False], per_rank[True]
        assert len(sync) == len(overlap) == 3
        for step, ((loss_s, norm_s, g_s), (loss_o, norm_o, g_o)) in enumerate(zip(sync, overlap)):
            assert g_s.abs().sum() > 0, "zero gradients: the comparison would not see a mismatch"
            assert loss_o == loss_s and norm_o == norm_s, f"step {step + 1}"
            torch.testing.assert_close(g_o, g_s, rtol=0, atol=0, msg=lambda m: f"step {step + 1}: {m}")
    # DP reduced: both ranks hold the same (summed) gradients
    torch.testing.assert_close(ranks[0][True][2][2], ranks[1][True][2][2])
