"""fused_logprobs (chunked, vocab-parallel log-prob + entropy from hidden states) vs reference_logprobs
(full logits = hidden @ W.T, log_softmax, gather): values and gradients."""

from __future__ import annotations

import pytest
import torch

from mmr1_kernels import fused_logprobs, reference_logprobs

from ._common import TOL, assert_rel_close, backend_or_skip, device


def _inputs(T, H, V, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(T, H, generator=g) * 0.5).to(device=device(), dtype=dtype).requires_grad_(True)
    w = (torch.randn(V, H, generator=g) * 0.5).to(device=device(), dtype=dtype).requires_grad_(True)
    y = torch.randint(0, V, (T,), generator=g).to(device())
    return x, w, y


def _check(backend, T, H, V, dtype, chunk, temperature, with_entropy=True):
    x, w, y = _inputs(T, H, V, dtype)
    g = torch.Generator().manual_seed(1)
    c_lp, c_ent = torch.randn(T, generator=g).to(device()), torch.randn(T, generator=g).to(device())
    lp, ent = fused_logprobs(x, w, y, temperature=temperature, with_entropy=True, chunk_size=chunk, backend=backend)
    ((lp * c_lp).sum() + (ent * c_ent).sum()).backward()
    gx, gw = x.grad, w.grad
    x2, w2 = x.detach().clone().requires_grad_(True), w.detach().clone().requires_grad_(True)
    # bf16: the reference keeps the bf16 GEMM so that both sides see the same logits
    rlp, rent = reference_logprobs(x2, w2, y, temperature=temperature, with_entropy=True, upcast=dtype == torch.float32)
    ((rlp * c_lp).sum() + (rent * c_ent).sum()).backward()
    tol = TOL[dtype]
    assert_rel_close(lp, rlp, tol["value"], "logp")
    assert_rel_close(ent, rent, tol["value"], "entropy")
    assert_rel_close(gx, x2.grad, tol["grad"], "d hidden")
    assert_rel_close(gw, w2.grad, tol["grad"], "d weight")


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fused_logprobs_matches_reference(backend, dtype):
    # T = 37 is not a multiple of the chunk (16); V = 300 not a multiple of any block
    _check(backend_or_skip(backend), 37, 16, 300, dtype, chunk=16, temperature=0.7)


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_logprobs_multi_tile_vocab(backend):
    # V larger than one Triton vocab tile (4096) exercises the online rescaling between tiles
    _check(backend_or_skip(backend), 5, 8, 9000, torch.float32, chunk=4, temperature=1.0)


def test_logprobs_only_and_shapes():
    x, w, y = _inputs(12, 8, 50, torch.float32)
    lp = fused_logprobs(x.reshape(3, 4, 8), w, y.reshape(3, 4), backend="torch")
    assert lp.shape == (3, 4) and lp.dtype == torch.float32
    assert_rel_close(lp.reshape(-1), reference_logprobs(x, w, y), 1e-5, "logp")
    with pytest.raises(ValueError):
        fused_logprobs(x, w.double(), y, backend="torch")


def test_grad_only_for_inputs_that_need_it():
    x, w, y = _inputs(9, 8, 40, torch.float32)
    w = w.detach()
    fused_logprobs(x, w, y, backend="torch").sum().backward()
    want = torch.autograd.grad(reference_logprobs(x, w, y).sum(), x)[0]
    assert_rel_close(x.grad, want, 1e-5, "d hidden")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_vocab_shard_statistics(backend):
    # a shard [vocab_start, vocab_start + V): targets below, inside and above it (the bug this caught:
    # a target id past the shard matched a padded lane of the last vocab tile)
    from mmr1_kernels.fused_logprobs import _stats_torch, _stats_triton

    backend_or_skip(backend)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 120, generator=g).to(device())
    y = torch.tensor([0, 119, 120, 200, 239, 5000]).to(device())
    fn = _stats_triton if backend == "triton" else _stats_torch
    for vocab_start in (0, 120):
        got = fn(logits, y, vocab_start, 0.7)
        z = logits.double() * 0.7
        m = z.max(1).values
        e = torch.exp(z - m[:, None])
        local = y - vocab_start
        hit = (local >= 0) & (local < 120)
        zt = torch.where(hit, z.gather(1, local.clamp(0, 119)[:, None]).squeeze(1), torch.zeros_like(m))
        want = torch.stack([m, e.sum(1), (e * (z - m[:, None])).sum(1), zt])
        assert_rel_close(got, want, 1e-5, f"stats at vocab_start={vocab_start}")


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_bf16_weight_grad_accumulates_chunks_in_fp32(backend):
    """d weight of bf16 inputs over 64 token chunks vs the fp32 reference: within ~1 bf16 rounding of the
    answer (4e-3 of its largest entry). A bf16 running sum over the chunks was off by 1.3e-2 here."""
    backend_or_skip(backend)
    x, w, y = _inputs(512, 16, 64, torch.bfloat16)
    fused_logprobs(x, w, y, chunk_size=8, backend=backend).sum().backward()
    assert w.grad.dtype == torch.bfloat16
    x2, w2 = x.detach().float().requires_grad_(True), w.detach().float().requires_grad_(True)
    reference_logprobs(x2, w2, y).sum().backward()
    assert_rel_close(w.grad, w2.grad, 5e-3, "d weight")
