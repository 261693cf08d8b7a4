"""The cluster planner: layout, memory per GPU and time per GRPO step of a run on H100/H200 nodes.

``hardware`` (GPUs, assumptions), ``workload`` (token counts, FLOPs), ``layout`` (trainer and server
placement, decode step), ``cost`` (seconds per phase), ``plan`` (peaks, fit), ``search`` (layouts),
``report`` (text, markdown, shell) and ``cli`` (``python -m megatron_mmr1.planning``).
"""

from megatron_mmr1.planning.hardware import GPUS, GPUS_PER_NODE, Assumptions, GPUSpec, parse_assume
from megatron_mmr1.planning.layout import ServerPlan, TrainerOptions, TrainerPlan, plan_servers, plan_trainer
from megatron_mmr1.planning.plan import Plan
from megatron_mmr1.planning.report import markdown_table, report, shell_vars
from megatron_mmr1.planning.search import plan_config, read_cluster, search
from megatron_mmr1.planning.workload import Model, Workload

__all__ = ["GPUS", "GPUS_PER_NODE", "Assumptions", "GPUSpec", "Model", "Plan", "ServerPlan", "TrainerOptions",
           "TrainerPlan", "Workload", "markdown_table", "parse_assume", "plan_config", "plan_servers",
           "plan_trainer", "read_cluster", "report", "search", "shell_vars"]
