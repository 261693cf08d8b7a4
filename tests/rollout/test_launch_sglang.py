"""tools/launch_sglang.py: command lines for SGLang 0.5.23 (flags from its ServerArgs field names),
and a live start of a stand-in server + the real router with health wait and URL output."""

import importlib.util
import json
import signal
import subprocess
import sys
import time

import requests

from tests.rollout.helpers import ROOT, free_port

spec = importlib.util.spec_from_file_location("launch_sglang", ROOT / "tools" / "launch_sglang.py")
launch_sglang = importlib.util.module_from_spec(spec)
sys.modules["launch_sglang"] = launch_sglang  # dataclasses look their module up there
spec.loader.exec_module(launch_sglang)


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


def test_live_local_backend_waits_for_health_and_prints_urls(tiny_ckpt, tmp_path):
    url_file = tmp_path / "urls.json"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tools" / "launch_sglang.py"), "--backend", "local", "--model", str(tiny_ckpt[0]),
         "--num-servers", "1", "--base-port", str(free_port()), "--router-port", str(free_port()),
         "--router-prometheus-port", str(free_port()),
         "--log-dir", str(tmp_path / "logs"), "--url-file", str(url_file), "--timeout-s", "180"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=str(ROOT),
    )
    try:
        lines = []
        end = time.monotonic() + 240
        while time.monotonic() < end and not any(l.startswith("router ") for l in lines):
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line.strip())
        assert [l.split()[0] for l in lines] == ["server", "router"], (lines, proc.stderr.read() if proc.poll() is not None else "")
        urls = json.loads(url_file.read_text())
        assert urls["servers"] == [lines[0].split()[1]] and urls["router"] == lines[1].split()[1]
        for u in urls["servers"] + [urls["router"]]:
            assert requests.get(u + "/health", timeout=10).status_code == 200
        out = requests.post(urls["router"] + "/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2}},
                            timeout=60).json()
        assert out["meta_info"]["completion_tokens"] >= 1
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
    for u in urls["servers"] + [urls["router"]]:  # SIGTERM took the servers and the router down
        try:
            requests.get(u + "/health", timeout=2)
            raise AssertionError(f"{u} still answers after the launcher stopped")
        except requests.ConnectionError:
            pass
