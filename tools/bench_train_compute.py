"""One rank's training compute: the trainer's SFT step against a plain transformers step, side by side.

Same conversations, same weights, one process, one thread: each optimizer step of ``--batch``
conversations runs through

* ``plain``: transformers' Qwen2.5-VL (SDPA attention), one forward/backward per conversation, AdamW
  (``megatron_mmr1.baselines.plain_loop``'s SFT step, the yardstick);
* ``trainer/<backend>``: megatron-core through the trainer's own ``train_step`` (packed micro-batches
  of ``--budget`` tokens, fused log-prob loss, megatron DDP and optimizer), once per core-attention
  backend of the local spec: ``sdpa`` (the default off TE) and ``local`` (megatron's unfused
  ``DotProductAttention``).

The paths take turns step by step on the same batch so that machine noise hits them alike; the table
gives medians and ratios to ``plain``. No torch.distributed peers: this is compute, not communication.

    python tools/bench_train_compute.py                       # tiny random policy, synthetic traces
    python tools/bench_train_compute.py --model HF_DIR --data sft_train.jsonl --steps 30
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def prepare(work: Path) -> tuple[str, str]:
    from megatron_mmr1.data.synthetic import generate
    from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

    paths = generate(work / "data", num=32, seed=0, num_sft=64, tokenizer=True)
    return str(make_tiny_hf_checkpoint(work / "hf", paths["tokenizer"], seed=0)), str(paths["sft_train"])


class TrainerPath:
    """The trainer's SFT step (``training.sft``) on one rank with one core-attention backend."""

    def __init__(self, model: str, data: str, backend: str, budget: int, work: Path) -> None:
        from megatron_mmr1.config import load_config
        from megatron_mmr1.training import engine
        from megatron_mmr1.training.sft import sft_loss_func

        self.cfg = load_config(str(REPO / "examples/configs/tiny_cpu_sft.yaml"), [
            f"model.hf_path={model}", f"model.attention_backend={backend}", f"data.train_files=[{data}]",
            f"training.max_tokens_per_micro_batch={budget}", f"output_dir={work / backend}"])
        self.chunks = engine.build_policy(self.cfg)
        self.optimizer = engine.build_optimizer(self.cfg, self.chunks)
        self.scheduler = engine.build_scheduler(self.cfg, self.optimizer, 1000)
        self.forward_step = engine.make_forward_step(self.cfg, sft_loss_func, engine.varlen_attention(self.cfg))

    def step(self, dataset, indices: list[int], info, pad_id: int) -> float:
        from megatron_mmr1.training import engine
        from megatron_mmr1.training.sft import build_micro_batches

        micro, _ = build_micro_batches(self.cfg, dataset, indices, info, pad_id)
        return engine.train_step(self.cfg, self.chunks, self.optimizer, self.scheduler, self.forward_step, micro,
                                info.device).loss


class PlainPath:
    """transformers' model, one forward/backward per conversation, token-mean over the batch, AdamW."""

    def __init__(self, model: str) -> None:
        from transformers import Qwen2_5_VLForConditionalGeneration

        self.model = Qwen2_5_VLForConditionalGeneration.from_pretrained(model, dtype=torch.float32)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0)

    def step(self, dataset, indices: list[int], info=None, pad_id: int = 0) -> float:
        from megatron_mmr1.baselines.plain_loop import forward_logits

        examples = dataset.get_batch(indices).samples
        n_loss = sum(sum(t != -100 for t in ex.labels[1:]) for ex in examples)
        total = 0.0
        for ex in examples:
            logits = forward_logits(self.model, torch.tensor([ex.input_ids]), ex.pixel_values, ex.image_grid_thw)[0, :-1]
            loss = torch.nn.functional.cross_entropy(logits, torch.tensor(ex.labels[1:]), ignore_index=-100,
                                                     reduction="sum") / n_loss
            loss.backward()
            total += loss.item()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad()
        return total


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="HF Qwen2.5-VL dir (default: the tiny random policy)")
    ap.add_argument("--data", default=None, help="SFT conversations JSONL (default: synthetic traces)")
    ap.add_argument("--steps", type=int, default=20, help="timed optimizer steps per path (after 2 warm-up steps)")
    ap.add_argument("--batch", type=int, default=4, help="conversations per optimizer step")
    ap.add_argument("--budget", type=int, default=512, help="trainer's max_tokens_per_micro_batch")
    ap.add_argument("--backends", default="sdpa,local", help="core-attention backends of the trainer to time")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: one rank of a 2-rank job on 2 cores)")
    ap.add_argument("--json", default=None, help="also write the result here")
    a = ap.parse_args(argv)

    from megatron_mmr1.config import DataConfig
    from megatron_mmr1.data.dataset import build_dataset
    from megatron_mmr1.data.tokenizer import load_tokenizer
    from megatron_mmr1.parallel import state
    from megatron_mmr1.config import ParallelConfig

    torch.set_num_threads(a.threads)
    work = Path(tempfile.mkdtemp(prefix="bench_train_compute_"))
    model, data = (a.model, a.data) if a.model and a.data else prepare(work)
    info = state.initialize(ParallelConfig())
    dataset = build_dataset(DataConfig(kind="sft", train_files=[data], seq_length=2048), load_tokenizer(model))
    pad_id = getattr(dataset.formatter, "endoftext_id", 0) or 0
    paths = {"plain": PlainPath(model)}
    for b in a.backends.split(","):
        paths[f"trainer/{b}"] = TrainerPath(model, data, b, a.budget, work)
    rng = random.Random(0)
    times: dict[str, list[float]] = {k: [] for k in paths}
    losses: dict[str, list[float]] = {k: [] for k in paths}
    for step in range(a.steps + 2):
        indices = [rng.randrange(len(dataset)) for _ in range(a.batch)]
        for name, path in paths.items():
            t0 = time.perf_counter()
            losses[name].append(path.step(dataset, indices, info, pad_id))
            if step >= 2:
                times[name].append(time.perf_counter() - t0)
    base = statistics.median(times["plain"])
    result = {"steps": a.steps, "batch": a.batch, "budget": a.budget, "threads": a.threads, "paths": {}}
    print(f"{'path':<18} {'s/step':>8} {'s/conv':>8} {'x plain':>8} {'loss first -> last':>22}")
    for name in paths:
        med = statistics.median(times[name])
        result["paths"][name] = {"step_s": med, "ratio_to_plain": med / base, "loss_first": losses[name][0],
                                 "loss_last": losses[name][-1]}
        print(f"{name:<18} {med:8.3f} {med / a.batch:8.3f} {med / base:8.2f}x "
              f"{losses[name][0]:10.4f} -> {losses[name][-1]:.4f}")
    if a.json:
        Path(a.json).write_text(json.dumps(result, indent=1))
    state.destroy()
    return result


if __name__ == "__main__":
    main()
