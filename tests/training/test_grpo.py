"""The GRPO trainer on megatron-core, CPU over gloo, against the stand-in servers (SGLang's HTTP API).

Exactness reference: megatron's per-token-loss contract (see test_sft.py); the GRPO loss itself is
checked against Liger-Kernel and verl's formulas in tests/kernels and tests/algorithms.
"""

import pytest
import requests
import torch

from tests.dist_utils import spawn
from tests.training.grpo_workers import grpo_gradient_hf, grpo_split_gradients, grpo_update, run_grpo
from tests.training.test_sft import _weights, assert_close_scaled

pytestmark = pytest.mark.slow


def grpo_overrides(task, out_dir, *extra: str) -> list[str]:
    return [f"model.hf_path={task.hf}", f"data.train_files=[{task.rl_train}]", f"output_dir={out_dir}",
            "logging.progress=false", "training.rollout_batch_size=4", "rollout.n=4", "training.global_batch_size=16",
            "data.max_response_length=24", "vps.num_rollouts=4", "vps.scoring_batch_size=64", "training.eval_interval=null",
            *extra]


# eps = lr = 1: the first Adam update is ~g, so the weights show the gradient (see test_sft.py)
ONE_UPDATE = ("optim.adam_eps=1.0", "optim.lr=1.0", "optim.lr_warmup_fraction=0.0", "optim.clip_grad=0.0")


@pytest.fixture(scope="module")
def grpo_reference(task, tmp_path_factory):
    d = tmp_path_factory.mktemp("grpo_ref")
    (m,) = spawn(grpo_update, 1, grpo_overrides(task, d, *ONE_UPDATE), str(d / "hf"))
    return m, _weights(d / "hf")


@pytest.mark.parametrize("layout", ["parallel.tp=2", "parallel.pp=2", "parallel.tp=1"])  # tp=1 on 2 ranks: DP=2
def test_grpo_update_on_fixed_rollouts_matches_single_rank(task, tmp_path, grpo_reference, layout):
    ref_metrics, ref = grpo_reference
    assert ref_metrics["policy/kl_ref"] > 0, "the KL term must be active in this test"
    metrics = spawn(grpo_update, 2, grpo_overrides(task, tmp_path, *ONE_UPDATE, layout), str(tmp_path / "hf"))[0]
    assert metrics["loss"] == pytest.approx(ref_metrics["loss"], rel=1e-5, abs=1e-7)
    assert metrics["grad_norm"] == pytest.approx(ref_metrics["grad_norm"], rel=1e-5)
    got = _weights(tmp_path / "hf")
    for k in ref:
        assert_close_scaled(got[k], ref[k], 1e-5, f"{layout}: {k}")


def test_grpo_gradient_does_not_depend_on_the_micro_batch_split(task, tmp_path):
    budgets = {}
    for agg in ("token-mean", "seq-mean-token-mean"):
        a = {"algorithm": {"loss_agg_mode": agg}}
        budgets |= {f"{agg}/one": {"max_tokens_per_micro_batch": 100000, **a},
                    f"{agg}/many": {"max_tokens_per_micro_batch": 400, **a},
                    f"{agg}/rows": {"max_tokens_per_micro_batch": None, "micro_batch_size": 3, **a}}
    (out,) = spawn(grpo_split_gradients, 1, grpo_overrides(task, tmp_path), budgets)
    for agg in ("token-mean", "seq-mean-token-mean"):
        ref = out[f"{agg}/one"]
        assert int(ref["__num_micro_batches"]) == 1 and int(out[f"{agg}/many"]["__num_micro_batches"]) >= 3
        for name in ("many", "rows"):
            for k, g in ref.items():
                if not k.startswith("__"):
                    assert_close_scaled(out[f"{agg}/{name}"][k], g, 1e-5, f"{agg}/{name}: {k}")
    # the two aggregations are different losses: their gradients must differ
    k = "language_model.output_layer.weight"
    assert not torch.allclose(out["token-mean/one"][k], out["seq-mean-token-mean/one"][k])


