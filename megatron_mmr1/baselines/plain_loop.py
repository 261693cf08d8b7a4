"""The yardstick: plain single-process PyTorch SFT and on-policy GRPO on the tiny policy.

No megatron, no servers, no packing, no reference model: transformers' Qwen2.5-VL in one process,
sampling with the stand-in server's engine in place, one AdamW step per batch. The trainer is measured
against it per step (held-out accuracy) and per second (its wall-clock ratio to this loop); the data,
prompts, image processing and rewards are the project's own, so only the training machinery differs.

    python tools/plain_loop.py sft  --model HF_DIR --data sft_train.jsonl --out DIR [--steps 1440 --lr 4e-3]
    python tools/plain_loop.py grpo --model SFT_DIR --train rl_train.jsonl --val rl_val.jsonl --out DIR \\
        [--steps 80 --eval-every 40 --lr 1e-4 --temperature 1.0]

``grpo`` writes DIR/summary.json: per-step reward, accuracy, zero-variance fraction, grad norm and seconds
(generation / update), and every greedy eval per question, so runs compare question by question
(``megatron_mmr1.eval.results.paired_difference``).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shutil
import sys
import time
from pathlib import Path

import torch

from megatron_mmr1.algorithms.advantages import compute_grpo_advantages
from megatron_mmr1.config import DataConfig
from megatron_mmr1.data.dataset import build_dataset
from megatron_mmr1.data.tokenizer import load_tokenizer
from megatron_mmr1.rewards.math_reward import score_response
from megatron_mmr1.rollout.engine import LocalEngine
from megatron_mmr1.rollout.protocol import SamplingParams

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja")


def warmup_cosine(step: int, total: int, lr: float, warmup: float = 0.1, floor: float = 0.1) -> float:
    """The SFT config's schedule: linear warmup, cosine to ``floor * lr``."""
    w = int(warmup * total)
    if step < w:
        return lr * (step + 1) / w
    p = (step - w) / max(1, total - w)
    return floor * lr + (1 - floor) * lr * 0.5 * (1 + math.cos(math.pi * p))


def forward_logits(model, ids: torch.Tensor, pixel_values, grid_thw) -> torch.Tensor:
    # mm_token_type_ids: transformers 5 gives image patches their 3-D M-RoPE positions only when told
    # which tokens are image tokens (as the engine does when it generates)
    return model(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid_thw,
                 mm_token_type_ids=(ids == model.config.image_token_id).int()).logits.float()


def save_hf(model, src: str, out: str) -> None:
    model.save_pretrained(out)
    for f in TOKENIZER_FILES:
        if (Path(src) / f).exists():
            shutil.copy(Path(src) / f, Path(out) / f)


def epoch_order(n: int, rng: random.Random):
    """Indices 0..n-1 in a fresh shuffle per epoch, forever."""
    while True:
        order = list(range(n))
        rng.shuffle(order)
        yield from order


def run_sft(a: argparse.Namespace) -> dict:
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(a.seed)
    ds = build_dataset(DataConfig(kind="sft", train_files=[a.data], seq_length=2048), load_tokenizer(a.model))
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(a.model, dtype=torch.float32)
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=0.0)
    order = epoch_order(len(ds), random.Random(a.seed))
    losses, t0 = [], time.perf_counter()
    for step in range(a.steps):
        for g in opt.param_groups:
            g["lr"] = warmup_cosine(step, a.steps, a.lr)
        examples = ds.get_batch([next(order) for _ in range(a.batch_size)]).samples
        n_loss = sum(sum(t != -100 for t in ex.labels[1:]) for ex in examples)
        total = 0.0
        for ex in examples:  # token-mean over the batch: each conversation's summed loss / the batch's tokens
            ids = torch.tensor([ex.input_ids])
            logits = forward_logits(model, ids, ex.pixel_values, ex.image_grid_thw)[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ex.labels[1:]), ignore_index=-100,
                                                     reduction="sum") / n_loss
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        losses.append(total)
        if step % a.log_every == 0 or step == a.steps - 1:
            print(f"sft step {step + 1}/{a.steps} loss {total:.4f} ({time.perf_counter() - t0:.0f} s)", flush=True)
    save_hf(model, a.model, a.out)
    return {"steps": a.steps, "loss_first": losses[0], "loss_last": losses[-1],
            "wall_s": time.perf_counter() - t0, "step_s": (time.perf_counter() - t0) / a.steps}


def greedy_eval(engine: LocalEngine, val, max_new: int, limit: int, batch: int = 16) -> dict:
    sp = SamplingParams(max_new_tokens=max_new, temperature=0.0)
    per_q, fmt = {}, 0.0
    for b in range(0, limit, batch):
        samples = val.get_batch(list(range(b, min(limit, b + batch)))).samples
        outs = engine.generate_batch([engine.prepare(s.prompt, None, s.images, sp, False, str(s.index))
                                      for s in samples], "eval")
        for s, o in zip(samples, outs):
            r = score_response(o[0]["text"], s.answer)
            per_q[str(s.index)] = r["accuracy"]
            fmt += r["format"]
    return {"accuracy": sum(per_q.values()) / len(per_q), "format": fmt / len(per_q), "per_question": per_q}


