"""Trainer and server layouts: who holds what on each GPU, and what a decode step costs."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from megatron_mmr1.config import RunConfig
from megatron_mmr1.models.memory import GIB, MicroBatchShape, TrainerMemory, kv_bytes_per_token, trainer_memory
from megatron_mmr1.planning.hardware import GPUS_PER_NODE, Assumptions, GPUSpec
from megatron_mmr1.planning.workload import Model, Workload


@dataclass(frozen=True)
class TrainerOptions:
    """The trainer's knobs beyond TP x PP (config keys in brackets)."""

    recompute: Optional[str] = None
    """[model.recompute]"""
    recompute_modules: Optional[tuple[str, ...]] = None
    """[model.recompute_modules] with recompute=selective; None: megatron's default [core_attn]."""
    vpp: int = 1
    """[parallel.vpp] virtual pipeline stages: bubble (pp-1)/(vpp*m)."""
    cp: int = 1
    """[parallel.cp] context parallel: tokens, activations and attention per rank / cp; ring K/V exchange."""
    tp_comm_overlap: bool = False
    """[parallel.tp_comm_overlap] TP all-gather / reduce-scatter hidden behind the GEMMs."""
    overlap_param_gather: bool = False
    """[parallel.overlap_param_gather] the distributed optimizer's param all-gather hidden in the forward."""
    offload_trainer: bool = False
    """[rollout.offload_trainer] colocated: weights, grads and Adam leave the GPU during rollout."""
    cpu_offload: bool = False
    """[optim.cpu_offload] HybridDeviceOptimizer: Adam state and step of ``offload_fraction`` on the host."""
    offload_fraction: float = 1.0
    """[optim.offload_fraction]"""

    @classmethod
    def from_config(cls, cfg: RunConfig) -> "TrainerOptions":
        m, p = cfg.model, cfg.parallel
        return cls(recompute=m.recompute, recompute_modules=tuple(m.recompute_modules) if m.recompute_modules
                   is not None else None, vpp=p.vpp, cp=p.cp, tp_comm_overlap=p.tp_comm_overlap,
                   overlap_param_gather=p.overlap_param_gather, offload_trainer=cfg.rollout.offload_trainer,
                   cpu_offload=cfg.optim.cpu_offload, offload_fraction=cfg.optim.offload_fraction)

    @property
    def host_fraction(self) -> float:
        return self.offload_fraction if self.cpu_offload else 0.0

    def apply(self, cfg: RunConfig) -> RunConfig:
        """``cfg`` with these knobs set."""
        return dataclasses.replace(
            cfg, model=dataclasses.replace(cfg.model, recompute=self.recompute, recompute_modules=(
                list(self.recompute_modules) if self.recompute_modules is not None else None)),
            rollout=dataclasses.replace(cfg.rollout, offload_trainer=self.offload_trainer),
            optim=dataclasses.replace(cfg.optim, cpu_offload=self.cpu_offload, offload_fraction=self.offload_fraction))

    def describe(self) -> str:
        mods = f" {list(self.recompute_modules)}" if self.recompute == "selective" and self.recompute_modules else ""
        parts = [f"recompute={self.recompute}{mods}"]
        parts += [f"{k}={v}" for k, v in (("vpp", self.vpp), ("cp", self.cp)) if v > 1]
        parts += [k for k in ("tp_comm_overlap", "overlap_param_gather", "offload_trainer") if getattr(self, k)]
        if self.cpu_offload:
            parts.append(f"cpu_offload({self.offload_fraction:g})")
        return ", ".join(parts)


@dataclass
class TrainerPlan:
    gpus: int
    tp: int
    pp: int
    dp: int
    options: TrainerOptions
    memory: TrainerMemory
    micro_batches: int
    """Micro-batches per optimizer step on one DP rank."""

    @property
    def recompute(self) -> Optional[str]:
        return self.options.recompute

    @property
    def cp(self) -> int:
        return self.options.cp

    @property
    def trained_params(self) -> float:
        """Parameters with grads on the worst stage's GPU (a frozen vision tower has none)."""
        return self.memory.grads / 4


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
    step_parts: dict[str, float] = dataclasses.field(default_factory=dict)
    """The decode step's GEMM, attention and TP all-reduce seconds (they add up to ``step_s``)."""

    @property
    def peak(self) -> float:
        return self.weights + self.kv_cache

    @property
    def serves(self) -> bool:
        """Room for at least one max-length sequence beside the weights."""
        return self.tokens_per_s > 0


