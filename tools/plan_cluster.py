#!/usr/bin/env python
"""Plan a GRPO run on a GPU cluster: trainer and SGLang-server layout, memory per GPU by part, and an
estimated time per step, with every assumption printed beside the figures.

    python tools/plan_cluster.py --preset qwen2.5-vl-7b --nodes 1              # best layout, colocated
    python tools/plan_cluster.py --preset qwen2.5-vl-72b --nodes 6 --split     # servers on their own GPUs
    python tools/plan_cluster.py --config examples/configs/mmr1_grpo_32b.yaml  # the config's own layout
    python tools/plan_cluster.py --table --nodes 1,2,4,8                       # docs/performance.md table
    python tools/plan_cluster.py --config RUN.yaml --shell                     # variables for examples/launch

A config states its cluster in one comment line, ``# cluster: nodes=N server_tp=T``; with
``rollout.num_servers`` and ``rollout.colocate`` that fixes where the trainer and the servers run.
Nothing here is measured: memory follows ``megatron_mmr1.models.memory``; times are FLOPs at a stated
MFU, decode steps from HBM bandwidth, transfers from link bandwidth (the ``Assumptions`` fields,
``--assume name=value`` to change one).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from megatron_mmr1.config import ConfigError, RunConfig, load_config, validate
from megatron_mmr1.models.memory import (GIB, MicroBatchShape, TrainerMemory, kv_bytes_per_token, lm_layer_params,
                                         stage_params, trainer_memory, vision_params)
from megatron_mmr1.models.presets import resolve_model_dims

GPUS_PER_NODE = 8
SIZES = ("qwen2.5-vl-3b", "qwen2.5-vl-7b", "qwen2.5-vl-32b", "qwen2.5-vl-72b")


@dataclass(frozen=True)
class GPUSpec:
    name: str
    memory_gib: float
    """Usable memory as the driver reports it."""
    bf16_tflops: float
    """Dense bf16 peak."""
    hbm_tbps: float
    nvlink_gbps: float
    """NVLink per GPU, one direction."""
    ib_gbps: float
    """InfiniBand per GPU, one direction (one 400 Gb/s NIC per GPU)."""
    pcie_gbps: float
    """Host <-> device per GPU, one direction (PCIe 5 x16)."""


# Datasheet figures (SXM parts; nvidia-smi reports 81,559 MiB and 143,771 MiB).
GPUS = {
    "h100": GPUSpec("H100 SXM 80 GB", 79.6, 989.0, 3.35, 450.0, 50.0, 64.0),
    "h200": GPUSpec("H200 SXM 141 GB", 140.4, 989.0, 4.8, 450.0, 50.0, 64.0),
}


@dataclass
class Assumptions:
    train_mfu: float = 0.35
    """Fraction of peak bf16 that training and log-prob forwards reach (on the FLOPs executed, recompute included)."""
    prefill_mfu: float = 0.40
    """Fraction of peak bf16 of the servers' prefill."""
    decode_mfu: float = 0.40
    """Compute ceiling of a batched decode step, as a fraction of peak bf16."""
    decode_bw_eff: float = 0.60
    """Fraction of HBM bandwidth a decode step reaches reading weights and KV cache."""
    link_eff: float = 0.80
    """Fraction of NVLink / InfiniBand / PCIe bandwidth that collectives and copies reach."""
    sync_bucket_overhead_s: float = 0.1
    """Weight sync: fixed cost per bucket (HTTP call, SGLang's weight loader, pause / flush)."""
    target_fraction: float = 0.90
    """Peaks the search aims to stay under, as a fraction of GPU memory (allocator fragmentation with
    variable-length micro-batches); a plan fits up to 1.0."""
    server_reserve_gib: float = 4.0
    """SGLang memory outside its static pool (CUDA graphs, decode activations)."""
    trainer_offload: bool = False
    """Colocated: trainer weights, grads and Adam leave the GPU during rollout (not in this build: off)."""
    prompt_text_tokens: int = 300
    """Mean text tokens of a prompt (system prompt + question)."""
    image_fill: float = 0.5
    """Mean image area as a fraction of data.max_pixels (image tokens = area / 28^2)."""
    response_fill: float = 0.5
    """Mean response length as a fraction of data.max_response_length."""
    dataset_prompts: int = 15000
    """Prompts in the RL set: VPS full refreshes re-score all of them every vps.update_interval steps."""
    micro_batch_tokens: int = 16384
    """Token budget of a micro-batch when the config sets none (training.max_tokens_per_micro_batch)."""


