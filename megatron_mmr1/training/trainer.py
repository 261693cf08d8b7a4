"""What every training loop shares (torchtitan's ``Trainer`` role), so SFT and GRPO keep only their step.

    trainer = SFTTrainer(cfg, info)          # data, policy chunks, optimizer, scheduler, resume
    summary = trainer.train()                # the stop-signal loop, periodic saves, the end of the run

A mode subclasses :class:`Trainer` with its ``__init__`` (data first, then ``super().__init__``, then
``self.resume()``), ``train_step`` (one step; returns its metrics) and a typed state that the checkpoint
carries (``state_dict`` / ``load_state_dict``). The base owns the model chunks in megatron DDP, megatron's
optimizer and scheduler, the skip counter, the checkpointer, the monitor and the phase timer.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, ContextManager, Optional

from megatron_mmr1.config import RunConfig
from megatron_mmr1.parallel import DistInfo
from megatron_mmr1.training.checkpointing import Checkpointer, export_hf, load_checkpoint, resolve_load_dir
from megatron_mmr1.training.engine import (build_optimizer, build_policy, build_scheduler, count_params, current_lr,
                                           make_forward_step, varlen_attention)
from megatron_mmr1.training.faults import SkipCounter, StopSignal
from megatron_mmr1.training.monitor import PhaseTimer, RunMonitor


class Trainer:
    desc = "train"
    """Progress-bar label."""
    line_keys: tuple[str, ...] = ("loss", "grad_norm")
    """Metrics in the per-step log line."""
    summary_keys: tuple[str, ...] = ("loss", "step_s")
    """Metrics whose first / last values go into summary.json."""
    summary_window = 5
    """At most this many steps averaged into a first / last value."""

    def __init__(self, cfg: RunConfig, info: DistInfo, total_steps: int, optimizer_steps_per_step: int,
                 loss_func) -> None:
        self.cfg, self.info, self.total_steps = cfg, info, total_steps
        self.chunks = build_policy(cfg)
        self.optimizer = build_optimizer(cfg, self.chunks)
        self.scheduler = build_scheduler(cfg, self.optimizer, total_steps * optimizer_steps_per_step)
        self.varlen = varlen_attention(cfg)
        self.forward_step = make_forward_step(cfg, loss_func, self.varlen)
        self.skips = SkipCounter(cfg.training.max_skipped_steps)
        self.checkpointer = Checkpointer(cfg, self.chunks, self.optimizer, self.scheduler, self.state_dict,
                                         self.resident)
        self.timer = PhaseTimer()
        self.step = 0
        self.monitor: Optional[RunMonitor] = None

    @property
    def params_m(self) -> float:
        """Parameters of this rank's chunks, in millions (for the start line)."""
        return count_params(self.chunks) / 1e6

    # ---- what a mode provides ----------------------------------------------------------------------

    def train_step(self) -> dict[str, float]:
        """One step of the mode; its metrics (``tokens``, when given, becomes ``tokens_per_s``)."""
        raise NotImplementedError

    def state_dict(self) -> dict[str, Any]:
        """The mode's own state for the checkpoint (weights, optimizer, scheduler, RNG are saved by the base)."""
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def on_start(self) -> None:
        """Before the first step of this process (evaluations at the start)."""

    def after_step(self, metrics: dict[str, float]) -> None:
        """After a step is logged (evaluations that are due)."""

    def on_end(self) -> None:
        """After the last step of an uninterrupted run, before the final save."""

    def summary_extra(self) -> dict[str, Any]:
        """Values of the mode for summary.json."""
        return {}

    def resident(self) -> ContextManager[None]:
        """The weights and optimizer state on the device for a save or an export (a mode that offloads them
        between steps brings them back here)."""
        return contextlib.nullcontext()

    # ---- the loop ----------------------------------------------------------------------------------

    def resume(self) -> Optional[dict]:
        """Load ``checkpoint.load`` (model, optimizer, scheduler, RNG, the mode's state); the checkpoint's meta."""
        load_dir = resolve_load_dir(self.cfg.checkpoint.load) if self.cfg.checkpoint.load else None
        if load_dir is None:
            return None
        meta = load_checkpoint(load_dir, self.chunks, self.optimizer, self.scheduler)
        self.step = int(meta["step"])
        self.load_state_dict(meta["trainer"])
        return meta

    def train(self) -> dict[str, Any]:
        """Steps until ``total_steps`` or a stop signal (saved at the step boundary); the run's summary."""
        start = self.step
        self.monitor = RunMonitor(self.cfg, self.info.rank, self.total_steps, start, desc=self.desc)
        self.on_start()
        interrupted = False
        with StopSignal() as stop:
            while self.step < self.total_steps:
                t0 = time.perf_counter()
                metrics = self.train_step()
                self.step += 1
                self._log_step(metrics, time.perf_counter() - t0)
                self.after_step(metrics)
                if stop.should_stop(self.info.device):
                    interrupted = True
                    break
                self.checkpointer.periodic(self.step, self.total_steps)
        return self._finish(start, interrupted)

    def _log_step(self, metrics: dict[str, float], seconds: float) -> None:
        if "tokens" in metrics:
            metrics["tokens_per_s"] = metrics["tokens"] / max(seconds, 1e-9)
        metrics.update({"lr": current_lr(self.optimizer), "step_s": seconds, "skipped_steps": float(self.skips.total),
                        **{f"time/{k}_s": v for k, v in self.timer.pop().items()}})
        self.monitor.step(self.step, metrics, self.line_keys)

    def _finish(self, start: int, interrupted: bool) -> dict[str, Any]:
        if interrupted:
            self.monitor.write(self.checkpointer.interrupted(self.step, self.total_steps))
        else:
            self.on_end()
            with self.resident():  # once for both
                if self.step > start:
                    self.checkpointer.save(self.step)
                if self.cfg.checkpoint.export_hf:
                    export_hf(self.cfg, self.chunks, self.cfg.checkpoint.export_hf)
        extra: dict[str, Any] = {"steps": self.step, "skipped_steps": self.skips.total, **self.summary_extra()}
        if interrupted:
            extra["interrupted_at"] = self.step
        window = max(1, min(self.summary_window, (self.step - start) // 4))
        return self.monitor.summary(extra, self.summary_keys, window)
