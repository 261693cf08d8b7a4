"""Our GRPO loop and TRL's ``GRPOTrainer`` side by side on one workload: phases, aggregation, the TRL run.

``tools/bench_vs_trl.py`` drives the runs; this module holds what it measures with. Both frameworks' steps
are cut into the same phases (seconds per step):

=============  =================================================  ==============================================
phase          ours (``time/<phase>_s`` of the GRPO loop)           TRL 1.16 (methods / callbacks timed here)
=============  =================================================  ==============================================
generation     ``rollout``: generation on the stand-in server       ``_generate``: chat template + image
               (client requests, server image preprocessing,        preprocessing of the prompts,
               sampling), rewards of finished groups overlapped     ``model.generate``, decoding
reward         ``reward``: scoring left after the last response     ``_calculate_rewards``: the same two reward
               (math-verify pool, in parallel with generation)      functions, after generation, in-process
logprob        ``logprob``: records -> sequences, micro-batch plan   ``_get_per_token_logps_and_entropies``
               (+ old / reference forwards: none here)              inside ``_generate_and_score_completions``
                                                                    (old / reference forwards: none here)
train          ``train``: forward + backward + optimizer step       end of ``_prepare_inputs`` -> ``on_step_end``:
                                                                    forward + backward + clip + optimizer step
sync           ``sync``: weight update of the server               none (the trained model generates): 0
other          the rest of the step: VAS draw, prompt images,       the rest: dataloader, prompt padding, the
               broadcast, advantages, metrics                       processor call for the training forward,
                                                                    advantages, metrics, logging
=============  =================================================  ==============================================

A TRL step runs from one ``on_step_end`` to the next (the first from ``on_train_begin``), so its phases
add up to its wall time, as ours add up to ``step_s``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

from megatron_mmr1.training.monitor import PhaseTimer

PHASES = ("generation", "reward", "logprob", "train", "sync", "other")
FRAMEWORKS = ("ours", "trl")
OURS_KEYS = {"generation": "time/rollout_s", "reward": "time/reward_s", "logprob": "time/logprob_s",
             "train": "time/train_s", "sync": "time/sync_s"}


class RecordError(ValueError):
    """A run record that cannot be aggregated (the message names the run and the key)."""


# ---- phases per step ------------------------------------------------------------------------------------

def with_other(phases: dict[str, float], step_s: float) -> dict[str, float]:
    """``phases`` (seconds) completed to ``PHASES``: missing ones are 0, ``other`` is the step's rest."""
    out = {p: float(phases.get(p, 0.0)) for p in PHASES if p != "other"}
    out["other"] = max(0.0, step_s - sum(out.values()))
    out["step"] = float(step_s)
    return out


def ours_steps(history: dict[str, list]) -> list[dict[str, float]]:
    """Per-step phases of our GRPO loop from its metric history (``{key: [(step, value), ...]}``)."""
    if "step_s" not in history:
        raise RecordError("history has no 'step_s'")
    by_step = {k: dict((int(s), float(v)) for s, v in history.get(k, [])) for k in (*OURS_KEYS.values(), "step_s")}
    out = []
    for step in sorted(by_step["step_s"]):
        phases = {p: by_step[k].get(step, 0.0) for p, k in OURS_KEYS.items()}
        out.append(with_other(phases, by_step["step_s"][step]))
    return out


@dataclass
class TRLPhaseRecorder:
    """Seconds per phase of each TRL step, from :func:`instrument_trl`'s wrappers and callback."""

    steps: list[dict[str, float]] = field(default_factory=list)
    timer: PhaseTimer = field(default_factory=PhaseTimer)
    step_start: Optional[float] = None
    inputs_ready: Optional[float] = None
    in_scoring: bool = False

    def begin(self, now: Optional[float] = None) -> None:
        self.step_start = time.perf_counter() if now is None else now

    def end_step(self, now: Optional[float] = None) -> None:
        now = time.perf_counter() if now is None else now
        if self.step_start is None:
            self.step_start = now
        seconds = self.timer.pop()
        if self.inputs_ready is not None:
            seconds["train"] = now - self.inputs_ready
        self.steps.append(with_other(seconds, now - self.step_start))
        self.step_start, self.inputs_ready = now, None


