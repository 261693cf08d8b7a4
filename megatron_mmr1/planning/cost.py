"""Seconds per GRPO step, phase by phase: FLOPs at a stated MFU, decode steps from HBM bandwidth,
transfers from link bandwidth (the :class:`~megatron_mmr1.planning.hardware.Assumptions`)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from megatron_mmr1.planning.hardware import GPUS_PER_NODE, Assumptions, GPUSpec
from megatron_mmr1.planning.layout import ServerPlan, TrainerPlan
from megatron_mmr1.planning.workload import Model, Workload


@dataclass
class Links:
    """Effective bytes/s of one GPU's links (datasheet x link_eff)."""

    nvlink: float
    ib: float
    pcie: float

    @classmethod
    def of(cls, gpu: GPUSpec, a: Assumptions) -> "Links":
        return cls(*(x * 1e9 * a.link_eff for x in (gpu.nvlink_gbps, gpu.ib_gbps, gpu.pcie_gbps)))


def generate_s(model: Model, w: Workload, gpu: GPUSpec, a: Assumptions, s: ServerPlan, prompts: float,
               responses: float) -> float:
    """Prefill once per prompt (the n samples share it), then decode at the servers' rate, and no faster
    than the longest response: max_response_length steps of the running batch."""
    if not s.serves:
        return math.inf
    prefill = prompts * (model.lm_forward_flops(w.prompt_tokens, 0) + model.vision_forward_flops(w.image_tokens))
    decode = responses * w.response_tokens / (s.count * s.tokens_per_s)
    return prefill / (s.gpus * gpu.bf16_tflops * 1e12 * a.prefill_mfu) + max(decode, w.max_response_tokens * s.step_s)


def collective_s(model: Model, w: Workload, t: TrainerPlan, links: Links) -> dict[str, float]:
    """One pass (forward) of the step's sequences: TP sequence-parallel collectives (2 all-gathers + 2
    reduce-scatters of [tokens, h] bf16 per layer; 0 with tp_comm_overlap) and the CP ring exchange of
    K and V ((cp-1) chunks per layer, over NVLink while TP x CP fits a node)."""
    d = model.dims
    tokens_per_rank = w.sequences * w.seq_tokens / (t.dp * t.cp)
    layers = d["num_layers"] / t.pp
    tp = 0.0 if t.options.tp_comm_overlap else (
        tokens_per_rank * layers * 4 * 2 * d["hidden_size"] * (t.tp - 1) / t.tp / links.nvlink)
    kv_width = d["num_query_groups"] * d["hidden_size"] // d["num_attention_heads"] / t.tp
    cp_link = links.nvlink if t.tp * t.cp <= GPUS_PER_NODE else links.ib
    cp = tokens_per_rank * layers * (t.cp - 1) * 2 * 2 * kv_width / cp_link
    return {"tp": tp, "cp": cp}


def training_flops(model: Model, w: Workload, t: TrainerPlan) -> dict[str, float]:
    """FLOPs of the step's sequences: ``forward`` (one pass, log-probs), ``train`` as executed (x3, x4 with
    full recompute, + the MLPs again with recompute_modules=[mlp]) and ``useful`` (x3, no recompute)."""
    lm = w.sequences * model.lm_forward_flops(w.seq_tokens, w.response_tokens)
    vis = w.sequences * model.vision_forward_flops(w.image_tokens)
    full = t.recompute == "full"
    mods = t.options.recompute_modules or () if t.recompute == "selective" else ()
    extra_mlp = w.sequences * model.mlp_forward_flops(w.seq_tokens) if "mlp" in mods else 0.0
    vis_passes = (4 if t.recompute else 3) if w.train_vision else 1
    return {"forward": lm + vis, "train": lm * (4 if full else 3) + extra_mlp + vis * vis_passes,
            "useful": 3 * lm + (3 if w.train_vision else 1) * vis}


def bubble(t: TrainerPlan) -> float:
    """Pipeline time factor: 1 + (pp-1) / (vpp * micro-batches) (interleaved 1F1B)."""
    return 1 + (t.pp - 1) / (t.options.vpp * t.micro_batches)


