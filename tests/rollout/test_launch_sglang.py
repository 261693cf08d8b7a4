"""tools/launch_sglang.py: command lines for SGLang 0.5.23 (flags from its ServerArgs field names),
and a live fleet of stand-in servers + the real router: health wait, URL output, a dead server
that does not take the rest down and is restarted, the stop command."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import requests

from tests.rollout.helpers import ROOT, free_port

from megatron_mmr1.rollout import launch as launch_sglang  # noqa: E402  (tools/launch_sglang.py is its CLI)


def test_sglang_command_lines_place_tp_groups_on_gpus():
    args, extra = launch_sglang.parse_args([
        "--model", "/ckpt/qwen", "--num-servers", "2", "--tp", "2", "--gpu-offset", "4", "--host", "0.0.0.0",
        "--advertise-host", "node7", "--base-port", "31000", "--router-port", "30000", "--no-find-free-ports", "--router-prometheus-port", "29100",
        "--enable-memory-saver", "--", "--mem-fraction-static", "0.6",
    ])
    ls = launch_sglang.build_launches(args, extra)
    assert [l.name for l in ls] == ["server0", "server1", "router"]
    s0, s1, router = ls
    assert s0.cmd[1:3] == ["-m", "sglang.launch_server"]
    for flag, value in [("--model-path", "/ckpt/qwen"), ("--tp-size", "2"), ("--host", "0.0.0.0"), ("--port", "31000")]:
        assert s0.cmd[s0.cmd.index(flag) + 1] == value
    assert "--enable-memory-saver" in s0.cmd and s0.cmd[-2:] == ["--mem-fraction-static", "0.6"]
    assert (s0.env["CUDA_VISIBLE_DEVICES"], s1.env["CUDA_VISIBLE_DEVICES"]) == ("4,5", "6,7")
    assert (s0.url, s1.url) == ("http://node7:31000", "http://node7:31001")
    assert router.cmd[1:3] == ["-m", "sglang_router.launch_router"]
    i = router.cmd.index("--worker-urls")
    assert router.cmd[i + 1 : i + 3] == [s0.url, s1.url] and router.url == "http://node7:30000"
    assert router.cmd[router.cmd.index("--prometheus-port") + 1] == "29100"


def test_dry_run_prints_commands(capsys):
    assert launch_sglang.main(["--model", "m", "--num-servers", "1", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "CUDA_VISIBLE_DEVICES=0" in out and "sglang.launch_server" in out


def _answered(url: str, n: int) -> int:
    ok = 0
    for _ in range(n):
        r = requests.post(url + "/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2}}, timeout=120)
        ok += r.status_code == 200 and r.json()["meta_info"]["completion_tokens"] >= 1
    return ok


def _answers(url: str) -> bool:
    try:
        return requests.get(url + "/health", timeout=5).status_code == 200
    except requests.ConnectionError:
        return False


@pytest.mark.slow
def test_foreground_fleet_survives_a_dead_server_restarts_it_and_stops(tiny_ckpt, tmp_path):
    """Two stand-ins + the real router under the foreground launcher: health wait, URL lines and
    file; SIGKILL one server and every request through the router is still answered (the rest keep
    serving); --restart brings it back on its port; `launch_sglang.py stop` ends everything."""
    url_file = tmp_path / "urls.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "launch_sglang.py"), "--backend", "local", "--model", str(tiny_ckpt[0]),
         "--num-servers", "2", "--base-port", str(free_port()), "--router-port", str(free_port()),
         "--router-prometheus-port", str(free_port()), "--restart",
         "--log-dir", str(tmp_path / "logs"), "--url-file", str(url_file), "--timeout-s", "180"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
    )
    try:
        lines = []
        end = time.monotonic() + 300
        while time.monotonic() < end and not any(l.startswith("router ") for l in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        assert [l.split()[0] for l in lines] == ["server", "server", "router"], (
            lines, proc.stderr.read() if proc.poll() is not None else "")
        state = json.loads(url_file.read_text())
        assert state["servers"] == [l.split()[1] for l in lines[:2]] and state["router"] == lines[2].split()[1]
        assert state["launcher_pid"] == proc.pid and set(state["pids"]) == {"server0", "server1", "router"}
        assert _answered(state["router"], 2) == 2

        victim = state["pids"]["server0"]
        os.kill(victim, signal.SIGKILL)
        while _answers(state["servers"][0]):
            time.sleep(0.1)
        assert _answered(state["router"], 4) == 4  # the survivor and the router keep serving
        assert proc.poll() is None

        end = time.monotonic() + 240  # --restart: server0 comes back on its port, with a new pid
        while time.monotonic() < end and json.loads(url_file.read_text())["pids"]["server0"] == victim:
            time.sleep(0.5)
        assert json.loads(url_file.read_text())["pids"]["server0"] != victim
        assert requests.get(state["servers"][0] + "/health", timeout=30).status_code == 200

        stop = subprocess.run([sys.executable, str(ROOT / "tools" / "launch_sglang.py"), "stop", "--url-file",
                               str(url_file)], capture_output=True, text=True, timeout=120, cwd=str(ROOT))
        assert stop.returncode == 0, stop.stderr
        assert proc.wait(timeout=60) == 0 and not url_file.exists()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=60)
    for u in state["servers"] + [state["router"]]:  # the stop took the servers and the router down
        assert not _answers(u), f"{u} still answers after the launcher stopped"


def test_pixel_flags_give_the_trainers_image_token_counts():
    """Reference: transformers' Qwen2-VL image processor called as SGLang 0.5.23's Qwen-VL processor
    calls it (``processor.image_processor(images, **mm_process_config["image"])``). With the
    checkpoint's published limits (min 3136, max 12845056 pixels) the counts differ from the
    trainer's (MMR1: 7056 / 1048576); with the launcher's --mm-process-config they are equal."""
    from PIL import Image
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    from megatron_mmr1.data.vision import VisionSpec

    args, _ = launch_sglang.parse_args(["--model", "m", "--no-find-free-ports"])
    (server,) = launch_sglang.build_launches(args, [])
    image_cfg = json.loads(server.cmd[server.cmd.index("--mm-process-config") + 1])["image"]
    qwen = Qwen2VLImageProcessorPil(size={"shortest_edge": 3136, "longest_edge": 12845056})
    for w, h in [(1920, 1080), (64, 64), (300, 7000)]:
        img = Image.new("RGB", (w, h))
        trainer = VisionSpec().num_image_tokens(h, w)
        tokens = lambda **kw: int(qwen(images=[img], return_tensors="pt", **kw)["image_grid_thw"].prod()) // 4  # noqa: E731
        assert tokens() != trainer  # without the flag: 1920x1080 gives 2691 tokens vs 1296
        assert tokens(**image_cfg) == trainer
