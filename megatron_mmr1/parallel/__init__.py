"""torch.distributed + megatron parallel_state set-up (nccl on GPU, gloo on CPU)."""

from megatron_mmr1.parallel.state import DistInfo, destroy, free_port, info, initialize, set_seed

__all__ = ["DistInfo", "destroy", "free_port", "info", "initialize", "set_seed"]