def optimizer_s(w: Workload, t: TrainerPlan, a: Assumptions, links: Links) -> dict[str, float]:
    """Per GRPO step: the distributed optimizer's collectives (reduce-scatter fp32 grads, all-gather bf16
    params unless overlap_param_gather hides it in the forward) and, with optim.cpu_offload, the host's Adam
    step plus its grads down / params up over PCIe."""
    steps = w.sequences / w.global_batch
    shards = t.dp * t.cp
    dp_link = links.ib if t.tp * t.pp * shards > GPUS_PER_NODE else links.nvlink
    per_param = 4 + (0 if t.options.overlap_param_gather else 2)
    comm = steps * per_param * t.memory.params * (shards - 1) / shards / dp_link
    host = t.trained_params / shards * t.options.host_fraction
    host_s = steps * (host / a.host_adam_params_per_s + (4 + 2) * host / links.pcie)
    return {"dp_collectives": comm, "host_adam": host_s}


def weight_sync_s(model: Model, t: TrainerPlan, s: ServerPlan, a: Assumptions, links: Links, cross_nodes: bool,
                  bucket_mb: int) -> float:
    """TP all-gather in the trainer, then the full bf16 model to every server GPU: CUDA IPC within the node
    (colocated), or an NCCL broadcast over InfiniBand (NVLink on one node), plus a fixed cost per bucket."""
    full = 2 * model.total_params
    gather = full / t.pp * (t.tp - 1) / t.tp / links.nvlink
    buckets = math.ceil(full / (bucket_mb * 2**20))
    link = links.ib if cross_nodes and not s.colocated else links.nvlink
    return gather + full / link + buckets * a.sync_bucket_overhead_s


def offload_s(t: TrainerPlan, links: Links) -> float:
    """One direction of rollout.offload_trainer: the trainer's GPU state (bf16 weights, fp32 grads, the GPU
    part of Adam) over PCIe; 0 without it."""
    return t.memory.resident / links.pcie if t.options.offload_trainer else 0.0


def step_times(model: Model, w: Workload, gpu: GPUSpec, a: Assumptions, t: TrainerPlan, s: ServerPlan,
               servers_cross_nodes: bool, bucket_mb: int = 512) -> dict[str, float]:
    """Seconds per GRPO step by phase, in the order they run."""
    links = Links.of(gpu, a)
    rate = t.gpus * gpu.bf16_tflops * 1e12 * a.train_mfu
    flops, comm, opt = training_flops(model, w, t), collective_s(model, w, t, links), optimizer_s(w, t, a, links)
    full = t.recompute == "full"
    passes = sum(comm.values())
    train = flops["train"] / rate * bubble(t) + comm["tp"] * (3 if full else 2) + comm["cp"] * (4 if full else 3)
    forward = flops["forward"] / rate * bubble(t) + passes
    opt_steps = w.sequences / w.global_batch
    # Reference: its CPU copy goes in, the policy's comes back (two host->device copies), then a forward.
    ref = (forward + 2 * 2 * t.memory.params / links.pcie) if w.use_kl else 0.0
    scoring = (generate_s(model, w, gpu, a, s, w.scoring_prompts, w.scoring_prompts * w.scoring_n)
               / w.scoring_interval if w.scoring_prompts else 0.0)
    move = offload_s(t, links) if s.colocated else 0.0
    return {"rollout": generate_s(model, w, gpu, a, s, w.prompts, w.sequences), "vps_scoring": scoring,
            "trainer_reload": move, "old_logprob": forward if opt_steps > 1 else 0.0, "ref_logprob": ref,
            "train": train + opt["dp_collectives"], "host_adam": opt["host_adam"],
            "weight_sync": weight_sync_s(model, t, s, a, links, servers_cross_nodes, bucket_mb),
            "trainer_offload": move}


def train_mfu(model: Model, w: Workload, gpu: GPUSpec, t: TrainerPlan, times: dict[str, float]) -> float:
    """Useful training FLOPs (x3 of the forward, no recompute) over the training phase's time on all GPUs:
    what recompute, the pipeline bubble and unoverlapped TP / CP / DP collectives leave of the assumed MFU."""
    return training_flops(model, w, t)["useful"] / (times["train"] * t.gpus * gpu.bf16_tflops * 1e12)
