"""train_step's GPU optimizer path (forced on, with a stand-in optimizer that counts the work megatron's
would do): one grad-norm computation per step, and that norm is the one clipped with and reported."""

from types import SimpleNamespace

import pytest
import torch

from megatron_mmr1.config import load_config
from megatron_mmr1.training import engine


class _CountingOptimizer:
    """megatron optimizer API: each get_grad_norm / clip_grad_norm call is one global norm (a collective)."""

    def __init__(self, norms):
        self.norms, self.computed, self.steps = list(norms), 0, 0
        self.param = torch.nn.Parameter(torch.ones(3))
        self.config = SimpleNamespace(use_precision_aware_optimizer_no_fp8_or_ds_fp8=False)

    def zero_grad(self):
        pass

    def prepare_grads(self):
        return False

    def get_parameters(self):
        return [self.param]

    def get_grad_norm(self):
        self.computed += 1
        return self.norms[0]

    def clip_grad_norm(self, clip_grad):
        return self.get_grad_norm()

    def step_with_ready_grads(self):
        self.steps += 1
        self.norms.pop(0)
        return True


@pytest.mark.parametrize("clip_grad", [1.0, 0.0])
def test_gpu_step_computes_the_grad_norm_once_and_reports_it(monkeypatch, clip_grad):
    from megatron.core.optimizer import clip_grads

    cfg = load_config(None, [f"optim.clip_grad={clip_grad}"])
    clipped = []
    monkeypatch.setattr(engine, "on_gpu", lambda: True)
    monkeypatch.setattr(engine, "forward_backward", lambda *a, **k: [])
    monkeypatch.setattr(engine, "reduce_loss_dicts", lambda *a: {"loss": 0.5, "loss__count": 4.0})
    monkeypatch.setattr(clip_grads, "clip_grad_by_total_norm_fp32",
                        lambda params, max_norm, total_norm, *a: clipped.append((max_norm, total_norm)))
    opt = _CountingOptimizer([3.0, 0.25])
    chunk = SimpleNamespace(zero_grad_buffer=lambda: None)
    scheduler = SimpleNamespace(step=lambda increment: None)
    results = [engine.train_step(cfg, [chunk], opt, scheduler, None, [], torch.device("cpu")) for _ in range(2)]
    assert opt.computed == 2, "one grad-norm computation per step"
    assert opt.steps == 2 and [r.grad_norm for r in results] == [3.0, 0.25]
    assert clipped == ([(1.0, 3.0), (1.0, 0.25)] if clip_grad > 0 else []), "clipped by the reported norm"