def instrument_trl(trainer: Any, recorder: TRLPhaseRecorder) -> TRLPhaseRecorder:
    """Time ``trainer`` (a ``trl.GRPOTrainer``) by phase into ``recorder``: its methods are wrapped on the
    instance and a callback marks the step boundaries."""
    from transformers import TrainerCallback

    def timed(name: str, phase: str, only_in_scoring: bool = False) -> None:
        fn = getattr(trainer, name)

        def wrapper(*args, **kwargs):
            if only_in_scoring and not recorder.in_scoring:
                return fn(*args, **kwargs)  # the training forward: part of the train phase
            with recorder.timer(phase):
                return fn(*args, **kwargs)
        setattr(trainer, name, wrapper)

    timed("_generate", "generation")
    timed("_calculate_rewards", "reward")
    timed("_get_per_token_logps_and_entropies", "logprob", only_in_scoring=True)
    score, prepare = trainer._generate_and_score_completions, trainer._prepare_inputs

    def scoring(*args, **kwargs):
        recorder.in_scoring = True
        try:
            return score(*args, **kwargs)
        finally:
            recorder.in_scoring = False

    def prepared(*args, **kwargs):
        out = prepare(*args, **kwargs)
        recorder.inputs_ready = time.perf_counter()
        return out

    trainer._generate_and_score_completions, trainer._prepare_inputs = scoring, prepared

    class StepBoundaries(TrainerCallback):
        def on_train_begin(self, args, state, control, **kwargs):
            recorder.begin()

        def on_step_end(self, args, state, control, **kwargs):
            recorder.end_step()

    trainer.add_callback(StepBoundaries())
    return recorder


# ---- aggregation ----------------------------------------------------------------------------------------

def run_means(steps: Sequence[dict[str, float]], skip: int = 1) -> dict[str, float]:
    """Mean seconds per phase (and ``step``) over the steps after the first ``skip`` (one-off start-up costs)."""
    kept = list(steps[skip:]) or list(steps)
    if not kept:
        raise RecordError("run with no steps")
    return {k: statistics.fmean(s[k] for s in kept) for k in (*PHASES, "step")}


