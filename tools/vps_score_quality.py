"""Why do VPS weights from a scoring pass steer fewer draws away from zero-variance groups than expected?

Rolls out ``--m`` responses per prompt of a pool from one policy (the stand-in servers, the trainer's
rollout and reward code), then, for each scoring setting (rollouts per prompt, alpha / beta), scores every
prompt from part of its rollouts and judges the weights on the rest (``megatron_mmr1.sampling.diagnostics``).
Not in CI.

    python tools/vps_score_quality.py --sft-hf SFT_HF_DIR --pool POOL.jsonl [--m 16] [--out DIR]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

import torch

ROOT = Path(__file__).resolve().parents[1]
GRPO_CONFIG = "examples/configs/tiny_cpu_grpo.yaml"
SETTINGS = (  # (score_n, alpha, beta, vps.tds_gate)
    (4, 0.8, 0.2, False), (4, 0.8, 0.2, True), (4, 1.0, 0.0, False), (4, 0.0, 1.0, False),
    (8, 0.8, 0.2, False), (8, 0.8, 0.2, True), (8, 1.0, 0.0, False), (8, 0.0, 1.0, False))


def rollouts(sft_hf: Path, pool: Path, m: int, out: Path, temperature: float, max_tokens: int, seed: int) -> dict:
    """``m`` rewarded rollouts per pool prompt: {"acc": [P, m], "tokens": [P][m][L]} (cached in ``out``)."""
    cache = out / f"rollouts_m{m}_t{temperature:g}_s{seed}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=False)
    from megatron_mmr1.config import load_config
    from megatron_mmr1.data.dataset import build_dataset
    from megatron_mmr1.data.tokenizer import load_tokenizer
    from megatron_mmr1.data.vision import VisionSpec
    from megatron_mmr1.rewards import reward_pool
    from megatron_mmr1.rollout.client import RolloutClient
    from megatron_mmr1.rollout.servers import rollout_servers
    from megatron_mmr1.training.experience import make_score_fn

    cfg = load_config(str(ROOT / GRPO_CONFIG), [
        f"model.hf_path={sft_hf}", f"data.train_files=[{pool}]", f"rollout.temperature={temperature}",
        f"data.max_response_length={max_tokens}", "rollout.num_servers=2", f"rollout.seed={seed}",
        f"output_dir={out}"], world_size=1)
    dataset = build_dataset(cfg.data, load_tokenizer(cfg.model.hf_path))
    with rollout_servers(cfg.rollout, model_dir=cfg.model.hf_path, log_dir=str(out / "rollout_logs"),
                         min_pixels=cfg.data.min_pixels, max_pixels=cfg.data.max_pixels) as urls, \
            reward_pool(cfg.reward) as rp:
        client = RolloutClient(cfg.rollout, urls, max_new_tokens=max_tokens, vision=VisionSpec.from_config(cfg.data))
        score = make_score_fn(dataset, client, cfg.reward, rp, m, seed)
        accs, tokens = [], []
        for start in range(0, len(dataset), 16):
            acc, tok = score(list(range(start, min(len(dataset), start + 16))))
            accs.append(acc)
            tokens += tok
            print(f"rolled out {start + len(acc)}/{len(dataset)} prompts", flush=True)
    data = {"acc": torch.cat(accs), "tokens": tokens}
    out.mkdir(parents=True, exist_ok=True)
    torch.save(data, cache)
    return data


def main(argv: Optional[Sequence[str]] = None) -> int:
    from megatron_mmr1.config import VPSConfig
    from megatron_mmr1.sampling.diagnostics import quality_table, score_quality

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sft-hf", type=Path, required=True)
    ap.add_argument("--pool", type=Path, required=True, help="RL prompts (jsonl), e.g. vas_vs_uniform's pool")
    ap.add_argument("--m", type=int, default=16, help="rollouts per prompt (score_n of them score, the rest judge)")
    ap.add_argument("--n", type=int, default=8, help="training group size the weights are judged for")
    ap.add_argument("--lam", type=float, default=0.5)
    ap.add_argument("--splits", type=int, default=20)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "outputs" / "vps_score_quality")
    args = ap.parse_args(argv)
    data = rollouts(args.sft_hf.resolve(), args.pool.resolve(), args.m, args.out.resolve(), args.temperature,
                    args.max_tokens, args.seed)
    acc = data["acc"]
    print(f"{acc.shape[0]} prompts x {acc.shape[1]} rollouts, pass rate {float(acc.mean()):.3f}, prompts never / "
          f"always solved: {float((acc.sum(1) == 0).double().mean()):.3f} / "
          f"{float((acc.sum(1) == acc.shape[1]).double().mean()):.3f}", flush=True)
    rows = []
    for score_n, alpha, beta, gate in SETTINGS:
        if args.m - score_n < args.n:
            continue
        cfg = VPSConfig(alpha=alpha, beta=beta, tds_metrics=["self_bleu"], tds_gate=gate)
        r = score_quality(acc, data["tokens"], cfg, score_n, args.n, args.lam, args.splits, args.seed)
        rows.append((f"{score_n} rollouts, alpha {alpha:g} / beta {beta:g}" + (", tds_gate" if gate else ""), r))
        print(rows[-1][0], {k: round(v, 4) for k, v in r.items()}, flush=True)
    table = quality_table(rows)
    (args.out / "table.md").write_text(table)
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
