"""Side-by-side benchmarks of mmr1_kernels, measured in one run; prints a table and JSON lines.

1. GRPO loss from hidden states, forward + backward: the torch reference (full logits + log_softmax),
   the fused kernel (Triton on CUDA, its torch row ops on CPU), Liger-Kernel's fused linear GRPO when
   installed (the dev extra has it; eager on CPU), and the three GEMMs no design can avoid (logits, d hidden, d weight) as the floor.
   Columns: time, peak extra memory, achieved FLOP/s and bytes/s against the device's peak.
2. VPS statistics vs the MMR1 reference approach (NLTK sentence_bleu and per-pair Levenshtein in
   Python loops, Python sets for distinct-n) on the same inputs: time, speedup, max |difference|.

    python tools/bench_kernels.py --quick      # CPU, small shapes, < 1 min
    python tools/bench_kernels.py              # full shapes (GPU: T in {4k, 16k}, H=3584, V=152064, bf16)
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

import mmr1_kernels as K
from megatron_mmr1.utils.timing import median_seconds

# dense bf16 tensor-core peak FLOP/s and HBM bytes/s (datasheets, SXM parts)
GPU_PEAKS = {"H100": (989.4e12, 3.35e12), "H200": (989.4e12, 4.8e12), "A100": (312e12, 2.0e12)}

LOSS_KW = dict(eps_low=0.2, eps_high=0.28, clip_c=3.0, kl_coef=0.01, kl_estimator="low_var_kl", entropy_coef=0.0,
               temperature=0.6, loss_agg_mode="token-mean")


def emit(rows: list[dict], **row) -> None:
    rows.append(row)
    print("JSON " + json.dumps(row), flush=True)


# ----------------------------------------------------------------------------- measurement helpers


def timed(fn, dev: str, repeat: int) -> float:
    """Median wall seconds of fn() over `repeat` runs after one warm-up."""
    return median_seconds(fn, repeat, cuda=dev == "cuda")


class _LiveTensorBytes(TorchDispatchMode):
    """Peak bytes of live tensor storages created under this mode (CPU stand-in for CUDA's allocator
    statistics): every op output's storage is counted until Python frees it. Works on the meta device
    too (storages keyed by their StorageImpl there, since meta storages have no data pointer)."""

    def __init__(self):
        super().__init__()
        self.live: dict[int, int] = {}
        self.cur = self.peak = 0

    def _free(self, key):
        self.cur -= self.live.pop(key, 0)

    @staticmethod
    def _key(st) -> int:
        return st.data_ptr() or st._cdata

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # outputs that alias an input (views, in-place and out= ops) allocate nothing, even when the
        # input was created before the mode started (the weight, the hidden states)
        seen = {self._key(t.untyped_storage()) for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = self._key(st)
                if key and key not in self.live and key not in seen:
                    self.live[key] = st.nbytes()
                    self.cur += st.nbytes()
                    self.peak = max(self.peak, self.cur)
                    weakref.finalize(st, self._free, key)
        return out


def peak_extra_bytes(fn, dev: str) -> int:
    """Peak memory allocated by fn() above what was allocated before it (after fn.reset(), if any)."""
    if hasattr(fn, "reset"):
        fn.reset()
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    mode = _LiveTensorBytes()
    with mode:
        fn()
    return mode.peak


def device_peaks(dev: str, dtype: torch.dtype) -> tuple[float, float, str]:
    """(FLOP/s, bytes/s, source): datasheet numbers on known GPUs, else measured here (a large GEMM and
    a large copy), so that 'fraction of peak' is always stated against something."""
    if dev == "cuda":
        name = torch.cuda.get_device_name()
        for key, (f, b) in GPU_PEAKS.items():
            if key in name:
                return f, b, f"datasheet {key}"
    n = 2048 if dev == "cpu" else 8192
    a = torch.randn(n, n, device=dev, dtype=dtype)
    t = timed(lambda: a @ a, dev, 3)
    x = torch.empty(64 * 2**20 // 4, device=dev)
    tb = timed(lambda: x.clone(), dev, 3)
    return 2 * n**3 / t, 2 * x.numel() * 4 / tb, "measured here (GEMM, copy)"


# ----------------------------------------------------------------------------- 1. GRPO loss


def loss_inputs(T, H, V, dtype, dev, seq=1024):
    """On the meta device: shapes and dtypes only, for the allocation-only memory run."""
    B = max(1, T // seq)
    S = T // B
    if dev == "meta":
        f = dict(device="meta")
        return (torch.empty(B, S, H, dtype=dtype, **f), torch.empty(V, H, dtype=dtype, **f),
                torch.empty(B, S, dtype=torch.int64, **f), *(torch.empty(B, S, **f) for _ in range(4)))
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(B, S, H, generator=g) * 0.05).to(dev, dtype)
    w = (torch.randn(V, H, generator=g) * 0.05).to(dev, dtype)
    y = torch.randint(0, V, (B, S), generator=g).to(dev)
    old = (-torch.rand(B, S, generator=g) * 8).to(dev)
    ref = old + 0.1 * torch.randn(B, S, generator=g).to(dev)
    adv = torch.randn(B, 1, generator=g).expand(B, S).contiguous().to(dev)
    mask = (torch.rand(B, S, generator=g) < 0.9).float().to(dev)
    return x, w, y, old, ref, adv, mask


def run_loss_impl(impl: str, inputs, dev):
    x, w, y, old, ref, adv, mask = inputs
    xr, wr = x.detach().requires_grad_(True), w.detach().requires_grad_(True)

    def fn():
        xr.grad = wr.grad = None
        if impl == "reference":
            out = K.reference_grpo_loss(xr, wr, y, old, ref, adv, mask, upcast=False, **LOSS_KW)
            loss = out.loss
        elif impl == "fused":
            loss = K.fused_grpo_loss(xr, wr, y, old, ref, adv, mask, **LOSS_KW).loss
        elif impl == "liger":
            loss = _liger_loss(xr, wr, y, old, ref, adv, mask)
        else:
            raise ValueError(impl)
        loss.backward()
        return loss

    def reset():  # drop the gradients of the previous run before a memory baseline is taken
        xr.grad = wr.grad = None

    fn.reset = reset
    return fn


def liger_installed() -> bool:
    """Liger-Kernel is a third-party column: the benchmark runs without it."""
    try:
        import liger_kernel  # noqa: F401
    except ImportError:
        return False
    return True


def _liger_loss(x, w, y, old, ref, adv, mask):
    """Liger's token-mean ("bnpo") GRPO loss with the same clip, KL and temperature (it has no dual clip).
    torch.compile of its loss math on CUDA (Liger's default); eager on CPU, where compiling costs minutes."""
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    mod = LigerFusedLinearGRPOLoss(beta=LOSS_KW["kl_coef"], use_ref_model=True, epsilon_low=LOSS_KW["eps_low"],
                                   epsilon_high=LOSS_KW["eps_high"], loss_type="bnpo",
                                   temperature=LOSS_KW["temperature"], compiled=x.is_cuda)
    out = mod(x, w, y, mask, adv[:, 0], ref_per_token_logps=ref, old_per_token_logps=old)
    return out[0] if isinstance(out, tuple) else out


def bench_loss_memory_meta(shapes, dtype, rows):
    """Peak extra memory of the reference and the fused loss (its torch backend: the same buffers as the
    Triton path, plus the row ops' temporaries) at full size, on the meta device: every allocation is
    made and counted, no arithmetic runs, so the production shape fits on any machine. This measures the
    allocation pattern, not the CUDA caching allocator (fragmentation and cuBLAS workspace are not seen)."""
    print(f"\n== GRPO loss peak extra memory at full size (meta device: allocations only, {dtype}) ==")
    hdr = (f"{'T':>6} {'H':>5} {'V':>7} | {'reference MB':>12} {'fused MB':>9} | {'fused/ref':>9} (goal <= 0.125) | "
           f"without dX, dW: {'ref MB':>7} {'fused MB':>8} {'ratio':>6}")
    print(hdr + "\n" + "-" * len(hdr))
    for T, H, V in shapes:
        inputs = loss_inputs(T, H, V, dtype, "meta")
        mem = {impl: peak_extra_bytes(run_loss_impl(impl, inputs, "meta"), "meta") for impl in ("reference", "fused")}
        grads = (inputs[0].numel() + inputs[1].numel()) * inputs[0].element_size()  # the returned dX and dW
        work = {k: v - grads for k, v in mem.items()}
        ratio, work_ratio = mem["fused"] / mem["reference"], work["fused"] / work["reference"]
        print(f"{T:>6} {H:>5} {V:>7} | {mem['reference'] / 2**20:>12.0f} {mem['fused'] / 2**20:>9.0f} | {ratio:>9.3f} "
              f"{'':>14} | {'':>15} {work['reference'] / 2**20:>7.0f} {work['fused'] / 2**20:>8.0f} {work_ratio:>6.3f}")
        emit(rows, bench="grpo_loss_memory_meta", dtype=str(dtype), T=T, H=H, V=V,
             reference_peak_extra_mb=mem["reference"] / 2**20, fused_peak_extra_mb=mem["fused"] / 2**20,
             fused_over_reference_peak_mem=ratio, grads_mb=grads / 2**20,
             fused_over_reference_working_mem=work_ratio)
    print("(the weight gradient alone is V x H, 1040 MB here, in both columns: it dominates the fused peak at "
          "small T)")


def gemm3(T, H, V, dtype, dev):
    """The 3 matmuls any design needs: logits = X W^T, dX = dZ W, dW = dZ^T X (full size, one each)."""
    g = torch.Generator().manual_seed(1)
    X = torch.randn(T, H, generator=g).to(dev, dtype)
    W = torch.randn(V, H, generator=g).to(dev, dtype)
    dZ = torch.empty(T, V, device=dev, dtype=dtype)

    def fn():
        torch.matmul(X, W.t(), out=dZ)
        X.copy_(dZ @ W)
        return dZ.t() @ X

    return fn


def bench_loss(shapes, dtype, dev, repeat, rows):
    fpk, bpk, src = device_peaks(dev, dtype)
    print(f"\n== GRPO loss fwd+bwd from hidden states ({dev}, {dtype}; peaks {fpk / 1e12:.3g} TFLOP/s, "
          f"{bpk / 1e9:.0f} GB/s, {src}) ==")
    have_liger = liger_installed()
    hdr = f"{'T':>6} {'H':>5} {'V':>7} | {'impl':<9} {'ms':>9} {'peak MB':>9} {'TFLOP/s':>8} {'%peak':>6} " \
          f"{'GB/s':>7} | vs ref"
    print(hdr + "\n" + "-" * len(hdr))
    isz = torch.empty((), dtype=dtype).element_size()
    impls = ["reference", "fused"] + (["liger"] if have_liger else [])
    times, mems, t3s = {}, {}, {}
    # all timings first, then the peak-memory runs (on CPU those run under a dispatch-mode probe)
    for phase in ("time", "memory"):
        for T, H, V in shapes:
            inputs = loss_inputs(T, H, V, dtype, dev)
            for impl in impls:
                try:
                    fn = run_loss_impl(impl, inputs, dev)
                    if phase == "time":
                        times[T, H, V, impl] = timed(fn, dev, repeat)
                    elif (T, H, V, impl) in times:
                        mems[T, H, V, impl] = peak_extra_bytes(fn, dev)
                except Exception as e:  # a third-party column must not end the run
                    print(f"{T:>6} {H:>5} {V:>7} | {impl:<9} failed: {type(e).__name__}: {str(e)[:80]}")
            if phase == "time":
                t3s[T, H, V] = timed(gemm3(T, H, V, dtype, dev), dev, repeat)
            del inputs
            if dev == "cuda":
                torch.cuda.empty_cache()
    for T, H, V in shapes:
        flops = 6.0 * T * H * V  # three GEMMs of 2 T H V
        t3 = t3s[T, H, V]
        # modelled traffic: fused = logits written, read by the stats pass, read+written as dlogits, read by
        # the dX and dW GEMMs (6 T V) + X, W, dX, dW; reference = the same GEMM traffic plus fp32 log-softmax,
        # entropy and their backward over [T, V] (about 12 fp32 passes)
        io = 2 * (T * H + V * H) * isz
        bytes_model = {"fused": 6 * T * V * isz + io, "reference": 3 * T * V * isz + 12 * T * V * 4 + io,
                       "liger": 6 * T * V * isz + io}
        t_ref = times.get((T, H, V, "reference"), math.nan)
        res = {i: (times[T, H, V, i], mems.get((T, H, V, i), 0)) for i in impls if (T, H, V, i) in times}
        for impl, (t, mem) in res.items():
            tf = flops / t
            bw = bytes_model[impl] / t
            print(f"{T:>6} {H:>5} {V:>7} | {impl:<9} {t * 1e3:>9.2f} {mem / 2**20:>9.1f} {tf / 1e12:>8.3g} "
                  f"{100 * tf / fpk:>5.1f}% {bw / 1e9:>7.1f} | {t_ref / t:>5.2f}x faster")
            emit(rows, bench="grpo_loss_fwd_bwd", device=dev, dtype=str(dtype), T=T, H=H, V=V, impl=impl,
                 ms=t * 1e3, peak_extra_mb=mem / 2**20, tflops=tf / 1e12, frac_peak_flops=tf / fpk,
                 gbps_model=bw / 1e9, frac_peak_bw=bw / bpk, speedup_vs_reference=t_ref / t)
        print(f"{T:>6} {H:>5} {V:>7} | {'3 GEMMs':<9} {t3 * 1e3:>9.2f} {'':>9} {flops / t3 / 1e12:>8.3g} "
              f"{100 * flops / t3 / fpk:>5.1f}%")
        if "fused" in res and "reference" in res:
            mem_ratio = res["fused"][1] / max(res["reference"][1], 1)
            t_ratio = res["fused"][0] / t3
            print(f"{'':>22} targets: fused/3-GEMM time {t_ratio:.2f}x (goal <= 1.15x on GPU), "
                  f"fused/reference peak memory {mem_ratio:.3f} (goal <= 0.125)")
            emit(rows, bench="grpo_loss_targets", device=dev, T=T, H=H, V=V, gemm3_ms=t3 * 1e3,
                 fused_over_gemm3_time=t_ratio, fused_over_reference_peak_mem=mem_ratio,
                 fused_over_liger_time=res["fused"][0] / res["liger"][0] if "liger" in res else None)


def logprob_impls(x, w, y, mask):
    """Log-prob users besides the loss: old / reference log-probs (no grad) and SFT cross-entropy
    (fwd + bwd), by the reference, fused_logprobs, and Liger's fused linear cross-entropy (CUDA only:
    its kernels are Triton without a torch path)."""
    xr, wr = x.detach().requires_grad_(True), w.detach().requires_grad_(True)
    n = mask.sum().clamp(min=1.0)

    def run(kind, impl):
        def fn():
            xr.grad = wr.grad = None
            if kind == "logprobs (no grad)":
                with torch.no_grad():
                    if impl == "reference":
                        return K.reference_logprobs(x, w, y, temperature=LOSS_KW["temperature"], upcast=False)
                    return K.fused_logprobs(x, w, y, temperature=LOSS_KW["temperature"])
            if impl == "liger":
                from liger_kernel.transformers import LigerFusedLinearCrossEntropyLoss

                ce = LigerFusedLinearCrossEntropyLoss()(wr, xr.reshape(-1, xr.shape[-1]),
                                                        torch.where(mask > 0, y, -100).reshape(-1))
            else:
                lp_fn = K.reference_logprobs if impl == "reference" else K.fused_logprobs
                kw = dict(upcast=False) if impl == "reference" else {}
                ce = -(lp_fn(xr, wr, y, **kw) * mask).sum() / n
            ce.backward()
            return ce

        fn.reset = lambda: setattr(xr, "grad", None) or setattr(wr, "grad", None)
        return fn

    return run


def bench_logprobs(shapes, dtype, dev, repeat, rows):
    print(f"\n== log-probs from hidden states: old / ref log-probs (no grad), SFT cross-entropy (fwd + bwd) "
          f"({dev}, {dtype}) ==")
    hdr = f"{'T':>6} {'H':>5} {'V':>7} | {'what':<20} {'impl':<9} {'ms':>9} {'peak MB':>9} | vs ref"
    print(hdr + "\n" + "-" * len(hdr))
    have_liger = dev == "cuda" and liger_installed()  # Liger's cross-entropy kernels are Triton-only
    for T, H, V in shapes:
        x, w, y, _, _, _, mask = loss_inputs(T, H, V, dtype, dev)
        run = logprob_impls(x, w, y, mask)
        for kind in ("logprobs (no grad)", "sft cross-entropy"):
            impls = ["reference", "fused"] + (["liger"] if have_liger and kind == "sft cross-entropy" else [])
            t_ref = None
            for impl in impls:
                try:
                    t = timed(run(kind, impl), dev, repeat)
                    mem = peak_extra_bytes(run(kind, impl), dev)
                except Exception as e:  # a third-party column must not end the run
                    print(f"{T:>6} {H:>5} {V:>7} | {kind:<20} {impl:<9} failed: {type(e).__name__}: {str(e)[:60]}")
                    continue
                t_ref = t_ref or t
                print(f"{T:>6} {H:>5} {V:>7} | {kind:<20} {impl:<9} {t * 1e3:>9.2f} {mem / 2**20:>9.1f} | "
                      f"{t_ref / t:>5.2f}x faster")
                emit(rows, bench="logprobs", what=kind, device=dev, dtype=str(dtype), T=T, H=H, V=V, impl=impl,
                     ms=t * 1e3, peak_extra_mb=mem / 2**20, speedup_vs_reference=t_ref / t)
        del x, w
        if dev == "cuda":
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------- 2. VPS statistics


def vps_groups(G, N, L, vocab=32000, seed=0):
    """Rollout-like groups: N variants of one base response (70% shared tokens), ragged lengths."""
    rng = random.Random(seed)
    groups = []
    for _ in range(G):
        base = [rng.randrange(vocab) for _ in range(L)]
        g = []
        for _ in range(N):
            n = rng.randint(L // 2, L)
            g.append([t if rng.random() < 0.7 else rng.randrange(vocab) for t in base[:n]])
        groups.append(g)
    return groups


def reference_vps(groups, which, rewards=None):
    """The MMR1-code approach: NLTK sentence_bleu / Levenshtein per pair / sets / mean, in Python loops."""
    out = []
    if which == "pass_rate_variance":
        for r in rewards.tolist():
            p = sum(r) / len(r)
            out.append(p * (1 - p))
    elif which == "self_bleu":
        from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

        sm = SmoothingFunction().method1
        for g in groups:
            s = [sentence_bleu([r for j, r in enumerate(g) if j != i], h, weights=(1 / 3,) * 3, smoothing_function=sm)
                 for i, h in enumerate(g)]
            out.append(sum(s) / len(s))
    elif which == "edit_distance":
        import Levenshtein

        for g in groups:
            d = [Levenshtein.distance(g[i], g[j]) / max(len(g[i]), len(g[j]), 1)
                 for i in range(len(g)) for j in range(i + 1, len(g))]
            out.append(sum(d) / len(d))
    elif which == "distinct_n":
        for g in groups:
            grams = [tuple(s[i : i + 3]) for s in g for i in range(len(s) - 2)]
            out.append(len(set(grams)) / len(grams))
    return torch.tensor(out, dtype=torch.float64)


def bench_vps(G, N, L, dev, rows):
    """Each metric from the raw groups (packing included), then the VPS inputs as MMR1 configures them:
    OVS (pass-rate variance) + TDS by self-BLEU-123, the paper's and the released code's default."""
    print(f"\n== VPS statistics: {G} groups x {N} rollouts x <= {L} tokens ({dev}, "
          f"{torch.get_num_threads()} thread(s)) ==")
    groups = vps_groups(G, N, L)
    rewards = (torch.rand(G, N, generator=torch.Generator().manual_seed(0)) < 0.5).float()

    def on_dev(fn):
        return lambda: fn(K.pack_groups(groups, device=dev))

    ours = {"pass_rate_variance": lambda: K.pass_rate_variance(rewards.to(dev)),
            "self_bleu": on_dev(lambda p: K.self_bleu(p, 3)), "distinct_n": on_dev(lambda p: K.distinct_n(p, 3)),
            "edit_distance": on_dev(K.edit_distance)}
    hdr = f"{'metric':<24} | {'reference s':>11} {'ours s':>8} | {'speedup':>8} | max |diff|"
    print(hdr + "\n" + "-" * len(hdr))
    t_ref, t_ours = {}, {}
    for name, fn in ours.items():
        t0 = time.perf_counter()
        want = reference_vps(groups, name, rewards)
        t_ref[name] = time.perf_counter() - t0
        t_ours[name] = timed(fn, dev, 3)  # median of 3 after a warm-up: short runs are the ones hurt by load spikes
        diff = float((fn().cpu() - want).abs().max())
        print(f"{name:<24} | {t_ref[name]:>11.3f} {t_ours[name]:>8.3f} | {t_ref[name] / t_ours[name]:>7.1f}x | {diff:.1e}")
        emit(rows, bench="vps", metric=name, device=dev, G=G, N=N, L=L, reference_s=t_ref[name],
             ours_s=t_ours[name], speedup=t_ref[name] / t_ours[name], max_abs_diff=diff)
    print("(edit distance: both sides run the C++ bit-parallel algorithm; ours batches all pairs over the "
          "CPU threads)")
    for label, names in (("vps: ovs + tds self-BLEU", ("pass_rate_variance", "self_bleu")),
                         ("all four metrics", tuple(ours))):
        ref_s, ours_s = sum(t_ref[n] for n in names), sum(t_ours[n] for n in names)
        print(f"{label:<24} | {ref_s:>11.3f} {ours_s:>8.3f} | {ref_s / ours_s:>7.1f}x |")
        emit(rows, bench="vps", metric=label, device=dev, G=G, N=N, L=L, reference_s=ref_s, ours_s=ours_s,
             speedup=ref_s / ours_s)


def main(argv=None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small CPU shapes, under a minute")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--skip-loss", action="store_true")
    ap.add_argument("--skip-vps", action="store_true")
    ap.add_argument("--threads", type=int, default=None,
                    help="torch CPU threads (--quick: 1, for stable numbers on shared cores)")
    args = ap.parse_args(argv)
    dev = "cpu" if args.quick else args.device
    threads = args.threads or (1 if args.quick else None)
    if threads:
        torch.set_num_threads(threads)
    print(f"device {dev}" + (f" ({torch.cuda.get_device_name()})" if dev == "cuda" else "")
          + f", torch {torch.__version__}, {torch.get_num_threads()} CPU thread(s)")
    rows: list[dict] = []
    if not args.skip_vps:
        if args.quick:
            bench_vps(32, 8, 512, dev, rows)
        else:
            bench_vps(512, 8, 1024, "cpu", rows)
            if dev == "cuda":
                bench_vps(512, 8, 1024, dev, rows)
    if not args.skip_loss:
        bench_loss_memory_meta([(4096, 3584, 152064), (16384, 3584, 152064)], torch.bfloat16, rows)
        if dev == "cuda":
            bench_loss([(4096, 3584, 152064), (16384, 3584, 152064)], torch.bfloat16, dev, 5, rows)
            bench_logprobs([(4096, 3584, 152064), (16384, 3584, 152064)], torch.bfloat16, dev, 5, rows)
        elif args.quick:
            bench_loss([(1024, 256, 8192), (4096, 256, 8192)], torch.float32, dev, 1, rows)
            bench_logprobs([(1024, 256, 8192)], torch.float32, dev, 1, rows)
        else:
            bench_loss([(2048, 512, 32768), (4096, 512, 65536)], torch.float32, dev, 2, rows)
            bench_logprobs([(4096, 512, 65536)], torch.float32, dev, 2, rows)
    return rows


if __name__ == "__main__":
    main()
