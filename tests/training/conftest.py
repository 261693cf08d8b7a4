"""Shared fixtures of the trainer tests: the synthetic task, its tokenizer and a tiny HF policy."""

from types import SimpleNamespace

import pytest


@pytest.fixture(scope="session")
def task(tmp_path_factory):
    """Synthetic image-math task (48 RL prompts, 48 SFT traces), tokenizer, tiny random HF policy."""
    from megatron_mmr1.data.synthetic import generate
    from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint

    root = tmp_path_factory.mktemp("task")
    paths = generate(root / "data", num=48, seed=0, num_sft=48, tokenizer=True)
    hf = make_tiny_hf_checkpoint(root / "hf_tiny", paths["tokenizer"], seed=0, logit_scale=20.0)
    return SimpleNamespace(root=root, hf=str(hf), tokenizer=str(paths["tokenizer"]), sft=str(paths["sft_train"]),
                           rl_train=str(paths["rl_train"]), rl_val=str(paths["rl_val"]))


def sft_overrides(task, out_dir, *extra: str) -> list[str]:
    return [f"model.hf_path={task.hf}", f"model.tokenizer_path={task.tokenizer}", f"data.train_files=[{task.sft}]",
            f"output_dir={out_dir}", "logging.progress=false", "training.global_batch_size=8",
            "training.micro_batch_size=2", *extra]
