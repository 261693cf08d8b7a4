"""Plans as text (:func:`report`), a markdown table (:func:`markdown_table`) and shell variables for
examples/launch (:func:`shell_vars`)."""

from __future__ import annotations

import dataclasses

from megatron_mmr1.models.memory import GIB, kv_bytes_per_token
from megatron_mmr1.planning.hardware import GPUS_PER_NODE
from megatron_mmr1.planning.layout import rollout_resident
from megatron_mmr1.planning.plan import Plan


def gib(x: float) -> str:
    return f"{x / GIB:.1f}"


def layout(p: Plan) -> str:
    t = p.trainer
    return f"TP{t.tp} PP{t.pp}" + (f" CP{t.cp}" if t.cp > 1 else "") + f" DP{t.dp}"


def servers(p: Plan) -> str:
    return f"{p.servers.count} x TP{p.servers.tp}"


def _header(p: Plan) -> list[str]:
    t, s, w = p.trainer, p.servers, p.workload
    mode = "colocated (servers share the trainer's GPUs)" if p.colocated else "split (servers on their own GPUs)"
    return [
        f"{p.preset} on {p.nodes} node(s) of {GPUS_PER_NODE} x {p.gpu.name}: {mode}",
        f"  trainer  {layout(p)} on {t.gpus} GPUs, {t.options.describe()}; {t.micro_batches} micro-batches of "
        f"{w.micro_batch_tokens} tokens per optimizer step and DP rank",
        f"  servers  {s.count} SGLang server(s) of TP{s.tp} on {s.gpus} GPUs, --mem-fraction-static {s.mem_fraction:.2f}",
        f"  longest sequence {w.longest_sequence} tokens (prompt <= {w.max_prompt_tokens} with images of up to "
        f"{w.max_image_tokens} tokens, response <= {w.max_response_tokens}): "
        + ("within" if w.fits_token_budget else "OVER") + f" the {w.micro_batch_tokens}-token micro-batch budget",
    ]


def _memory(p: Plan) -> list[str]:
    t, s, m = p.trainer, p.servers, p.trainer.memory
    kv_tokens = s.kv_cache / kv_bytes_per_token(p.model.dims, s.tp)
    host = f"; {gib(m.host_optimizer)} more on the host (optim.cpu_offload)" if m.host_optimizer else ""
    during = f"{'0.0':>7}   offloaded to the host" if t.options.offload_trainer else f"{gib(rollout_resident(t)):>7}"
    return [
        f"memory per GPU (GiB; trainer: pipeline stage {m.stage}, {m.params / 1e9:.2f} B parameters)",
        f"  bf16 weights                    {gib(m.weights):>7}",
        f"  fp32 main grads                 {gib(m.grads):>7}",
        f"  Adam shards (dist. optimizer)   {gib(m.optimizer):>7}   fp32 master + m + v over DP x CP={t.dp * t.cp}{host}",
        f"    of these three: vision tower  {gib(m.vision):>7}   replicated on each TP rank of stage 0"
        + (", frozen: weights only" if not p.workload.train_vision else ""),
        f"  activations                     {gib(m.activations):>7}   {t.options.describe()}",
        f"  logits workspace                {gib(m.logits):>7}",
        f"  framework overhead              {gib(m.overhead):>7}",
        f"  reference weights               {'0.0':>7}   while idle (CPU copy {gib(m.reference)}); "
        f"{gib(m.reference)} during the reference forward",
        f"  trainer peak                    {gib(m.peak):>7}   (train {gib(m.train_peak)}, reference forward "
        f"{gib(m.reference_peak)})",
        *([f"  trainer state during rollout    {during}"] if p.colocated else []),
        f"  server weights                  {gib(s.weights):>7}",
        f"  server KV cache                 {gib(s.kv_cache):>7}   {kv_tokens:,.0f} tokens per server",
        f"  rollout peak                    {gib(p.rollout_peak):>7}",
        f"  host memory per node            {gib(p.host_per_node):>7}   reference copies, host Adam, offloaded state "
        f"(of {p.assumptions.host_memory_gib:g} assumed)",
        f"  peak, any phase                 {gib(p.peak_per_gpu):>7}   of {gib(p.gpu.memory_gib * GIB)}: "
        + ("fits" if p.fits else "DOES NOT FIT: " + "; ".join(p.problems)),
    ]


def _times(p: Plan) -> list[str]:
    s = p.servers
    lines = ["time per GRPO step (s)", *[f"  {k:<30} {v:>8.1f}" for k, v in p.times.items()],
             f"  {'step (phases in sequence)':<30} {p.step_s:>8.1f}   {p.tokens_per_s_per_gpu():,.0f} tokens/s/GPU"]
    if p.overlapped_step_s is not None:
        lines.append(f"  {'step (one-step off-policy)':<30} {p.overlapped_step_s:>8.1f}   "
                     f"{p.tokens_per_s_per_gpu(overlapped=True):,.0f} tokens/s/GPU")
    parts = ", ".join(f"{k} {1e3 * v:.1f}" for k, v in s.step_parts.items())
    link = "NVLink (CUDA IPC)" if p.colocated or p.nodes == 1 else "InfiniBand (NCCL broadcast)"
    lines += [
        f"  decode: {s.concurrency:,.0f} sequences per server at {s.tokens_per_s:,.0f} tokens/s per server; "
        f"{1e3 * s.step_s:.1f} ms per decode step ({parts} ms)",
        f"  training MFU {100 * p.train_mfu:.1f}% (useful FLOPs over the train phase: the assumed "
        f"{100 * p.assumptions.train_mfu:.0f}% on executed FLOPs, less recompute, bubble and unoverlapped collectives)",
        f"  weight sync: {gib(2 * p.model.total_params)} GiB bf16 to each server over {link}",
    ]
    if p.trainer.options.offload_trainer and p.colocated:
        lines.append(f"  trainer offload: {gib(p.trainer.memory.resident)} GiB per GPU over PCIe each way "
                     f"({p.times['trainer_offload']:.1f} s out before rollout, {p.times['trainer_reload']:.1f} s back)")
    return lines


