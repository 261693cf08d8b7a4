"""Contract test: every request the rollout layer builds, sent to SGLang 0.5.23's own HTTP app.

Outside reference: the pinned ``sglang==0.5.23`` wheel (``make env`` installs it with ``--no-deps``
into ``.venv/sglang-cpu``), run by ``tests/rollout/sglang_app.py`` in a subprocess: SGLang's routes
and pydantic parsing, ``GenerateReqInput.normalize_batch_and_arguments``, ``MultiprocessingSerializer``
with its restricted unpickler, ``init_custom_process_group``, the memory-saver tag rules and the
``ServerArgs`` command-line parser. Only the tokenizer manager (the GPU engine's front) is a stub,
which records what each call parsed to. The project's own client and senders talk to it over HTTP.
The same generate bodies go to the CPU stand-in server, which must accept and refuse the same ones.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import requests
import torch
from PIL import Image

from megatron_mmr1.config import RolloutConfig
from megatron_mmr1.data.sample import Sample
from megatron_mmr1.data.vision import PillowImageProcessor, VisionSpec, decode_rgb, normalized_png
from megatron_mmr1.rollout.client import RolloutClient
from megatron_mmr1.rollout.protocol import image_data_url, mm_process_config
from megatron_mmr1.rollout.weight_sync import DiskWeightSender, DistributedWeightSender, TensorWeightSender
from megatron_mmr1.utils.net import free_port, wait_healthy
from tests.rollout.helpers import ROOT

SGLANG_DIR = Path(os.environ.get("MMR1_SGLANG_CPU_DIR") or ROOT / ".venv" / "sglang-cpu")
PAD = "<|vision_start|><|image_pad|><|vision_end|>"


def sglang_env() -> dict:
    if not (SGLANG_DIR / "sglang").is_dir():
        pytest.fail(f"SGLang's pinned wheel is not in {SGLANG_DIR}: run `make env` "
                    "(installs sglang==0.5.23 --no-deps for this contract test)")
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(ROOT), str(SGLANG_DIR)]))


@pytest.fixture(scope="module")
def sglang_app(tiny_ckpt, tmp_path_factory):
    port = free_port()
    log = tmp_path_factory.mktemp("sglang_app") / "app.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, "-W", "ignore", "-m", "tests.rollout.sglang_app", "--port", str(port),
                                 "--model", str(tiny_ckpt[0])], stdout=f, stderr=subprocess.STDOUT,
                                env=sglang_env(), cwd=str(ROOT))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, 300, log)
        yield SimpleNamespace(url=url, state=lambda: requests.get(url + "/_contract/log", timeout=30).json())
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def _png(size=(40, 30), color=(10, 200, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


def _gradient(size=(40, 24), mode="RGB") -> Image.Image:
    """Pixels that differ everywhere, so a rotation or a dropped alpha changes them."""
    w, h = size
    img = Image.new(mode, size)
    img.putdata([(7 * x % 256, 11 * y % 256, (x * y) % 256, (255 * x) // w)[:len(mode)]
                 for y in range(h) for x in range(w)])
    return img


def _jpeg(size=(40, 24), orientation: int = 1) -> bytes:
    buf = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = orientation
    _gradient(size).save(buf, format="JPEG", quality=90, exif=exif.tobytes())
    return buf.getvalue()


def _image_kinds() -> dict[str, bytes]:
    """JPEG (raw base64 starts with "/"), EXIF-rotated JPEG and PNG, RGBA with half-transparent pixels."""
    rotated_png, rgba = io.BytesIO(), io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    _gradient((36, 20)).save(rotated_png, format="PNG", exif=exif.tobytes())
    _gradient((30, 22), "RGBA").save(rgba, format="PNG")
    return {"jpeg": _jpeg(), "jpeg_exif_rotated": _jpeg((44, 28), 6), "png_exif_rotated": rotated_png.getvalue(),
            "png_rgba": rgba.getvalue()}


@pytest.mark.parametrize("kind", sorted(_image_kinds()))
def test_images_reach_sglang_as_the_trainer_decodes_them(sglang_app, kind):
    """What SGLang's own Qwen2.5-VL loader decodes from the client's ``image_data`` is the trainer's
    image: same size, orientation and pixels. Raw base64 got HTTP 500 for every JPEG (read as a file
    path); the loader ignores EXIF orientation and drops alpha, so the trainer's decode is sent."""
    raw = _image_kinds()[kind]
    spec = VisionSpec()
    trainer = PillowImageProcessor(spec)([raw])
    prompt = Sample(index=0, prompt=f"see {PAD}", images=[raw], prompt_ids=[], image_grid_thw=trainer.image_grid_thw)
    before = len(sglang_app.state()["log"])
    client = RolloutClient(RolloutConfig(n=1, max_retries=0), [sglang_app.url], max_new_tokens=2, vision=spec)
    (out,) = client.generate([prompt])
    assert out.response_ids == [5, 6]
    (rec,) = [e for e in _new_entries(sglang_app, before) if e["endpoint"] == "/generate"]
    (decoded,) = rec["requests"][0]["decoded"]
    want = decode_rgb(raw)
    assert decoded["size"] == [want.width, want.height]
    assert decoded["sha256"] == hashlib.sha256(np.asarray(want).tobytes()).hexdigest()


