"""One clear error, naming the problem, for each way a checkpoint or layout can be wrong."""

import json
import shutil

import pytest

from megatron_mmr1.config import ConfigError
from megatron_mmr1.models.checkpoint import CheckpointError, HFCheckpoint
from megatron_mmr1.models.convert import main
from tests.models.workers import make_hf_checkpoint


@pytest.fixture(scope="module")
def hf(tmp_path_factory):
    return make_hf_checkpoint(tmp_path_factory.mktemp("err") / "hf")


def test_wrong_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        HFCheckpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no config.json"):
        HFCheckpoint(tmp_path)


def test_missing_shard(hf, tmp_path):
    broken = tmp_path / "hf"
    shutil.copytree(hf, broken)
    (broken / "model-00003-of-00007.safetensors").unlink()
    with pytest.raises(CheckpointError, match="model-00003-of-00007.safetensors"):
        HFCheckpoint(broken)


def test_missing_tensor(hf, tmp_path):
    ckpt = HFCheckpoint(hf)
    with pytest.raises(CheckpointError, match="model.layers.9.mlp.up_proj.weight"):
        ckpt.read("model.layers.9.mlp.up_proj.weight")


def test_other_architecture(hf, tmp_path):
    other = tmp_path / "llama"
    shutil.copytree(hf, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg.update(model_type="llama", architectures=["LlamaForCausalLM"])
    (other / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="model_type='llama'.*not a Qwen2.5-VL"):
        HFCheckpoint(other)


def test_tp_not_dividing_heads(hf, tmp_path, capsys):
    from megatron_mmr1.models.convert import hf_to_mcore

    with pytest.raises(ConfigError, match="parallel.tp=3 does not divide model.num_attention_heads=4"):
        hf_to_mcore(hf, tmp_path / "out", tp=3)
    # The CLI reports it as one line and exit code 2, before starting any rank.
    assert main(["hf-to-mcore", "--hf", str(hf), "--out", str(tmp_path / "out"), "--tp", "3"]) == 2
    assert "does not divide" in capsys.readouterr().err


def test_mcore_to_hf_on_a_non_checkpoint(tmp_path):
    from megatron_mmr1.models.convert import mcore_to_hf

    with pytest.raises(CheckpointError, match="does not exist"):
        mcore_to_hf(tmp_path / "nope", tmp_path / "o")
    with pytest.raises(CheckpointError, match="no mmr1_model.json"):
        mcore_to_hf(tmp_path, tmp_path / "o")


def test_nested_key_layout_reads_the_same(hf, tmp_path):
    """transformers-4.5x saves (model.language_model.*, model.visual.*) read as the hub layout."""
    from safetensors.torch import load_file, save_file

    from megatron_mmr1.models.hf_adapter import to_layout

    nested = tmp_path / "nested"
    nested.mkdir()
    shutil.copy(hf / "config.json", nested / "config.json")
    tensors = {}
    for f in hf.glob("*.safetensors"):
        tensors.update(load_file(str(f)))
    save_file({to_layout(k, "nested"): v for k, v in tensors.items()}, str(nested / "model.safetensors"))
    a, b = HFCheckpoint(hf), HFCheckpoint(nested)
    assert b.layout == "nested" and a.layout == "hub"
    assert sorted(a.names()) == sorted(b.names())
    name = "model.layers.1.self_attn.q_proj.weight"
    assert (a.read(name, 0, 16, 48) == b.read(name, 0, 16, 48)).all()
    assert (b.read("visual.merger.mlp.0.weight") == tensors["visual.merger.mlp.0.weight"]).all()
