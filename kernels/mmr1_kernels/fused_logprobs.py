"""Log-probabilities (and entropy) of target tokens straight from hidden states and a vocab-parallel
LM-head shard, never materialising the [T, V] logits.

Design (Liger FLCE / verl linear_cross_entropy lineage, see docs/kernels.md):
- tokens are processed in chunks of C rows: logits_c = x_c @ W_local.T is one cuBLAS GEMM into a
  [C, V_local] buffer (the only vocab-sized memory, ~0.3 GB by default), then a Triton row kernel
  makes one pass over it with an online max / sum-exp / sum exp*(z - max) (entropy for free) and
  picks the target logit;
- under tensor parallelism (vocab sharded megatron-style: rank r owns ids [r V_l, (r+1) V_l)) the
  per-shard statistics of a chunk are merged with two all-reduces of O(C) floats (MAX of the max,
  then one SUM of the packed [rescaled sum-exp, rescaled entropy term, target logit]);
- the gradient of the logits is written in place into the same buffer by a second Triton kernel,
  dz = [g_lp (onehot - p) - g_ent p (z - sum p z)] / temperature, then dX_c = dz @ W and
  dW += dz.T @ x_c are cuBLAS GEMMs (dW summed over chunks in fp32, cast to the weight's dtype once). ``fused_logprobs`` recomputes the logits in backward (4 GEMMs
  in all); ``fused_grpo_loss`` knows its per-token gradients in forward and needs only 3.

All statistics are fp32; logits use the input dtype (bf16 in production) like the reference path.
"""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.distributed as dist

from ._dispatch import HAS_TRITON, use_triton

if HAS_TRITON:
    import triton
    import triton.language as tl

# Production launch configuration (also what the sm_90 AOT compile test builds).
STATS_BLOCK_V = 4096
STATS_NUM_WARPS = 16
DLOGITS_BLOCK_V = 4096
DLOGITS_NUM_WARPS = 8
CHUNK_BYTES = 512 * 2**20  # budget of the [C, V_local] logits buffer
TORCH_BLOCK_V = 16384  # vocabulary columns per step of the torch row ops (bounds their fp32 temporaries)
DW_BLOCK_ROWS = 8192  # vocabulary rows per dW GEMM into an fp32 accumulator (bounds the product's temporary)


# ---------------------------------------------------------------------------------------------
# Triton kernels (row-wise over a materialised logits *chunk*)
# ---------------------------------------------------------------------------------------------

if HAS_TRITON:

    @triton.jit
    def _vocab_stats_kernel(
        logits_ptr,  # [C, V] chunk of logits (bf16/fp16/fp32), row stride stride_row
        stride_row,
        targets_ptr,  # [C] int64 global target ids
        stats_ptr,  # [4, C] fp32 out: max, sum exp(z - max), sum exp(z - max) (z - max), z_target
        n_rows,
        V,  # local vocab size
        vocab_start,  # first global id of this shard
        inv_temp,
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0)
        base = logits_ptr + row.to(tl.int64) * stride_row
        y = tl.load(targets_ptr + row).to(tl.int64) - vocab_start
        offs0 = tl.arange(0, BLOCK_V)
        m = -1e30  # running max (finite so that the first rescale is exp(-huge) * 0 = 0)
        s = 0.0  # sum exp(z - m)
        b = 0.0  # sum exp(z - m) (z - m)
        zt = 0.0  # target logit (0 when the target is on another shard)
        for v0 in range(0, V, BLOCK_V):
            offs = v0 + offs0
            msk = offs < V
            z = tl.load(base + offs, mask=msk, other=float("-inf")).to(tl.float32) * inv_temp
            m_new = tl.maximum(m, tl.max(z, axis=0))
            scale = tl.exp(m - m_new)
            e = tl.where(msk, tl.exp(z - m_new), 0.0)
            d = tl.where(msk, z - m_new, 0.0)
            b = scale * (b + (m - m_new) * s) + tl.sum(e * d, axis=0)
            s = s * scale + tl.sum(e, axis=0)
            m = m_new
            zt += tl.sum(tl.where((offs == y) & msk, z, 0.0), axis=0)
        tl.store(stats_ptr + row, m)
        tl.store(stats_ptr + n_rows + row, s)
        tl.store(stats_ptr + 2 * n_rows + row, b)
        tl.store(stats_ptr + 3 * n_rows + row, zt)

    @triton.jit
    def _dlogits_kernel(
        logits_ptr,  # [C, V] in: logits, out (in place): d loss / d raw logits
        stride_row,
        targets_ptr,  # [C] int64
        lse_ptr,  # [C] fp32 global log-sum-exp of z = logits / temperature
        zbar_ptr,  # [C] fp32 global sum_v p_v z_v
        glp_ptr,  # [C] fp32 d loss / d logp
        gent_ptr,  # [C] fp32 d loss / d entropy
        V,
        vocab_start,
        inv_temp,
        BLOCK_V: tl.constexpr,
    ):
        row = tl.program_id(0)
        offs = tl.program_id(1) * BLOCK_V + tl.arange(0, BLOCK_V)
        msk = offs < V
        ptrs = logits_ptr + row.to(tl.int64) * stride_row + offs
        z = tl.load(ptrs, mask=msk, other=0.0).to(tl.float32) * inv_temp
        lse = tl.load(lse_ptr + row)
        zbar = tl.load(zbar_ptr + row)
        glp = tl.load(glp_ptr + row)
        gent = tl.load(gent_ptr + row)
        y = tl.load(targets_ptr + row).to(tl.int64) - vocab_start
        p = tl.exp(z - lse)
        onehot = tl.where(offs == y, 1.0, 0.0)
        dz = glp * (onehot - p) - gent * p * (z - zbar)
        tl.store(ptrs, (dz * inv_temp).to(logits_ptr.dtype.element_ty), mask=msk)