def _new_entries(app, before: int) -> list[dict]:
    return app.state()["log"][before:]


@pytest.mark.parametrize("n", [1, 3])
def test_generate_bodies_parse_to_what_we_meant(sglang_app, n):
    """Text as ids, text, one image, two images: each prompt reaches SGLang as one request of n,
    with its own images (the two-image prompt with n > 1 was refused with HTTP 400 before)."""
    imgs = [_png(), _png((50, 20), (200, 0, 0))]
    prompts = [
        Sample(index=0, prompt="ids only", prompt_ids=[11, 12, 13]),
        Sample(index=1, prompt="text only"),
        Sample(index=2, prompt=f"one {PAD} image", images=imgs[:1]),
        Sample(index=3, prompt=f"two {PAD}{PAD} images", images=imgs),
    ]
    cfg = RolloutConfig(n=n, temperature=0.7, top_p=0.9, top_k=20, max_retries=0)
    before = len(sglang_app.state()["log"])
    out = RolloutClient(cfg, [sglang_app.url], max_new_tokens=7).generate(prompts)
    assert [s.index for s in out] == [i for i in range(4) for _ in range(n)]
    assert all(s.response_ids == [5, 6] and s.rollout_logprobs == [-0.5, -0.5] for s in out)

    records = [e for e in _new_entries(sglang_app, before) if e["endpoint"] == "/generate"]
    assert len(records) == 4
    by_prompt = {(r["requests"][0]["text"] or str(r["requests"][0]["input_ids"])): r for r in records}
    for p in prompts:
        rec = by_prompt[p.prompt if not p.prompt_ids else str(p.prompt_ids)]
        assert rec["is_single"] is (n == 1) and len(rec["requests"]) == n  # SGLang fans n out itself
        for req in rec["requests"]:
            if p.prompt_ids:
                assert req["input_ids"] == p.prompt_ids and req["text"] is None
            else:
                assert req["text"] == p.prompt
            assert (req["images"] or []) == [image_data_url(normalized_png(x)[0]) for x in p.images]
            assert req["return_logprob"] is True
            assert {k: req["sampling_params"][k] for k in ("max_new_tokens", "temperature", "top_p", "top_k", "n")} \
                == {"max_new_tokens": 7, "temperature": 0.7, "top_p": 0.9, "top_k": 20, "n": n}


