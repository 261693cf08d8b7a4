"""Driver for the resume test: runs PromptSampler steps, optionally resuming from a checkpoint.

usage: python _resume_driver.py JOBS_JSON, JOBS a list of [MODE, START, STOP, CKPT_IN|null, CKPT_OUT|null];
prints a list with the drawn batches and the final VPS weights of each job as JSON. MODE: full | online | training | uniform. The "policy" is a pure function of (prompt, step), so a fresh process
sees the same rollouts as the uninterrupted one.
"""

import json
import sys

import torch

from megatron_mmr1.config import SamplerConfig, VPSConfig
from megatron_mmr1.sampling.controller import PromptSampler

P, B, N = 37, 7, 4  # odd sizes on purpose


def rollouts(idx, step, n):
    acc = torch.stack([
        (torch.rand(n, generator=torch.Generator().manual_seed(i * 1009 + step)) < (i % 5) / 4).float() for i in idx
    ])
    tokens = [[[i % 11, (i + r) % 13, (step + r) % 7, r] for r in range(n)] for i in idx]
    return acc, tokens


def build(mode, clock):
    sampler_cfg = SamplerConfig(type="uniform" if mode == "uniform" else "vas", lam=0.5, seed=11)
    vps_cfg = VPSConfig(alpha=0.8, beta=0.2, tds_metrics=["distinct_n"], momentum=0.3, update_interval=3,
                        refresh=mode if mode in ("online", "training") else "full", num_rollouts=N, scoring_batch_size=10,
                        stale_after=1, prior=0.9)
    return PromptSampler(P, B, sampler_cfg, vps_cfg, score_fn=lambda idx: rollouts(idx, clock["step"] + 1000, N))


def main(mode, start, stop, ckpt_in, ckpt_out):
    clock = {"step": start}
    ps = build(mode, clock)
    if ckpt_in:
        ps.load_state_dict(torch.load(ckpt_in, weights_only=False))
    batches = []
    for step in range(start, stop):
        clock["step"] = step
        batch = ps.next_batch()
        acc, tokens = rollouts(batch, step, N)
        ps.observe(batch, acc, tokens)
        batches.append(batch)
    if ckpt_out:
        torch.save(ps.state_dict(), ckpt_out)
    weights = None if ps.store is None else ps.store.weights.tolist()
    return {"batches": batches, "weights": weights}


if __name__ == "__main__":
    print(json.dumps([main(*job) for job in json.loads(sys.argv[1])]))
