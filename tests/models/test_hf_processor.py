"""The HF export carries a processor that ``AutoProcessor`` loads without torchvision (what TRL and plain
transformers scripts take), and it preprocesses like the project: same pixels and grids as our Pillow path
and transformers' Qwen2-VL image processor (the outside reference), same prompt ids as our chat formatter."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from megatron_mmr1.data.chat import ChatFormatter
from megatron_mmr1.data.tokenizer import build_tokenizer
from megatron_mmr1.data.vision import PillowImageProcessor, VisionSpec
from megatron_mmr1.models.checkpoint import save_hf
from megatron_mmr1.models.hf_processor import load_processor, qwen2_vl_image_processor
from megatron_mmr1.models.tiny import make_tiny_hf_checkpoint
from tests.data.images import photo

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> Path:
    """The tiny checkpoint exported the way ``mmr1-convert mcore-to-hf`` / ``checkpoint.export_hf`` write HF
    directories (``save_hf``), from a source folder that has a tokenizer but no processor files."""
    tmp = tmp_path_factory.mktemp("proc")
    build_tokenizer(tmp / "tok", ["How many red circles are in the image? Answer with a number."])
    src = make_tiny_hf_checkpoint(tmp / "tiny", tmp / "tok", seed=1)
    bare = tmp / "bare"  # what older exports and the tokenizer folder hold: no processor
    bare.mkdir()
    for f in src.iterdir():
        if f.name not in ("processor_config.json", "hf_processor.py", "model.safetensors"):
            (bare / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("auto_map", None), cfg.pop("processor_class", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    tensors = load_file(str(src / "model.safetensors"))
    return save_hf(iter(tensors.items()), tmp / "export", hf_files_from=bare, total=len(tensors))


def test_auto_processor_loads_the_export_in_a_fresh_process(exported):
    code = ("import json, sys; from transformers import AutoProcessor\n"
            "p = AutoProcessor.from_pretrained(sys.argv[1], trust_remote_code=True)\n"
            "import importlib.util\n"
            "print(json.dumps({'cls': type(p).__name__, 'image': type(p.image_processor).__name__,"
            " 'video': p.video_processor is None, 'torchvision': importlib.util.find_spec('torchvision') is not None}))")
    proc = subprocess.run([sys.executable, "-c", code, str(exported)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    info = json.loads(proc.stdout.strip().splitlines()[-1])
    assert info["cls"] == "Qwen2_5_VLImageTextProcessor" and info["video"], info
    assert info["image"].startswith("Qwen2VLImageProcessor"), info


@pytest.mark.parametrize("h,w", [(112, 112), (37, 501), (300, 61), (1200, 1100)])
def test_export_image_preprocessing_matches_ours_and_transformers(exported, h, w):
    processor = load_processor(exported)
    img = photo(h, w, seed=h + w)
    got = processor.image_processor(images=[img], return_tensors="pt")
    ours = PillowImageProcessor(VisionSpec(7056, 1048576))([img])
    ref = qwen2_vl_image_processor(7056, 1048576)(images=[img], return_tensors="pt")
    assert torch.equal(got["image_grid_thw"], ours.image_grid_thw)
    assert torch.equal(got["image_grid_thw"], ref["image_grid_thw"])
    assert torch.equal(got["pixel_values"], ref["pixel_values"])
    assert (got["pixel_values"] - ours.pixel_values).abs().max().item() <= 1e-6  # tests/data/test_vision.py


def test_export_prompt_ids_match_our_chat_formatter(exported):
    processor = load_processor(exported)
    fmt = ChatFormatter(processor.tokenizer)  # the MMR1 system prompt in the user turn, as the RL data
    img = photo(140, 140, seed=3)
    messages = fmt.rl_messages("<image>How many red circles are in the image? Answer with a number.", 1)
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    assert text == fmt.rl_prompt("<image>How many red circles are in the image? Answer with a number.", 1)
    got = processor(images=[img], text=[text], return_tensors="pt")
    ours = fmt.encode_prompt(text, PillowImageProcessor(VisionSpec())([img]).num_image_tokens())
    assert got["input_ids"][0].tolist() == ours


def test_export_refuses_videos(exported):
    with pytest.raises(ValueError, match="no video processor"):
        load_processor(exported)(text=["x"], videos=[[photo(28, 28)]])


def test_export_keeps_a_processor_the_source_has(tmp_path, exported):
    (tmp_path / "src").mkdir()
    for f in exported.iterdir():
        if f.suffix != ".safetensors" and f.name not in ("processor_config.json", "hf_processor.py"):
            (tmp_path / "src" / f.name).write_bytes(f.read_bytes())
    marker = {"image_processor_type": "Qwen2VLImageProcessor", "min_pixels": 3136, "max_pixels": 12845056}
    (tmp_path / "src" / "preprocessor_config.json").write_text(json.dumps(marker))
    out = save_hf(iter([("lm_head.weight", torch.zeros(2, 2))]), tmp_path / "out", hf_files_from=tmp_path / "src")
    assert json.loads((out / "preprocessor_config.json").read_text()) == marker
    assert not (out / "processor_config.json").exists()
