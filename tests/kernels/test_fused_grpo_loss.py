"""fused_grpo_loss vs reference_grpo_loss (full logits, log_softmax, gather, then the per-token math
of megatron_mmr1.algorithms.losses): loss, metrics, d hidden, d weight; also TP=2 on gloo against the
unsharded reference."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from megatron_mmr1.gpu_check import grpo_loss_batch
from mmr1_kernels import fused_grpo_loss, reference_grpo_loss, reference_logprobs

from ..dist_utils import spawn
from ._common import TOL, assert_rel_close, backend_or_skip, device

MODES = ["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"]


def make_batch(B, S, H, V, dtype=torch.float32, seed=0, mask_p=0.7):
    """Realistic inputs (megatron_mmr1.gpu_check.grpo_loss_batch), plus one fully masked sequence."""
    x, w, y, old, ref, adv, mask = grpo_loss_batch(B, S, H, V, dtype, seed=seed, mask_p=mask_p)
    if B > 2:
        mask[1] = 0.0  # one sequence without any token
    return x, w, y, old, ref, adv, mask


def run_both(batch, backend, chunk, dtype=torch.float32, **kw):
    x, w, y, old, ref, adv, mask = (None if t is None else t.to(device()) for t in batch)
    x1, w1 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    out = fused_grpo_loss(x1, w1, y, old, ref, adv, mask, chunk_size=chunk, backend=backend, **kw)
    out.loss.backward()
    x2, w2 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    want = reference_grpo_loss(x2, w2, y, old, ref, adv, mask, upcast=dtype == torch.float32, **kw)
    want.loss.backward()
    return out, want, (x1.grad, w1.grad), (x2.grad, w2.grad)


def check(out, want, grads, want_grads, dtype=torch.float32):
    tol = TOL[dtype]
    assert_rel_close(out.loss, want.loss, tol["value"], "loss")
    for f in ("logp", "entropy", "clip_frac", "approx_kl", "kl"):
        assert_rel_close(getattr(out, f), getattr(want, f), tol["value"], f)
    assert_rel_close(grads[0], want_grads[0], tol["grad"], "d hidden")
    assert_rel_close(grads[1], want_grads[1], tol["grad"], "d weight")


FULL = dict(eps_low=0.2, eps_high=0.28, clip_c=3.0, kl_coef=0.05, kl_estimator="low_var_kl", entropy_coef=0.01,
            temperature=0.7)


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode", MODES)
def test_grpo_loss_matches_reference(backend, mode):
    batch = make_batch(4, 9, 16, 200)  # T = 36 tokens, chunk 16: last chunk partial
    out, want, g, wg = run_both(batch, backend_or_skip(backend), 16, loss_agg_mode=mode, **FULL)
    assert 0.0 < float(want.clip_frac) < 1.0  # the inputs exercise the clipped branch
    check(out, want, g, wg)


@pytest.mark.parametrize("kl_estimator", ["k1", "k2", "k3"])
def test_grpo_loss_kl_estimators_no_dual_clip(kl_estimator):
    batch = make_batch(2, 11, 8, 64, seed=3)
    kw = dict(eps_low=0.2, eps_high=0.2, kl_coef=0.1, kl_estimator=kl_estimator, temperature=1.0)
    check(*run_both(batch, "torch", 5, **kw))


def test_grpo_loss_without_reference_policy():
    x, w, y, old, _, adv, mask = make_batch(2, 7, 8, 64, seed=4)
    check(*run_both((x, w, y, old, None, adv, mask), "torch", 4, kl_coef=0.1))


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_on_policy_old_logp_none_is_old_equal_to_current(backend):
    """old_logp=None (one update per rollout batch) = the reference given old = the current log-probs
    computed separately: ratio 1, nothing clipped, approx KL 0, the same loss and gradients."""
    x, w, y, _, ref, adv, mask = make_batch(3, 8, 16, 200, seed=8)
    with torch.no_grad():
        current = reference_logprobs(x, w, y, temperature=FULL["temperature"])
    xd, wd, yd, refd, advd, maskd, currentd = (t.to(device()) for t in (x, w, y, ref, adv, mask, current))
    x1, w1 = xd.clone().requires_grad_(True), wd.clone().requires_grad_(True)
    out = fused_grpo_loss(x1, w1, yd, None, refd, advd, maskd, chunk_size=8, backend=backend_or_skip(backend), **FULL)
    out.loss.backward()
    x2, w2 = xd.clone().requires_grad_(True), wd.clone().requires_grad_(True)
    want = reference_grpo_loss(x2, w2, yd, currentd, refd, advd, maskd, **FULL)
    want.loss.backward()
    assert float(out.clip_frac) == 0.0 and float(want.clip_frac) == 0.0
    assert abs(float(out.approx_kl)) < 1e-7
    assert float(want.loss) != 0.0
    check(out, want, (x1.grad, w1.grad), (x2.grad, w2.grad))
    ref_none = reference_grpo_loss(xd, wd, yd, None, refd, advd, maskd, **FULL)  # the reference takes None too
    assert_rel_close(ref_none.loss, want.loss, TOL[torch.float32]["value"], "reference loss with old_logp=None")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_grpo_loss_all_masked(backend):
    batch = list(make_batch(2, 5, 8, 64, seed=5))
    batch[-1] = torch.zeros(2, 5)
    out, want, g, wg = run_both(batch, backend_or_skip(backend), 4, **FULL)
    assert out.loss.item() == 0.0 and want.loss.item() == 0.0
    assert torch.count_nonzero(g[0]) == 0 and torch.count_nonzero(g[1]) == 0
    assert float(out.clip_frac) == 0.0


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_grpo_loss_bf16(backend):
    batch = make_batch(3, 7, 16, 200, dtype=torch.bfloat16, seed=6)
    out, want, g, wg = run_both(batch, backend_or_skip(backend), 8, dtype=torch.bfloat16, **FULL)
    check(out, want, g, wg, dtype=torch.bfloat16)


def test_reference_backend_switch_and_errors():
    x, w, y, old, ref, adv, mask = make_batch(2, 5, 8, 32)
    a = fused_grpo_loss(x, w, y, old, ref, adv, mask, backend="reference", kl_coef=0.1)
    b = reference_grpo_loss(x, w, y, old, ref, adv, mask, kl_coef=0.1)
    assert float(a.loss) == float(b.loss)
    with pytest.raises(ValueError):
        fused_grpo_loss(x, w, y, old[:, :3], ref, adv, mask, backend="torch")
    with pytest.raises(ValueError):
        fused_grpo_loss(x, w, y, old, ref, adv, mask, backend="torch", kl_coef=0.1, kl_estimator="k9")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bf16_weight_grad_accumulates_chunks_in_fp32(backend):
    """d weight of bf16 inputs over 64 token chunks vs the fp32 reference: 4e-3 of its largest entry (the
    rounding of dlogits and dW to bf16). On-policy without KL, so no clip decision flips between bf16 and
    fp32 logits. A bf16 running sum over the chunks was off by 1.4e-2 here."""
    backend_or_skip(backend)
    x, w, y, _, _, adv, mask = (t.to(device()) for t in make_batch(4, 128, 16, 64, seed=3))
    adv = adv.abs()  # one sign: the chunks add up instead of cancelling
    w1 = w.bfloat16().requires_grad_(True)
    fused_grpo_loss(x.bfloat16(), w1, y, None, None, adv, mask, chunk_size=8, backend=backend).loss.backward()
    assert w1.grad.dtype == torch.bfloat16
    w2 = w.bfloat16().float().requires_grad_(True)
    reference_grpo_loss(x.bfloat16().float(), w2, y, None, None, adv, mask).loss.backward()
    assert_rel_close(w1.grad, w2.grad, 7e-3, "d weight")


# ------------------------------------------------------------------ tensor parallel: 2 ranks on gloo


def _tp_worker(backend, kw):
    """One rank; tensors on the device the backend runs on (CUDA when present: backend='triton' refuses
    CPU tensors there; CPU under the interpreter). gloo all-reduces CUDA tensors too, so both ranks may
    share one GPU."""
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    if torch.cuda.is_available():
        torch.cuda.set_device(rank % torch.cuda.device_count())
    torch.manual_seed(0)
    x, w, y, old, ref, adv, mask = (t.to(device()) for t in make_batch(3, 8, 16, 240, seed=7))
    V_l = w.shape[0] // world
    w_local = w[rank * V_l : (rank + 1) * V_l].clone().requires_grad_(True)  # megatron vocab shard
    x1 = x.clone().requires_grad_(True)
    out = fused_grpo_loss(x1, w_local, y, old, ref, adv, mask, chunk_size=10, backend=backend,
                          tp_group=dist.group.WORLD, **kw)
    out.loss.backward()
    x2, w2 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    want = reference_grpo_loss(x2, w2, y, old, ref, adv, mask, **kw)
    want.loss.backward()
    check(out, want, (x1.grad, w_local.grad), (x2.grad, w2.grad[rank * V_l : (rank + 1) * V_l]))
    return out.loss.item()


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_grpo_loss_tp2_matches_unsharded(backend):
    if backend == "triton":
        backend_or_skip(backend)  # the spawned ranks inherit TRITON_INTERPRET from this process
    losses = spawn(_tp_worker, 2, backend, dict(FULL, loss_agg_mode="seq-mean-token-mean"), timeout_s=240)
    assert losses[0] == losses[1]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_grpo_loss_gpu_production_blocks_bf16():
    # several vocab tiles per row, several token chunks, bf16 as in production
    batch = make_batch(4, 512, 256, 32768 + 123, dtype=torch.bfloat16, seed=8)
    out, want, g, wg = run_both(batch, "triton", 512, dtype=torch.bfloat16, **FULL)
    check(out, want, g, wg, dtype=torch.bfloat16)


def test_no_grad_gives_same_metrics():
    x, w, y, old, ref, adv, mask = make_batch(2, 6, 8, 40, seed=9)
    x.requires_grad_(True)
    with torch.no_grad():
        a = fused_grpo_loss(x, w, y, old, ref, adv, mask, backend="torch", kl_coef=0.1)
    b = reference_grpo_loss(x, w, y, old, ref, adv, mask, kl_coef=0.1)
    assert not a.loss.requires_grad
    assert_rel_close(a.loss, b.loss, 1e-5, "loss")
    assert_rel_close(a.logp, b.logp, 1e-5, "logp")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode", MODES)
def test_row_ops_over_several_vocab_blocks(monkeypatch, backend, mode):
    # both backends walk the vocabulary in blocks (online max / sum-exp merge, per-block dlogits); at the
    # production block of 4096 columns the small test vocabularies fit one block, so shrink the blocks to
    # sizes that do not divide V: targets, maxima and a partial last block land in every block
    import importlib

    fl = importlib.import_module("mmr1_kernels.fused_logprobs")  # the package re-exports a function of that name
    for name in ("TORCH_BLOCK_V", "STATS_BLOCK_V", "DLOGITS_BLOCK_V"):
        monkeypatch.setattr(fl, name, 32 if name == "STATS_BLOCK_V" else 64)
    batch = make_batch(3, 9, 16, 200, seed=10)
    check(*run_both(batch, backend_or_skip(backend), 8, loss_agg_mode=mode, **FULL))
    x, w, y = (t.to(device()) for t in batch[:3])
    lp, ent = fl.fused_logprobs(x, w, y, temperature=0.7, with_entropy=True, backend=backend)
    want_lp, want_ent = reference_logprobs(x, w, y, temperature=0.7, with_entropy=True)
    assert_rel_close(lp, want_lp, 1e-5, "logp")
    assert_rel_close(ent, want_ent, 1e-5, "entropy")


def test_backward_hands_gradients_over_once():
    # dX and dW are scaled in place in backward (no weight-sized copy), so a second backward must fail loudly
    x, w, y, old, ref, adv, mask = make_batch(2, 5, 8, 32, seed=11)
    x.requires_grad_(True)
    out = fused_grpo_loss(x, w, y, old, ref, adv, mask, backend="torch")
    (2.0 * out.loss).backward(retain_graph=True)
    x2 = x.detach().clone().requires_grad_(True)
    reference_grpo_loss(x2, w, y, old, ref, adv, mask).loss.mul(2.0).backward()
    assert_rel_close(x.grad, x2.grad, 1e-5, "d hidden scaled by the incoming gradient")
    with pytest.raises(RuntimeError, match="backward ran twice"):
        out.loss.backward()
