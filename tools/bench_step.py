"""The GRPO step measured phase by phase on the tiny policy with the stand-in servers; JSON lines.

One run prints, side by side:

1. phases of the synchronous step (rollout, reward, VPS scoring, old/ref log-probs, train, weight sync,
   broadcast, bookkeeping) in seconds and as shares of the step; tokens/s; the overhead share
   (everything outside rollout + train compute), with the reference forward apart;
2. padding waste: tokens the packed micro-batches compute / real tokens, against plain padding of the
   optimizer step's sequences to its longest one (the trainer's ``batching/*`` metrics);
3. weight-sync throughput: the loop's sync (bytes / seconds) and the distributed sender alone (tensor
   by tensor and flattened) at growing payloads (the tiny policy repeated, then checkpoints of realistic
   tensor sizes: ``make_wide_checkpoint``), against a bare ``torch.distributed`` broadcast of the same
   bytes over a group of as many processes and the same backend (gloo on CPU);
4. synchronous vs overlapped (``training.async_rollout``) on the same seeds and settings: seconds per
   steady step (step 1, with one-off start-up costs, is left out) and the ratio.

    python tools/bench_step.py --quick      # make bench: ~2.5 min of CPU time
    python tools/bench_step.py              # ~4 min of CPU time (2 cores)
    python tools/bench_step.py --only weight_sync   # part 3 alone (no loop row), ~2 min

The workload is examples/configs/tiny_cpu_grpo.yaml (its stand-in servers and temperature) with the
random tiny policy made to stop like a sampled reasoner (``shape_stop_probability``). Each GRPO run
is a 1-rank job in a child process that starts its own stand-in servers, as a torchrun job would. On
a shared machine the load average is printed with the figures: read them with it.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GRPO_CONFIG = REPO / "examples/configs/tiny_cpu_grpo.yaml"

# settings of the GRPO runs: (default, --quick)
WORKLOADS = {
    "default": dict(steps=4, rollout_batch_size=8, n=8, max_response_length=256, stop_p=1 / 48),
    "quick": dict(steps=3, rollout_batch_size=4, n=4, max_response_length=128, stop_p=1 / 32),
}
SYNC_PAYLOAD_REPEATS = {"default": (1, 16), "quick": (1, 8)}
SYNC_WIDE_LAYERS = {"default": (4, 12, 24), "quick": (4,)}
"""Layers of the wide checkpoints whose updates are the realistic payloads (194 MB at 4, 546 MB at 12, 1.07 GB at 24)."""
WIDE_DIMS = dict(hidden_size=1024, ffn_hidden_size=2816, num_attention_heads=16, num_query_groups=2,
                 mrope_section=[8, 12, 12])
BENCHES = ("loop", "weight_sync")
PHASES = ("rollout", "reward", "vps_scoring", "logprob", "train", "sync", "broadcast")


def emit(rows: list[dict], **row) -> None:
    rows.append(row)
    print("JSON " + json.dumps(row), flush=True)


# ---- child processes ------------------------------------------------------------------------------

def _child(fn: Callable, rank: int, world: int, port: int, args: tuple, out: Any) -> None:
    from megatron_mmr1.utils.procs import die_with_parent

    die_with_parent()
    os.environ.update(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world), LOCAL_WORLD_SIZE=str(world),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), OMP_NUM_THREADS="1")
    try:
        out.put((rank, True, fn(*args)))
    except BaseException as e:  # the parent reports it
        import traceback

        out.put((rank, False, f"{type(e).__name__}: {e}\n{traceback.format_exc()}"))


def in_processes(fn: Callable, world: int, *args: Any, timeout_s: float = 900.0) -> list[Any]:
    """``fn(*args)`` on ``world`` spawned ranks with torchrun's environment; rank results in order."""
    from megatron_mmr1.utils.net import free_port

    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_child, args=(fn, r, world, port, args, out)) for r in range(world)]
    for p in procs:
        p.start()
    results: dict[int, Any] = {}
    try:
        for _ in range(world):
            rank, ok, value = out.get(timeout=timeout_s)
            if not ok:
                raise RuntimeError(f"rank {rank} failed: {value}")
            results[rank] = value
    finally:
        for p in procs:
            p.join(timeout=30)
            if p.is_alive():
                p.kill()
    return [results[r] for r in range(world)]