def _stats_triton(logits: torch.Tensor, targets: torch.Tensor, vocab_start: int, inv_temp: float) -> torch.Tensor:
    C, V = logits.shape
    stats = torch.empty(4, C, dtype=torch.float32, device=logits.device)
    if C:
        _vocab_stats_kernel[(C,)](
            logits, logits.stride(0), targets, stats, C, V, vocab_start, inv_temp,
            BLOCK_V=STATS_BLOCK_V, num_warps=STATS_NUM_WARPS,
        )
    return stats


def _dlogits_triton(logits, targets, lse, zbar, glp, gent, vocab_start: int, inv_temp: float) -> None:
    C, V = logits.shape
    if C:
        grid = (C, triton.cdiv(V, DLOGITS_BLOCK_V))
        _dlogits_kernel[grid](
            logits, logits.stride(0), targets, lse, zbar, glp, gent, V, vocab_start, inv_temp,
            BLOCK_V=DLOGITS_BLOCK_V, num_warps=DLOGITS_NUM_WARPS,
        )


# ---------------------------------------------------------------------------------------------
# torch equivalents of the two kernels (CPU path; the same math, one chunk at a time)
# ---------------------------------------------------------------------------------------------


def _local_target(targets: torch.Tensor, vocab_start: int, V: int) -> tuple[torch.Tensor, torch.Tensor]:
    y = targets - vocab_start
    hit = (y >= 0) & (y < V)
    return y.clamp(0, V - 1), hit


def _stats_torch(logits: torch.Tensor, targets: torch.Tensor, vocab_start: int, inv_temp: float) -> torch.Tensor:
    """[4, C] (max, sum exp(z - max), sum exp(z - max)(z - max), target logit) of z = logits / T, one
    vocabulary block at a time with the online merge of the Triton kernel, so the fp32 temporaries are
    [C, TORCH_BLOCK_V] rather than [C, V]."""
    C, V = logits.shape
    m = torch.full((C,), -1e30, dtype=torch.float32, device=logits.device)
    s = torch.zeros_like(m)
    b = torch.zeros_like(m)
    for v0 in range(0, V, TORCH_BLOCK_V):
        zm = logits[:, v0 : v0 + TORCH_BLOCK_V].to(torch.float32, copy=True).mul_(inv_temp)  # [C, Vb] fp32
        mb = zm.max(dim=1).values
        zm.sub_(mb[:, None])
        e = torch.exp(zm)
        sb = e.sum(1)
        bb = e.mul_(zm).sum(1)
        m, s, b = merge_softmax_stats(m, s, b, mb, sb, bb)
    y, hit = _local_target(targets, vocab_start, V)
    zt = logits.gather(1, y[:, None]).squeeze(1).float() * inv_temp
    zt = torch.where(hit, zt, torch.zeros_like(zt))
    return torch.stack([m, s, b, zt])  # [4, C]