def _named(seed: int) -> list[tuple[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [("model.layers.0.self_attn.q_proj.weight", torch.randn(4, 6, generator=g)),
            ("model.norm.weight", torch.randn(6, generator=g)),
            ("lm_head.weight", torch.randn(3, 6, generator=g).to(torch.bfloat16))]


def _digests(named) -> dict:
    return {n: {"shape": list(t.shape), "dtype": str(t.dtype).replace("torch.", ""), "sum": float(t.double().sum())}
            for n, t in named}


@pytest.mark.parametrize("flattened", [False, True])
def test_distributed_update_bodies(sglang_app, flattened):
    """Group set-up, session, per-tensor and flattened-bucket broadcasts, received by SGLang's group helper."""
    named = _named(1 + flattened)
    before = len(sglang_app.state()["log"])
    sender = DistributedWeightSender([sglang_app.url], backend="gloo", flattened=flattened, bucket_mb=1,
                                     group_name=f"contract{int(flattened)}")
    try:
        sender.update(named, weight_version="v7")
    finally:
        sender.close()
    entries = _new_entries(sglang_app, before)
    assert [e["endpoint"] for e in entries] == [
        "/init_weights_update_group", "/pause_generation", "/flush_cache", "/begin_weight_update",
        "/update_weights_from_distributed", "/update_weights_from_distributed",  # fp32 bucket, bf16 bucket
        "/end_weight_update", "/continue_generation", "/destroy_weights_update_group"]
    init = entries[0]["fields"]
    assert (init["rank_offset"], init["world_size"], init["backend"], init["group_name"]) == (
        1, 2, "gloo", f"contract{int(flattened)}")  # tp_size read from SGLang's /get_server_info
    assert entries[1]["fields"]["mode"] == "abort"
    updates = [e for e in entries if e["endpoint"] == "/update_weights_from_distributed"]
    received = {}
    for u in updates:
        f = u["fields"]
        assert f["load_format"] == ("flattened_bucket" if flattened else None)
        assert f["weight_version"] == "v7" and f["flush_cache"] is True
        received.update(u["tensors"])
    assert received == _digests(named)


def test_disk_and_colocated_bodies(sglang_app, tmp_path):
    """Disk update fields; colocated: pause before release (SGLang asserts an idle server), every
    released tag resumed (SGLang's offload set ends empty), tensors through SGLang's SafeUnpickler."""
    before = len(sglang_app.state()["log"])
    disk = DiskWeightSender([sglang_app.url], str(tmp_path / "sync"))
    disk.update(model_path="/ckpt/step7", weight_version="d1")
    disk.close()
    (entry,) = [e for e in _new_entries(sglang_app, before) if e["endpoint"] == "/update_weights_from_disk"]
    assert {k: entry["fields"][k] for k in ("model_path", "weight_version", "flush_cache")} == {
        "model_path": "/ckpt/step7", "weight_version": "d1", "flush_cache": True}

    named = _named(3)
    before = len(sglang_app.state()["log"])
    colo = TensorWeightSender([sglang_app.url], bucket_mb=1)
    colo.release()
    assert sglang_app.state()["offload_tags"] == ["cuda_graph", "kv_cache", "weights"]
    colo.update(named, weight_version="c1")
    colo.close()
    entries = _new_entries(sglang_app, before)
    assert [e["endpoint"] for e in entries][:2] == ["/pause_generation", "/release_memory_occupation"]
    resumes = [e["fields"]["tags"] for e in entries if e["endpoint"] == "/resume_memory_occupation"]
    assert resumes == [["weights"], ["kv_cache", "cuda_graph"]]
    assert [e["endpoint"] for e in entries][-1] == "/continue_generation"
    state = sglang_app.state()
    assert state["offload_tags"] == [] and state["paused"] is False
    got = {}
    for e in entries:
        if e["endpoint"] == "/update_weights_from_tensor":
            assert e["fields"]["weight_version"] == "c1"
            got.update(e["tensors"])
    assert got == _digests(named)


def test_launch_command_lines_parse_with_sglang_server_args(sglang_app):
    """tools/launch_sglang.py's flags, read by SGLang's own ServerArgs parser: pixel limits arrive as
    the mm_process_config dict that SGLang hands to the image processor."""
    from tests.rollout.test_launch_sglang import launch_sglang

    args, extra = launch_sglang.parse_args(["--model", "/ckpt/qwen", "--tp", "2", "--min-pixels", "7056",
                                            "--max-pixels", "1048576", "--enable-memory-saver", "--no-find-free-ports",
                                            "--", "--mem-fraction-static", "0.6"])
    (server,) = launch_sglang.build_launches(args, extra)
    assert server.cmd[1:3] == ["-m", "sglang.launch_server"]
    r = requests.post(sglang_app.url + "/_contract/server_args", json={"argv": server.cmd[3:]}, timeout=60)
    assert r.status_code == 200, r.text
    parsed = r.json()
    assert parsed["mm_process_config"] == mm_process_config(7056, 1048576)
    assert parsed["image_processor_backend"] == "pil"  # Pillow resize, as the trainer's (default: torchvision)
    assert (parsed["model_path"], parsed["tp_size"], parsed["port"], parsed["enable_memory_saver"],
            parsed["trust_remote_code"], parsed["mem_fraction_static"]) == ("/ckpt/qwen", 2, 30010, True, True, 0.6)


def test_stand_in_accepts_and_refuses_what_sglang_does(sglang_app, servers):
    a, b = _b64(_png()), _b64(_png((30, 30)))
    jpeg = _jpeg()
    sp = lambda n=1: {"max_new_tokens": 2, "n": n}  # noqa: E731
    bodies = [
        {"text": f"x {PAD}", "image_data": [_b64(jpeg)], "sampling_params": sp()},           # raw JPEG: a path
        {"text": f"x {PAD}", "image_data": [image_data_url(jpeg)], "sampling_params": sp()},  # data: URL
        {"text": f"x {PAD}{PAD}", "image_data": [a, b], "sampling_params": sp()},             # single: flat
        {"text": f"x {PAD}{PAD}", "image_data": [a, b], "sampling_params": sp(2)},            # n>1: flat refused
        {"text": f"x {PAD}{PAD}", "image_data": [[a, b]], "sampling_params": sp(2)},          # n>1: per prompt
        {"text": f"x {PAD}", "image_data": a, "sampling_params": sp(2)},                     # one image
        {"text": [f"p {PAD}", f"q {PAD}"], "image_data": [a, b], "sampling_params": sp()},    # batch, one each
        {"text": [f"p {PAD}", f"q {PAD}"], "image_data": [a], "sampling_params": sp()},       # batch, too few
        {"text": ["p", "q"], "sampling_params": [{"n": 1}, {"n": 2}]},                        # mixed n
        {"input_ids": [], "sampling_params": sp()},                                          # empty ids
        {"sampling_params": sp()},                                                           # no prompt
    ]
    verdicts = []
    for body in bodies:
        ours = requests.post(servers[0].url + "/generate", json=body, timeout=120).status_code
        theirs = requests.post(sglang_app.url + "/generate", json=body, timeout=120).status_code
        verdicts.append((ours == 200, theirs == 200))
    assert [o for o, _ in verdicts] == [t for _, t in verdicts], json.dumps(verdicts)
    assert {t for _, t in verdicts} == {True, False}  # both kinds are exercised


def test_cuda_ipc_pickling_uses_sglang_device_uuid_reductions():
    """With SGLang importable, CUDA tensors are pickled through SGLang's patched reducer (device
    UUID instead of index), registered for torch.Tensor in ForkingPickler."""
    code = (
        "from tests.rollout.sglang_app import install_placeholders\n"
        "install_placeholders()\n"
        "import torch\n"
        "from multiprocessing.reduction import ForkingPickler\n"
        "from torch.multiprocessing import reductions\n"
        "from megatron_mmr1.rollout.weight_sync import patch_cuda_ipc_reductions\n"
        "from sglang.srt.utils import patch_torch\n"
        "assert reductions.reduce_tensor is not patch_torch._reduce_tensor_modified\n"
        "patch_cuda_ipc_reductions()\n"
        "assert reductions.reduce_tensor is patch_torch._reduce_tensor_modified\n"
        "assert ForkingPickler._extra_reducers[torch.Tensor] is patch_torch._reduce_tensor_modified\n"
        "print('patched')\n"
    )
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=sglang_env(), cwd=str(ROOT),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "patched" in r.stdout, r.stderr[-3000:]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_ipc_handle_names_the_gpu_by_uuid():
    """On a GPU: the handle our colocated sender pickles carries the device UUID (what SGLang's
    server-side ``_device_from_maybe_uuid`` maps back under its own CUDA_VISIBLE_DEVICES)."""
    code = (
        "from tests.rollout.sglang_app import install_placeholders\n"
        "install_placeholders()\n"
        "import torch\n"
        "from torch.multiprocessing import reductions\n"
        "from megatron_mmr1.rollout.weight_sync import serialize_named_tensors\n"
        "t = torch.ones(4, device='cuda')\n"
        "serialize_named_tensors([('w', t)])\n"
        "_, args = reductions.reduce_tensor(t)\n"
        "assert args[6] == str(torch.cuda.get_device_properties(0).uuid), args[6]\n"
        "print('uuid')\n"
    )
    r = subprocess.run([sys.executable, "-W", "ignore", "-c", code], env=sglang_env(), cwd=str(ROOT),
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0 and "uuid" in r.stdout, r.stderr[-3000:]


def test_a_transposed_image_grid_stops_the_prompt_before_it_is_sent():
    """A trainer grid (t, h, w) other than the one the server will compute from the sent image stops
    the prompt: a transposed grid (EXIF applied on one side only) keeps the token count, so the
    prompt-length check cannot see it."""
    from megatron_mmr1.rollout.client import RolloutError, build_payload
    from megatron_mmr1.rollout.protocol import SamplingParams

    raw, spec = _jpeg((44, 28), orientation=6), VisionSpec()
    grid = PillowImageProcessor(spec)([raw]).image_grid_thw
    assert grid.tolist() == [[1, 8, 6]]  # displayed 28 wide, 44 high
    sample = Sample(index=3, prompt=f"x {PAD}", images=[raw], image_grid_thw=grid[:, [0, 2, 1]])
    with pytest.raises(RolloutError, match=r"image grids \(t, h, w\) \[\[1, 8, 6\]\], the trainer has \[\[1, 6, 8\]\]"):
        build_payload(sample, SamplingParams(n=1), vision=spec)
    sample.image_grid_thw = grid
    assert build_payload(sample, SamplingParams(n=1), vision=spec)["image_data"][0].startswith("data:image/png;base64,")
