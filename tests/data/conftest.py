"""Shared fixtures for the data tests: a small synthetic task and the tiny tokenizer, built once."""

from __future__ import annotations

import warnings

import pytest

from megatron_mmr1.config import DataConfig


@pytest.fixture(scope="session")
def synth(tmp_path_factory):
    """24 RL + 16 SFT synthetic items with PNG images and the tiny tokenizer trained on them."""
    from megatron_mmr1.data.synthetic import generate

    out = tmp_path_factory.mktemp("synth")
    return generate(out, num=24, seed=7, val_fraction=0.1, num_sft=16, tokenizer=True)


@pytest.fixture(scope="session")
def tokenizer(synth):
    from megatron_mmr1.data.tokenizer import load_tokenizer

    return load_tokenizer(synth["tokenizer"])


# image_decoder=pillow: the tests compare pixel_values with CPU references; "auto" would pick DALI on
# the GPU on a CUDA machine (test_dali.py covers that path).
@pytest.fixture
def rl_cfg(synth):
    return DataConfig(kind="rl", train_files=[str(synth["rl_train"])], num_workers=0, image_decoder="pillow")


@pytest.fixture
def sft_cfg(synth):
    return DataConfig(kind="sft", train_files=[str(synth["sft_train"])], seq_length=2048, num_workers=0,
                      image_decoder="pillow")


@pytest.fixture(scope="session")
def hf_image_processor():
    """transformers' Qwen2-VL image processor (the PIL backend: torchvision is not installed here)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as P
        except ImportError:  # older transformers: the slow processor is the PIL one
            from transformers import Qwen2VLImageProcessor as P
    return P(min_pixels=7056, max_pixels=1048576)