def rescale_softmax_stats(m, s, b, M):
    """(sum e^(z-m), sum e^(z-m)(z-m)) of a part of a row -> the same sums relative to a larger max M,
    so that parts can be added: the online-softmax step of the Triton kernel, and the TP merge."""
    a = torch.exp(m - M)
    return s * a, a * (b + (m - M) * s)


def merge_softmax_stats(m1, s1, b1, m2, s2, b2):
    """Merge two (max m, sum e^(z-m), sum e^(z-m)(z-m)) over disjoint parts of a row."""
    M = torch.maximum(m1, m2)
    (s1, b1), (s2, b2) = rescale_softmax_stats(m1, s1, b1, M), rescale_softmax_stats(m2, s2, b2, M)
    return M, s1 + s2, b1 + b2


def _dlogits_torch(logits, targets, lse, zbar, glp, gent, vocab_start: int, inv_temp: float) -> None:
    """In place, one vocabulary block at a time: dz / T = [glp (onehot - p) - gent p (z - zbar)] / T."""
    C, V = logits.shape
    y, hit = _local_target(targets, vocab_start, V)
    for v0 in range(0, V, TORCH_BLOCK_V):
        blk = logits[:, v0 : v0 + TORCH_BLOCK_V]
        t = blk.to(torch.float32, copy=True).mul_(inv_temp).sub_(lse[:, None])  # [C, Vb] z - lse
        p = torch.exp(t)
        t.add_((lse - zbar)[:, None]).mul_(gent[:, None]).add_(glp[:, None]).mul_(p)  # p (glp + gent (z - zbar))
        in_blk = hit & (y >= v0) & (y < v0 + blk.shape[1])
        yb = (y - v0).clamp(0, blk.shape[1] - 1)
        t.scatter_add_(1, yb[:, None], -torch.where(in_blk, glp, torch.zeros_like(glp))[:, None])
        blk.copy_(t.mul_(-inv_temp))


# ---------------------------------------------------------------------------------------------
# chunk-level building blocks shared with fused_grpo_loss
# ---------------------------------------------------------------------------------------------


class ChunkStats(NamedTuple):
    lse: torch.Tensor  # [C] fp32, global log-sum-exp of logits / temperature
    zbar: torch.Tensor  # [C] fp32, global sum_v p_v z_v
    logp: torch.Tensor  # [C] fp32, log p(target)
    entropy: torch.Tensor  # [C] fp32


def tp_layout(group, V_local: int, vocab_start: Optional[int] = None) -> tuple[int, int]:
    """(world size, first global vocab id of this rank's shard) for an optional TP group."""
    if group is None or not dist.is_initialized():
        return 1, 0 if vocab_start is None else vocab_start
    world = dist.get_world_size(group)
    if vocab_start is None:
        vocab_start = dist.get_rank(group) * V_local  # megatron VocabUtility: equal contiguous shards
    return world, vocab_start


def combine_stats(stats: torch.Tensor, group=None) -> ChunkStats:
    """Merge per-shard [4, C] (max, sum-exp, entropy term, target logit) over the TP group."""
    m, s, b, zt = stats
    if group is not None and dist.is_initialized() and dist.get_world_size(group) > 1:
        M = m.clone()
        dist.all_reduce(M, op=dist.ReduceOp.MAX, group=group)
        packed = torch.stack([*rescale_softmax_stats(m, s, b, M), zt])  # [3, C]
        dist.all_reduce(packed, op=dist.ReduceOp.SUM, group=group)
        m, (s, b, zt) = M, packed
    log_s = torch.log(s)
    lse = m + log_s
    entropy = log_s - b / s  # H = lse - sum p z, with sum p z = m + b / s
    return ChunkStats(lse=lse, zbar=m + b / s, logp=zt - lse, entropy=entropy)


def chunk_logits_stats(x, weight, targets, inv_temp, vocab_start, group, triton_path: bool):
    """logits of one token chunk (GEMM) and its global statistics. x [C, H], weight [V_l, H]."""
    logits = x @ weight.t()  # [C, V_l], input dtype, fp32 accumulation inside the GEMM
    stats = (_stats_triton if triton_path else _stats_torch)(logits, targets, vocab_start, inv_temp)
    return logits, combine_stats(stats, group)