def _assumptions(p: Plan) -> list[str]:
    w, a, g = p.workload, p.assumptions, p.gpu
    return [
        "assumptions",
        f"  workload: {w.prompts} prompts x {w.n} responses, optimizer steps of {w.global_batch} sequences; "
        f"mean prompt {w.prompt_tokens:,.0f} tokens ({w.image_tokens:,.0f} image), mean response "
        f"{w.response_tokens:,.0f} of at most {w.max_response_tokens}; KL reference: {w.use_kl}; vision trained: "
        f"{w.train_vision}",
        f"  VPS full refresh: {w.scoring_prompts} prompts x {w.scoring_n} rollouts every {w.scoring_interval} steps"
        if w.scoring_prompts else "  VPS: no scoring rollouts counted (uniform sampling, or online refresh: its "
        "re-scoring of stale prompts is not modelled)",
        f"  GPU: {g.name}, {g.bf16_tflops:.0f} TFLOPS bf16 dense, HBM {g.hbm_tbps} TB/s, NVLink {g.nvlink_gbps:.0f} "
        f"GB/s, InfiniBand {g.ib_gbps:.0f} GB/s, PCIe {g.pcie_gbps:.0f} GB/s (per GPU, one direction)",
        *[f"  {f.name} = {getattr(a, f.name)}" for f in dataclasses.fields(a)],
        "  not modelled: reward scoring (CPU, overlaps generation), SGLang release/resume, pipeline p2p, "
        "stragglers beyond one max-length response",
    ]


def report(p: Plan) -> str:
    """The plan, its memory by part, its times and the assumptions behind them."""
    lines = [*_header(p), "", *_memory(p), "", *_times(p), "", *_assumptions(p)]
    return "\n".join(lines)


TABLE_HEAD = ("| model | nodes | mode | trainer | options | servers | peak GiB/GPU | rollout s | train s | offload s "
              "| sync s | step s | tokens/s/GPU | train MFU | overlapped step s | overlapped tokens/s/GPU |")


def table_row(p: Plan) -> str:
    t = p.times
    head = (f"| {p.preset.removeprefix('qwen2.5-vl-')} | {p.nodes} | {'colocated' if p.colocated else 'split'} | "
            f"{layout(p)} ({p.trainer.gpus}) | {p.trainer.options.describe()} | {servers(p)} | ")
    if not p.fits:  # the lowest peak found, nothing else to say
        return head + f"{gib(p.peak_per_gpu)}: does not fit |" + " - |" * 9
    over = p.overlapped_step_s
    train = t["old_logprob"] + t["ref_logprob"] + t["train"] + t["host_adam"]
    return (head + f"{gib(p.peak_per_gpu)} | {t['rollout'] + t['vps_scoring']:.0f} | {train:.0f} | "
            f"{t['trainer_offload'] + t['trainer_reload']:.1f} | {t['weight_sync']:.1f} | {p.step_s:.0f} | "
            f"{p.tokens_per_s_per_gpu():,.0f} | {100 * p.train_mfu:.0f}% | {'-' if over is None else f'{over:.0f}'} | "
            f"{'-' if over is None else f'{p.tokens_per_s_per_gpu(True):,.0f}'} |")


def markdown_table(plans: list[Plan | str]) -> str:
    """One row per plan; a string stands for a row of its own (a cell with no valid layout)."""
    rows = [TABLE_HEAD, "|" + "---|" * (TABLE_HEAD.count("|") - 1)]
    rows += [p if isinstance(p, str) else table_row(p) for p in plans]
    return "\n".join(rows)


def shell_vars(p: Plan) -> str:
    """Variables examples/launch/run_node.sh reads: where the trainer and the servers run."""
    t, s = p.trainer, p.servers
    if p.colocated:
        trainer_nodes, trainer_per_node, first_server_node, offset = p.nodes, GPUS_PER_NODE, 0, 0
    elif p.nodes == 1:
        trainer_nodes, trainer_per_node, first_server_node, offset = 1, t.gpus, 0, t.gpus
    else:
        trainer_nodes, trainer_per_node = t.gpus // GPUS_PER_NODE, GPUS_PER_NODE
        first_server_node, offset = trainer_nodes, 0
    per_node = s.count // (p.nodes - first_server_node)
    values = dict(PLAN_NODES=p.nodes, PLAN_COLOCATE=int(p.colocated), PLAN_TRAINER_NODES=trainer_nodes,
                  PLAN_TRAINER_GPUS_PER_NODE=trainer_per_node, PLAN_SERVER_FIRST_NODE=first_server_node,
                  PLAN_SERVERS_PER_NODE=per_node, PLAN_SERVER_TP=s.tp, PLAN_SERVER_GPU_OFFSET=offset,
                  PLAN_MEM_FRACTION=f"{s.mem_fraction:.2f}", PLAN_PEAK_GIB=gib(p.peak_per_gpu),
                  PLAN_FITS=int(p.fits))
    return "\n".join(f"{k}={v}" for k, v in values.items())
