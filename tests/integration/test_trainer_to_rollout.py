"""The trainer's side of the GRPO loop against the rollout engine's, across components:

a TP=2 megatron Qwen2.5-VL policy pushes its weights to a stand-in server through SGLang's distributed
weight update (gathered and renamed by the checkpoint converter's mapping), the server samples with
log-probs, and the fused log-prob kernel recomputes them from the megatron model's hidden states.
Reference: the rollout engine's own log-probs (transformers' Qwen2.5-VL inside the stand-in), which
must equal the trainer's on the same tokens (torchtitan's bitwise-parity idea, fp32 tolerance here).
"""

import pytest
import requests
import torch
from safetensors.torch import load_file

from megatron_mmr1.data.tokenizer import build_tokenizer
from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint
from megatron_mmr1.rollout.servers import LocalServerGroup
from tests.dist_utils import spawn
from tests.integration.sync_workers import sync_then_compare_logprobs

pytestmark = pytest.mark.slow


def test_megatron_weights_reach_server_and_logprobs_match(tmp_path):
    build_tokenizer(tmp_path / "tok")
    served_ckpt = make_tiny_hf_checkpoint(tmp_path / "served", tmp_path / "tok", seed=0)
    trained_ckpt = make_tiny_hf_checkpoint(tmp_path / "trained", tmp_path / "tok", seed=1)
    group = LocalServerGroup(str(served_ckpt), 1, str(tmp_path / "logs"), extra_args=["--log-level", "WARNING"])
    (url,) = group.start(timeout_s=180)
    try:
        probe = {"name": "model.layers.0.mlp.down_proj.weight", "truncate_size": 2}
        before = requests.post(url + "/get_weights_by_name", json=probe, timeout=30).json()
        results = spawn(sync_then_compare_logprobs, 2, str(trained_ckpt), str(tmp_path / "tok"), url)
        after = requests.post(url + "/get_weights_by_name", json=probe, timeout=30).json()
    finally:
        group.stop()
    diff, n_tokens, n_names = results[0]
    assert before != after, "the server still serves its original weights"
    trained = load_file(str(trained_ckpt / "model.safetensors"))
    key = next(k for k in trained if k.endswith("layers.0.mlp.down_proj.weight"))  # either HF key layout
    assert torch.equal(torch.tensor(after), trained[key][:2]), "served weights are not the megatron policy's"
    assert n_tokens == 12 and n_names > 20
    assert diff < 1e-4, f"trainer vs rollout log-probs differ by {diff}"