def grpo_backward(engine: LocalEngine, reqs, outs, adv: torch.Tensor, temperature: float) -> None:
    """One on-policy step's gradient: token-mean of -A * ratio over all responses (ratio = 1 in value)."""
    model = engine.model
    n_tokens = sum(len(r["output_ids"]) for o in outs for r in o)
    for i, (req, group) in enumerate(zip(reqs, outs)):  # the generation's encoded prompts: images decoded once
        p, width = len(req.ids), len(req.ids) + max(len(r["output_ids"]) for r in group)
        ids = torch.full((len(group), width), engine.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(group), width)
        for j, r in enumerate(group):
            ids[j, :p] = torch.tensor(req.ids)
            ids[j, p:p + len(r["output_ids"])] = torch.tensor(r["output_ids"])
            mask[j, p:p + len(r["output_ids"])] = 1
        logits = forward_logits(model, ids, torch.cat([req.pixel_values] * len(group)),
                                torch.cat([req.grid_thw] * len(group)))[:, :-1]
        logp = torch.log_softmax(logits / temperature, -1).gather(-1, ids[:, 1:, None])[..., 0]
        ratio = torch.exp(logp - logp.detach())
        (-(ratio * adv[i][:, None] * mask[:, 1:]).sum() / n_tokens).backward()


def run_grpo(a: argparse.Namespace) -> dict:
    torch.manual_seed(a.seed)
    engine = LocalEngine(a.model, seed=a.seed)
    data_cfg = DataConfig(kind="rl", train_files=[a.train], max_response_length=a.max_new_tokens)
    tokenizer = load_tokenizer(a.model)
    train, val = build_dataset(data_cfg, tokenizer), build_dataset(data_cfg, tokenizer, files=[a.val])
    n_val = min(a.eval_max or len(val), len(val))
    opt = torch.optim.AdamW(engine.model.parameters(), lr=a.lr, weight_decay=0.0)
    order = epoch_order(len(train), random.Random(a.seed))
    history, evals, t_start = [], {}, time.perf_counter()

    def evaluate(step: int) -> None:
        t = time.perf_counter()
        evals[step] = greedy_eval(engine, val, a.max_new_tokens, n_val)
        print(f"eval at step {step}: accuracy {evals[step]['accuracy']:.3f} format {evals[step]['format']:.3f} "
              f"({n_val} prompts, {time.perf_counter() - t:.0f} s)", flush=True)

    evaluate(0)
    for step in range(1, a.steps + 1):
        t0 = time.perf_counter()
        samples = train.get_batch([next(order) for _ in range(a.prompts)]).samples
        sp = SamplingParams(max_new_tokens=a.max_new_tokens, temperature=a.temperature, n=a.n,
                            sampling_seed=a.seed * 100_003 + step)
        reqs = [engine.prepare(s.prompt, None, s.images, sp, False, str(s.index)) for s in samples]
        outs = engine.generate_batch(reqs, str(step))
        t_gen = time.perf_counter() - t0
        parts = [[score_response(r["text"], s.answer) for r in o] for s, o in zip(samples, outs)]
        rewards = torch.tensor([[p["format"] + p["accuracy"] for p in g] for g in parts])
        grpo_backward(engine, reqs, outs, compute_grpo_advantages(rewards), a.temperature)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(engine.model.parameters(), 1.0))
        opt.step()
        opt.zero_grad()
        row = {"step": step, "reward": rewards.mean().item(),
               "accuracy": sum(p["accuracy"] for g in parts for p in g) / rewards.numel(),
               "zero_variance_frac": (rewards.std(1) == 0).float().mean().item(), "grad_norm": grad_norm,
               "gen_s": t_gen, "step_s": time.perf_counter() - t0}
        history.append(row)
        print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}), flush=True)
        if a.eval_every and (step % a.eval_every == 0 or step == a.steps) and step not in evals:
            evaluate(step)
    steps = [h["step_s"] for h in history]
    return {"steps": a.steps, "wall_s": time.perf_counter() - t_start, "step_s_median": sorted(steps)[len(steps) // 2],
            "history": history, "evals": evals}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("sft", help="cold-start SFT (the tiny SFT config's schedule)")
    s.add_argument("--data", required=True, help="SFT conversations (JSONL)")
    s.add_argument("--steps", type=int, default=1440)
    s.add_argument("--batch-size", type=int, default=4)
    s.add_argument("--lr", type=float, default=4e-3)
    s.add_argument("--log-every", type=int, default=40)
    g = sub.add_parser("grpo", help="on-policy GRPO, one optimizer step per rollout batch")
    g.add_argument("--train", required=True, help="RL prompts (JSONL)")
    g.add_argument("--val", required=True, help="held-out RL prompts for greedy eval (JSONL)")
    g.add_argument("--steps", type=int, default=80)
    g.add_argument("--eval-every", type=int, default=40)
    g.add_argument("--eval-max", type=int, default=None, help="eval on the first N held-out prompts")
    g.add_argument("--prompts", type=int, default=8, help="prompts per step")
    g.add_argument("--n", type=int, default=8, help="responses per prompt")
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--temperature", type=float, default=1.0)
    g.add_argument("--max-new-tokens", type=int, default=256)
    for p in (s, g):
        p.add_argument("--model", required=True, help="HF checkpoint dir (with tokenizer files)")
        p.add_argument("--out", required=True, help="output dir (sft: the trained HF checkpoint)")
        p.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    Path(a.out).mkdir(parents=True, exist_ok=True)
    summary = run_sft(a) if a.mode == "sft" else run_grpo(a)
    (Path(a.out) / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(f"{a.mode}: {summary['steps']} steps in {summary['wall_s']:.0f} s; summary in {a.out}/summary.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
