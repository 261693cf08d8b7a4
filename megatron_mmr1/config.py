"""One YAML file describes a run.

Each component sees only its own typed section (``cfg.data``, ``cfg.vps``, ...). Every field has a
default and a one-line doc (the string literal after it). Unknown keys, wrong types and impossible
combinations fail at load time with a :class:`ConfigError` naming the key, so a 72B job does not die
an hour in on a typo.

    cfg = load_config("examples/configs/tiny_cpu_smoke.yaml", ["parallel.tp=2", "optim.lr=1e-5"])
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

import yaml


class ConfigError(ValueError):
    """A config problem; the message names the offending key."""


# --------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    preset: str = "tiny"
    """Size preset (tiny, qwen2.5-vl-3b/7b/32b/72b); explicit fields below override it."""
    hf_path: Optional[str] = None
    """Hugging Face Qwen2.5-VL checkpoint dir: its config.json wins over the preset."""
    tokenizer_path: Optional[str] = None
    """Tokenizer dir (HF format); defaults to hf_path."""
    num_layers: Optional[int] = None
    """Language-model transformer layers."""
    hidden_size: Optional[int] = None
    """Language-model hidden size."""
    ffn_hidden_size: Optional[int] = None
    """SwiGLU intermediate size."""
    num_attention_heads: Optional[int] = None
    """Query heads."""
    num_query_groups: Optional[int] = None
    """Key/value heads (GQA groups)."""
    vocab_size: Optional[int] = None
    """Vocabulary size (151936 for 3B, 152064 for 7B+)."""
    freeze_vision: bool = False
    """Keep the vision tower (ViT + merger) frozen; the reference config trains it."""
    recompute: Optional[Literal["full", "selective"]] = None
    """Activation recomputation granularity; None keeps all activations. Any recompute also checkpoints
    the ViT blocks."""
    recompute_modules: Optional[list[str]] = None
    """Language-model submodules that ``recompute: selective`` recomputes (megatron's recompute_modules:
    core_attn, mlp, layernorm); None: megatron's default [core_attn], which TE's fused attention does not
    need; []: none (only the ViT blocks are checkpointed)."""
    params_dtype: Literal["auto", "fp32", "bf16"] = "auto"
    """bf16 on GPU, fp32 on CPU when auto."""
    attention_backend: Literal["auto", "sdpa", "local", "te"] = "auto"
    """auto: Transformer Engine spec when installed on GPU, else sdpa. sdpa: megatron's local spec with
    torch's scaled_dot_product_attention as core attention. local: the local spec as megatron ships it
    (unfused DotProductAttention; slower, kept as the reference). te: Transformer Engine."""


@dataclass
class ParallelConfig:
    tp: int = 1
    """Tensor-parallel size."""
    pp: int = 1
    """Pipeline-parallel size."""
    sequence_parallel: bool = True
    """Megatron sequence parallelism (used only when tp > 1)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over DP ranks (GPU only; CPU uses the plain optimizer)."""
    backend: Literal["auto", "nccl", "gloo"] = "auto"
    """torch.distributed backend: nccl when CUDA is available, gloo otherwise."""
    vpp: int = 1
    """Virtual pipeline stages per rank (megatron's interleaved 1F1B; virtual_pipeline_model_parallel_size).
    > 1 needs parallel.pp > 1 and shrinks the pipeline bubble by this factor."""
    cp: int = 1
    """Context-parallel size: each sequence is split over cp ranks (long CoT responses). Needs Transformer
    Engine attention; > 1 is refused until the packed micro-batches are split per CP rank (docs/training.md)."""
    tp_comm_overlap: bool = False
    """Overlap TP all-gather / reduce-scatter with GEMMs (Transformer Engine userbuffers; GPU, TE, sequence
    parallelism). Refused: userbuffers need a fixed micro-batch shape, packed micro-batches vary."""
    overlap_param_gather: bool = False
    """Distributed optimizer: all-gather updated params bucket by bucket during the next forward. Refused: the
    weight sync, reference swap and checkpoints read params between steps (docs/training.md)."""
    seed: int = 1234
    """Base seed; TP ranks get megatron's model-parallel RNG offsets."""


@dataclass
class DataConfig:
    kind: Literal["rl", "sft"] = "rl"
    """RL prompts (problem/answer/images) or SFT conversations (messages)."""
    train_files: list[str] = field(default_factory=list)
    """JSONL or Parquet files; image paths resolve relative to each file."""
    val_files: list[str] = field(default_factory=list)
    """Held-out files for evaluation."""
    prompt_key: str = "problem"
    """RL record field holding the question text (with <image> placeholders)."""
    answer_key: str = "answer"
    """RL record field holding the verifiable answer."""
    image_key: str = "images"
    """Record field holding image paths (JSONL) or bytes (Parquet)."""
    messages_key: str = "messages"
    """SFT record field holding the conversation."""
    system_prompt: Optional[str] = None
    """System prompt; None uses the MMR1 think/answer/boxed prompt."""
    min_pixels: int = 7056
    """Qwen2.5-VL smart_resize lower bound (pixels)."""
    max_pixels: int = 1048576
    """Qwen2.5-VL smart_resize upper bound (pixels)."""
    max_prompt_length: int = 2048
    """Prompt tokens (image tokens included)."""
    max_response_length: int = 4096
    """Response tokens generated per rollout."""
    seq_length: int = 16384
    """SFT sequence cutoff / packing length."""
    packing: bool = True
    """Pack SFT samples into seq_length bins with per-sample boundaries."""
    image_decoder: Literal["auto", "pillow", "dali"] = "auto"
    """DALI on GPU when installed, Pillow otherwise."""
    num_workers: int = 2
    """Data-loader worker processes."""
    prefetch_factor: int = 2
    """Batches prefetched per worker."""
    on_bad_record: Literal["error", "skip"] = "error"
    """Raise on a malformed record/image, or skip it (counted and logged)."""
    max_decode_pixels: int = 89478485
    """Reject images whose source has more pixels (decompression-bomb guard, checked from the header)."""
    system_prompt_mode: Literal["user_prefix", "system"] = "user_prefix"
    """user_prefix: MMR1's released code joins system prompt + ' ' + problem in the user turn; system: a system turn."""
    dali_resize: Literal["exact", "dali"] = "exact"
    """DALI path: Pillow-exact bicubic on the GPU (identical output) or DALI's own resize (faster, edges differ)."""
    seed: int = 1234
    """Shuffling seed."""


@dataclass
class RolloutConfig:
    backend: Literal["sglang", "local"] = "local"
    """SGLang servers, or the in-repo stand-in server with the same HTTP API (CPU)."""
    server_urls: list[str] = field(default_factory=list)
    """SGLang server (or router) URLs; empty starts local stand-ins."""
    num_servers: int = 1
    """Stand-in / launched servers when server_urls is empty."""
    n: int = 8
    """Responses per prompt during training (GRPO group size)."""
    temperature: float = 0.6
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    top_k: int = -1
    """Top-k sampling (-1 = off)."""
    max_inflight: int = 256
    """Concurrent /generate requests across all servers."""
    max_running_requests: Optional[int] = None
    """Requests one server decodes at once (the launchers pass it as SGLang's --max-running-requests); the client queues the rest. A server's own /get_server_info value wins; None with none there: no per-server limit."""
    server_tp: Optional[int] = None
    """SGLang servers' tensor-parallel size (the launchers pass the plan's server_tp); None = not stated."""
    request_timeout_s: float = 60.0
    """Per-request timeout before retrying on another server: this base plus request_timeout_per_token_s * max_new_tokens."""
    request_timeout_per_token_s: float = 0.05
    """Seconds added to a request's timeout per max_new_tokens (a slow decode is not a dead server)."""
    weight_sync_timeout_s: float = 600.0
    """Timeout of one weight-sync / memory call to a server (a bucket load, a disk load)."""
    max_retries: int = 3
    """Retries of one request on other servers before failing the step."""
    weight_sync: Literal["distributed", "tensor", "disk"] = "distributed"
    """Trainer->server weight update path."""
    weight_sync_bucket_mb: int = 512
    """Bucket size for broadcast weight updates."""
    colocate: bool = False
    """Servers share GPUs with the trainer (release/resume memory around training)."""
    offload_trainer: bool = False
    """Colocated: trainer params, grads and optimizer state leave the GPU while the servers generate, and come
    back before the log-prob pass (what verl and slime do to fit big policies)."""
    weight_sync_flattened: bool = True
    """Send each bucket as one flattened tensor (SGLang flattened_bucket; one broadcast per bucket, 5x faster at 32 MB on gloo) instead of tensor by tensor."""
    weight_sync_master_address: Optional[str] = None
    """Trainer node 0's address as the servers reach it (multi-node); None = 127.0.0.1. Senders on other nodes (pipeline stages) bind their own node's: $MMR1_NODE_ADDR, else the interface towards this one."""
    pause_mode: Literal["abort", "retract", "in_place"] = "abort"
    """SGLang /pause_generation mode around weight updates (aborted requests are resubmitted)."""
    seed: Optional[int] = None
    """Per-prompt sampling seeds from (seed, step, prompt): reproducible rollouts on the stand-in (rollout.backend=local; refused with sglang)."""
    health_interval_s: float = 2.0
    """Seconds between /health probes of a server marked down."""


@dataclass
class RewardConfig:
    format_weight: float = 1.0
    """Weight of the think/answer template reward."""
    accuracy_weight: float = 1.0
    """Weight of the math-verify accuracy reward."""
    timeout_s: float = 5.0
    """Per-item verification timeout; a hang scores 0 and is counted."""
    num_workers: int = 2
    """Reward worker processes."""
    grace_s: float = 2.0
    """Extra seconds before a worker that ignores its timer is killed and replaced."""


@dataclass
class AlgorithmConfig:
    adv_estimator: Literal["grpo", "drgrpo"] = "grpo"
    """grpo: (r - mean) / (std + eps); drgrpo: r - mean (no std normalisation)."""
    adv_eps: float = 1e-6
    """eps in the advantage denominator."""
    clip_ratio_low: float = 0.2
    """eps_low of the clipped surrogate."""
    clip_ratio_high: float = 0.2
    """eps_high (clip-higher when > clip_ratio_low)."""
    clip_ratio_c: Optional[float] = None
    """Dual-clip constant c (> 1) for negative advantages; None = off."""
    use_kl_loss: bool = True
    """Add a KL(policy || reference) loss term."""
    kl_coef: float = 0.01
    """KL loss coefficient."""
    kl_estimator: Literal["k1", "k2", "k3", "low_var_kl", "mse"] = "low_var_kl"
    """KL estimator (k3 == low_var_kl, k2 == mse)."""
    entropy_coef: float = 0.0
    """Entropy bonus coefficient."""
    loss_agg_mode: Literal["token-mean", "seq-mean-token-sum", "seq-mean-token-mean"] = "token-mean"
    """How per-token losses are reduced."""
    dynamic_filtering: bool = False
    """DAPO-style: train only on groups whose (total) rewards differ; with sampler.type=vas the sampler still
    observes every group's outcome (filtering picks what is trained on, VAS what is rolled out)."""
    kernel_backend: Literal["auto", "triton", "torch", "reference"] = "auto"
    """Fused loss/log-prob path: auto = Triton on CUDA, torch on CPU; reference = full logits (bisecting)."""
    tis_clip: Optional[float] = None
    """Truncated importance sampling: weight tokens by min(exp(old - rollout logp), tis_clip); None = off."""
    fused_chunk_size: Optional[int] = None
    """Token rows per chunk of the fused kernels; None = largest power of two with a <= 512 MiB logits buffer."""


@dataclass
class VPSConfig:
    alpha: float = 0.8
    """Weight of OVS = p(1-p)."""
    beta: float = 0.2
    """Weight of TDS (trajectory diversity)."""
    tds_metrics: list[str] = field(default_factory=lambda: ["self_bleu"])
    """Diversity metrics averaged into TDS: self_bleu (1 - self-BLEU-123), distinct_n, edit_distance."""
    tds_gate: bool = False
    """TDS counts only where OVS > 0: a prompt whose rollouts all got the same accuracy keeps VPS 0 however
    diverse they were (false: the paper's alpha * OVS + beta * TDS for every prompt; docs/vas.md)."""
    momentum: float = 0.0
    """w = m * w_old + (1 - m) * w_new."""
    prior: float = 1.0
    """Score of prompts never scored yet (after min-max normalisation)."""
    refresh: Literal["full", "online", "training"] = "full"
    """full: re-score all prompts with num_rollouts fresh rollouts every update_interval steps (the paper);
    online: scores from the training rollouts, stale prompts re-scored at each refresh; training: scores
    from the training rollouts only (the n of each group), weights recomputed before every batch, no
    scoring rollouts at all (update_interval, num_rollouts, scoring_batch_size, stale_after unread)."""
    update_interval: int = 56
    """T_update: steps between refreshes (full, online)."""
    num_rollouts: int = 16
    """N: fresh rollouts per prompt when scoring (full, online)."""
    scoring_batch_size: int = 4096
    """Prompts per scoring rollout batch (full, online)."""
    stale_after: int = 2
    """online refresh: re-score prompts older than this many refreshes."""


@dataclass
class SamplerConfig:
    type: Literal["vas", "uniform"] = "vas"
    """VAS (weighted + uniform mixture) or plain uniform sampling."""
    lam: float = 0.5
    """lambda: fraction of each batch drawn by VPS weight (with replacement)."""
    seed: int = 1234
    """Sampler RNG seed (checkpointed)."""


@dataclass
class TrainingConfig:
    mode: Literal["sft", "grpo", "lm_smoke"] = "grpo"
    """Cold-start SFT, GRPO RL, or lm_smoke (megatron LM steps on synthetic tokens: checks the stack)."""
    train_iters: int = 100
    """SFT, lm_smoke: optimizer steps to run (megatron's meaning)."""
    rollout_steps: int = 100
    """GRPO: rollout steps to run (each: rollout_batch_size prompts x rollout.n, then their optimizer steps)."""
    epochs: Optional[int] = None
    """SFT: epochs over the data instead of train_iters."""
    rollout_batch_size: int = 512
    """GRPO: prompts per rollout step (B)."""
    global_batch_size: int = 512
    """Sequences per optimizer step (summed over DP ranks and micro-batches)."""
    micro_batch_size: int = 8
    """Sequences per forward/backward on one rank."""
    eval_interval: Optional[int] = None
    """Steps between evaluations; None = never."""
    max_tokens_per_micro_batch: Optional[int] = None
    """Token budget of one packed micro-batch (dynamic batching); None = micro_batch_size sequences."""
    max_skipped_steps: int = 3
    """Non-finite loss / grad-norm steps in a row before the run stops (each one is skipped and counted)."""
    async_rollout: bool = False
    """GRPO: generate step k+1's rollouts while step k trains (one step off-policy; disaggregated servers)."""
    log_samples: int = 2
    """GRPO: sample responses written to TensorBoard text per step."""


@dataclass
class OptimizerConfig:
    lr: float = 1e-6
    """Peak learning rate."""
    min_lr: float = 0.0
    """Floor of the decay schedule."""
    lr_decay_style: Literal["constant", "cosine", "linear"] = "constant"
    """Decay after warm-up."""
    lr_warmup_fraction: float = 0.0
    """Warm-up as a fraction of train_iters."""
    weight_decay: float = 0.01
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """AdamW beta1."""
    adam_beta2: float = 0.999
    """AdamW beta2."""
    adam_eps: float = 1e-8
    """AdamW epsilon."""
    clip_grad: float = 1.0
    """Global grad-norm clip (0 = off)."""
    cpu_offload: bool = False
    """megatron-core's optimizer CPU offload (HybridDeviceOptimizer): the Adam step and its state for
    ``offload_fraction`` of the params live on the host."""
    offload_fraction: float = 1.0
    """Share of the optimizer state kept on the host with optim.cpu_offload."""


@dataclass
class CheckpointConfig:
    save: Optional[str] = None
    """Directory for dist checkpoints; None = no saving."""
    load: Optional[str] = None
    """Resume from this directory (model, optimizer, sampler, RNG)."""
    save_interval: Optional[int] = None
    """Steps between saves; None = only at the end."""
    keep_last: int = 2
    """Checkpoints kept on disk."""
    export_hf: Optional[str] = None
    """Write a Hugging Face checkpoint of the final weights here at the end of the run."""


@dataclass
class EvalConfig:
    max_samples: Optional[int] = None
    """Records per validation file (None = all)."""
    samples: int = 1
    """Responses per question (k of mean@k / pass@k); 1 = greedy."""
    temperature: float = 0.0
    """Sampling temperature of evaluation (0 = greedy)."""
    max_new_tokens: Optional[int] = None
    """Response tokens; None = data.max_response_length."""
    at_start: bool = True
    """GRPO: evaluate the starting policy before step 1 (a sweep from one checkpoint measures it once)."""


@dataclass
class LoggingConfig:
    tensorboard_dir: Optional[str] = None
    """TensorBoard event dir (rank 0); None = <output_dir>/tensorboard."""
    log_interval: int = 1
    """Steps between log lines."""
    level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    """Logger level."""
    progress: bool = True
    """Progress bars on long loops (rank 0)."""


@dataclass
class RunConfig:
    name: str = "mmr1"
    """Run name (log and checkpoint prefixes)."""
    output_dir: str = "outputs/mmr1"
    """Where logs, TensorBoard and checkpoints go by default."""
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    vps: VPSConfig = field(default_factory=VPSConfig)
    sampler: SamplerConfig = field(default_factory=SamplerConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    optim: OptimizerConfig = field(default_factory=OptimizerConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def validate(self, world_size: Optional[int] = None, nnodes: Optional[int] = None,
                 launch: bool = False) -> "RunConfig":
        validate(self, world_size, nnodes, launch)
        return self


# --------------------------------------------------------------------------------------------------
# Building typed configs from plain data
# --------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to floats, nothing else converts."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{key}: {value!r} does not match {_type_name(tp)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key}: {value!r} is not one of {list(args)}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {type(value).__name__} {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]") for i, v in enumerate(value)] if args else list(value)
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-6 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported annotation {tp}")  # a bug in this file, not in the YAML


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(data).__name__} {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(f"unknown config key '{where}' (valid keys: {', '.join(sorted(names))})")
    kwargs = {
        k: _coerce(v, hints[k], f"{prefix}.{k}" if prefix else k) for k, v in data.items()
    }
    return cls(**kwargs)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override '{dotted}': '{part}' is not a section")
        node = child
    node[parts[-1]] = value


def parse_overrides(overrides: list[str]) -> list[tuple[str, Any]]:
    """``key.sub=value`` pairs; values are parsed as YAML (``1e-5``, ``true``, ``[a, b]``)."""
    out = []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}' is not of the form key.sub=value")
        key, raw = item.split("=", 1)
        key = key.strip().lstrip("-")
        try:
            value = yaml.safe_load(raw) if raw.strip() != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override '{item}': value is not valid YAML ({e})") from None
        out.append((key, value))
    return out


def config_from_dict(data: dict, overrides: Optional[list[str]] = None) -> RunConfig:
    data = dict(data or {})
    for key, value in parse_overrides(overrides or []):
        _set_dotted(data, key, value)
    return _build(RunConfig, data)


def load_config(
    path: Optional[str | Path] = None,
    overrides: Optional[list[str]] = None,
    world_size: Optional[int] = None,
    nnodes: Optional[int] = None,
    launch: bool = False,
) -> RunConfig:
    """Read YAML (optional), apply overrides, type-check and validate (for a world size / node count when
    known; ``launch``: for a run about to start)."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: top level must be a mapping of sections")
    cfg = config_from_dict(data, overrides)
    return cfg.validate(world_size, nnodes, launch)


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def dump_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


# Keys a training mode never reads (sections end in ".*"). Setting one away from its default is not an
# error (one config file may serve several stages) but it gets a warning naming it.
UNREAD_KEYS: dict[str, tuple[str, ...]] = {
    "sft": ("rollout.*", "reward.*", "vps.*", "sampler.*", "eval.*", "training.rollout_batch_size",
            "training.async_rollout", "training.log_samples", "data.prompt_key", "data.answer_key",
            "data.max_prompt_length", "data.max_response_length", "algorithm.adv_estimator", "algorithm.adv_eps",
            "algorithm.clip_ratio_low", "algorithm.clip_ratio_high", "algorithm.clip_ratio_c", "algorithm.use_kl_loss",
            "algorithm.kl_coef", "algorithm.kl_estimator", "algorithm.entropy_coef", "algorithm.loss_agg_mode",
            "algorithm.dynamic_filtering", "algorithm.tis_clip", "training.rollout_steps"),
    "grpo": ("training.epochs", "training.train_iters", "data.seq_length", "data.packing", "data.messages_key"),
    "lm_smoke": ("data.*", "rollout.*", "reward.*", "algorithm.*", "vps.*", "sampler.*", "eval.*", "checkpoint.*",
                 "training.epochs", "training.rollout_batch_size", "training.eval_interval",
                 "training.max_tokens_per_micro_batch", "training.max_skipped_steps", "training.async_rollout",
                 "training.log_samples", "training.rollout_steps", "model.hf_path", "model.tokenizer_path",
                 "logging.log_interval"),
}


def unread_keys(cfg: RunConfig) -> list[str]:
    """Keys set away from their default that ``training.mode`` never reads (see UNREAD_KEYS)."""
    default = to_dict(RunConfig())
    given = to_dict(cfg)
    out = []
    for pattern in UNREAD_KEYS.get(cfg.training.mode, ()):
        section, _, key = pattern.partition(".")
        keys = default[section].keys() if key == "*" else [key]
        out += [f"{section}.{k}" for k in keys if given[section][k] != default[section][k]]
    return out


def field_docs(cls: type) -> dict[str, str]:
    """Field -> one-line doc, read from the string literal after each field (for --help and docs)."""
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
            docs[node.target.id] = str(nxt.value.value)
    return docs


# --------------------------------------------------------------------------------------------------
# Cross-field validation
# --------------------------------------------------------------------------------------------------


def _check(cond: bool, msg: str) -> None:
    if not cond:
        raise ConfigError(msg)


def validate(cfg: RunConfig, world_size: Optional[int] = None, nnodes: Optional[int] = None,
             launch: bool = False) -> None:
    """Impossible combinations, each reported with the key that has to change; with ``world_size`` also the
    layout on that world. ``launch``: the config is about to run (the launcher, the workers), so the inputs
    its training mode needs (data files, model) must be set too."""
    from megatron_mmr1.models.presets import resolve_model_dims

    p, t = cfg.parallel, cfg.training
    _check(p.tp >= 1, f"parallel.tp={p.tp} must be >= 1")
    _check(p.pp >= 1, f"parallel.pp={p.pp} must be >= 1")

    m = cfg.model
    if m.recompute_modules is not None:
        _check(m.recompute == "selective", "model.recompute_modules needs model.recompute=selective")
        bad = sorted(set(m.recompute_modules) - {"core_attn", "mlp", "layernorm"})
        _check(not bad, f"model.recompute_modules: {bad} not among core_attn, mlp, layernorm")

    dims = resolve_model_dims(cfg.model)
    heads, groups = dims["num_attention_heads"], dims["num_query_groups"]
    _check(heads % groups == 0, f"model.num_query_groups={groups} does not divide num_attention_heads={heads}")
    check_parallel_dims(dims, p.tp, p.pp)
    _check_mcore_features(cfg, world_size)

    dp = None
    if world_size is not None:
        _check(world_size % (p.tp * p.pp) == 0,
               f"world size {world_size} is not divisible by parallel.tp*parallel.pp={p.tp * p.pp}")
        dp = world_size // (p.tp * p.pp)

    for name in ("rollout_batch_size", "global_batch_size", "micro_batch_size", "train_iters", "rollout_steps"):
        _check(getattr(t, name) >= 1, f"training.{name}={getattr(t, name)} must be >= 1")
    _check(t.global_batch_size % t.micro_batch_size == 0,
           f"training.global_batch_size={t.global_batch_size} is not a multiple of "
           f"training.micro_batch_size={t.micro_batch_size}")
    if dp is not None:
        _check(t.global_batch_size % (t.micro_batch_size * dp) == 0,
               f"training.global_batch_size={t.global_batch_size} is not a multiple of "
               f"micro_batch_size*dp={t.micro_batch_size}*{dp}")
    if t.mode == "grpo":
        samples = t.rollout_batch_size * cfg.rollout.n
        _check(samples % t.global_batch_size == 0,
               f"training.global_batch_size={t.global_batch_size} does not divide the "
               f"{samples} responses of a step (rollout_batch_size*rollout.n)")
        _check(cfg.rollout.n >= 1, f"rollout.n={cfg.rollout.n} must be >= 1")
        _check_pipeline_sync(cfg)
        _check_colocate_layout(cfg, world_size, nnodes)
        _check(not (cfg.rollout.colocate and t.async_rollout),
               "training.async_rollout=true with rollout.colocate=true: colocated servers release their memory "
               "while the trainer runs, so the next step's rollouts would stall; set one of them to false")
        _check_sglang_seed(cfg)

    _check(0.0 <= cfg.sampler.lam <= 1.0, f"sampler.lam={cfg.sampler.lam} must be in [0, 1]")
    _check(0.0 <= cfg.vps.momentum < 1.0, f"vps.momentum={cfg.vps.momentum} must be in [0, 1)")
    _check(cfg.vps.alpha >= 0 and cfg.vps.beta >= 0 and cfg.vps.alpha + cfg.vps.beta > 0,
           f"vps.alpha={cfg.vps.alpha}, vps.beta={cfg.vps.beta}: need non-negative weights, not both 0")
    known_tds = {"self_bleu", "distinct_n", "edit_distance"}
    for m in cfg.vps.tds_metrics:
        _check(m in known_tds, f"vps.tds_metrics: unknown metric '{m}' (known: {sorted(known_tds)})")
    _check(cfg.vps.beta == 0 or cfg.vps.tds_metrics, "vps.beta > 0 needs at least one vps.tds_metrics entry")
    _check(cfg.vps.update_interval >= 1, f"vps.update_interval={cfg.vps.update_interval} must be >= 1")
    _check(cfg.vps.num_rollouts >= 2, f"vps.num_rollouts={cfg.vps.num_rollouts} must be >= 2 (variance)")
    _check(cfg.vps.scoring_batch_size >= 1, f"vps.scoring_batch_size={cfg.vps.scoring_batch_size} must be >= 1")
    _check(cfg.vps.stale_after >= 0, f"vps.stale_after={cfg.vps.stale_after} must be >= 0")
    _check(cfg.vps.prior >= 0, f"vps.prior={cfg.vps.prior} must be >= 0 (a sampling weight)")
    _check(not (cfg.sampler.type == "vas" and cfg.vps.refresh == "training" and cfg.rollout.n < 2),
           f"vps.refresh=training scores prompts from the training groups: rollout.n={cfg.rollout.n} must be >= 2")

    a = cfg.algorithm
    _check(0 <= a.clip_ratio_low < 1, f"algorithm.clip_ratio_low={a.clip_ratio_low} must be in [0, 1)")
    _check(a.clip_ratio_high >= 0, f"algorithm.clip_ratio_high={a.clip_ratio_high} must be >= 0")
    _check(a.clip_ratio_c is None or a.clip_ratio_c > 1,
           f"algorithm.clip_ratio_c={a.clip_ratio_c} must be > 1 (dual clip)")
    _check(cfg.data.min_pixels <= cfg.data.max_pixels,
           f"data.min_pixels={cfg.data.min_pixels} exceeds data.max_pixels={cfg.data.max_pixels}")
    _check(cfg.rollout.temperature > 0, f"rollout.temperature={cfg.rollout.temperature} must be > 0")
    _check(0 <= cfg.optim.min_lr <= cfg.optim.lr,
           f"optim.min_lr={cfg.optim.min_lr} must be in [0, optim.lr={cfg.optim.lr}] (the decay floor)")
    _check(not (cfg.rollout.colocate and cfg.rollout.pause_mode == "in_place"),
           "rollout.pause_mode=in_place keeps requests inside SGLang, which then refuses "
           "/release_memory_occupation (server not idle): use abort or retract with rollout.colocate")
    _check(0 < cfg.rollout.top_p <= 1, f"rollout.top_p={cfg.rollout.top_p} must be in (0, 1]")
    _check_standin_sync(cfg)
    _check_offload(cfg)
    # After the structural checks, so a wrong layout or batch is reported before what the mode reads.
    if launch:
        _check_offload_runtime(cfg)
        _check_mode_inputs(cfg)
    _check(t.mode != "grpo" or t.train_iters == TrainingConfig.train_iters,
           f"training.train_iters={t.train_iters} counts optimizer steps (SFT, lm_smoke); a GRPO run's length is "
           f"training.rollout_steps (set training.rollout_steps={t.train_iters} instead)")


def _check_mcore_features(cfg: RunConfig, world_size: Optional[int]) -> None:
    """megatron-core switches (docs/training.md): what each needs, and the ones this trainer refuses."""
    from megatron_mmr1.models.presets import resolve_model_dims

    p, m = cfg.parallel, cfg.model
    for key in ("vpp", "cp"):
        _check(getattr(p, key) >= 1, f"parallel.{key}={getattr(p, key)} must be >= 1")
    if p.vpp > 1:
        layers = resolve_model_dims(m)["num_layers"]
        _check(p.pp > 1, f"parallel.vpp={p.vpp} needs parallel.pp > 1 (virtual stages interleave pipeline ranks)")
        _check(layers % (p.pp * p.vpp) == 0, f"parallel.vpp={p.vpp}: model.num_layers={layers} is not divisible by "
               f"parallel.pp*parallel.vpp={p.pp}*{p.vpp} (every virtual stage gets the same number of layers)")
        _check(cfg.training.mode != "lm_smoke", f"parallel.vpp={p.vpp} with training.mode=lm_smoke: the smoke model "
               "is one chunk per rank; use parallel.vpp=1 there")
    if world_size is not None and p.cp > 1:  # cp = 1: the tp*pp check of validate speaks
        _check(world_size % (p.tp * p.pp * p.cp) == 0, f"world size {world_size} is not divisible by "
               f"parallel.tp*parallel.pp*parallel.cp={p.tp}*{p.pp}*{p.cp}")
    _check(p.cp == 1, f"parallel.cp={p.cp}: context parallelism is not wired into the packed (THD) micro-batches, "
           "M-RoPE positions and fused log-prob losses of this trainer yet; set parallel.cp=1 "
           "(megatron's local attention refuses CP too: it needs Transformer Engine)")
    _check(not p.tp_comm_overlap, "parallel.tp_comm_overlap=true: Transformer Engine userbuffers are allocated for a "
           "fixed tokens-per-micro-batch shape and this trainer's packed micro-batches vary in length; set it to false")
    _check(not p.overlap_param_gather or p.use_distributed_optimizer,
           "parallel.overlap_param_gather=true needs parallel.use_distributed_optimizer=true")
    _check(not p.overlap_param_gather, "parallel.overlap_param_gather=true: params gathered in the next forward would "
           "be stale when the weight sync, the reference-policy swap and checkpointing read them between steps; "
           "not supported yet, set it to false")
    if m.recompute == "selective" and m.recompute_modules and "layernorm" in m.recompute_modules:
        from megatron_mmr1.models.language import uses_te

        _check(uses_te(m), "model.recompute_modules=[layernorm] needs Transformer Engine (megatron-core 0.16.1's norm "
               "checkpoint calls TE's FP8 state; TE layers fuse the norms anyway): drop layernorm from the list")


def _check_pipeline_sync(cfg: RunConfig) -> None:
    """With PP > 1 every stage's layers must reach the servers: the distributed sync has an update group per
    stage, the colocated sync broadcasts each stage's buckets to the other stages (rollout.colocate); a
    non-colocated tensor or disk sync has one sender rank, which holds only its own stage."""
    p, r = cfg.parallel, cfg.rollout
    if p.pp > 1 and not r.colocate and r.weight_sync != "distributed":
        raise ConfigError(f"parallel.pp={p.pp} with rollout.weight_sync={r.weight_sync}: pipeline stages need "
                          "rollout.weight_sync=distributed or rollout.colocate=true (or parallel.pp=1)")


def _check_mode_inputs(cfg: RunConfig) -> None:
    """What each training mode needs from data and model (checked before any server or rank starts)."""
    t, d, m = cfg.training, cfg.data, cfg.model
    if t.mode not in ("sft", "grpo"):
        return
    kind = {"sft": "sft", "grpo": "rl"}[t.mode]
    _check(d.kind == kind, f"training.mode={t.mode} needs data.kind={kind} "
           f"({'conversation' if kind == 'sft' else 'problem/answer'} records), not data.kind={d.kind}")
    _check(bool(d.train_files), f"training.mode={t.mode} needs data.train_files")
    _check(bool(m.tokenizer_path or m.hf_path), f"training.mode={t.mode} needs model.hf_path (or model.tokenizer_path)")
    if t.mode == "grpo":
        _check(bool(cfg.rollout.server_urls or m.hf_path),
               "stand-in rollout servers load model.hf_path: set it, or rollout.server_urls")


def _check_colocate_layout(cfg: RunConfig, world_size: Optional[int], nnodes: Optional[int]) -> None:
    """Colocated sync: each node's servers get CUDA-IPC handles from that node's trainer ranks, server TP rank r
    from the rank on its GPU (rollout.colocate.colocated_plan; with the world size known: the full layout).
    The stand-ins (rollout.backend=local) are fed by rank 0 through its own node's shared memory."""
    r = cfg.rollout
    if not r.colocate or nnodes is None:
        return
    if r.backend == "local":
        _check(nnodes == 1, f"rollout.colocate=true with rollout.backend=local on {nnodes} nodes: rank 0 feeds the "
               "CPU stand-ins through its own node's shared memory; use one node or rollout.backend=sglang")
        return
    from megatron_mmr1.rollout.colocate import LayoutError, check_servers_per_node, colocated_plan

    servers, tp = len(r.server_urls) or r.num_servers, r.server_tp or 1
    try:
        if world_size is None:  # the launcher, before the trainer starts: GPUs per node not known yet
            check_servers_per_node(servers, nnodes)
        else:
            _check(world_size % nnodes == 0, f"world size {world_size} is not the same number of ranks on each of "
                   f"{nnodes} nodes (rollout.colocate=true)")
            colocated_plan(world_size, world_size // nnodes, servers, tp)
    except LayoutError as e:
        raise ConfigError(str(e)) from None


def _check_sglang_seed(cfg: RunConfig) -> None:
    """SGLang copies a request's sampling params to each of its n samples (one ``sampling_seed``, n identical
    responses) and reads the seed only under --enable-deterministic-inference (checked at SGLang 0.5.23);
    VAS scoring asks for vps.num_rollouts >= 2 samples per prompt, so seeds cannot be per sample there."""
    r = cfg.rollout
    _check(not (r.seed is not None and r.backend == "sglang"),
           f"rollout.seed={r.seed} with rollout.backend=sglang: SGLang gives all n samples of a prompt one "
           "sampling_seed (identical responses); set rollout.seed=null (seeds are for rollout.backend=local)")


def _check_offload(cfg: RunConfig) -> None:
    """rollout.offload_trainer hands the trainer's GPU memory to colocated servers while they generate;
    optim.cpu_offload is megatron-core's HybridDeviceOptimizer: it runs on CUDA streams, and megatron builds it
    through the distributed optimizer's precision-aware path (as verl and slime configure it)."""
    r, o = cfg.rollout, cfg.optim
    _check(not r.offload_trainer or r.colocate,
           "rollout.offload_trainer=true needs rollout.colocate=true (the trainer leaves the GPU to servers on it)")
    _check(0.0 <= o.offload_fraction <= 1.0, f"optim.offload_fraction={o.offload_fraction} must be in [0, 1]")
    if not o.cpu_offload:
        return
    _check(cfg.parallel.use_distributed_optimizer,
           "optim.cpu_offload=true needs parallel.use_distributed_optimizer=true (megatron-core builds its "
           "HybridDeviceOptimizer through the distributed optimizer)")


def _check_offload_runtime(cfg: RunConfig) -> None:
    """What optim.cpu_offload needs from the machine it runs on (a config planned or printed elsewhere is fine)."""
    if not cfg.optim.cpu_offload:
        return
    import importlib.util

    import torch

    _check(cfg.parallel.backend != "gloo" and torch.cuda.is_available(),
           "optim.cpu_offload=true needs CUDA (megatron-core's HybridDeviceOptimizer and distributed optimizer run "
           "on CUDA tensors and streams): set optim.cpu_offload=false on CPU / parallel.backend=gloo")
    _check(importlib.util.find_spec("transformer_engine") is not None,
           "optim.cpu_offload=true needs transformer-engine (the gpu extra): megatron-core 0.16.1 reads its version "
           "when it configures the precision-aware optimizer that the CPU offload runs through")


def _check_standin_sync(cfg: RunConfig) -> None:
    """The CPU stand-in server (rollout.backend=local) cannot open CUDA-IPC handles (it lacks SGLang's reductions
    and a CUDA context); its distributed sync runs over gloo and its disk sync reads files, on any machine."""
    r = cfg.rollout
    if r.backend != "local" or not (r.colocate or r.weight_sync == "tensor") or cfg.parallel.backend == "gloo":
        return  # a gloo trainer keeps its weights on the CPU: they travel as shared memory
    import torch

    used = "rollout.colocate=true" if r.colocate else "rollout.weight_sync=tensor"
    _check(not torch.cuda.is_available(),
           f"rollout.backend=local (the CPU stand-in server) cannot receive CUDA-IPC weights ({used}) on a CUDA "
           "machine: use rollout.weight_sync=distributed or disk with rollout.colocate=false, rollout.backend=sglang, "
           "or parallel.backend=gloo")


def check_parallel_dims(dims: dict[str, Any], tp: int, pp: int) -> None:
    """TP must split heads, query groups, FFN and vocab evenly; PP needs a layer per stage. The one
    check behind config validation, model construction and the converter."""
    for name in ("num_attention_heads", "num_query_groups", "ffn_hidden_size", "vocab_size"):
        _check(dims[name] % tp == 0, f"parallel.tp={tp} does not divide model.{name}={dims[name]}")
    _check(pp <= dims["num_layers"], f"parallel.pp={pp} is larger than model.num_layers={dims['num_layers']}")