def chunk_dlogits_(logits, targets, st: ChunkStats, glp, gent, inv_temp, vocab_start, triton_path: bool):
    """In place: logits [C, V_l] -> d loss / d logits for per-token grads glp, gent ([C] fp32)."""
    fn = _dlogits_triton if triton_path else _dlogits_torch
    fn(logits, targets, st.lse.contiguous(), st.zbar.contiguous(), glp.contiguous(), gent.contiguous(), vocab_start, inv_temp)
    return logits


def default_chunk_size(V_local: int, dtype: torch.dtype, T: int) -> int:
    """Token rows per chunk: the largest power of two with C * V_local * itemsize <= CHUNK_BYTES and
    C <= T / 8 (so the buffer stays well under the full logits), within [256, 8192]."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    c = max(1, min(CHUNK_BYTES // max(V_local * itemsize, 1), T // 8))
    c = 1 << (c.bit_length() - 1)
    return int(min(max(c, 256), 8192, max(T, 1)))


def dw_buffer(weight: torch.Tensor, n_chunks: int) -> torch.Tensor:
    """Zeroed dW accumulator: fp32 when several bf16/fp16 token chunks add into it (a bf16 running sum
    rounds every partial sum to 8 bits, so its error grows with the number of chunks), else weight's dtype."""
    low = weight.dtype in (torch.bfloat16, torch.float16)
    return torch.zeros(weight.shape, dtype=torch.float32 if low and n_chunks > 1 else weight.dtype,
                       device=weight.device)