def run_grpo(overrides: list[str]) -> dict:
    """One GRPO run (this process is rank 0 of 1); the summary with its per-step history."""
    import warnings

    warnings.filterwarnings("ignore")
    from megatron_mmr1 import parallel
    from megatron_mmr1.config import load_config
    from megatron_mmr1.training import grpo

    # the log-prob phase in its parts: inputs (records -> sequences, images re-read) and the forwards
    parts: dict[str, list[float]] = {"fill_logprobs": [], "to_train_sequences": []}
    grpo.fill_logprobs = _timed(grpo.fill_logprobs, parts["fill_logprobs"])
    grpo.to_train_sequences = _timed(grpo.to_train_sequences, parts["to_train_sequences"])
    cfg = load_config(GRPO_CONFIG, overrides, world_size=1)
    info = parallel.initialize(cfg.parallel)
    try:
        return dict(grpo.run(cfg, info), parts=parts)
    finally:
        parallel.destroy()


def _timed(fn: Callable, into: list[float]) -> Callable:
    def wrapper(*args, **kwargs):
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            into.append(time.perf_counter() - t0)
    return wrapper


def bare_serve(commands: Any, results: Any) -> None:
    """A rank of :class:`BareBroadcast`: rank 0 reads payloads from ``commands`` and tells the others.
    Per payload, one gloo broadcast from rank 0 of one flat uint8 tensor of its bytes and one of the
    same bytes as separate tensors (async, as the weight sender posts them), each timed from a
    barrier to a barrier (the receivers have the bytes); a new payload's tensors get one unmeasured
    round first (page faults), as the sender's warm-up update."""
    import torch
    import torch.distributed as dist

    dist.init_process_group("gloo")
    held: tuple = ((), None, [])
    try:
        while True:
            shapes = commands.get() if dist.get_rank() == 0 else None
            n = torch.tensor([-1 if shapes is None else len(shapes)], dtype=torch.int64)
            dist.broadcast(n, src=0)
            if n.item() < 0:
                return
            sizes = torch.tensor(shapes or [0] * n.item(), dtype=torch.int64)
            dist.broadcast(sizes, src=0)
            shapes = tuple(sizes.tolist())
            fresh = held[0] != shapes
            if fresh:
                held = ((), None, [])  # free the last payload first
                held = (shapes, torch.zeros(sum(shapes), dtype=torch.uint8),
                        [torch.zeros(s // 4, dtype=torch.float32) for s in shapes])
            _, flat, parts = held

            def one() -> None:
                dist.broadcast(flat, src=0)

            def many() -> None:
                for h in [dist.broadcast(t, src=0, async_op=True) for t in parts]:
                    h.wait()

            times = {}
            for name, fn in (("flat", one), ("tensors", many)):
                for _ in range(2 if fresh else 1):
                    dist.barrier()
                    t0 = time.perf_counter()
                    fn()
                    dist.barrier()
                    times[name] = time.perf_counter() - t0
            if dist.get_rank() == 0:
                results.put(times)
    finally:
        dist.destroy_process_group()


class BareBroadcast:
    """The bare broadcast as ``world`` processes kept alive, so that its measurements interleave with the
    weight sender's (the same load on a shared machine) instead of coming from another minute."""

    def __init__(self, world: int):
        from megatron_mmr1.utils.net import free_port

        ctx = mp.get_context("spawn")
        self.commands, self.results, self.out = ctx.Queue(), ctx.Queue(), ctx.Queue()
        port = free_port()
        self.procs = [ctx.Process(target=_child, args=(bare_serve, r, world, port, (self.commands, self.results), self.out))
                      for r in range(world)]
        for p in self.procs:
            p.start()

    def times(self, shapes: list[int], timeout_s: float = 900.0) -> dict[str, float]:
        import queue

        self.commands.put(list(shapes))
        end = time.monotonic() + timeout_s
        while True:
            try:
                return self.results.get(timeout=1.0)
            except queue.Empty:
                dead = [p for p in self.procs if not p.is_alive()]
                if dead or time.monotonic() > end:
                    why = self.out.get(timeout=5)[2] if dead and not self.out.empty() else "timed out"
                    raise RuntimeError(f"bare broadcast: {why}") from None

    def close(self) -> None:
        self.commands.put(None)
        for p in self.procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()


def prepare_task(work: Path, stop_p: float, temperature: float) -> tuple[str, str]:
    """Synthetic RL prompts and the tiny random Qwen2.5-VL policy (as the demo and the tests make them),
    its end-of-sequence logit raised so that it stops with probability ~``stop_p`` per token."""
    from megatron_mmr1.data.synthetic import generate
    from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

    paths = generate(work / "data", num=64, seed=0, num_sft=0, tokenizer=True)
    hf = make_tiny_hf_checkpoint(work / "hf", paths["tokenizer"], seed=0, logit_scale=20.0)
    shape_stop_probability(hf, stop_p, temperature)
    return str(hf), str(paths["rl_train"])


def shape_stop_probability(hf_dir: Path, stop_p: float, temperature: float = 1.0, seed: int = 0) -> float:
    """A random policy almost never samples its end-of-sequence token, so every response runs to the
    length cap: no RL workload looks like that. Point the EOS row of the LM head along the mean final
    hidden state, scaled so that the mean per-token stop probability over random contexts is
    ``stop_p`` at the sampling ``temperature``: response lengths become long-tailed (about geometric,
    capped), as sampled reasoning is."""
    import torch
    from transformers import Qwen2_5_VLForConditionalGeneration

    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos = eos[0] if isinstance(eos, list) else eos
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # a direction every token's embedding shares: the stop logit barely depends on context
        v = torch.randn(embed.embedding_dim, generator=gen)
        embed.weight += 2 * embed.weight.norm(dim=1).mean() * v / v.norm()
    captured = {}
    hook = head.register_forward_hook(lambda mod, inp, out: captured.update(h=inp[0].detach(), logits=out.detach()))
    with torch.no_grad():
        model(input_ids=torch.randint(0, min(600, eos), (8, 96), generator=gen))
    hook.remove()
    h = captured["h"].reshape(-1, head.in_features)  # (N, H)
    logits = captured["logits"].reshape(-1, head.out_features) / temperature  # (N, V)
    u = h.mean(0) / h.mean(0).norm()  # (H,)
    proj = h @ u  # (N,)
    rest = torch.logsumexp(torch.cat([logits[:, :eos], logits[:, eos + 1:]], 1), 1)  # (N,)

    def mean_p(c: float) -> float:
        return float(torch.sigmoid(c * proj / temperature - rest).mean())

    lo, hi = 0.0, 1.0
    while mean_p(hi) < stop_p:
        lo, hi = hi, hi * 2
    for _ in range(50):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mean_p(mid) < stop_p else (lo, mid)
    with torch.no_grad():
        head.weight[eos] = hi * u
    model.save_pretrained(str(hf_dir))
    return hi


def grpo_overrides(hf: str, data: str, out: Path, w: dict, async_rollout: bool, seed: int) -> list[str]:
    return [f"model.hf_path={hf}", f"data.train_files=[{data}]", f"output_dir={out}", "logging.progress=false",
            f"training.rollout_steps={w['steps']}", f"training.rollout_batch_size={w['rollout_batch_size']}",
            f"rollout.n={w['n']}", f"training.global_batch_size={w['rollout_batch_size'] * w['n']}",
            f"data.max_response_length={w['max_response_length']}", f"vps.num_rollouts={w['n']}",
            "training.eval_interval=null", "training.log_samples=0", f"rollout.seed={seed}",
            'data.system_prompt=""',  # the think/answer instruction alone is ~250 tiny-tokenizer tokens
            # the random policy scores 0 reward: the entropy term gives a gradient; a small lr keeps the
            # response lengths of the shaped policy (below) the same over the measured steps
            "algorithm.entropy_coef=0.01", "optim.lr=1e-6",
            f"training.async_rollout={str(async_rollout).lower()}"]


def steady(history: dict, key: str, first: int = 2, last: int | None = None) -> list[float]:
    """Per-step values of ``key`` from step ``first`` (1-based) on: step 1 carries one-off start-up."""
    return [v for s, v in history.get(key, []) if s >= first and (last is None or s <= last)]


def med(history: dict, key: str, **kw) -> float:
    vals = steady(history, key, **kw)
    return statistics.median(vals) if vals else 0.0


def phase_rows(h: dict, rows: list[dict], mode: str) -> dict[str, float]:
    """Median seconds per phase of the steady steps; bookkeeping = what no phase timer covers."""
    sec = {p: med(h, f"time/{p}_s") for p in PHASES}
    step = med(h, "step_s")
    timed = med(h, "time/rollout_wait_s") + sum(sec[p] for p in ("logprob", "train", "sync", "broadcast"))
    if mode == "sync":  # the wait is the whole rollout half: generation, reward, scoring and its bookkeeping
        sec["bookkeeping"] = max(0.0, step - timed) + max(0.0, med(h, "time/rollout_wait_s") - sum(
            sec[p] for p in ("rollout", "reward", "vps_scoring")))
    else:
        sec["bookkeeping"] = max(0.0, step - timed)
        sec["rollout_wait"] = med(h, "time/rollout_wait_s")
    for p, s in sec.items():
        emit(rows, bench="phase", mode=mode, phase=p, seconds=round(s, 4), share=round(s / step, 4) if step else 0.0)
    return dict(sec, step=step)


def bench_loop(hf: str, data: str, work: Path, w: dict, seed: int, rows: list[dict]) -> dict[str, dict]:
    runs = {}
    for mode in ("sync", "async"):
        t0 = time.perf_counter()
        (runs[mode],) = in_processes(run_grpo, 1, grpo_overrides(hf, data, work / mode, w, mode == "async", seed))
        print(f"{mode}: {w['steps']} steps in {time.perf_counter() - t0:.0f} s (start-up included)", flush=True)
    h, a = runs["sync"]["history"], runs["async"]["history"]
    print("\n== phases of the synchronous step (median of steps 2..N) ==", flush=True)
    sec = phase_rows(h, rows, "sync")
    parts = {k: statistics.median(v[1:]) for k, v in runs["sync"]["parts"].items()}  # one call per step
    # per step, then the median: medians of the phases do not add up to the median step
    step_s, rollout_s, train_s = (steady(h, k) for k in ("step_s", "time/rollout_s", "time/train_s"))
    outside_each = [s - r - t for s, r, t in zip(step_s, rollout_s, train_s)]
    ref_each = runs["sync"]["parts"]["fill_logprobs"][1:]
    outside, share = statistics.median(outside_each), statistics.median(o / s for o, s in zip(outside_each, step_s))
    share_no_ref = statistics.median((o - f) / s for o, f, s in zip(outside_each, ref_each, step_s))
    emit(rows, bench="overhead", mode="sync", step_s=round(sec["step"], 4), rollout_s=round(sec["rollout"], 4),
         train_s=round(sec["train"], 4), outside_s=round(outside, 4), outside_share=round(share, 4),
         logprob_reference_forward_s=round(parts["fill_logprobs"], 4),
         logprob_inputs_s=round(parts["to_train_sequences"], 4),
         outside_share_without_reference_forward=round(share_no_ref, 4), target_share=0.15, met=share <= 0.15)
    for mode, run in runs.items():
        emit(rows, bench="throughput", mode=mode, tokens_per_s=round(med(run["history"], "tokens_per_s"), 1),
             step_s=round(med(run["history"], "step_s"), 3))

    print("\n== padding waste: tokens computed / real tokens on the same responses ==", flush=True)
    for mode, run in runs.items():
        hist = run["history"]
        packed = max(steady(hist, "batching/computed_over_real", first=1))
        padded = min(steady(hist, "batching/padded_over_real", first=1))
        emit(rows, bench="padding", mode=mode, packed_worst=round(packed, 4), plain_padding_best=round(padded, 4),
             packed_target=1.10, plain_target=1.5, met=packed <= 1.10 and padded >= 1.5,
             response_length_mean=round(med(hist, "response/length_mean", first=1), 1),
             response_length_max=max(steady(hist, "response/length_max", first=1)))

    print("\n== synchronous vs overlapped (training.async_rollout), same seeds ==", flush=True)
    phase_rows(a, rows, "async")
    # steps 2..N-1 each hold one rollout and one training in both modes (step N of the overlapped run
    # has nothing left to generate): the same work per step
    last = w["steps"] - 1
    s_step, a_step = med(h, "step_s", last=last), med(a, "step_s", last=last)
    total_s, total_a = sum(v for _, v in h["step_s"]), sum(v for _, v in a["step_s"])
    emit(rows, bench="overlap", sync_step_s=round(s_step, 3), async_step_s=round(a_step, 3),
         step_speedup=round(s_step / a_step, 3), sync_total_s=round(total_s, 2), async_total_s=round(total_a, 2),
         total_speedup=round(total_s / total_a, 3),
         sync_tokens_per_step=round(med(h, "tokens_per_s", last=last) * s_step),
         async_tokens_per_step=round(med(a, "tokens_per_s", last=last) * a_step),
         staleness=[v for _, v in a["async/staleness"]], met=s_step > a_step)
    return runs


def make_wide_checkpoint(work: Path, tokenizer_dir: str, layers: int) -> str:
    """The tiny policy's architecture at hidden size 1024 (FFN 2816, 16 heads): 81 tensors of 0.26-11.5 MB
    for 4 layers, as a real checkpoint's are (Qwen2.5-VL-3B: ~830 tensors, 9 MB on average in bf16),
    where the tiny policy's average 24 KB makes any update a matter of per-tensor overhead."""
    from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

    out = work / f"wide{layers}"
    if not (out / "config.json").exists():
        make_tiny_hf_checkpoint(out, tokenizer_dir, seed=0, num_layers=layers, **WIDE_DIMS)
    return str(out)


def bench_weight_sync(hf: str, history: dict | None, repeats: tuple[int, ...], servers: int, work: Path,
                      rows: list[dict], wide_layers: tuple[int, ...] = ()) -> None:
    """The loop's weight sync and the distributed sender alone (tensor by tensor, and flattened buckets)
    against a bare broadcast of the same bytes over a group of as many processes (trainer + one per
    server), measured just before on the same machine; the sender's fixed cost (pause, flush, session,
    continue: an update of no tensors) apart. Payloads: the tiny policy's tensors (repeated for bigger
    payloads: every name many times in one bucket, 24 KB per tensor), then updates of wide checkpoints
    (``wide_layers``), each tensor once, as a trainer sends them."""
    print(f"\n== weight sync vs a bare torch.distributed broadcast (gloo, {1 + servers} processes) ==", flush=True)
    loop_bytes, loop_s = (int(med(history, "sync/bytes")), med(history, "sync/seconds")) if history else (0, 0.0)
    fixed = _sync_payloads(hf, "tiny", repeats, servers, work, rows, loop_bytes)
    if loop_bytes:
        fixed_s, bare, tensors = fixed
        _sync_row(rows, "loop", "tiny x1 (the loop's own sync)", loop_bytes, loop_s, fixed_s, tensors,
                  bare[(loop_bytes, "flat")], bare[(loop_bytes, "tensors")])
    for layers in wide_layers:
        _sync_payloads(make_wide_checkpoint(work, hf, layers), f"wide{layers}", (1,), servers, work, rows)


def _sync_payloads(hf: str, model: str, repeats: tuple[int, ...], servers: int, work: Path, rows: list[dict],
                   extra_bytes: int = 0, pairs: int = 5) -> tuple[float, dict, int]:
    """One server group on checkpoint ``hf``; its tensors x each of ``repeats``, per tensor and flattened:
    ``pairs`` times a bare broadcast of the same bytes, then an update (after one unmeasured update of
    the layout), so that both see the same load. Returns (the fixed cost, the bare broadcast's median
    seconds by (bytes, kind), the checkpoint's tensor count)."""
    from safetensors.torch import load_file

    from megatron_mmr1.rollout.servers import LocalServerGroup
    from megatron_mmr1.rollout.weight_sync import DistributedWeightSender

    named = [(n, t.float().contiguous()) for f in sorted(Path(hf).glob("*.safetensors"))
             for n, t in load_file(str(f)).items()]
    shapes = [t.numel() * t.element_size() for _, t in named]
    bare_group = BareBroadcast(1 + servers)
    group = LocalServerGroup(hf, servers, str(work / f"sync_logs_{model}"))
    bare: dict = {}
    try:
        urls = group.start(timeout_s=300)
        sender = DistributedWeightSender(urls)
        try:
            sender.connect()
            sender.update(named, weight_version="warmup")
            fixed = statistics.median(sender.update([], weight_version=f"empty{i}").seconds for i in range(5))
            emit(rows, bench="weight_sync_fixed", model=model, seconds=round(fixed, 5),
                 calls="pause, flush, begin_weight_update, end_weight_update, continue")
            for r in repeats:
                payload = f"{model} x{r}" + (" (every name repeated in the bucket)" if r > 1 else "")
                samples: dict[str, list[float]] = {"flat": [], "tensors": []}
                for flattened in (False, True):
                    sender.flattened = flattened
                    sender.update(named * r, weight_version=f"r{r}.warmup")  # first of a layout: buffers, arena
                    ts, flat_ts = [], []
                    for i in range(pairs):
                        for kind, t in bare_group.times(shapes * r).items():
                            samples[kind].append(t)
                        flat_ts.append(samples["flat"][-1])
                        ts.append(sender.update(named * r, weight_version=f"r{r}.{i}").seconds)
                    nbytes = sender.last_stats.bytes
                    _sync_row(rows, "sender_flattened" if flattened else "sender", payload, nbytes,
                              statistics.median(ts), fixed, len(named) * r, statistics.median(flat_ts),
                              statistics.median(samples["tensors"][-pairs:]),
                              paired=statistics.median(b / t for b, t in zip(flat_ts, ts)))
                bare.update({(nbytes, kind): statistics.median(ts) for kind, ts in samples.items()})
            if extra_bytes and (extra_bytes, "flat") not in bare:
                ts = [bare_group.times([extra_bytes]) for _ in range(pairs)]
                bare.update({(extra_bytes, kind): statistics.median(t[kind] for t in ts) for kind in ts[0]})
        finally:
            sender.close()
    finally:
        group.stop()
        bare_group.close()
    return fixed, bare, len(named)


def _sync_row(rows: list[dict], what: str, payload: str, nbytes: int, sec: float, fixed: float, tensors: int,
              flat_s: float, tensors_s: float, paired: float | None = None) -> None:
    """``ratio_vs_bare``: the median over (bare broadcast, update) pairs run back to back of bare seconds /
    update seconds (the throughput ratio under the same load), else the ratio of the medians."""
    gbps = lambda s: round(nbytes / s / 1e9, 4) if s > 0 else 0.0  # noqa: E731
    ratio = lambda a, b: round(a / b, 3) if b > 0 else 0.0  # noqa: E731
    main_ratio = round(paired, 3) if paired is not None else ratio(flat_s, sec)
    emit(rows, bench="weight_sync", what=what, payload=payload, bytes=nbytes, tensors=tensors, seconds=round(sec, 5),
         gb_per_s=gbps(sec), bare_flat_gb_per_s=gbps(flat_s), bare_tensors_gb_per_s=gbps(tensors_s),
         ratio_vs_bare=main_ratio, ratio_of_medians=ratio(flat_s, sec),
         ratio_vs_bare_tensor_by_tensor=ratio(tensors_s, sec),
         # without the fixed control calls (None where the payload's time is within them)
         data_ratio_vs_bare=ratio(flat_s, sec - fixed) if sec > 2 * fixed else None,
         target=0.8, met=main_ratio >= 0.8)


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="3 steps of 4 prompts x 4 responses of <= 128 tokens")
    ap.add_argument("--steps", type=int, default=None, help="GRPO steps per mode (>= 3; step 1 is start-up)")
    ap.add_argument("--seed", type=int, default=7, help="rollout.seed of both modes")
    ap.add_argument("--work-dir", default=None, help="keep data, policy and run outputs here (default: a temp dir)")
    ap.add_argument("--only", choices=BENCHES, default=None,
                    help="run one part: loop (phases, padding, overlap) or weight_sync (without the loop's own row)")
    args = ap.parse_args(argv)
    kind = "quick" if args.quick else "default"
    w = dict(WORKLOADS[kind], **({"steps": args.steps} if args.steps else {}))
    if w["steps"] < 3:
        ap.error("--steps must be >= 3 (step 1 is start-up; steps 2..N are measured)")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from megatron_mmr1.config import load_config

    rollout = load_config(GRPO_CONFIG, world_size=1).rollout  # what the runs use: temperature, server count
    rows: list[dict] = []
    load = os.getloadavg()
    emit(rows, bench="machine", cpus=os.cpu_count(), load_avg_1m=round(load[0], 2), load_avg_5m=round(load[1], 2),
         torch=torch.__version__, servers=rollout.num_servers, temperature=rollout.temperature, **w)
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        work = Path(args.work_dir or tmp)
        hf, data = prepare_task(work, w["stop_p"], rollout.temperature)
        runs = bench_loop(hf, data, work, w, args.seed, rows) if args.only in (None, "loop") else None
        if args.only in (None, "weight_sync"):
            bench_weight_sync(hf, runs["sync"]["history"] if runs else None, SYNC_PAYLOAD_REPEATS[kind],
                              rollout.num_servers, work, rows, SYNC_WIDE_LAYERS[kind])
    load = os.getloadavg()
    emit(rows, bench="done", wall_s=round(time.perf_counter() - t0, 1), load_avg_1m=round(load[0], 2))
    return rows


if __name__ == "__main__":
    main()