def plan_trainer(model: Model, w: Workload, gpus: int, tp: int, pp: int, opts: TrainerOptions) -> TrainerPlan:
    dp = gpus // (tp * pp * opts.cp)
    tokens_per_rank = w.global_batch * w.seq_tokens / dp
    count = max(math.ceil(tokens_per_rank / w.micro_batch_tokens), 1)
    image_fraction = w.image_tokens / w.seq_tokens
    mb = MicroBatchShape(tokens=w.micro_batch_tokens, patches=int(4 * w.micro_batch_tokens * image_fraction),
                         count=count)
    mem = trainer_memory(model.dims, tp, pp, dp, mb, opts.recompute, train_vision=w.train_vision,
                         use_reference=w.use_kl, vision=model.vision, cp=opts.cp, vpp=opts.vpp,
                         recompute_modules=opts.recompute_modules, host_optimizer_fraction=opts.host_fraction)
    return TrainerPlan(gpus, tp, pp, dp, opts, mem, count)


def decode_step(model: Model, gpu: GPUSpec, a: Assumptions, tp: int, concurrency: float, context: float) -> dict[str, float]:
    """One batched decode step of a TP ``tp`` server, as the SUM of its parts (they run one after another):
    the GEMMs (weights read from HBM, or their FLOPs, whichever is slower), attention (the running sequences'
    KV cache read from HBM) and the TP all-reduces (two per layer: a fixed latency plus the bytes)."""
    d = model.dims
    hbm = gpu.hbm_tbps * 1e12 * a.decode_bw_eff
    gemm = max(model.decode_weight_bytes() / tp / hbm,
               model.decode_flops_per_token() * concurrency / tp / (gpu.bf16_tflops * 1e12 * a.decode_mfu))
    attention = concurrency * context * kv_bytes_per_token(d, tp) / hbm
    allreduce = 0.0
    if tp > 1:
        ring = 2 * (tp - 1) / tp * concurrency * d["hidden_size"] * 2 / (gpu.nvlink_gbps * 1e9 * a.link_eff)
        allreduce = 2 * d["num_layers"] * (a.allreduce_latency_us * 1e-6 + ring)
    return {"gemm": gemm, "attention": attention, "tp_allreduce": allreduce}


def _server_budget(gpu: GPUSpec, a: Assumptions, colocated_with: Optional[TrainerPlan]) -> float:
    """Bytes a server GPU may fill with weights and KV cache: the target fraction of the GPU less SGLang's
    reserve and, colocated, what the trainer keeps there during rollout."""
    budget = a.target_fraction * gpu.memory_gib * GIB - a.server_reserve_gib * GIB
    if colocated_with is not None:
        budget -= rollout_resident(colocated_with) + colocated_with.memory.overhead
    return budget


def rollout_resident(t: TrainerPlan) -> float:
    """Trainer bytes left on a GPU while colocated servers generate: none of its state with
    rollout.offload_trainer, else weights, grads and the GPU part of Adam."""
    return 0.0 if t.options.offload_trainer else t.memory.resident


def plan_servers(model: Model, w: Workload, gpu: GPUSpec, a: Assumptions, gpus: int, tp: int,
                 colocated_with: Optional[TrainerPlan]) -> Optional[ServerPlan]:
    """``gpus // tp`` servers of TP ``tp`` (None when TP does not divide the heads or the GPUs); a server
    whose weights leave no room for one max-length sequence gets no KV cache and no throughput."""
    d = model.dims
    if gpus % tp or d["num_attention_heads"] % tp or d["vision"]["vision_num_heads"] % tp or tp > GPUS_PER_NODE:
        return None
    cap = gpu.memory_gib * GIB
    weights = 2 * model.total_params / tp
    kv_tok = kv_bytes_per_token(d, tp)
    kv = _server_budget(gpu, a, colocated_with) - weights
    count = gpus // tp
    base = dict(gpus=gpus, tp=tp, count=count, colocated=colocated_with is not None, weights=weights)
    if kv < (w.prompt_tokens + w.max_response_tokens) * kv_tok:
        return ServerPlan(**base, kv_cache=0.0, mem_fraction=weights / cap, concurrency=0.0, tokens_per_s=0.0,
                          step_s=math.inf)
    # A running sequence reserves its share of the prompt (the n samples share its prefix) and its response.
    footprint = w.prompt_tokens / w.n + w.response_tokens
    in_flight = min(w.max_inflight, w.prompts) * w.n / count
    conc = max(min(in_flight, kv / kv_tok / footprint), 1.0)
    context = w.prompt_tokens + w.response_tokens / 2  # mean context a decode step attends to
    parts = decode_step(model, gpu, a, tp, conc, context)
    step = sum(parts.values())
    return ServerPlan(**base, kv_cache=kv, mem_fraction=(weights + kv) / cap, concurrency=conc,
                      tokens_per_s=conc / step, step_s=step, step_parts=parts)