@dataclass
class Workload:
    """One GRPO step of a run config, in mean token counts."""

    prompts: int
    n: int
    global_batch: int
    prompt_tokens: float
    image_tokens: float
    response_tokens: float
    max_response_tokens: int
    micro_batch_tokens: int
    recompute: Optional[str]
    use_kl: bool
    train_vision: bool
    max_inflight: int
    scoring_prompts: int
    """Prompts a VPS full refresh rolls out (0: uniform sampling, or online refresh, whose re-scoring of
    stale prompts is not modelled)."""
    scoring_n: int
    """Scoring rollouts per prompt (vps.num_rollouts)."""
    scoring_interval: int
    """Steps between refreshes (vps.update_interval): the refresh cost is spread over them."""
    async_rollout: bool

    @property
    def sequences(self) -> int:
        return self.prompts * self.n

    @property
    def seq_tokens(self) -> float:
        return self.prompt_tokens + self.response_tokens

    @classmethod
    def from_config(cls, cfg: RunConfig, a: Assumptions) -> "Workload":
        d, t, v = cfg.data, cfg.training, cfg.vps
        image = a.image_fill * d.max_pixels / 28**2
        full_refresh = cfg.sampler.type == "vas" and v.refresh == "full"
        return cls(prompts=t.rollout_batch_size, n=cfg.rollout.n, global_batch=t.global_batch_size,
                   prompt_tokens=min(image + a.prompt_text_tokens, d.max_prompt_length), image_tokens=image,
                   response_tokens=a.response_fill * d.max_response_length, max_response_tokens=d.max_response_length,
                   micro_batch_tokens=t.max_tokens_per_micro_batch or a.micro_batch_tokens,
                   recompute=cfg.model.recompute, use_kl=cfg.algorithm.use_kl_loss,
                   train_vision=not cfg.model.freeze_vision, max_inflight=cfg.rollout.max_inflight,
                   scoring_prompts=a.dataset_prompts if full_refresh else 0, scoring_n=v.num_rollouts,
                   scoring_interval=v.update_interval, async_rollout=t.async_rollout)


# ---- model arithmetic ------------------------------------------------------------------------------


@functools.lru_cache(maxsize=None)
def _vision_params(preset: str) -> int:
    from megatron_mmr1.config import ModelConfig

    return vision_params(resolve_model_dims(ModelConfig(preset=preset)))