def _mean_std(vals: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarize(records: Sequence[dict], skip: int = 1) -> dict[str, Any]:
    """Records (``framework``, ``seed``, ``steps``: per-step phases, optional ``accuracy``) -> per framework the
    mean and std over seeds of each phase's per-run mean, and the TRL / ours ratio of the means."""
    out: dict[str, Any] = {"frameworks": {}, "ratio": {}}
    for fw in FRAMEWORKS:
        recs = [r for r in records if r["framework"] == fw]
        if not recs:
            continue
        per_run = []
        for r in recs:
            try:
                per_run.append(run_means(r["steps"], skip))
            except RecordError as e:
                raise RecordError(f"{fw} seed {r.get('seed')}: {e}") from None
        row = {"seeds": sorted(r["seed"] for r in recs), "steps": min(len(r["steps"]) for r in recs)}
        for k in (*PHASES, "step"):
            row[k], row[k + "_std"] = _mean_std([m[k] for m in per_run])
        accs = [r["accuracy"] for r in recs if r.get("accuracy") is not None]
        if accs:
            row["accuracy"], row["accuracy_std"] = _mean_std(accs)
        out["frameworks"][fw] = row
    ours, trl = out["frameworks"].get("ours"), out["frameworks"].get("trl")
    if ours and trl:
        out["ratio"] = {k: (trl[k] / ours[k] if ours[k] > 0 else None) for k in (*PHASES, "step")}
    return out


def _ratio(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.2f}x"


def markdown_table(summary: dict[str, Any]) -> str:
    """Seconds per step by phase, mean ± std over seeds, for ours and TRL, and TRL / ours."""
    fws = summary["frameworks"]
    names = {"ours": "ours (megatron-mmr1)", "trl": "TRL GRPOTrainer"}
    cols = [fw for fw in FRAMEWORKS if fw in fws]
    head = "| phase | " + " | ".join(f"{names[fw]}, s" for fw in cols) + (" | TRL / ours |" if len(cols) == 2 else " |")
    lines = [head, "|" + "---|" * (len(cols) + 1 + (len(cols) == 2))]
    for k in (*PHASES, "step"):
        cells = [f"{fws[fw][k]:.3f} ± {fws[fw][k + '_std']:.3f}" for fw in cols]
        label = "**step**" if k == "step" else k
        ratio = f" | {_ratio(summary['ratio'].get(k))}" if len(cols) == 2 else ""
        lines.append(f"| {label} | " + " | ".join(cells) + ratio + " |")
    if all("accuracy" in fws[fw] for fw in cols):
        cells = [f"{fws[fw]['accuracy']:.3f} ± {fws[fw]['accuracy_std']:.3f}" for fw in cols]
        lines.append("| held-out accuracy (final policies) | " + " | ".join(cells) + (" | |" if len(cols) == 2 else " |"))
    return "\n".join(lines) + "\n"


# ---- the TRL side ---------------------------------------------------------------------------------------

def prompt_order(num_prompts: int, batch: int, steps: int, seed: int) -> list[int]:
    """The prompt indices our loop trains on, step after step, with ``sampler.type=uniform`` and
    ``sampler.seed=seed``: its own sampler, built as the loop builds it (TRL then reads them in this order)."""
    from megatron_mmr1.config import SamplerConfig
    from megatron_mmr1.sampling.vas import build_sampler

    sampler = build_sampler(num_prompts, batch, SamplerConfig(type="uniform", seed=seed))
    return [i for _ in range(steps) for i in sampler.next_batch()]


def mmr1_format_reward(completions: list, **kwargs) -> list[float]:
    """The project's format reward as a TRL reward function (conversational completions)."""
    from megatron_mmr1.rewards import format_score

    return [float(format_score(_text(c))) for c in completions]


def mmr1_accuracy_reward(completions: list, answer: list, **kwargs) -> list[float]:
    """The project's accuracy reward (math-verify on the last ``\\boxed{}`` of ``<answer>``) for TRL."""
    from megatron_mmr1.rewards import accuracy_score, extract_final_answer

    return [float(accuracy_score(extract_final_answer(_text(c)), str(a))) for c, a in zip(completions, answer)]


def _text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    content = completion[-1]["content"]
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def trl_rows(records: Sequence[Any], formatter: Any, order: Sequence[int]) -> Any:
    """``records`` (RL :class:`~megatron_mmr1.data.records.Record`: problem text, answer, image paths) in ``order`` as TRL rows: the chat
    messages our formatter builds (MMR1 system prompt, image placement), the PIL images, the answer, as a
    ``datasets.Dataset`` that TRL reads in this order (``shuffle_dataset=False``). Image parts carry no
    ``image`` key (TRL fills them in): Arrow gives every part the union of the keys, and the chat template
    takes any part with an ``image`` key for an image."""
    from datasets import Dataset
    from PIL import Image

    rows = []
    for i in order:
        r = records[i]
        images = [Image.open(p).convert("RGB") for p in r.images]
        rows.append({"prompt": formatter.rl_messages(r.text, len(images)), "images": images,
                     "answer": str(r.answer), "index": int(i)})
    return Dataset.from_list(rows)


@dataclass(frozen=True)
class BenchSettings:
    """The workload both frameworks run (``tools/bench_vs_trl.py``'s options)."""

    steps: int = 20
    batch: int = 8
    n: int = 8
    max_new_tokens: int = 256
    temperature: float = 1.0
    lr: float = 1e-4
    eval_samples: int = 200
    """Held-out prompts each final policy is evaluated on."""
    trl_threads: int = 1
    """Torch threads of the TRL process (ours: one per process, trainer and server)."""


def run_trl(model_dir: str, rows: Any, out_dir: str, s: BenchSettings, seed: int) -> dict[str, Any]:
    """TRL's GRPOTrainer on ``rows`` with our loop's settings: ``s.batch`` prompts x ``s.n`` responses per
    step, one optimizer step per rollout batch (no old log-probs), no KL (beta 0, no reference forward),
    token-mean loss (``loss_type="dapo"``), constant lr, fp32 on the CPU. The model and its processor are
    loaded by TRL from ``model_dir`` (``AutoProcessor`` with ``trust_remote_code``: the export's processor).
    Returns per-step phases, TRL's own logged metrics, and the final policy saved to ``out_dir/hf``."""
    import torch
    from trl import GRPOConfig, GRPOTrainer

    torch.set_num_threads(s.trl_threads)
    args = GRPOConfig(
        output_dir=out_dir, seed=seed, max_steps=s.steps, per_device_train_batch_size=s.batch * s.n,
        gradient_accumulation_steps=1, num_generations=s.n, steps_per_generation=1, num_iterations=1,
        max_completion_length=s.max_new_tokens, temperature=s.temperature, top_p=1.0, top_k=0,
        learning_rate=s.lr, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0, max_grad_norm=1.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8,
        beta=0.0, loss_type="dapo", epsilon=0.2, scale_rewards="group", reward_weights=[1.0, 1.0],
        shuffle_dataset=False, bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        trust_remote_code=True, model_init_kwargs={"dtype": torch.float32}, logging_steps=1, save_strategy="no",
        report_to=[], disable_tqdm=True, dataloader_num_workers=0, log_completions=False,
    )
    trainer = GRPOTrainer(model=model_dir, reward_funcs=[mmr1_format_reward, mmr1_accuracy_reward], args=args,
                          train_dataset=rows)
    recorder = instrument_trl(trainer, TRLPhaseRecorder())
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    hf = f"{out_dir}/hf"
    trainer.save_model(hf)
    trainer.processing_class.save_pretrained(hf)
    logs = [h for h in trainer.state.log_history if "step" in h]
    return {"steps": recorder.steps, "wall_s": wall, "log_history": logs, "hf": hf,
            "processor": type(trainer.processing_class).__name__}
