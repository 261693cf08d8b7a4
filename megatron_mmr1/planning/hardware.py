"""GPUs and the planner's stated assumptions (efficiencies, allowances, workload shape).

Nothing here is measured: datasheet figures for the GPUs, and efficiencies that ``--assume name=value``
changes. docs/performance.md lists each assumption and where its value comes from.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

GPUS_PER_NODE = 8


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
    """Compute ceiling of a batched decode GEMM, as a fraction of peak bf16."""
    decode_bw_eff: float = 0.60
    """Fraction of HBM bandwidth a decode step reaches reading weights and KV cache."""
    allreduce_latency_us: float = 10.0
    """Fixed cost of one small NVLink all-reduce (kernel launch + NCCL protocol): a TP decode step runs two
    per layer, too small for bandwidth to matter."""
    link_eff: float = 0.80
    """Fraction of NVLink / InfiniBand / PCIe bandwidth that collectives and copies reach."""
    sync_bucket_overhead_s: float = 0.035
    """Weight sync: fixed cost per bucket (HTTP call, SGLang's weight loader, pause / flush): slime's
    measured figure for 512 MiB flattened buckets."""
    host_adam_params_per_s: float = 1.0e9
    """Parameters per second one GPU's share of the host cores steps with Adam (optim.cpu_offload)."""
    target_fraction: float = 0.90
    """Peaks the search aims to stay under, as a fraction of GPU memory (allocator fragmentation with
    variable-length micro-batches); a plan fits up to 1.0."""
    host_memory_gib: float = 1800.0
    """Host RAM per node the trainer may fill (a DGX H100 has 2 TiB): pinned copies of the reference weights,
    the offloaded trainer state and the host part of Adam."""
    server_reserve_gib: float = 4.0
    """SGLang memory outside its static pool (CUDA graphs, decode activations)."""
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


def parse_assume(items: list[str]) -> Assumptions:
    """``name=value`` items (``--assume``) over the defaults."""
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
