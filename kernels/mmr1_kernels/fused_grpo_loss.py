"""GRPO policy loss (clipped surrogate with clip-higher and dual clip, KL to a reference policy,
entropy bonus, token/sequence aggregation) straight from hidden states and a vocab-parallel LM-head
shard, forward and backward, never materialising the [T, V] logits.

How: the aggregated loss is linear in the per-token losses, loss = sum_t w_t l_t(logp_t, H_t), with
w_t fixed by the mask and the aggregation mode (taken as the gradient of the reference
``aggregate_loss``). So once a token chunk's log-prob and entropy are known (chunked GEMM + online
log-sum-exp, see fused_logprobs.py), its per-token gradients g_lp = w dl/dlogp and g_ent = w dl/dH are
known too, and the chunk's logits buffer is turned into dlogits in place, then dX and dW are
computed right away: 3 GEMMs over the vocabulary in all (no recompute), one [C, V_local] buffer.
The per-token math runs the very functions of ``megatron_mmr1.algorithms.losses`` on [C] vectors.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch

from megatron_mmr1.algorithms.losses import aggregate_loss, clipped_surrogate, kl_penalty, masked_mean

from ._dispatch import use_triton
from .fused_logprobs import (
    accumulate_dw_,
    all_reduce_,
    chunk_dlogits_,
    chunk_logits_stats,
    default_chunk_size,
    dw_buffer,
    reference_logprobs,
    tp_layout,
)


class GRPOLossOutput(NamedTuple):
    loss: torch.Tensor  # scalar fp32, differentiable w.r.t. hidden and weight
    logp: torch.Tensor  # [...] fp32 per-token log-prob of the targets (detached)
    entropy: torch.Tensor  # [...] fp32 per-token entropy (detached)
    clip_frac: torch.Tensor  # scalar: masked mean of "clipped branch taken"
    approx_kl: torch.Tensor  # scalar: masked mean of old_logp - logp (KL(old || new) estimate, verl ppo_kl)
    kl: torch.Tensor  # scalar: masked mean of the KL penalty to the reference (0 without ref_logp)


def per_token_loss(logp, entropy, old_logp, ref_logp, advantages, *, eps_low, eps_high, clip_c, kl_coef,
                   kl_estimator, entropy_coef):
    """l_t = surrogate + kl_coef * KL(pi || ref) - entropy_coef * H; returns (l, clipped, kl or None)."""
    loss, clipped = clipped_surrogate(logp, old_logp, advantages, eps_low, eps_high, clip_c)
    kl = None
    if ref_logp is not None and kl_coef != 0.0:
        kl = kl_penalty(logp, ref_logp, kl_estimator)
        loss = loss + kl_coef * kl
    if entropy_coef != 0.0:
        loss = loss - entropy_coef * entropy
    return loss, clipped, kl


def token_weights(mask: torch.Tensor, mode: str) -> torch.Tensor:
    """w with aggregate_loss(l, mask, mode) == sum(w * l) for every l: its gradient (it is linear)."""
    z = torch.zeros(mask.shape, dtype=torch.float32, device=mask.device, requires_grad=True)
    with torch.enable_grad():
        out = aggregate_loss(z, mask, mode)
    return torch.autograd.grad(out, z)[0]


def _masked_mean(v: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return masked_mean(v.float(), mask)  # metrics in fp32 whatever the compute dtype


class _FusedGRPOLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, old_logp, ref_logp, advantages, w_tok, params, group, vocab_start,
                chunk, triton_path, reduce_grad_hidden, grad_enabled):
        T = hidden.shape[0]
        inv_temp = 1.0 / params["temperature"]
        loss_params = {k: v for k, v in params.items() if k != "temperature"}
        need_x, need_w = grad_enabled and ctx.needs_input_grad[0], grad_enabled and ctx.needs_input_grad[1]
        dx = torch.empty_like(hidden) if need_x else None
        dw = dw_buffer(weight, -(-T // chunk)) if need_w else None
        logp = torch.empty(T, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        clipped = torch.zeros_like(logp)
        kl = torch.zeros_like(logp)
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for c0 in range(0, T, chunk):
            sl = slice(c0, c0 + chunk)
            x_c = hidden[sl]
            logits, st = chunk_logits_stats(x_c, weight, targets[sl], inv_temp, vocab_start, group, triton_path)
            lp = st.logp.detach().requires_grad_(True)
            ent = st.entropy.detach().requires_grad_(True)
            old_c = st.logp.detach() if old_logp is None else old_logp[sl]  # None: on-policy, ratio = 1
            with torch.enable_grad():
                l_tok, clip_c, kl_c = per_token_loss(
                    lp, ent, old_c, None if ref_logp is None else ref_logp[sl], advantages[sl], **loss_params
                )
                contrib = (w_tok[sl] * l_tok).sum()
                g_lp, g_ent = torch.autograd.grad(contrib, [lp, ent], allow_unused=True)
            loss += contrib.detach()
            logp[sl], entropy[sl], clipped[sl] = st.logp, st.entropy, clip_c.detach()
            if kl_c is not None:
                kl[sl] = kl_c.detach()
            if need_x or need_w:
                g_lp = torch.zeros_like(lp) if g_lp is None else g_lp
                g_ent = torch.zeros_like(ent) if g_ent is None else g_ent
                chunk_dlogits_(logits, targets[sl], st, g_lp, g_ent, inv_temp, vocab_start, triton_path)
                if need_x:
                    torch.matmul(logits, weight, out=dx[sl])
                if need_w:
                    accumulate_dw_(dw, logits, x_c)
            del logits
        if need_x and reduce_grad_hidden:
            all_reduce_(dx, group)
        if need_w:
            dw = dw.to(weight.dtype)  # one rounding of the fp32 sum
        ctx.grads = (dx, dw)  # our own buffers, handed to autograd (not saved inputs or outputs)
        ctx.mark_non_differentiable(logp, entropy, clipped, kl)
        return loss, logp, entropy, clipped, kl

    @staticmethod
    def backward(ctx, g_loss, *_):
        # Scaled in place: a weight-sized copy here would be the largest allocation of the whole loss
        # (dW is V_local x H, 1.09 GB in bf16 for Qwen2.5-VL-7B). So the gradients can be taken once.
        if ctx.grads is None:
            raise RuntimeError("fused_grpo_loss: backward ran twice; its gradients are computed in the forward "
                               "pass and handed over once (call the loss again instead of retain_graph)")
        dx, dw = ctx.grads
        ctx.grads = None
        gx = None if dx is None else dx.mul_(g_loss.to(dx.dtype))
        gw = None if dw is None else dw.mul_(g_loss.to(dw.dtype))
        return (gx, gw) + (None,) * 12


def _check_per_token(name, t, shape):
    if t is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{name} has shape {tuple(t.shape)}, expected the targets' shape {tuple(shape)}")


def fused_grpo_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    old_logp: Optional[torch.Tensor],
    ref_logp: Optional[torch.Tensor],
    advantages: torch.Tensor,
    mask: torch.Tensor,
    *,
    eps_low: float = 0.2,
    eps_high: float = 0.2,
    clip_c: Optional[float] = None,
    kl_coef: float = 0.0,
    kl_estimator: str = "low_var_kl",
    entropy_coef: float = 0.0,
    temperature: float = 1.0,
    loss_agg_mode: str = "token-mean",
    tp_group=None,
    vocab_start: Optional[int] = None,
    chunk_size: Optional[int] = None,
    reduce_grad_hidden: bool = True,
    backend: str = "auto",
) -> GRPOLossOutput:
    """GRPO loss of softmax(hidden @ W.T / temperature) at ``targets``; see GRPOLossOutput.

    hidden [..., H] (e.g. [T, H] packed or [B, S, H]; the seq-mean modes need [B, S]); weight: this
    rank's vocab shard [V_local, H]; per-token tensors (targets, old_logp, ref_logp or None, advantages,
    mask) have hidden's leading shape. ``old_logp=None``: on-policy (one update per rollout batch), the old
    policy is the current one, so old = logp detached, computed in the same pass (no second GEMM).
    Gradients flow to hidden and weight only (dX is all-reduced over ``tp_group`` unless
    reduce_grad_hidden=False). backend: "auto" | "triton" | "torch" (same chunked
    algorithm with torch row ops) | "reference" (full logits, for bisecting).
    """
    shape = targets.shape
    for name, t in [("old_logp", old_logp), ("ref_logp", ref_logp), ("advantages", advantages), ("mask", mask)]:
        _check_per_token(name, t, shape)
    params = dict(eps_low=eps_low, eps_high=eps_high, clip_c=clip_c, kl_coef=kl_coef, kl_estimator=kl_estimator,
                  entropy_coef=entropy_coef)
    if backend == "reference":
        return reference_grpo_loss(hidden, weight, targets, old_logp, ref_logp, advantages, mask,
                                   temperature=temperature, loss_agg_mode=loss_agg_mode, **params)
    kl_penalty(torch.zeros(1), torch.zeros(1), kl_estimator)  # validate the estimator name early
    w_tok = token_weights(mask, loss_agg_mode).reshape(-1)
    x = hidden.reshape(-1, hidden.shape[-1])
    if hidden.dtype != weight.dtype or weight.shape[1] != x.shape[1]:
        raise ValueError(f"hidden {tuple(hidden.shape)} {hidden.dtype} vs weight {tuple(weight.shape)} {weight.dtype}")
    flat = lambda t: None if t is None else t.reshape(-1).float()  # noqa: E731
    _, vstart = tp_layout(tp_group, weight.shape[0], vocab_start)
    chunk = chunk_size or default_chunk_size(weight.shape[0], weight.dtype, x.shape[0])
    loss, logp, entropy, clipped, kl = _FusedGRPOLoss.apply(
        x, weight, targets.reshape(-1).long(), flat(old_logp), flat(ref_logp), flat(advantages), w_tok,
        dict(params, temperature=float(temperature)), tp_group, vstart, int(chunk), use_triton(backend, x),
        reduce_grad_hidden, torch.is_grad_enabled(),  # no gradient work under torch.no_grad()
    )
    logp, entropy = logp.reshape(shape), entropy.reshape(shape)
    return GRPOLossOutput(
        loss=loss,
        logp=logp,
        entropy=entropy,
        clip_frac=_masked_mean(clipped.reshape(shape), mask),
        approx_kl=_masked_mean((logp if old_logp is None else old_logp.float()) - logp, mask),
        kl=_masked_mean(kl.reshape(shape), mask),
    )


def reference_grpo_loss(hidden, weight, targets, old_logp, ref_logp, advantages, mask, *, eps_low=0.2,
                        eps_high=0.2, clip_c=None, kl_coef=0.0, kl_estimator="low_var_kl", entropy_coef=0.0,
                        temperature=1.0, loss_agg_mode="token-mean", upcast: bool = True) -> GRPOLossOutput:
    """Plain torch: full logits = hidden @ W.T over the whole vocabulary, log_softmax, gather, then the
    reference per-token math and aggregation of megatron_mmr1.algorithms.losses (autograd for grads)."""
    logp, entropy = reference_logprobs(hidden, weight, targets, temperature=temperature, with_entropy=True,
                                       upcast=upcast)
    old_logp = logp.detach() if old_logp is None else old_logp
    l_tok, clipped, kl = per_token_loss(
        logp, entropy, old_logp.float(), None if ref_logp is None else ref_logp.float(), advantages.float(),
        eps_low=eps_low, eps_high=eps_high, clip_c=clip_c, kl_coef=kl_coef, kl_estimator=kl_estimator,
        entropy_coef=entropy_coef,
    )
    loss = aggregate_loss(l_tok, mask, loss_agg_mode)
    return GRPOLossOutput(
        loss=loss,
        logp=logp.detach(),
        entropy=entropy.detach(),
        clip_frac=_masked_mean(clipped.detach(), mask),
        approx_kl=_masked_mean(old_logp.float() - logp.detach(), mask),
        kl=_masked_mean(torch.zeros_like(logp) if kl is None else kl.detach(), mask),
    )
