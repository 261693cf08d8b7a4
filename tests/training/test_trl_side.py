"""The TRL side-by-side benchmark's own logic (megatron_mmr1.baselines.trl_side): phases per step for both
frameworks, the aggregation over steps and seeds, the ratio table, the prompt order, the reward adapters,
and the timing wrappers on a stand-in trainer. TRL itself is not installed here; the last test runs one
tiny TRL step where it is (``make bench-trl`` installs it)."""

from __future__ import annotations

import importlib.util

import pytest

from megatron_mmr1.baselines import trl_side as ts


def _history(steps: list[dict]) -> dict:
    keys = {"step_s": "step", **{v: k for k, v in ts.OURS_KEYS.items()}}
    return {k: [(i + 1, s[name]) for i, s in enumerate(steps) if name in s] for k, name in keys.items()}


def test_ours_steps_map_the_loop_timers_and_put_the_rest_in_other():
    hist = _history([{"step": 10.0, "generation": 4.0, "reward": 0.5, "logprob": 0.5, "train": 3.0, "sync": 1.0},
                     {"step": 8.0, "generation": 3.0, "train": 2.0}])  # no reward/logprob/sync logged: 0
    got = ts.ours_steps(hist)
    assert got[0] == {"generation": 4.0, "reward": 0.5, "logprob": 0.5, "train": 3.0, "sync": 1.0, "other": 1.0,
                      "step": 10.0}
    assert got[1]["reward"] == 0.0 and got[1]["sync"] == 0.0 and got[1]["other"] == pytest.approx(3.0)
    for s in got:
        assert sum(s[p] for p in ts.PHASES) == pytest.approx(s["step"])
    with pytest.raises(ts.RecordError, match="step_s"):
        ts.ours_steps({"time/train_s": [(1, 1.0)]})


def test_recorder_closes_steps_from_boundary_to_boundary():
    rec = ts.TRLPhaseRecorder()
    rec.begin(now=100.0)
    rec.timer.seconds.update(generation=2.0, reward=0.25)
    rec.inputs_ready = 102.5
    rec.end_step(now=106.0)
    rec.timer.seconds.update(generation=1.0)
    rec.inputs_ready = 107.5
    rec.end_step(now=109.0)
    first, second = rec.steps
    assert first["step"] == 6.0 and first["train"] == 3.5 and first["other"] == pytest.approx(0.25)
    assert second["step"] == 3.0 and second["train"] == 1.5 and second["sync"] == 0.0
    assert second["other"] == pytest.approx(0.5)


def _record(fw: str, seed: int, step_s: list[float], train: float, accuracy=None) -> dict:
    steps = [ts.with_other({"generation": s / 2, "train": train}, s) for s in step_s]
    return {"framework": fw, "seed": seed, "steps": steps, "accuracy": accuracy}


def test_summarize_skips_step_one_averages_seeds_and_gives_trl_over_ours():
    records = [_record("ours", 0, [100.0, 4.0, 4.0], 1.0, 0.30), _record("ours", 1, [100.0, 6.0, 6.0], 1.0, 0.34),
               _record("trl", 0, [100.0, 8.0, 8.0], 3.0, 0.20), _record("trl", 1, [100.0, 12.0, 12.0], 3.0, 0.24)]
    out = ts.summarize(records)
    ours, trl = out["frameworks"]["ours"], out["frameworks"]["trl"]
    assert ours["step"] == pytest.approx(5.0) and trl["step"] == pytest.approx(10.0)  # step 1 left out
    assert ours["step_std"] == pytest.approx(1.4142, rel=1e-3)
    assert ours["seeds"] == [0, 1] and ours["steps"] == 3
    assert out["ratio"]["step"] == pytest.approx(2.0)
    assert out["ratio"]["train"] == pytest.approx(3.0)
    assert out["ratio"]["sync"] is None  # 0 s on our side: no ratio
    assert ours["accuracy"] == pytest.approx(0.32) and trl["accuracy_std"] == pytest.approx(0.02828, rel=1e-3)
    table = ts.markdown_table(out)
    assert "| **step** | 5.000 ± 1.414 | 10.000 ± 2.828 | 2.00x |" in table
    assert "| train | 1.000 ± 0.000 | 3.000 ± 0.000 | 3.00x |" in table
    assert "| sync | 0.000 ± 0.000 | 0.000 ± 0.000 | - |" in table
    assert "| held-out accuracy (final policies) | 0.320 ± 0.028 | 0.220 ± 0.028 | |" in table


def test_summarize_one_framework_and_bad_runs():
    out = ts.summarize([_record("ours", 0, [9.0, 3.0], 1.0)])
    assert out["ratio"] == {} and out["frameworks"]["ours"]["step"] == 3.0
    assert "TRL / ours" not in ts.markdown_table(out)
    assert ts.run_means([{**ts.with_other({}, 2.0)}])["step"] == 2.0  # one step: it is all there is
    with pytest.raises(ts.RecordError, match="trl seed 4: run with no steps"):
        ts.summarize([{"framework": "trl", "seed": 4, "steps": []}])