@dataclass
class Model:
    dims: dict[str, Any]
    vision: int
    """Vision tower + merger parameters."""

    @property
    def total_params(self) -> int:
        return stage_params(self.dims, 1, 1, self.vision)[0].params

    def lm_forward_flops(self, seq_tokens: float, logit_tokens: float) -> float:
        """One causal sequence: matmuls (2 per parameter and token), attention (QK^T and AV over half
        the square), LM head on the tokens whose log-probs are needed."""
        d = self.dims
        hq = d["hidden_size"]
        matmul = 2 * d["num_layers"] * lm_layer_params(d, 1) * seq_tokens
        attention = 2 * d["num_layers"] * seq_tokens**2 * hq
        return matmul + attention + 2 * d["vocab_size"] * d["hidden_size"] * logit_tokens

    def vision_forward_flops(self, image_tokens: float) -> float:
        """One image of ``image_tokens`` merged tokens (4 patches each): matmuls, full-attention blocks
        over the whole image, windowed blocks over 8x8-patch windows."""
        v = self.dims["vision"]
        patches = 4 * image_tokens
        full = len(v["fullatt_block_indexes"])
        window = (v["window_size"] // v["patch_size"]) ** 2
        attention = 4 * v["vision_hidden_size"] * patches * (full * patches + (v["vision_depth"] - full) * window)
        return 2 * self.vision * patches + attention

    def decode_flops_per_token(self) -> float:
        return 2 * (self.total_params - self.vision - self.dims["vocab_size"] * self.dims["hidden_size"])


# ---- layouts ---------------------------------------------------------------------------------------


@dataclass
class TrainerPlan:
    gpus: int
    tp: int
    pp: int
    dp: int
    recompute: Optional[str]
    memory: TrainerMemory
    micro_batches: int
    """Micro-batches per optimizer step on one DP rank."""


@dataclass
class ServerPlan:
    gpus: int
    tp: int
    count: int
    colocated: bool
    weights: float
    """bf16 weights per GPU."""
    kv_cache: float
    """KV pool per GPU."""
    mem_fraction: float
    """--mem-fraction-static to pass to SGLang."""
    concurrency: float
    """Sequences decoding at once per server."""
    tokens_per_s: float
    """Decode tokens/s per server at that concurrency."""
    step_s: float
    """One decode step at that concurrency: the longest response needs max_response_length of them."""

    @property
    def peak(self) -> float:
        return self.weights + self.kv_cache

    @property
    def serves(self) -> bool:
        """Room for at least one max-length sequence beside the weights."""
        return self.tokens_per_s > 0


@dataclass
class Plan:
    preset: str
    model: Model
    gpu: GPUSpec
    nodes: int
    trainer: TrainerPlan
    servers: ServerPlan
    workload: Workload
    times: dict[str, float]
    """Seconds per step by phase."""
    assumptions: Assumptions

    @property
    def gpus(self) -> int:
        return self.nodes * GPUS_PER_NODE

    @property
    def colocated(self) -> bool:
        return self.servers.colocated

    @property
    def peak_per_gpu(self) -> float:
        """Highest bytes on any GPU in any phase."""
        t = self.trainer.memory
        if not self.colocated:
            return max(t.peak, self.servers.peak + self.assumptions.server_reserve_gib * GIB)
        resident = 0.0 if self.assumptions.trainer_offload else t.resident
        rollout = resident + t.overhead + self.servers.peak + self.assumptions.server_reserve_gib * GIB
        return max(t.peak, rollout)

    @property
    def fits(self) -> bool:
        return self.servers.serves and self.peak_per_gpu <= self.gpu.memory_gib * GIB

    @property
    def comfortable(self) -> bool:
        """Peak under Assumptions.target_fraction of the GPU."""
        return self.peak_per_gpu <= self.assumptions.target_fraction * self.gpu.memory_gib * GIB

    @property
    def step_s(self) -> float:
        return sum(self.times.values())

    @property
    def overlapped_step_s(self) -> Optional[float]:
        """One-step off-policy (training.async_rollout): step k+1 generates while step k trains."""
        if self.colocated:
            return None
        t = self.times
        return max(t["rollout"] + t["vps_scoring"], t["old_logprob"] + t["ref_logprob"] + t["train"]) + t["weight_sync"]

    @property
    def tokens_per_step(self) -> float:
        return self.workload.sequences * self.workload.seq_tokens

    def tokens_per_s_per_gpu(self, overlapped: bool = False) -> float:
        step = self.overlapped_step_s if overlapped and not self.colocated else self.step_s
        return self.tokens_per_step / step / self.gpus


def _valid_trainer(cfg: RunConfig, tp: int, pp: int, world: int) -> Optional[RunConfig]:
    """``cfg`` with this TP/PP when the run config accepts it on ``world`` ranks (its own rules)."""
    cand = dataclasses.replace(cfg, parallel=dataclasses.replace(cfg.parallel, tp=tp, pp=pp))
    try:
        validate(cand, world)
    except ConfigError:
        return None
    return cand


def plan_trainer(model: Model, w: Workload, gpus: int, tp: int, pp: int, recompute: Optional[str]) -> TrainerPlan:
    dp = gpus // (tp * pp)
    tokens_per_rank = w.global_batch * w.seq_tokens / dp
    count = max(math.ceil(tokens_per_rank / w.micro_batch_tokens), 1)
    image_fraction = w.image_tokens / w.seq_tokens
    mb = MicroBatchShape(tokens=w.micro_batch_tokens, patches=int(4 * w.micro_batch_tokens * image_fraction),
                         count=count)
    mem = trainer_memory(model.dims, tp, pp, dp, mb, recompute, train_vision=w.train_vision,
                         use_reference=w.use_kl, vision=model.vision)
    return TrainerPlan(gpus, tp, pp, dp, recompute, mem, count)


def plan_servers(model: Model, w: Workload, gpu: GPUSpec, a: Assumptions, gpus: int, tp: int,
                 colocated_with: Optional[TrainerMemory]) -> Optional[ServerPlan]:
    """``gpus // tp`` servers of TP ``tp`` (None when TP does not divide the heads or the GPUs); a server
    whose weights leave no room for one max-length sequence gets no KV cache and no throughput."""
    d = model.dims
    if gpus % tp or d["num_attention_heads"] % tp or d["vision"]["vision_num_heads"] % tp or tp > GPUS_PER_NODE:
        return None
    cap = gpu.memory_gib * GIB
    if colocated_with is None:
        budget = a.target_fraction * cap - a.server_reserve_gib * GIB
    else:  # the trainer's resident state (unless offloaded) and its overhead stay beside the servers
        resident = 0.0 if a.trainer_offload else colocated_with.resident
        budget = a.target_fraction * cap - resident - colocated_with.overhead - a.server_reserve_gib * GIB
    weights = 2 * model.total_params / tp
    kv_tok = kv_bytes_per_token(d, tp)
    kv = budget - weights
    count = gpus // tp
    if kv < (w.prompt_tokens + w.max_response_tokens) * kv_tok:
        return ServerPlan(gpus=gpus, tp=tp, count=count, colocated=colocated_with is not None, weights=weights,
                          kv_cache=0.0, mem_fraction=weights / cap, concurrency=0.0, tokens_per_s=0.0,
                          step_s=math.inf)
    # A running sequence reserves its share of the prompt (the n samples share its prefix) and its response.
    footprint = w.prompt_tokens / w.n + w.response_tokens
    in_flight = min(w.max_inflight, w.prompts) * w.n / count
    conc = max(min(in_flight, kv / kv_tok / footprint), 1.0)
    context = w.prompt_tokens + w.response_tokens / 2  # mean context a decode step attends to

    def step_s(c: float) -> float:
        memory = (weights + c * context * kv_tok) / (gpu.hbm_tbps * 1e12 * a.decode_bw_eff)
        compute = model.decode_flops_per_token() * c / tp / (gpu.bf16_tflops * 1e12 * a.decode_mfu)
        return max(memory, compute)

    return ServerPlan(gpus=gpus, tp=tp, count=count, colocated=colocated_with is not None, weights=weights,
                      kv_cache=kv, mem_fraction=(weights + kv) / cap, concurrency=conc,
                      tokens_per_s=conc / step_s(conc), step_s=step_s(conc))


def step_times(model: Model, w: Workload, gpu: GPUSpec, a: Assumptions, t: TrainerPlan, s: ServerPlan,
               servers_cross_nodes: bool, bucket_mb: int = 512) -> dict[str, float]:
    peak = gpu.bf16_tflops * 1e12
    nvlink, ib, pcie = (x * 1e9 * a.link_eff for x in (gpu.nvlink_gbps, gpu.ib_gbps, gpu.pcie_gbps))
    d = model.dims

    # Rollout: prefill once per prompt (the n samples share it), then decode at the servers' rate, and
    # no faster than the longest response: max_response_length steps of the running batch.
    def generate(prompts: float, responses: float) -> float:
        prefill = prompts * (model.lm_forward_flops(w.prompt_tokens, 0) + model.vision_forward_flops(w.image_tokens))
        if not s.serves:
            return math.inf
        decode = responses * w.response_tokens / (s.count * s.tokens_per_s)
        return prefill / (s.gpus * peak * a.prefill_mfu) + max(decode, w.max_response_tokens * s.step_s)

    scoring = generate(w.scoring_prompts, w.scoring_prompts * w.scoring_n) / w.scoring_interval if w.scoring_prompts else 0.0

    # Trainer passes over all B*n sequences.
    lm_fwd = w.sequences * model.lm_forward_flops(w.seq_tokens, w.response_tokens)
    vis_fwd = w.sequences * model.vision_forward_flops(w.image_tokens)
    bubble = (t.micro_batches + t.pp - 1) / t.micro_batches
    rate = t.gpus * peak * a.train_mfu
    # TP with sequence parallelism: 2 all-gathers + 2 reduce-scatters of [tokens, h] bf16 per layer and pass.
    tokens_per_replica = w.sequences * w.seq_tokens / t.dp
    tp_pass = (tokens_per_replica * d["num_layers"] / t.pp * 4 * 2 * d["hidden_size"] * (t.tp - 1) / t.tp / nvlink)
    full = t.recompute == "full"
    train = ((lm_fwd * (4 if full else 3) + vis_fwd * ((4 if t.recompute else 3) if w.train_vision else 1)) / rate
             * bubble + tp_pass * (3 if full else 2))
    # Distributed optimizer per optimizer step: reduce-scatter fp32 grads, all-gather bf16 params.
    opt_steps = w.sequences / w.global_batch
    dp_link = ib if t.tp * t.pp * t.dp > GPUS_PER_NODE else nvlink
    train += opt_steps * 6 * t.memory.params * (t.dp - 1) / t.dp / dp_link
    forward = (lm_fwd + vis_fwd) / rate * bubble + tp_pass
    old_logprob = forward if opt_steps > 1 else 0.0
    # Reference: its CPU copy goes in, the policy's comes back (two host->device copies), then a forward.
    ref = (forward + 2 * 2 * t.memory.params / pcie) if w.use_kl else 0.0

    # Weight sync: TP all-gather in the trainer, then the full bf16 model to every server GPU: CUDA IPC
    # within the node (colocated), or an NCCL broadcast over InfiniBand (NVLink when on one node).
    full_bytes = 2 * model.total_params
    gather = full_bytes / t.pp * (t.tp - 1) / t.tp / nvlink
    buckets = math.ceil(full_bytes / (bucket_mb * 2**20))
    sync = (gather + full_bytes / (ib if servers_cross_nodes and not s.colocated else nvlink)
            + buckets * a.sync_bucket_overhead_s)

    return {"rollout": generate(w.prompts, w.sequences), "vps_scoring": scoring, "old_logprob": old_logprob,
            "ref_logprob": ref, "train": train, "weight_sync": sync}


# ---- whole plans -----------------------------------------------------------------------------------


def _model(cfg: RunConfig) -> Model:
    return Model(resolve_model_dims(cfg.model), _vision_params(cfg.model.preset) if not cfg.model.hf_path
                 else vision_params(resolve_model_dims(cfg.model)))


def _assemble(cfg: RunConfig, model: Model, w: Workload, gpu: GPUSpec, a: Assumptions, nodes: int,
              t: TrainerPlan, s: ServerPlan) -> Plan:
    cross = nodes > 1
    times = step_times(model, w, gpu, a, t, s, cross, cfg.rollout.weight_sync_bucket_mb)
    return Plan(cfg.model.preset, model, gpu, nodes, t, s, w, times, a)


def _pp_choices(layers: int, gpus: int, tp: int) -> list[int]:
    """Pipeline sizes that split the layers evenly (megatron-core's requirement) and fit ``gpus``."""
    return [pp for pp in range(1, min(layers, 16) + 1) if layers % pp == 0 and gpus % (tp * pp) == 0]


def _trainer_splits(nodes: int, colocate: bool) -> list[int]:
    """Trainer GPU counts: all (colocated); whole nodes (split, multi-node); part of the node (split, one node)."""
    gpus = nodes * GPUS_PER_NODE
    if colocate:
        return [gpus]
    if nodes == 1:
        return [2, 4, 6]
    return [k * GPUS_PER_NODE for k in range(1, nodes)]


def search(cfg: RunConfig, nodes: int, gpu: GPUSpec, a: Assumptions, colocate: bool,
           recomputes: Optional[tuple] = None, overlapped: bool = False) -> Plan:
    """The fastest layout that fits (or, when none does, the one with the lowest peak memory).

    ``recomputes`` None tries no recompute, selective and full; overlapped ranks split layouts by their
    one-step off-policy step time.
    """
    model = _model(cfg)
    w = Workload.from_config(cfg, a)
    recomputes = recomputes if recomputes is not None else (None, "selective", "full")
    gpus = nodes * GPUS_PER_NODE
    best: Optional[Plan] = None

    def key(p: Plan) -> tuple:
        step = p.overlapped_step_s if overlapped and not p.colocated else p.step_s
        return (not p.fits, not p.comfortable, step if p.fits else p.peak_per_gpu)

    for trainer_gpus in _trainer_splits(nodes, colocate):
        server_gpus = gpus if colocate else gpus - trainer_gpus
        for tp in (1, 2, 4, 8):
            for pp in _pp_choices(model.dims["num_layers"], trainer_gpus, tp):
                cand = _valid_trainer(cfg, tp, pp, trainer_gpus)
                if cand is None:
                    continue
                for rc in recomputes:
                    t = plan_trainer(model, w, trainer_gpus, tp, pp, rc)
                    for stp in (1, 2, 4, 8):
                        s = plan_servers(model, w, gpu, a, server_gpus, stp, t.memory if colocate else None)
                        if s is None:
                            continue
                        p = _assemble(cfg, model, w, gpu, a, nodes, t, s)
                        if best is None or key(p) < key(best):
                            best = p
    if best is None:
        raise ValueError(f"{cfg.model.preset} on {nodes} node(s): no TP/PP the config accepts")
    return best


CLUSTER_LINE = re.compile(r"^#\s*cluster:(.*)$", re.MULTILINE)


def read_cluster(path: str | Path) -> dict[str, Any]:
    """The ``# cluster: nodes=N server_tp=T [gpu=h200]`` comment of a run config (gpu: h100 unless named)."""
    text = Path(path).read_text()
    m = CLUSTER_LINE.search(text)
    if m is None:
        raise ValueError(f"{path}: no '# cluster: nodes=N server_tp=T' comment line (where the run is meant to run)")
    out: dict[str, Any] = {}
    for item in m.group(1).split():
        key, _, value = item.partition("=")
        if key == "gpu" and value in GPUS:
            out[key] = value
            continue
        if key not in ("nodes", "server_tp") or not value.isdigit() or int(value) < 1:
            raise ValueError(f"{path}: cluster comment item '{item}' (expected nodes=N server_tp=T, positive integers, and optionally gpu=h100|h200)")
        out[key] = int(value)
    missing = {"nodes", "server_tp"} - set(out)
    if missing:
        raise ValueError(f"{path}: cluster comment lacks {', '.join(sorted(missing))}")
    return out


def plan_config(path: str | Path, gpu: Optional[GPUSpec], a: Assumptions, overrides: Optional[list[str]] = None) -> Plan:
    """The layout a config states (parallel.*, rollout.colocate / num_servers and its cluster comment); ``gpu``
    None: the comment's GPU."""
    cluster = read_cluster(path)
    gpu = gpu or GPUS[cluster.get("gpu", "h100")]
    cfg = load_config(path, overrides)
    nodes, stp = cluster["nodes"], cluster["server_tp"]
    gpus = nodes * GPUS_PER_NODE
    server_gpus = cfg.rollout.num_servers * stp
    colocate = cfg.rollout.colocate
    if colocate and server_gpus != gpus:
        raise ValueError(f"{path}: colocated servers must cover all {gpus} GPUs, but rollout.num_servers="
                         f"{cfg.rollout.num_servers} x server_tp={stp} = {server_gpus}")
    trainer_gpus = gpus if colocate else gpus - server_gpus
    if trainer_gpus < 1 or (not colocate and nodes > 1 and trainer_gpus % GPUS_PER_NODE):
        raise ValueError(f"{path}: split layout on {nodes} node(s) leaves {trainer_gpus} trainer GPUs "
                         "(must be whole nodes when nodes > 1)")
    cfg.validate(trainer_gpus)
    model = _model(cfg)
    w = Workload.from_config(cfg, a)
    t = plan_trainer(model, w, trainer_gpus, cfg.parallel.tp, cfg.parallel.pp, cfg.model.recompute)
    s = plan_servers(model, w, gpu, a, server_gpus, stp, t.memory if colocate else None)
    if s is None:
        raise ValueError(f"{path}: server_tp={stp} does not divide the attention heads or the server GPUs")
    return _assemble(cfg, model, w, gpu, a, nodes, t, s)


# ---- output ----------------------------------------------------------------------------------------


def _gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def _layout(p: Plan) -> str:
    t = p.trainer
    return f"TP{t.tp} PP{t.pp} DP{t.dp}"


def _servers(p: Plan) -> str:
    return f"{p.servers.count} x TP{p.servers.tp}"


def report(p: Plan) -> str:
    """The plan, its memory by part, its times and the assumptions behind them."""
    t, s, w, a, m = p.trainer, p.servers, p.workload, p.assumptions, p.trainer.memory
    cap = p.gpu.memory_gib * GIB
    mode = "colocated (servers share the trainer's GPUs)" if p.colocated else "split (servers on their own GPUs)"
    kv_tokens = s.kv_cache / kv_bytes_per_token(p.model.dims, s.tp)
    lines = [
        f"{p.preset} on {p.nodes} node(s) of {GPUS_PER_NODE} x {p.gpu.name}: {mode}",
        f"  trainer  {_layout(p)} on {t.gpus} GPUs, recompute={t.recompute}, {t.micro_batches} micro-batches of "
        f"{w.micro_batch_tokens} tokens per optimizer step and DP rank",
        f"  servers  {s.count} SGLang server(s) of TP{s.tp} on {s.gpus} GPUs, --mem-fraction-static {s.mem_fraction:.2f}",
        "",
        f"memory per GPU (GiB; trainer: pipeline stage {m.stage}, {m.params / 1e9:.2f} B parameters)",
        f"  bf16 weights                    {_gib(m.weights):>7}",
        f"  fp32 main grads                 {_gib(m.grads):>7}",
        f"  Adam shards (dist. optimizer)   {_gib(m.optimizer):>7}   fp32 master + m + v over DP={t.dp}",
        f"  activations                     {_gib(m.activations):>7}   recompute={t.recompute}",
        f"  logits workspace                {_gib(m.logits):>7}",
        f"  framework overhead              {_gib(m.overhead):>7}",
        f"  reference weights               {'0.0':>7}   while idle (CPU copy {_gib(m.reference)}); "
        f"{_gib(m.reference)} during the reference forward",
        f"  trainer peak                    {_gib(m.peak):>7}   (train {_gib(m.train_peak)}, reference forward "
        f"{_gib(m.reference_peak)})",
        f"  server weights                  {_gib(s.weights):>7}",
        f"  server KV cache                 {_gib(s.kv_cache):>7}   {kv_tokens:,.0f} tokens per server",
        f"  peak, any phase                 {_gib(p.peak_per_gpu):>7}   of {_gib(cap)}: "
        + ("fits" if p.fits else "DOES NOT FIT"),
        "",
        "time per GRPO step (s)",
        *[f"  {k:<30} {v:>8.1f}" for k, v in p.times.items()],
        f"  {'step (phases in sequence)':<30} {p.step_s:>8.1f}   {p.tokens_per_s_per_gpu():,.0f} tokens/s/GPU",
    ]
    if p.overlapped_step_s is not None:
        lines.append(f"  {'step (one-step off-policy)':<30} {p.overlapped_step_s:>8.1f}   "
                     f"{p.tokens_per_s_per_gpu(overlapped=True):,.0f} tokens/s/GPU")
    lines += [
        f"  decode: {s.concurrency:,.0f} sequences per server at {s.tokens_per_s:,.0f} tokens/s per server; "
        f"{1e3 * s.step_s:.1f} ms per decode step",
        f"  weight sync: {_gib(2 * p.model.total_params)} GiB bf16 to each server over "
        + ("NVLink (CUDA IPC)" if p.colocated or p.nodes == 1 else "InfiniBand (NCCL broadcast)"),
        "",
        "assumptions",
        f"  workload: {w.prompts} prompts x {w.n} responses, optimizer steps of {w.global_batch} sequences; "
        f"mean prompt {w.prompt_tokens:,.0f} tokens ({w.image_tokens:,.0f} image), mean response "
        f"{w.response_tokens:,.0f} of at most {w.max_response_tokens}; KL reference: {w.use_kl}; vision trained: "
        f"{w.train_vision}",
        f"  VPS full refresh: {w.scoring_prompts} prompts x {w.scoring_n} rollouts every {w.scoring_interval} steps"
        if w.scoring_prompts else "  VPS: no scoring rollouts counted (uniform sampling, or online refresh: its re-scoring of stale prompts is not modelled)",
        f"  GPU: {p.gpu.name}, {p.gpu.bf16_tflops:.0f} TFLOPS bf16 dense, HBM {p.gpu.hbm_tbps} TB/s, NVLink "
        f"{p.gpu.nvlink_gbps:.0f} GB/s, InfiniBand {p.gpu.ib_gbps:.0f} GB/s, PCIe {p.gpu.pcie_gbps:.0f} GB/s "
        "(per GPU, one direction)",
        *[f"  {f.name} = {getattr(a, f.name)}" for f in dataclasses.fields(a)],
        "  not modelled: reward scoring (CPU, overlaps generation), SGLang release/resume, pipeline p2p, "
        "stragglers beyond one max-length response",
    ]
    return "\n".join(lines)


def markdown_table(plans: list[Plan | str]) -> str:
    """One row per plan; a string stands for a row of its own (a cell with no valid layout)."""
    rows = ["| model | nodes | mode | trainer | recompute | servers | peak GiB/GPU | rollout s | train s "
            "| sync s | step s | tokens/s/GPU | overlapped step s | overlapped tokens/s/GPU |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in plans:
        if isinstance(p, str):
            rows.append(p)
            continue
        t = p.times
        head = (f"| {p.preset.removeprefix('qwen2.5-vl-')} | {p.nodes} | {'colocated' if p.colocated else 'split'} | "
                f"{_layout(p)} ({p.trainer.gpus}) | {p.trainer.recompute or 'none'} | {_servers(p)} | ")
        if not p.fits:  # the lowest peak found, nothing else to say
            rows.append(head + f"{_gib(p.peak_per_gpu)}: does not fit |" + " - |" * 7)
            continue
        over = p.overlapped_step_s
        rows.append(
            head + f"{_gib(p.peak_per_gpu)} | {t['rollout'] + t['vps_scoring']:.0f} | "
            f"{t['old_logprob'] + t['ref_logprob'] + t['train']:.0f} | {t['weight_sync']:.1f} | {p.step_s:.0f} | "
            f"{p.tokens_per_s_per_gpu():,.0f} | {'-' if over is None else f'{over:.0f}'} | "
            f"{'-' if over is None else f'{p.tokens_per_s_per_gpu(True):,.0f}'} |")
    return "\n".join(rows)


def _table_cell(preset: str, nodes: int, gpu: GPUSpec, a: Assumptions, colocate: bool) -> Plan | str:
    """The best plan of a size preset with the paper's settings; split layouts ranked by their overlapped step."""
    try:
        return search(load_config(None, [f"model.preset={preset}"]), nodes, gpu, a, colocate, overlapped=not colocate)
    except ValueError as e:
        return f"| {preset.removeprefix('qwen2.5-vl-')} | {nodes} | {'colocated' if colocate else 'split'} | {e} |"


def shell_vars(p: Plan) -> str:
    """Variables examples/launch/run_node.sh reads: where the trainer and the servers run."""
    t, s = p.trainer, p.servers
    if p.colocated:
        trainer_nodes, trainer_per_node, first_server_node, offset = p.nodes, GPUS_PER_NODE, 0, 0
    elif p.nodes == 1:
        trainer_nodes, trainer_per_node, first_server_node, offset = 1, t.gpus, 0, t.gpus
    else:
        trainer_nodes, trainer_per_node = t.gpus // GPUS_PER_NODE, GPUS_PER_NODE
        first_server_node, offset = trainer_nodes, 0
    per_node = s.count // (p.nodes - first_server_node)
    values = dict(PLAN_NODES=p.nodes, PLAN_COLOCATE=int(p.colocated), PLAN_TRAINER_NODES=trainer_nodes,
                  PLAN_TRAINER_GPUS_PER_NODE=trainer_per_node, PLAN_SERVER_FIRST_NODE=first_server_node,
                  PLAN_SERVERS_PER_NODE=per_node, PLAN_SERVER_TP=s.tp, PLAN_SERVER_GPU_OFFSET=offset,
                  PLAN_MEM_FRACTION=f"{s.mem_fraction:.2f}", PLAN_PEAK_GIB=_gib(p.peak_per_gpu),
                  PLAN_FITS=int(p.fits))
    return "\n".join(f"{k}={v}" for k, v in values.items())


def parse_assume(items: list[str]) -> Assumptions:
    a = Assumptions()
    names = {f.name: f for f in dataclasses.fields(a)}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or key not in names:
            raise ValueError(f"--assume {item}: expected name=value with name one of {', '.join(names)}")
        kind = type(getattr(a, key))
        try:
            value = {"true": True, "false": False}[raw.lower()] if kind is bool else kind(raw)
        except (KeyError, ValueError):
            raise ValueError(f"--assume {item}: {raw!r} is not a {kind.__name__}") from None
        setattr(a, key, value)
    return a


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"{text!r}: node counts must be >= 1")
    return values


def main(argv: Optional[list[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    src = ap.add_mutually_exclusive_group()
    src.add_argument("--config", help="run config YAML: its workload, and its layout unless --nodes is given")
    src.add_argument("--preset", choices=SIZES, help="size preset with the paper's GRPO settings (table 6)")
    ap.add_argument("--nodes", type=_int_list, help="node counts (8 GPUs each) to search layouts for, e.g. 1,2,4,8")
    ap.add_argument("--gpu", choices=sorted(GPUS), help="default: a config's cluster comment, else h100")
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--colocate", dest="colocate", action="store_true", default=None,
                      help="servers share the trainer's GPUs (default for --preset)")
    mode.add_argument("--split", dest="colocate", action="store_false", help="servers on GPUs of their own")
    ap.add_argument("--overlapped", action="store_true", help="rank split layouts by their one-step off-policy step")
    ap.add_argument("--table", action="store_true", help="markdown table of every size, colocated and split")
    ap.add_argument("--shell", action="store_true", help="print the config's layout as shell variables")
    ap.add_argument("--assume", action="append", default=[], metavar="NAME=VALUE", help="change an assumption")
    ap.add_argument("overrides", nargs="*", help="config overrides (key.sub=value)")
    args = ap.parse_args(argv)
    try:
        a = parse_assume(args.assume)
        gpu = GPUS[args.gpu or "h100"]
        if args.table:
            print(markdown_table([_table_cell(preset, n, gpu, a, colocate) for preset in SIZES
                                  for n in (args.nodes or [1, 2, 4, 8]) for colocate in (True, False)]))
            return 0
        if args.config and not args.nodes:
            plan = plan_config(args.config, GPUS[args.gpu] if args.gpu else None, a, args.overrides)
            print(shell_vars(plan) if args.shell else report(plan))
            return 0 if plan.fits else 1
        if args.shell:
            raise ValueError("--shell needs --config (without --nodes)")
        cfg = load_config(args.config, args.overrides) if args.config else load_config(
            None, [f"model.preset={args.preset or 'qwen2.5-vl-7b'}", *args.overrides])
        colocate = args.colocate if args.colocate is not None else (cfg.rollout.colocate if args.config else True)
        for n in args.nodes or [1]:
            print(report(search(cfg, n, gpu, a, colocate, overlapped=args.overlapped)), end="\n\n")
    except (ConfigError, ValueError, OSError) as e:
        print(f"plan_cluster: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
