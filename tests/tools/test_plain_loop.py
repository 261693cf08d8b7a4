"""megatron_mmr1.baselines.plain_loop (CLI: tools/plain_loop.py), the single-process yardstick: its policy
gradient equals the textbook one computed response by response (no padding), its schedule, and a short SFT -> GRPO run end to end."""

import json
from pathlib import Path

import pytest
import torch

from megatron_mmr1.baselines import plain_loop as plain



@pytest.fixture(scope="module")
def task(tmp_path_factory):
    from megatron_mmr1.data.synthetic import generate
    from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

    root = tmp_path_factory.mktemp("plain")
    paths = generate(root / "data", num=24, seed=0, num_sft=8, tokenizer=True)
    hf = make_tiny_hf_checkpoint(root / "hf", paths["tokenizer"], seed=0, logit_scale=20.0)
    return root, paths, str(hf)


def test_warmup_cosine_schedule():
    lrs = [plain.warmup_cosine(s, 100, 1.0) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)  # 10 warmup steps
    assert lrs[10] == pytest.approx(1.0) and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:]))


def test_policy_gradient_equals_the_per_response_sum(task):
    """Reference: the GRPO policy gradient at ratio 1, sum_i A_i * sum_t grad log pi(y_it) / (total tokens),
    each response scored alone (no padding, its own forward)."""
    from megatron_mmr1.config import DataConfig
    from megatron_mmr1.data.dataset import build_dataset
    from megatron_mmr1.data.tokenizer import load_tokenizer
    from megatron_mmr1.rollout.engine import LocalEngine
    from megatron_mmr1.rollout.protocol import SamplingParams

    _, paths, hf = task
    engine = LocalEngine(hf, seed=0)
    ds = build_dataset(DataConfig(kind="rl", train_files=[str(paths["rl_train"])]), load_tokenizer(hf))
    samples = ds.get_batch([0, 1]).samples
    sp = SamplingParams(max_new_tokens=12, temperature=1.0, n=3, sampling_seed=5)
    reqs = [engine.prepare(s.prompt, None, s.images, sp, False, "r") for s in samples]
    outs = engine.generate_batch(reqs, "0")
    for j, r in enumerate(outs[0]):  # unequal lengths, so the padded batch has padding to mask
        r["output_ids"] = r["output_ids"][: 4 + 3 * j]
    assert len({len(r["output_ids"]) for o in outs for r in o}) > 1
    adv = torch.tensor([[1.0, -0.5, -0.5], [0.3, 0.0, -0.3]])
    T = 0.7
    plain.grpo_backward(engine, reqs, outs, adv, T)
    got = {k: p.grad.clone() for k, p in engine.model.named_parameters() if p.grad is not None}
    engine.model.zero_grad()

    n_tokens = sum(len(r["output_ids"]) for o in outs for r in o)
    for i, (s, group) in enumerate(zip(samples, outs)):
        req = engine.prepare(s.prompt, None, s.images, SamplingParams(), False, "x")
        for j, r in enumerate(group):
            ids = torch.tensor([req.ids + r["output_ids"]])
            logits = plain.forward_logits(engine.model, ids, req.pixel_values, req.grid_thw)[0, len(req.ids) - 1:-1]
            logp = torch.log_softmax(logits / T, -1).gather(-1, torch.tensor(r["output_ids"])[:, None])
            (-adv[i, j] * logp.sum() / n_tokens).backward()
    for k, p in engine.model.named_parameters():
        if p.grad is not None:
            torch.testing.assert_close(got[k], p.grad, rtol=1e-4, atol=1e-7, msg=k)
    assert any(g.abs().sum() > 0 for g in got.values())


def test_sft_then_grpo_end_to_end(task, tmp_path):
    _, paths, hf = task
    sft_out = tmp_path / "sft"
    assert plain.main(["sft", "--model", hf, "--data", str(paths["sft_train"]), "--out", str(sft_out),
                       "--steps", "3", "--batch-size", "2", "--lr", "1e-3"]) == 0
    sft = json.loads((sft_out / "summary.json").read_text())
    assert sft["steps"] == 3 and sft["loss_last"] < sft["loss_first"]
    assert (sft_out / "model.safetensors").exists() and (sft_out / "tokenizer.json").exists()

    out = tmp_path / "grpo"
    assert plain.main(["grpo", "--model", str(sft_out), "--train", str(paths["rl_train"]), "--val", str(paths["rl_val"]),
                       "--out", str(out), "--steps", "2", "--eval-every", "2", "--eval-max", "3", "--prompts", "2",
                       "--n", "2", "--max-new-tokens", "8"]) == 0
    s = json.loads((out / "summary.json").read_text())
    assert [h["step"] for h in s["history"]] == [1, 2]
    assert set(s["evals"]) == {"0", "2"}
    n_val = min(3, len(Path(paths["rl_val"]).read_text().splitlines()))
    assert all(len(e["per_question"]) == n_val for e in s["evals"].values()), s["evals"]
    assert all(0.0 <= h["zero_variance_frac"] <= 1.0 and h["grad_norm"] >= 0 for h in s["history"])
