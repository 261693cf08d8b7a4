"""Rollout on SGLang servers (or the CPU stand-in with the same HTTP API) and trainer -> server weight sync.

    with rollout_servers(cfg.rollout, model_dir=cfg.model.hf_path,
                         min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels) as urls:
        client = RolloutClient(cfg.rollout, urls, max_new_tokens=cfg.data.max_response_length)
        sender = make_weight_sender(cfg.rollout, urls)
        for step in ...:
            samples = client.generate(prompts)                 # n responses per prompt, with log-probs
            ...train...
            sender.update(iter_hf_state(model_chunks), weight_version=str(step))   # models.convert

Colocated (``rollout.colocate``): ``sender.release()`` before training, ``sender.update(...)`` after
(it resumes the servers' memory and generation itself). See docs/rollout.md. SGLang API checked at
version 0.5.23 (``protocol.SGLANG_VERSION_CHECKED``; the contract test runs SGLang's own app).
"""

from megatron_mmr1.rollout.client import RolloutClient, RolloutError, RolloutStats, build_payload
from megatron_mmr1.rollout.protocol import SGLANG_VERSION_CHECKED, GenerateOutput, SamplingParams
from megatron_mmr1.rollout.servers import Fleet, LocalServerGroup, make_weight_sender, rollout_servers, stop_fleet
from megatron_mmr1.rollout.weight_sync import (
    DiskWeightSender,
    DistributedWeightSender,
    SyncStats,
    TensorWeightSender,
    WeightSyncError,
    bucket_named_tensors,
)

__all__ = [
    "RolloutClient", "RolloutError", "RolloutStats", "build_payload",
    "SGLANG_VERSION_CHECKED", "GenerateOutput", "SamplingParams",
    "Fleet", "LocalServerGroup", "make_weight_sender", "rollout_servers", "stop_fleet",
    "DiskWeightSender", "DistributedWeightSender", "TensorWeightSender", "SyncStats", "WeightSyncError",
    "bucket_named_tensors",
]