def test_prompt_order_is_what_our_sampler_draws():
    from megatron_mmr1.config import SamplerConfig, VPSConfig
    from megatron_mmr1.sampling.controller import PromptSampler

    order = ts.prompt_order(24, 4, 6, seed=2001)
    sampler = PromptSampler(24, 4, SamplerConfig(type="uniform", seed=2001), VPSConfig())
    assert order == [i for _ in range(6) for i in sampler.next_batch()]
    assert sorted(order) == list(range(24))  # 6 steps x 4 = one epoch: every prompt once
    assert ts.prompt_order(24, 4, 6, seed=2002) != order


def test_reward_adapters_score_like_the_project():
    from megatron_mmr1.rewards import score_response

    texts = ["<think>3 and 4</think><answer> The final answer is \\boxed{7} </answer>",
             "<think>x</think><answer>\\boxed{6}</answer>", "no tags \\boxed{7}"]
    completions = [[{"role": "assistant", "content": t}] for t in texts]
    answers = ["7", "7", "7"]
    fmt = ts.mmr1_format_reward(completions=completions, answer=answers, prompts=None)
    acc = ts.mmr1_accuracy_reward(completions=completions, answer=answers, prompts=None)
    assert [(f, a) for f, a in zip(fmt, acc)] == [(score_response(t, "7")["format"], score_response(t, "7")["accuracy"])
                                                  for t in texts]
    assert acc[:2] == [1.0, 0.0] and fmt[0] == 1.0
    parts = [[{"role": "assistant", "content": [{"type": "text", "text": texts[0]}]}]]
    assert ts.mmr1_accuracy_reward(completions=parts, answer=["7"]) == [1.0]


class _StandIn:
    """The GRPOTrainer methods instrument_trl wraps, calling each other as TRL does."""

    def __init__(self):
        self.callbacks, self.calls = [], []

    def add_callback(self, cb):
        self.callbacks.append(cb)

    def _generate(self, prompts):
        self.calls.append("generate")
        return prompts

    def _calculate_rewards(self, *a):
        self.calls.append("rewards")

    def _get_per_token_logps_and_entropies(self, *a):
        self.calls.append("logps")

    def _generate_and_score_completions(self, batch):
        self._generate(batch)
        self._get_per_token_logps_and_entropies()  # an old / reference forward: the logprob phase
        self._calculate_rewards()
        return batch

    def _prepare_inputs(self, batch):
        return self._generate_and_score_completions(batch)


def test_instrument_trl_times_each_phase_once_per_step():
    trainer = _StandIn()
    rec = ts.instrument_trl(trainer, ts.TRLPhaseRecorder())
    (cb,) = trainer.callbacks
    cb.on_train_begin(None, None, None)
    for _ in range(2):
        trainer._prepare_inputs(["p"])
        trainer._get_per_token_logps_and_entropies()  # the training forward: train phase, not logprob
        cb.on_step_end(None, None, None)
    assert trainer.calls == ["generate", "logps", "rewards", "logps"] * 2
    assert len(rec.steps) == 2
    for s in rec.steps:
        assert set(s) == {*ts.PHASES, "step"}
        assert s["generation"] > 0 and s["reward"] > 0 and s["logprob"] > 0 and s["train"] > 0 and s["sync"] == 0
        assert sum(s[p] for p in ts.PHASES) == pytest.approx(s["step"], abs=1e-4)


@pytest.mark.skipif(importlib.util.find_spec("trl") is None, reason="TRL is not installed (make bench-trl installs it)")
def test_one_trl_step_on_the_tiny_policy(tmp_path):
    from megatron_mmr1.config import DataConfig
    from megatron_mmr1.data.chat import ChatFormatter
    from megatron_mmr1.data.records import read_records
    from megatron_mmr1.data.synthetic import generate
    from megatron_mmr1.data.tokenizer import load_tokenizer
    from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

    paths = generate(tmp_path / "data", num=4, seed=0, val_fraction=0.0, num_sft=0, tokenizer=True)
    hf = make_tiny_hf_checkpoint(tmp_path / "hf", paths["tokenizer"], seed=0)
    records = read_records([str(paths["rl_train"])], "rl", DataConfig(kind="rl"))
    order = ts.prompt_order(len(records), 2, 1, seed=5)
    rows = ts.trl_rows(records, ChatFormatter(load_tokenizer(hf)), order)
    out = ts.run_trl(str(hf), rows, str(tmp_path / "trl"), ts.BenchSettings(steps=1, batch=2, n=2, max_new_tokens=4),
                     seed=0)
    assert out["processor"] == "Qwen2_5_VLImageTextProcessor"  # loaded by TRL through AutoProcessor
    (step,) = out["steps"]
    assert step["generation"] > 0 and step["train"] > 0
    assert sum(step[p] for p in ts.PHASES) == pytest.approx(step["step"], rel=1e-6)
    assert (tmp_path / "trl" / "hf" / "processor_config.json").exists()
