"""CPU bandit simulation of GRPO fine-tuning: uniform sampling vs VAS vs DAPO-style filtering.

The model (one "token" per response, so the GRPO mechanics are exact and cheap):
  * P prompts, each a K-way multiple-choice question; choice 0 is correct.
  * The policy is a softmax over the K choices per prompt with logits theta[x] plus a shared "skill"
    s added to the correct choice of every prompt (so learning on one prompt transfers a little).
  * Latent difficulty: the initial pass rate p0(x) ~ Beta(a, a) with a < 1 (U-shaped: many prompts
    are solved always or never, as in real RL data), so many GRPO groups have zero reward variance.
  * One training step: B prompts from the arm's sampler, N answers each from the current policy,
    accuracy reward, advantages by ``compute_grpo_advantages``, loss by ``grpo_loss`` (token-mean,
    k3 KL 0.01 to the initial policy, clip 0.2), Adam.

Arms (same seeds, so the same prompts, difficulties and initial policy):
  uniform   shuffled-epoch sampling (``UniformSampler``)
  vas       ``PromptSampler`` with lambda=0.5, T=4, full refresh with N fresh rollouts, OVS only
            (the released MMR1 config; the bandit has no token sequences for TDS)
  vas-online  the same, scores from training rollouts, re-scoring only stale prompts
  dapo      uniform sampling, groups with zero reward variance dropped and re-drawn (up to
            ``--dapo-max-rounds`` rollout rounds per step, as DAPO's max_num_gen_batches)

Measured per step: zero-variance group fraction and mean group reward variance of the trained
batch, policy-gradient norm (before the optimizer), mean accuracy over all P prompts (exact), and
rollouts spent (training + scoring + discarded).

The command line (figure paths, flags) is ``tools/vas_simulation.py``:

    .venv/bin/python tools/vas_simulation.py               # full run, writes docs/vas_simulation.png
    .venv/bin/python tools/vas_simulation.py --quick        # outputs/vas_simulation_quick.png
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from megatron_mmr1.algorithms.advantages import compute_grpo_advantages, dynamic_filter, reward_variance_stats
from megatron_mmr1.algorithms.grpo import grpo_loss
from megatron_mmr1.config import AlgorithmConfig, SamplerConfig, VPSConfig
from megatron_mmr1.sampling.controller import PromptSampler

ARMS = ("uniform", "vas", "vas-online", "dapo")
METRICS = ("zero_variance_frac", "reward_variance", "grad_norm", "accuracy", "rollouts")


@dataclass
class SimConfig:
    num_prompts: int = 1024
    choices: int = 4
    beta_a: float = 0.35
    """Beta(a, a) shape of the initial pass rates."""
    batch_size: int = 32
    n: int = 8
    """Training rollouts per prompt (GRPO group size)."""
    score_n: int = 8
    """Scoring rollouts per prompt at a VAS refresh."""
    steps: int = 150
    lr: float = 0.05
    shared_skill: float = 0.25
    """Weight of the shared skill logit (0 = independent prompts)."""
    lam: float = 0.5
    update_interval: int = 4
    stale_after: int = 2
    dapo_max_rounds: int = 4
    seeds: list[int] = field(default_factory=lambda: list(range(8)))

    @classmethod
    def quick(cls) -> "SimConfig":
        """The tiny run of ``--quick`` and the tests: 64 prompts, 8 per step, 10 steps, 1 seed."""
        return cls(num_prompts=64, batch_size=8, steps=10, seeds=[0])


class BanditPolicy(torch.nn.Module):
    def __init__(self, p0: torch.Tensor, choices: int, shared_skill: float):
        super().__init__()
        # Correct-choice logit c with e^c / (e^c + K - 1) = p0.
        c = torch.log(p0 / (1 - p0)) + math.log(choices - 1)
        theta = torch.zeros(p0.numel(), choices)
        theta[:, 0] = c
        self.theta = torch.nn.Parameter(theta)
        self.skill = torch.nn.Parameter(torch.zeros(()))
        self.shared_skill = shared_skill

    def logits(self, idx: torch.Tensor | None = None) -> torch.Tensor:
        theta = self.theta if idx is None else self.theta[idx]
        bonus = torch.zeros(theta.shape[-1])
        bonus[0] = 1.0
        return theta + self.shared_skill * self.skill * bonus  # [B, K]

    @torch.no_grad()
    def accuracy(self) -> float:
        return float(torch.softmax(self.logits(), -1)[:, 0].mean())


def rollout(policy: BanditPolicy, idx: list[int], n: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """N answers per prompt and their accuracy rewards: ([B, N] answers, [B, N] rewards)."""
    with torch.no_grad():
        probs = torch.softmax(policy.logits(torch.as_tensor(idx)), -1)  # [B, K]
    answers = torch.multinomial(probs, n, replacement=True, generator=gen)  # [B, N]
    return answers, (answers == 0).float()


def train_step(policy, ref_logits, opt, idx, answers, rewards, alg: AlgorithmConfig) -> float:
    """One GRPO update on B groups; returns the policy-gradient norm."""
    idx_t = torch.as_tensor(idx)
    adv = compute_grpo_advantages(rewards, eps=alg.adv_eps)  # [B, N]
    logp = torch.log_softmax(policy.logits(idx_t), -1).gather(1, answers)  # [B, N]
    ref_logp = torch.log_softmax(ref_logits[idx_t], -1).gather(1, answers)
    # Each response is a one-token sequence: [B*N, 1].
    logp, ref_logp, adv = logp.reshape(-1, 1), ref_logp.reshape(-1, 1), adv.reshape(-1, 1)
    loss, _ = grpo_loss(logp, logp.detach(), ref_logp, adv, torch.ones_like(logp), alg)
    opt.zero_grad()
    loss.backward()
    norm = float(torch.sqrt(sum(p.grad.square().sum() for p in policy.parameters() if p.grad is not None)))
    opt.step()
    return norm


def run_arm(arm: str, seed: int, cfg: SimConfig) -> dict[str, list[float]]:
    p0 = torch.distributions.Beta(cfg.beta_a, cfg.beta_a).sample((cfg.num_prompts,))  # uses global RNG
    p0 = p0.clamp(1e-3, 1 - 1e-3)
    policy = BanditPolicy(p0, cfg.choices, cfg.shared_skill)
    with torch.no_grad():
        ref_logits = policy.logits().clone()
    opt = torch.optim.Adam(policy.parameters(), lr=cfg.lr)
    alg = AlgorithmConfig()  # paper defaults: k3 KL 0.01, clip 0.2/0.2, token-mean
    env_gen = torch.Generator().manual_seed(20_000 + seed)
    score_gen = torch.Generator().manual_seed(30_000 + seed)

    def score_fn(idx):
        _, acc = rollout(policy, idx, cfg.score_n, score_gen)
        return acc, None

    sampler_cfg = SamplerConfig(type="uniform" if arm in ("uniform", "dapo") else "vas", lam=cfg.lam, seed=seed)
    vps_cfg = VPSConfig(alpha=1.0, beta=0.0, tds_metrics=[], refresh="online" if arm == "vas-online" else "full",
                        update_interval=cfg.update_interval, num_rollouts=cfg.score_n,
                        scoring_batch_size=cfg.num_prompts, stale_after=cfg.stale_after)
    prompts = PromptSampler(cfg.num_prompts, cfg.batch_size, sampler_cfg, vps_cfg, score_fn)
    hist: dict[str, list[float]] = {k: [] for k in METRICS}
    spent = 0
    for _ in range(cfg.steps):
        idx = prompts.next_batch()
        answers, rewards = rollout(policy, idx, cfg.n, env_gen)
        spent += rewards.numel()
        if arm == "dapo":
            keep, _ = dynamic_filter(rewards)
            kept = [(i, a, r) for i, a, r, k in zip(idx, answers, rewards, keep.tolist()) if k]
            for _ in range(cfg.dapo_max_rounds - 1):
                if len(kept) >= cfg.batch_size:
                    break
                more = prompts.next_batch()
                a2, r2 = rollout(policy, more, cfg.n, env_gen)
                spent += r2.numel()
                k2, _ = dynamic_filter(r2)
                kept += [(i, a, r) for i, a, r, k in zip(more, a2, r2, k2.tolist()) if k]
            kept = kept[:cfg.batch_size]
            if kept:
                idx = [k[0] for k in kept]
                answers = torch.stack([k[1] for k in kept])
                rewards = torch.stack([k[2] for k in kept])
        prompts.observe(idx, rewards)
        stats = reward_variance_stats(rewards)
        norm = train_step(policy, ref_logits, opt, idx, answers, rewards, alg)
        hist["zero_variance_frac"].append(stats["zero_variance_frac"])
        hist["reward_variance"].append(stats["reward_variance_mean"])
        hist["grad_norm"].append(norm)
        hist["accuracy"].append(policy.accuracy())
        hist["rollouts"].append(float(spent + prompts.scoring_rollouts))
    return hist


def steps_to(acc: list[float], target: float) -> float:
    for i, a in enumerate(acc):
        if a >= target:
            return float(i + 1)
    return float("nan")


def summarise(results: dict[str, dict[int, dict[str, list[float]]]], cfg: SimConfig) -> dict[str, dict[str, float]]:
    """Per arm, means over seeds: batch statistics over all steps, final accuracy, steps and rollouts to
    a target accuracy (per seed: initial + 3/4 of uniform's gain at its last step)."""
    table: dict[str, dict[str, float]] = {}
    steps: dict[str, list[float]] = {}
    for arm, per_seed in results.items():
        rows = []
        for seed, h in per_seed.items():
            uni = results["uniform"][seed]["accuracy"] if "uniform" in results else h["accuracy"]
            acc0 = results[arm][seed]["accuracy"][0]
            target = acc0 + 0.75 * (uni[-1] - acc0)
            s = steps_to(h["accuracy"], target)
            rows.append({
                "zero_var_frac": sum(h["zero_variance_frac"]) / len(h["zero_variance_frac"]),
                "reward_var": sum(h["reward_variance"]) / len(h["reward_variance"]),
                "grad_norm": sum(h["grad_norm"]) / len(h["grad_norm"]),
                "final_acc": h["accuracy"][-1],
                "steps_to_target": s,
                "rollouts_to_target": h["rollouts"][int(s) - 1] if not math.isnan(s) else float("nan"),
                "rollouts_total": h["rollouts"][-1],
            })
        table[arm] = {k: _nanmean([r[k] for r in rows]) for k in rows[0]}
        table[arm]["seeds_reaching_target"] = float(sum(not math.isnan(r["steps_to_target"]) for r in rows))
        steps[arm] = [r["steps_to_target"] for r in rows]
    for arm in table:  # paired by seed: in how many seeds this arm hit the target before uniform did
        base = steps.get("uniform", steps[arm])
        table[arm]["seeds_faster_than_uniform"] = float(sum(
            (not math.isnan(a)) and (math.isnan(b) or a < b) for a, b in zip(steps[arm], base)))
    return table


def _nanmean(xs: list[float]) -> float:
    xs = [x for x in xs if not math.isnan(x)]
    return sum(xs) / len(xs) if xs else float("nan")


def format_table(table: dict[str, dict[str, float]], n_seeds: int) -> str:
    cols = ["zero_var_frac", "reward_var", "grad_norm", "final_acc", "steps_to_target",
            "rollouts_to_target", "rollouts_total", "seeds_reaching_target", "seeds_faster_than_uniform"]
    head = "| arm | " + " | ".join(cols) + " |"
    lines = [head, "|" + "---|" * (len(cols) + 1)]
    for arm, row in table.items():
        cells = []
        for c in cols:
            v = row[c]
            cells.append(f"{v:.0f}" if c.startswith(("rollouts", "seeds", "steps")) and not math.isnan(v)
                         else f"{v:.4f}")
        lines.append(f"| {arm} | " + " | ".join(cells) + " |")
    lines.append(f"(means over {n_seeds} seeds; target = initial + 3/4 of uniform's final gain, per seed)")
    return "\n".join(lines)


def plot(results, cfg: SimConfig, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [("zero_variance_frac", "zero-variance group fraction"), ("reward_variance", "mean group reward variance"),
              ("grad_norm", "policy-gradient norm"), ("accuracy", "mean accuracy (all prompts)")]
    fig, axes = plt.subplots(2, 2, figsize=(11, 7.5))
    for ax, (key, title) in zip(axes.flat, panels):
        for arm, per_seed in results.items():
            runs = torch.tensor([h[key] for h in per_seed.values()])  # [seeds, steps]
            if key != "accuracy":  # smooth noisy per-batch statistics (window 5)
                runs = torch.nn.functional.avg_pool1d(runs[:, None], 5, 1, 2, count_include_pad=False)[:, 0]
            mean, lo, hi = runs.mean(0), runs.min(0).values, runs.max(0).values
            x = range(1, runs.shape[1] + 1)
            ax.plot(x, mean, label=arm)
            ax.fill_between(x, lo, hi, alpha=0.15)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0, 0].legend()
    fig.suptitle(f"GRPO bandit simulation: {cfg.num_prompts} prompts, B={cfg.batch_size}, N={cfg.n}, "
                 f"VAS lambda={cfg.lam}, T={cfg.update_interval}; mean and min/max over {len(cfg.seeds)} seeds")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)


def simulate(cfg: SimConfig, arms=ARMS) -> dict[str, dict[int, dict[str, list[float]]]]:
    results: dict[str, dict[int, dict[str, list[float]]]] = {arm: {} for arm in arms}
    for seed in cfg.seeds:
        for arm in arms:
            torch.manual_seed(seed)  # same prompts/difficulties for every arm of this seed
            results[arm][seed] = run_arm(arm, seed, cfg)
    return results
