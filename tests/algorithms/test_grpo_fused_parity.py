"""The torch path (grpo_loss on log-probs) and the fused path (mmr1_kernels.fused_grpo_loss from
hidden states, its torch backend on CPU) give the same loss and hidden-state gradient under the same
AlgorithmConfig, through fused_loss_kwargs: the trainer can switch between them."""

import pytest
import torch

from megatron_mmr1.algorithms.grpo import fused_loss_kwargs, grpo_loss
from megatron_mmr1.config import AlgorithmConfig

fused = pytest.importorskip("mmr1_kernels.fused_grpo_loss")


@pytest.mark.parametrize(
    "cfg",
    [
        AlgorithmConfig(),  # paper defaults: k3 KL 0.01, token-mean
        AlgorithmConfig(clip_ratio_high=0.28, clip_ratio_c=3.0, entropy_coef=0.01, loss_agg_mode="seq-mean-token-sum"),
        AlgorithmConfig(use_kl_loss=False, loss_agg_mode="seq-mean-token-mean", kl_estimator="k2"),
    ],
)
def test_torch_and_fused_paths_agree(cfg):
    g = torch.Generator().manual_seed(0)
    B, S, H, V = 3, 5, 16, 40
    hidden = torch.randn(B, S, H, generator=g, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(V, H, generator=g, dtype=torch.float64) * 0.3
    targets = torch.randint(0, V, (B, S), generator=g)
    with torch.no_grad():
        logp0 = torch.log_softmax(hidden @ weight.T, -1).gather(-1, targets[..., None])[..., 0]
    old_logp = logp0 + 0.3 * torch.randn(B, S, generator=g, dtype=torch.float64)  # ratios on both sides of the clip
    ref_logp = logp0 + 0.2 * torch.randn(B, S, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)[:, None].expand(B, S).contiguous()
    mask = (torch.rand(B, S, generator=g) > 0.3).double()
    mask[:, 0] = 1

    logits = hidden @ weight.T  # [B, S, V]
    logprobs = torch.log_softmax(logits, -1)
    logp = logprobs.gather(-1, targets[..., None])[..., 0]
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    loss_t, _ = grpo_loss(logp, old_logp, ref_logp, adv, mask, cfg, entropy=entropy)
    (gh_t,) = torch.autograd.grad(loss_t, hidden)

    out = fused.fused_grpo_loss(hidden, weight, targets, old_logp, ref_logp, adv, mask,
                                **{**fused_loss_kwargs(cfg), "backend": "torch"})
    (gh_f,) = torch.autograd.grad(out.loss, hidden)
    torch.testing.assert_close(out.loss.double(), loss_t, rtol=1e-5, atol=1e-6)  # fused computes in fp32
    torch.testing.assert_close(gh_f.double(), gh_t, rtol=1e-4, atol=1e-6)
