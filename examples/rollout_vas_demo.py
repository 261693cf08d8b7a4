"""The rollout half of a GRPO + VAS step, end to end on CPU, with the project's real parts:

synthetic RL data -> VAS sampler (VPS scored with fresh rollouts) -> rollouts from a stand-in server
speaking SGLang's HTTP API -> math-verify rewards -> GRPO advantages -> per-step VAS metrics.

The megatron update that closes the loop is the GRPO trainer's (``training.mode=grpo``, which uses the
same ``group`` and VPS ``score_fn`` from ``megatron_mmr1.training.experience``).

    python examples/rollout_vas_demo.py --model DIR --data rl_train.jsonl [--steps 3]
"""

from __future__ import annotations

import argparse


from megatron_mmr1.algorithms.advantages import compute_grpo_advantages
from megatron_mmr1.config import load_config
from megatron_mmr1.data.dataset import build_dataset
from megatron_mmr1.data.tokenizer import load_tokenizer
from megatron_mmr1.rewards import compute_rewards, reward_pool
from megatron_mmr1.rollout.client import RolloutClient
from megatron_mmr1.rollout.servers import rollout_servers
from megatron_mmr1.sampling.controller import PromptSampler
from megatron_mmr1.training.experience import group, make_score_fn
from megatron_mmr1.utils.logging import get_logger

logger = get_logger("examples.rollout_vas_demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="HF Qwen2.5-VL checkpoint dir (tokenizer inside)")
    parser.add_argument("--data", required=True, help="RL JSONL/Parquet file")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("overrides", nargs="*", help="run-config overrides (key.sub=value)")
    args = parser.parse_args(argv)

    cfg = load_config(None, [
        f"model.hf_path={args.model}", f"data.train_files=[{args.data}]", "data.num_workers=0",
        "data.max_response_length=24", "rollout.backend=local", "rollout.n=4", "rollout.temperature=1.0",
        "training.rollout_batch_size=4", "training.global_batch_size=16", "training.micro_batch_size=4",
        "vps.num_rollouts=4", "vps.update_interval=2", "vps.scoring_batch_size=16", "reward.num_workers=1",
        *args.overrides,
    ])
    tok = load_tokenizer(args.model)
    ds = build_dataset(cfg.data, tok)
    logger.info("dataset: %d prompts from %s", len(ds), args.data)

    with rollout_servers(cfg.rollout, model_dir=args.model) as urls, reward_pool(cfg.reward) as pool:
        client = RolloutClient(cfg.rollout, urls, max_new_tokens=cfg.data.max_response_length)

        score_fn = make_score_fn(ds, client, cfg.reward, pool, cfg.vps.num_rollouts)  # the trainer's VPS scoring
        sampler = PromptSampler(len(ds), cfg.training.rollout_batch_size, cfg.sampler, cfg.vps, score_fn)
        for step in range(1, args.steps + 1):
            indices = sampler.next_batch()
            rollouts = compute_rewards(client.generate(ds.get_batch(indices).samples), cfg.reward, pool)
            rewards, acc, tokens = group(rollouts, cfg.rollout.n)
            advantages = compute_grpo_advantages(rewards, eps=cfg.algorithm.adv_eps)  # (G, n)
            sampler.observe(indices, acc, tokens)
            m = sampler.metrics()
            logger.info(
                "step %d | prompts %s | mean reward %.3f | |adv| %.3f | zero-var groups %.2f | "
                "weight entropy %.3f | scoring rollouts %d | response: %r",
                step, indices, float(rewards.mean()), float(advantages.abs().mean()),
                m.get("vas/zero_variance_frac", float("nan")), m.get("vps/weight_entropy", float("nan")),
                int(m["vas/scoring_rollouts"]), rollouts[0].response[:60],
            )
        logger.info("rollout client: %s", client.stats)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