def test_grpo_gradient_matches_transformers_and_the_written_out_loss(task, tmp_path):
    """Reference outside megatron: transformers' Qwen2_5_VLForConditionalGeneration (eager attention, its
    own M-RoPE and vision tower) on each prompt + response, and the on-policy GRPO loss written out.
    With one optimizer step per rollout batch the ratio is 1, so (verl's compute_policy_loss with
    loss_agg_mode=token-mean; DAPO's token-level mean)
        L = -sum_i sum_t A_i * log pi(y_it | x_i, y_i<t) / sum_i |y_i|,
    log-probs at the sampling temperature. The trainer's gradient (THD packing, several micro-batches,
    fused chunked loss, vocab-parallel head) must be autograd's gradient of L, tensor by tensor."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    (out,) = spawn(grpo_gradient_hf, 1, grpo_overrides(task, tmp_path, "algorithm.use_kl_loss=false",
                                                       "training.max_tokens_per_micro_batch=400"))
    assert out["micro_batches"] >= 2
    records, temperature = out["records"], out["temperature"]
    assert temperature != 1.0, "the temperature must matter in this test"
    model = Qwen2_5_VLForConditionalGeneration.from_pretrained(task.hf, attn_implementation="eager").float().eval()
    total = sum(len(r.response_ids) for r in records)
    loss = torch.zeros(())
    for r in records:
        pixel_values, grid = out["images"][r.index]
        ids = torch.tensor([r.prompt_ids + r.response_ids])
        mm_token_type_ids = (ids == model.config.image_token_id).int()  # transformers' M-RoPE needs it
        logits = model(input_ids=ids, pixel_values=pixel_values, image_grid_thw=grid,
                       mm_token_type_ids=mm_token_type_ids).logits[0].float()
        p = len(r.prompt_ids)
        logp = (logits[p - 1:-1] / temperature).log_softmax(-1).gather(-1, ids[0, p:, None])[:, 0]
        loss = loss - r.advantage * logp.sum() / total
    loss.backward()
    with torch.no_grad():  # save the gradients as the weights: the checkpoint's names and layouts
        for param in model.parameters():
            param.copy_(param.grad if param.grad is not None else torch.zeros_like(param))
    model.save_pretrained(tmp_path / "ref_grad")
    ref, got = _weights(tmp_path / "ref_grad"), out["grads"]
    assert set(got) == set(ref)
    assert any(float(g.abs().max()) > 0 for k, g in ref.items() if k.startswith("visual.")), "no vision gradient"
    for k in ref:
        assert_close_scaled(got[k], ref[k], 1e-5, k)


def test_three_steps_with_two_ranks_sync_weights_to_the_servers(task, tmp_path):
    """TP=2, the stand-in servers started outside the run; afterwards they serve the trained weights."""
    from megatron_mmr1.rollout.servers import LocalServerGroup

    group = LocalServerGroup(task.hf, 1, str(tmp_path / "logs"))
    urls = group.start(timeout_s=180)
    try:
        summaries = spawn(run_grpo, 2, grpo_overrides(
            task, tmp_path, "parallel.tp=2", "training.rollout_steps=3", f"rollout.server_urls=[{urls[0]}]",
            "rollout.temperature=1.0", f"checkpoint.export_hf={tmp_path}/hf",
            "algorithm.entropy_coef=0.01"), timeout_s=600)  # the random policy scores 0: the entropy term trains
        s = summaries[0]
        assert s["steps"] == 3 and s["rollouts_total"] == 3 * 16
        # same weights on both sides: trainer log-probs of the sampled tokens equal the server's (fp32)
        mismatch = [v for _, v in s["history"]["mismatch/logp_abs_mean"]]
        assert max(mismatch) < 1e-4, mismatch
        assert max(v for _, v in s["history"]["mismatch/logp_abs_max"]) < 1e-3
        assert requests.get(urls[0] + "/get_weight_version", timeout=10).json()["weight_version"] == "3"
        trained = _weights(tmp_path / "hf")
        initial = _weights(task.hf)
        changed = [k for k in ("lm_head.weight", "model.layers.0.self_attn.q_proj.weight") if k in trained]
        assert changed
        for name in changed:
            served = torch.tensor(requests.post(urls[0] + "/get_weights_by_name", json={"name": name}, timeout=30).json())
            assert not torch.equal(trained[name], initial[name]), f"{name} did not train"
            head = trained[name][: served.shape[0]]  # SGLang returns the first truncate_size (100) rows
            assert served.shape == head.shape
            assert not torch.equal(head, initial[name][: served.shape[0]])
            assert_close_scaled(served, head, 1e-6, f"served {name}")
    finally:
        group.stop()


def test_resume_draws_the_same_prompts_and_reproduces_the_losses(task, tmp_path):
    common = ("training.rollout_steps=3", "checkpoint.save_interval=2", "checkpoint.keep_last=3", "rollout.seed=7",
              "vps.update_interval=2")
    ckpt = tmp_path / "ckpt"
    (full,) = spawn(run_grpo, 1, grpo_overrides(task, tmp_path / "a", *common, f"checkpoint.save={ckpt}"), timeout_s=600)
    (resumed,) = spawn(run_grpo, 1, grpo_overrides(task, tmp_path / "b", *common, f"checkpoint.save={tmp_path}/b/c",
                                                   f"checkpoint.load={ckpt}/iter_0000002"), timeout_s=600)
    for key in ("reward/mean", "response/length_mean", "loss"):
        want = [v for s, v in full["history"][key] if s > 2]
        got = [v for _, v in resumed["history"][key]]
        assert got == pytest.approx(want, rel=1e-5, abs=1e-6), key


def test_colocated_run_releases_and_resumes_the_servers(task, tmp_path):
    """SGLang's order (slime's colocated path): pause -> release everything -> train -> resume weights ->
    update -> resume KV cache and CUDA graphs -> continue."""
    (s,) = spawn(run_grpo, 1, grpo_overrides(task, tmp_path, "training.rollout_steps=2", "rollout.colocate=true", "rollout.num_servers=1",
                                             "rollout.weight_sync=tensor", "parallel.backend=gloo", f"data.val_files=[{task.rl_val}]",
                                             "training.eval_interval=1", "eval.max_samples=6", "eval.max_new_tokens=8"),
                 True, timeout_s=600)
    assert s["steps"] == 2
    # held-out evals at steps 0, 1 and 2 are kept per response and compared question by question
    report = (tmp_path / "eval" / "results.md").read_text()
    assert all(f"| step_{i} |" in report for i in range(3))
    n_val = min(6, len(open(task.rl_val).read().splitlines()))
    for i in range(3):  # each eval's responses written once, not rewritten (or emptied) by later evals
        assert len((tmp_path / "eval" / f"step_{i}" / "rl_val.jsonl").read_text().splitlines()) == n_val
    assert (s["eval_step_first"], s["eval_step_last"]) == (0, 2)
    assert s["eval_rl_val_paired_delta"] == pytest.approx(s["eval_average_accuracy_last"] - s["eval_average_accuracy_first"])
    assert s["eval_rl_val_paired_se"] >= 0.0 and s["eval_rl_val_n"] == n_val
    paths = [p for p, _ in s["server_calls"] if p != "/flush_cache"]
    one_step = ["/pause_generation", "/release_memory_occupation", "/resume_memory_occupation", "/pause_generation",
                "/update_weights_from_tensor", "/resume_memory_occupation", "/continue_generation"]
    got = [p for p in paths if p in set(one_step)]
    assert got == one_step * 2 or _subsequence(one_step * 2, got), paths
    tags = [t for p, t in s["server_calls"] if p == "/resume_memory_occupation"]
    assert tags[0] == ["weights"] and set(tags[1]) == {"kv_cache", "cuda_graph"}, tags


def _subsequence(want: list, got: list) -> bool:
    it = iter(got)
    return all(any(x == y for y in it) for x in want)


def test_colocated_run_with_trainer_offload_equals_the_run_without(task, tmp_path):
    """rollout.offload_trainer: the trainer's state leaves and returns around every generation (and before the
    servers start), saves and the export see it resident, and the run is the same run: rewards, losses, grad
    norms and the exported weights equal those of the run without offload; the servers hold the trained
    weights (trainer vs server log-probs)."""
    def run(offload: bool, out, *extra):
        (summary,) = spawn(run_grpo, 1, grpo_overrides(
            task, out, "training.rollout_steps=2", "rollout.colocate=true", "rollout.num_servers=1",
            "rollout.weight_sync=tensor", "parallel.backend=gloo", "rollout.seed=0", "rollout.temperature=1.0",
            f"rollout.offload_trainer={str(offload).lower()}", "checkpoint.keep_last=2",
            "algorithm.entropy_coef=0.01", *extra), True, timeout_s=600)  # the random policy scores 0: entropy trains
        return summary["history"]

    plain, off = (run(k, tmp_path / f"offload_{k}", f"checkpoint.save={tmp_path}/offload_{k}/ckpt",
                      "checkpoint.save_interval=1", f"checkpoint.export_hf={tmp_path}/offload_{k}/hf")
                  for k in (False, True))
    assert all(v > 0 for _, v in plain["grad_norm"])  # the weights move
    for key in ("reward/mean", "loss", "grad_norm", "policy/entropy"):
        assert off[key] == plain[key], key
    assert max(v for _, v in off["mismatch/logp_abs_mean"]) < 1e-4
    assert all(v > 0 for _, v in off["memory/offloaded_gib"]) and "memory/offloaded_gib" not in plain
    assert len(off["time/offload_s"]) == len(off["time/reload_s"]) == 2
    got, want = _weights(tmp_path / "offload_True" / "hf"), _weights(tmp_path / "offload_False" / "hf")
    assert set(got) == set(want) and all(torch.equal(got[k], want[k]) for k in want)
    # resumed with offload from the save made while offloaded: the servers get the step's weights, step 2 again
    resumed = run(True, tmp_path / "resumed", f"checkpoint.load={tmp_path}/offload_True/ckpt/iter_0000001")
    assert resumed["loss"] == plain["loss"][1:] and resumed["reward/mean"] == plain["reward/mean"][1:]
