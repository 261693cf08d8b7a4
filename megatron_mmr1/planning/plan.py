"""A whole plan: trainer and servers on a cluster, their peak memory over the phases and the step time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from megatron_mmr1.models.memory import GIB
from megatron_mmr1.planning.cost import train_mfu
from megatron_mmr1.planning.hardware import GPUS_PER_NODE, Assumptions, GPUSpec
from megatron_mmr1.planning.layout import ServerPlan, TrainerPlan, rollout_resident
from megatron_mmr1.planning.workload import Model, Workload


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
    def rollout_peak(self) -> float:
        """Bytes on a server GPU while it generates (colocated: with what the trainer leaves there)."""
        server = self.servers.peak + self.assumptions.server_reserve_gib * GIB
        if not self.colocated:
            return server
        return rollout_resident(self.trainer) + self.trainer.memory.overhead + server

    @property
    def peak_per_gpu(self) -> float:
        """Highest bytes on any GPU in any phase."""
        return max(self.trainer.memory.peak, self.rollout_peak)

    @property
    def host_per_node(self) -> float:
        """Host bytes per node: each GPU's reference copy, host Adam and (offloaded) trainer state."""
        m = self.trainer.memory
        offloaded = m.resident if self.colocated and self.trainer.options.offload_trainer else 0.0
        per_gpu = m.reference + m.host_optimizer + offloaded
        return per_gpu * min(self.trainer.gpus, GPUS_PER_NODE)

    @property
    def problems(self) -> list[str]:
        """Why the plan cannot run (empty when it can)."""
        out = []
        if not self.servers.serves:
            out.append("the servers' weights leave no KV cache for one max-length sequence")
        if self.peak_per_gpu > self.gpu.memory_gib * GIB:
            out.append(f"peak {self.peak_per_gpu / GIB:.1f} GiB over the GPU's {self.gpu.memory_gib} GiB")
        if self.host_per_node > self.assumptions.host_memory_gib * GIB:
            out.append(f"host memory {self.host_per_node / GIB:.0f} GiB per node over host_memory_gib="
                       f"{self.assumptions.host_memory_gib:g}")
        w = self.workload
        if not w.fits_token_budget:
            out.append(f"the longest sequence ({w.longest_sequence} tokens) exceeds the micro-batch token budget "
                       f"({w.micro_batch_tokens}, training.max_tokens_per_micro_batch)")
        return out

    @property
    def fits(self) -> bool:
        return not self.problems

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
        training = t["old_logprob"] + t["ref_logprob"] + t["train"] + t["host_adam"]
        return max(t["rollout"] + t["vps_scoring"], training) + t["weight_sync"]

    @property
    def tokens_per_step(self) -> float:
        return self.workload.sequences * self.workload.seq_tokens

    @property
    def train_mfu(self) -> float:
        """Useful FLOPs / time of the training phase (see cost.train_mfu)."""
        return train_mfu(self.model, self.workload, self.gpu, self.trainer, self.times)

    def tokens_per_s_per_gpu(self, overlapped: bool = False) -> float:
        step = self.overlapped_step_s if overlapped and not self.colocated else self.step_s
        return self.tokens_per_step / step / self.gpus
