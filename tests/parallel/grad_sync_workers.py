"""Rank functions of the overlapped grad-reduce test (module-level so spawned ranks can import them)."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from megatron_mmr1.config import load_config

SEQ, MICRO_BATCH = 8, 1


def _forward_step(data_iterator, model):
    """Per-token LM loss of a synthetic micro-batch, in megatron's (sum, count, metrics) contract."""
    from megatron_mmr1.training.engine import sum_metric

    mb = next(data_iterator)
    out = model(mb.input_ids, mb.position_ids, None, labels=mb.labels)  # (b, s) per-token loss

    def loss_fn(output):
        loss_sum = output.float().sum()
        n = torch.tensor(output.numel(), dtype=torch.int)
        return loss_sum, n, {"loss": sum_metric(loss_sum, n)}

    return out, loss_fn


def train_grads(counts: list[int]) -> dict[bool, list[tuple[float, float, torch.Tensor]]]:
    """Steps of ``counts[i]`` micro-batches through engine.train_step, with overlap_grad_reduce off and
    on (same initial weights, different data per DP rank): (loss, grad norm, flat grads) per step."""
    from megatron_mmr1 import parallel
    from megatron_mmr1.models.presets import resolve_model_dims
    from megatron_mmr1.training import lm_smoke, engine

    cfg = load_config(None, ["training.micro_batch_size=1", "training.global_batch_size=2",
                             "training.rollout_batch_size=2", "rollout.n=1", "logging.progress=false"], world_size=2)
    info = parallel.initialize(cfg.parallel)
    vocab = resolve_model_dims(cfg.model)["vocab_size"]
    out = {}
    for overlap in (False, True):
        parallel.set_seed(cfg.parallel.seed)
        chunks = engine.wrap_ddp(cfg, [lm_smoke.build_model(cfg, wrap_ddp=False)], overlap_grad_reduce=overlap)
        optimizer = engine.build_optimizer(cfg, chunks)
        scheduler = engine.build_scheduler(cfg, optimizer, len(counts))
        steps = []
        for i, n in enumerate(counts):
            raw = lm_smoke.synthetic_batches(100 * i + info.dp_rank, n, MICRO_BATCH, SEQ, vocab, info.device)
            micro = [SimpleNamespace(input_ids=b.input_ids, position_ids=b.position_ids, labels=b.labels) for b in raw]
            r = engine.train_step(cfg, chunks, optimizer, scheduler, _forward_step, micro, info.device)
            grads = torch.cat([p.main_grad.flatten() for p in chunks[0].module.parameters()])
            steps.append((r.loss, r.grad_norm, grads.clone()))
        out[overlap] = steps
    return out
