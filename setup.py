"""megatron-mmr1: Megatron-style trainer for MMR1 (long-CoT SFT + GRPO with Variance-Aware Sampling)."""

from setuptools import find_packages, setup

BASE = [
    "torch>=2.6",  # CPU build via constraints/cpu.txt; CUDA build on GPU machines
    "megatron-core>=0.16.1",  # TP/PP model, schedules, optimizer, dist checkpointing
    "triton==3.8.0",  # fused GRPO-loss / VPS kernels (interpreter on CPU); torch 2.14.1 pins 3.8
    "pyyaml",  # run configs
    "tensorboard",  # metrics
    "transformers>=4.50",  # HF Qwen2.5-VL reference model, tokenizer, image-processor parity
    "safetensors",  # HF checkpoint I/O
    "pillow",  # CPU image decoding
    "numpy",
    "rapidfuzz",  # C++ bit-parallel Levenshtein for the edit-distance TDS on CPU
    "pyarrow",  # parquet datasets
    "math-verify>=0.7",  # accuracy reward
    "tqdm",  # progress bars
    "einops",  # needed by megatron-core / mbridge model code
    "aiohttp",  # async rollout client + CPU stand-in rollout server
    "requests",  # simple synchronous SGLang admin calls
    "psutil",  # megatron dist_checkpointing writer processes
]

EXTRAS = {
    "gpu": [
        # GPU clusters only (CUDA builds; sglang hard-pins torch==2.14.1). Exact versions: constraints/gpu.lock,
        # installed by `make gpu-env`. transformer-engine-torch builds from source: --no-build-isolation.
        "transformer-engine[pytorch]>=2.9,<2.12",  # megatron-core 0.16.1's own pin (its dev extra)
        "sglang==0.5.23",  # the version rollout/protocol.py and the contract test are checked against; not [all]
        "sglang-router==0.3.2",
        "nvidia-dali-cuda120==2.4.0",
    ],
    "dev": [
        "pytest",
        "ruff",  # lint run by `make test` (rules in pyproject.toml)
        "nltk",  # reference definition of self-BLEU in tests and benchmarks
        "Levenshtein",  # the MMR1 reference approach (per-pair Levenshtein) in benchmarks
        "matplotlib",  # VAS simulation figures
        "liger-kernel==0.8.5",  # third-party GRPO loss: parity test and benchmark column of the fused loss
        "sglang-router==0.3.2",  # real router in front of CPU stand-in servers in tests
        "nvidia-dali-cuda120==2.4.0",  # DALI image pipeline: its CPU-only pipelines are tested without a GPU
    ],
    "trl": [
        # benchmark only (tools/bench_vs_trl.py, `make bench-trl`): TRL's GRPOTrainer side by side with ours.
        # Exact versions: constraints/trl-cpu.lock, installed --no-deps beside the venv, never by `make test`.
        "trl==1.16.0",
        "accelerate>=1.10.1",
        "datasets>=4.7.0",
    ],
}

setup(
    name="megatron-mmr1",
    version="0.1.0",
    description="Megatron-core trainer for multimodal reasoning: long-CoT SFT + GRPO with Variance-Aware Sampling (MMR1)",
    python_requires=">=3.10",
    # kernels/ has no __init__.py on purpose: from the repo root a folder named `kernels` must never shadow
    # Hugging Face's `kernels` package (transformers imports it). The import name is mmr1_kernels.
    packages=find_packages(include=["megatron_mmr1", "megatron_mmr1.*"])
    + find_packages("kernels", include=["mmr1_kernels", "mmr1_kernels.*"]),
    package_dir={"mmr1_kernels": "kernels/mmr1_kernels"},
    install_requires=BASE,
    extras_require=EXTRAS,
    entry_points={
        "console_scripts": [
            "mmr1-train=megatron_mmr1.train:main",
            "mmr1-convert=megatron_mmr1.models.convert:main",
            "mmr1-eval=megatron_mmr1.eval.cli:main",
        ]
    },
)
