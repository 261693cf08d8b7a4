"""fused_grpo_loss against a GRPO loss that is not ours: Liger-Kernel's LigerFusedLinearGRPOLoss
(liger_kernel.chunked_loss, the loss TRL's GRPOTrainer uses with use_liger_loss). Its torch path runs on
CPU (compiled=False), so the comparison runs in CI: loss, d hidden, d weight, clip fraction and KL.

Mapping of conventions (Liger 0.8.5 grpo_loss.py):
- loss_type "bnpo": masked token sum / mask sum              == our loss_agg_mode "token-mean"
- loss_type "grpo": per-sequence token mean, summed / B      == "seq-mean-token-mean" (no empty sequence)
- ratio clamp(1 - eps_low, 1 + eps_high) and k3 KL exp(ref - logp) - (ref - logp) - 1 == clip on the
  log-ratio and verl's low_var_kl (its +-10 clamp is not reached here); no dual clip (Liger has none).
- advantages are one per sequence; temperature divides the logits on both sides.
"""

from __future__ import annotations

import pytest
import torch

from mmr1_kernels import fused_grpo_loss, reference_logprobs

from ._common import assert_rel_close, backend_or_skip, device

liger_grpo = pytest.importorskip("liger_kernel.chunked_loss", reason="liger-kernel is in the dev extra")

TOL = 1e-5  # fp32 on both sides: summation order only


def liger_inputs(B=3, S=40, H=32, V=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, S, H, generator=g) * 0.5
    w = torch.randn(V, H, generator=g) * 0.5
    y = torch.randint(0, V, (B, S), generator=g)
    with torch.no_grad():
        lp = reference_logprobs(x, w, y, temperature=0.7)
    old = lp + 0.3 * torch.randn(B, S, generator=g)  # ratios spread over both clip branches
    ref = lp + 0.3 * torch.randn(B, S, generator=g)
    adv = torch.randn(B, generator=g)
    mask = (torch.rand(B, S, generator=g) < 0.8).float()
    mask[:, 0] = 1.0  # no empty sequence: Liger's "grpo" divides by B, ours by the non-empty sequences
    return x, w, y, old, ref, adv, mask


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("mode,loss_type", [("token-mean", "bnpo"), ("seq-mean-token-mean", "grpo")])
@pytest.mark.parametrize("kl_coef", [0.0, 0.04])
def test_fused_grpo_loss_matches_liger(backend, mode, loss_type, kl_coef):
    backend_or_skip(backend)
    x, w, y, old, ref, adv, mask = liger_inputs()
    kw = dict(eps_low=0.2, eps_high=0.28, temperature=0.7)

    x1, w1 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    lig = liger_grpo.LigerFusedLinearGRPOLoss(beta=kl_coef, compiled=False, use_ref_model=kl_coef > 0,
                                              epsilon_low=kw["eps_low"], epsilon_high=kw["eps_high"],
                                              loss_type=loss_type, temperature=kw["temperature"])
    want_loss, want_metrics = lig(x1, w1, y, mask, adv, ref_per_token_logps=ref if kl_coef else None,
                                  old_per_token_logps=old)
    want_loss.backward()

    dev = device()
    x2 = x.clone().to(dev).requires_grad_(True)
    w2 = w.clone().to(dev).requires_grad_(True)
    out = fused_grpo_loss(x2, w2, y.to(dev), old.to(dev), ref.to(dev) if kl_coef else None,
                          adv[:, None].expand(-1, y.shape[1]).contiguous().to(dev), mask.to(dev),
                          kl_coef=kl_coef, kl_estimator="k3", loss_agg_mode=mode, chunk_size=48,
                          backend=backend, **kw)
    out.loss.backward()

    assert_rel_close(out.loss, want_loss, TOL, "loss")
    assert_rel_close(x2.grad, x1.grad, TOL, "d hidden")
    assert_rel_close(w2.grad, w1.grad, TOL, "d weight")
    assert_rel_close(out.clip_frac, want_metrics[-1], TOL, "clip fraction")
    assert 0.0 < float(out.clip_frac) < 1.0  # both branches were taken: the clip logic was exercised
    if kl_coef:
        assert_rel_close(out.kl, want_metrics[0], TOL, "kl")


def test_sft_cross_entropy_matches_liger_flce_triton():
    # SFT cross-entropy through fused_logprobs vs Liger's LigerFusedLinearCrossEntropyLoss (mean over the
    # tokens that are not ignore_index): loss, d hidden, d weight. Liger's kernels are Triton-only, so
    # this runs on CUDA, or on CPU under Triton's interpreter (test_triton_interpreter.py's subprocess)
    backend_or_skip("triton")
    from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

    from mmr1_kernels import fused_logprobs

    dev = device()
    x, w, y, _, _, _, mask = (t.to(dev) for t in liger_inputs(B=2, S=50, H=32, V=700, seed=1))
    x1, w1 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    want = LigerFusedLinearCrossEntropyLoss()(w1, x1.reshape(-1, x.shape[-1]),
                                              torch.where(mask > 0, y, -100).reshape(-1))
    want.backward()
    x2, w2 = x.clone().requires_grad_(True), w.clone().requires_grad_(True)
    got = -(fused_logprobs(x2, w2, y, chunk_size=32, backend="triton") * mask).sum() / mask.sum()
    got.backward()
    assert_rel_close(got, want, TOL, "cross-entropy")
    assert_rel_close(x2.grad, x1.grad, TOL, "d hidden")
    assert_rel_close(w2.grad, w1.grad, TOL, "d weight")
