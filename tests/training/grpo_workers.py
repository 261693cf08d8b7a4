"""Rank functions of the GRPO trainer tests (module level, so spawned ranks can import them)."""

from __future__ import annotations

import dataclasses
import os

import torch

GRPO_CONFIG = "examples/configs/tiny_cpu_grpo.yaml"


def _cfg(overrides: list[str]):
    from megatron_mmr1.config import load_config

    return load_config(GRPO_CONFIG, overrides, world_size=int(os.environ["WORLD_SIZE"]))


def fixed_records(cfg, dataset, seed: int = 0) -> list:
    """Rollouts that do not depend on a server: random responses (no vision tokens), random advantages
    and rollout log-probs, identical on every rank."""
    from megatron_mmr1.training.experience import RolloutRecord, vision_token_ids

    gen = torch.Generator().manual_seed(seed)
    forbidden = vision_token_ids(cfg)
    vocab = 600  # below the tiny tokenizer's special tokens
    prompts = dataset.get_batch(list(range(cfg.training.rollout_batch_size))).samples
    out = []
    for g, p in enumerate(prompts):
        for _ in range(cfg.rollout.n):
            n = int(torch.randint(3, 40, (1,), generator=gen))
            ids = [t for t in torch.randint(0, vocab, (n,), generator=gen).tolist() if t not in forbidden]
            out.append(RolloutRecord(index=p.index, group=g, prompt_ids=list(p.prompt_ids), response_ids=ids,
                                     rollout_logprobs=(-torch.rand(len(ids), generator=gen) * 5).tolist(),
                                     loss_mask=[1] * len(ids), reward=0.0,
                                     advantage=float(torch.randn((), generator=gen)), accuracy=0.0, format=0.0,
                                     truncated=False))
    return out


def _setup(overrides: list[str]):
    from megatron_mmr1 import parallel
    from megatron_mmr1.data.dataset import build_dataset
    from megatron_mmr1.data.tokenizer import load_tokenizer
    from megatron_mmr1.training import engine
    from megatron_mmr1.training.policy import ReferencePolicy

    cfg = _cfg(overrides)
    info = parallel.initialize(cfg.parallel)
    ds = build_dataset(cfg.data, load_tokenizer(cfg.model.hf_path))
    chunks = engine.build_policy(cfg)
    ref = ReferencePolicy(chunks) if cfg.algorithm.use_kl_loss else None
    return cfg, info, ds, chunks, ref


def grpo_update(overrides: list[str], export_dir: str) -> dict:
    """One GRPO update on fixed rollouts (the trainer without servers), then the weights exported to
    ``export_dir`` (HF)."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.training.checkpointing import export_hf
    from megatron_mmr1.training.grpo import GRPOTrainer

    cfg = _cfg(overrides)
    info = parallel.initialize(cfg.parallel)
    trainer = GRPOTrainer(cfg, info, with_rollout=False)  # the reference: the initial weights
    with torch.no_grad():  # a policy that differs from the reference (so the KL term has a gradient),
        for p in (p for c in trainer.chunks for p in c.parameters()):  # elementwise in the value: the same
            p.add_(0.01 * torch.sin(1000.0 * p))  # under any TP/PP/VPP sharding
    metrics = trainer.update_policy(fixed_records(cfg, trainer.dataset))
    export_hf(cfg, trainer.chunks, export_dir)
    return metrics


def grpo_split_gradients(overrides: list[str], budgets: dict[str, dict]) -> dict:
    """Gradients of one GRPO optimizer step under several micro-batch plans (no update)."""
    from megatron_mmr1.training import grpo, engine
    from megatron_mmr1.training.policy import fill_logprobs

    cfg, info, ds, chunks, ref = _setup(overrides)
    records = fixed_records(cfg, ds)
    out = {}
    for name, plan in budgets.items():
        plan = dict(plan)
        algo = dataclasses.replace(cfg.algorithm, **plan.pop("algorithm", {}))
        pcfg = dataclasses.replace(cfg, training=dataclasses.replace(cfg.training, **plan), algorithm=algo)
        steps = grpo.plan_updates(pcfg, records, ds, info, 0).micro_batches
        if ref is not None:
            fill_logprobs(pcfg, chunks, steps, "ref_logp", pcfg.rollout.temperature, False)
        for c in chunks:
            c.zero_grad_buffer()
        engine.forward_backward(chunks, engine.make_forward_step(pcfg, grpo.grpo_loss_func, False), steps[0])
        out[name] = {"__num_micro_batches": torch.tensor(len(steps[0])),
                     **{n: p.main_grad.detach().clone() for n, p in chunks[0].module.named_parameters()}}
    return out


def grpo_gradient_hf(overrides: list[str]) -> dict:
    """The gradient of one on-policy GRPO optimizer step on fixed rollouts, through the trainer's own
    path (token-budget plan, THD packing, fused loss, vocab-parallel head), in Hugging Face names and
    layouts (the gradients pass through the export mapping in place of the weights); with the rollouts
    and the prompts' image tensors, for a reference computed outside megatron."""
    from megatron_mmr1.models.hf_adapter import iter_hf_state
    from megatron_mmr1.training import grpo, engine

    cfg, info, ds, chunks, _ = _setup(overrides)
    records = fixed_records(cfg, ds)
    steps = grpo.plan_updates(cfg, records, ds, info, 0).micro_batches
    assert len(steps) == 1, "one optimizer step expected"
    for c in chunks:
        c.zero_grad_buffer()
    engine.forward_backward(chunks, engine.make_forward_step(cfg, grpo.grpo_loss_func, engine.varlen_attention(cfg)), steps[0])
    with torch.no_grad():
        for c in chunks:
            for p in c.parameters():
                p.copy_(p.main_grad)
    grads = {name: t.detach().clone() for name, t in iter_hf_state(chunks)}
    prompts = ds.get_batch(sorted({r.index for r in records})).samples
    return {"grads": grads, "records": records, "micro_batches": len(steps[0]),
            "images": {s.index: (s.pixel_values, s.image_grid_thw) for s in prompts},
            "temperature": cfg.rollout.temperature}


def run_grpo(overrides: list[str], record_server_calls: bool = False) -> dict:
    """The GRPO loop as torchrun would run it; optionally with the control calls rank 0 made to the
    servers (path and memory tags, in order) under ``"server_calls"``."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.rollout import weight_sync
    from megatron_mmr1.training import grpo

    calls: list[tuple[str, object]] = []
    if record_server_calls:
        real = weight_sync._ServerCalls.call

        def recording(self, url, path, body=None, *a, **kw):
            calls.append((path, (body or {}).get("tags") if isinstance(body, dict) else None))
            return real(self, url, path, body, *a, **kw)

        weight_sync._ServerCalls.call = recording
    cfg = _cfg(overrides)
    info = parallel.initialize(cfg.parallel)
    out = grpo.run(cfg, info)
    return dict(out, server_calls=calls)