def accumulate_dw_(dw: torch.Tensor, dlogits: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """dw += dlogits.T @ x. Same dtypes: one in-place GEMM. fp32 ``dw``: per block of vocabulary rows, the
    product in the input dtype (fp32 inside the GEMM, rounded once) added in fp32."""
    if dw.dtype == dlogits.dtype:
        return dw.addmm_(dlogits.t(), x)
    for v0 in range(0, dw.shape[0], DW_BLOCK_ROWS):
        dw[v0 : v0 + DW_BLOCK_ROWS].add_(dlogits[:, v0 : v0 + DW_BLOCK_ROWS].t() @ x)
    return dw


def all_reduce_(t: torch.Tensor, group) -> torch.Tensor:
    if group is not None and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(t, group=group)
    return t


# ---------------------------------------------------------------------------------------------
# autograd Function and API
# ---------------------------------------------------------------------------------------------


class _FusedLogProbs(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, temperature, group, vocab_start, chunk, triton_path, reduce_grad_hidden):
        T = hidden.shape[0]
        inv_temp = 1.0 / temperature
        logp = torch.empty(T, dtype=torch.float32, device=hidden.device)
        entropy = torch.empty_like(logp)
        lse = torch.empty_like(logp)
        zbar = torch.empty_like(logp)
        for c0 in range(0, T, chunk):
            sl = slice(c0, c0 + chunk)
            _, st = chunk_logits_stats(hidden[sl], weight, targets[sl], inv_temp, vocab_start, group, triton_path)
            logp[sl], entropy[sl], lse[sl], zbar[sl] = st.logp, st.entropy, st.lse, st.zbar
        ctx.save_for_backward(hidden, weight, targets, lse, zbar)
        ctx.cfg = (inv_temp, group, vocab_start, chunk, triton_path, reduce_grad_hidden)
        return logp, entropy

    @staticmethod
    def backward(ctx, g_logp, g_entropy):
        hidden, weight, targets, lse, zbar = ctx.saved_tensors
        inv_temp, group, vocab_start, chunk, triton_path, reduce_grad_hidden = ctx.cfg
        need_x, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        T = hidden.shape[0]
        g_logp = torch.zeros_like(lse) if g_logp is None else g_logp.float()
        g_entropy = torch.zeros_like(lse) if g_entropy is None else g_entropy.float()
        dx = torch.empty_like(hidden) if need_x else None
        dw = dw_buffer(weight, -(-T // chunk)) if need_w else None
        for c0 in range(0, T, chunk):
            sl = slice(c0, c0 + chunk)
            x_c = hidden[sl]
            logits = x_c @ weight.t()  # recompute [C, V_l]
            st = ChunkStats(lse[sl], zbar[sl], None, None)
            chunk_dlogits_(logits, targets[sl], st, g_logp[sl], g_entropy[sl], inv_temp, vocab_start, triton_path)
            if need_x:
                torch.matmul(logits, weight, out=dx[sl])
            if need_w:
                accumulate_dw_(dw, logits, x_c)
        if need_x and reduce_grad_hidden:
            all_reduce_(dx, group)
        if need_w:
            dw = dw.to(weight.dtype)  # one rounding of the fp32 sum
        return dx, dw, None, None, None, None, None, None, None


def _flatten(hidden, weight, targets):
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"hidden {tuple(hidden.shape)} and targets {tuple(targets.shape)} disagree")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be [V_local, H={hidden.shape[-1]}], got {tuple(weight.shape)}")
    if hidden.dtype != weight.dtype:
        raise ValueError(f"hidden ({hidden.dtype}) and weight ({weight.dtype}) dtypes differ")
    return hidden.reshape(-1, hidden.shape[-1]), targets.reshape(-1).to(torch.int64)


def fused_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float = 1.0,
    tp_group=None,
    with_entropy: bool = False,
    vocab_start: Optional[int] = None,
    chunk_size: Optional[int] = None,
    reduce_grad_hidden: bool = True,
    backend: str = "auto",
):
    """log p(targets) [...] fp32 (and the entropy [...] when ``with_entropy``) of softmax(hidden @ W.T /
    temperature) without materialising the logits; differentiable w.r.t. hidden and weight.

    hidden [..., H]; weight: this rank's vocab shard [V_local, H] (the whole head without TP);
    targets [...] global token ids (ids outside [0, V) give logp = -lse: mask them out).
    Under ``tp_group`` the outputs are the global values on every rank; d hidden is all-reduced over
    the group unless ``reduce_grad_hidden=False`` (when the caller's region does it, e.g. megatron's
    copy_to_tensor_model_parallel_region); d weight is the local shard's gradient.
    """
    x, y = _flatten(hidden, weight, targets)
    _, vstart = tp_layout(tp_group, weight.shape[0], vocab_start)
    chunk = chunk_size or default_chunk_size(weight.shape[0], weight.dtype, x.shape[0])
    logp, entropy = _FusedLogProbs.apply(
        x, weight, y, float(temperature), tp_group, vstart, int(chunk), use_triton(backend, x), reduce_grad_hidden
    )
    logp = logp.reshape(targets.shape)
    return (logp, entropy.reshape(targets.shape)) if with_entropy else logp


def reference_logprobs(hidden, weight, targets, *, temperature: float = 1.0, with_entropy: bool = False, upcast: bool = True):
    """The plain-torch definition: full logits = hidden @ W.T (whole vocabulary), log_softmax, gather.
    upcast=True computes in fp32 (test reference); False keeps the GEMM in the input dtype (trainer-style)."""
    if upcast:
        hidden, weight = hidden.float(), weight.float()
    logits = (hidden @ weight.t()).float() / temperature  # [..., V]
    logprobs = torch.log_softmax(logits, dim=-1)
    logp = logprobs.gather(-1, targets.long().unsqueeze(-1)).squeeze(-1)
    if not with_entropy:
        return logp
    entropy = -(logprobs.exp() * logprobs).sum(-1)
    return logp, entropy


def aot_specs(dtype: str = "bf16") -> list[dict]:
    """The production launches of this module's Triton kernels, for ahead-of-time compilation checks
    (tests/kernels/test_aot_compile.py, tools/bench_kernels.py): kernel, signature, constexprs, num_warps."""
    common = {"logits_ptr": f"*{dtype}", "stride_row": "i32", "targets_ptr": "*i64"}
    return [
        dict(
            kernel=_vocab_stats_kernel,
            signature={**common, "stats_ptr": "*fp32", "n_rows": "i32", "V": "i32", "vocab_start": "i32",
                       "inv_temp": "fp32", "BLOCK_V": "constexpr"},
            constexprs={"BLOCK_V": STATS_BLOCK_V},
            num_warps=STATS_NUM_WARPS,
        ),
        dict(
            kernel=_dlogits_kernel,
            signature={**common, "lse_ptr": "*fp32", "zbar_ptr": "*fp32", "glp_ptr": "*fp32", "gent_ptr": "*fp32",
                       "V": "i32", "vocab_start": "i32", "inv_temp": "fp32", "BLOCK_V": "constexpr"},
            constexprs={"BLOCK_V": DLOGITS_BLOCK_V},
            num_warps=DLOGITS_NUM_WARPS,
        ),
    ]
