"""Start N rollout servers (and sglang-router in front of them) on this node, wait until healthy,
print their URLs, and keep them serving until stopped.

    # GPU node: 4 SGLang servers of TP 2 on GPUs 0-7, router on :30000
    python tools/launch_sglang.py --model /ckpt/Qwen2.5-VL-7B-Instruct --num-servers 4 --tp 2 \\
        --router-port 30000 --url-file run1/rollout_urls.json --restart -- --mem-fraction-static 0.6

    # CPU: the in-repo stand-in servers (same HTTP API)
    python tools/launch_sglang.py --backend local --model tiny_ckpt --num-servers 2

    # stop a fleet (foreground or --detach) from anywhere
    python tools/launch_sglang.py stop --url-file run1/rollout_urls.json

Arguments after ``--`` go to every ``sglang.launch_server`` unchanged. Server i runs on GPUs
``[gpu_offset + i*tp, gpu_offset + (i+1)*tp)`` (set through CUDA_VISIBLE_DEVICES). Every server gets
the run's image pixel limits (``--min-pixels`` / ``--max-pixels``, default the data defaults; SGLang
reads them from ``--mm-process-config``): without them SGLang resizes with the checkpoint's limits
and the policy samples from other image tokens than the trainer trains on. They also get
``--image-processor-backend pil``: the trainer resizes with Pillow, SGLang's default with torchvision.

The output is one line per URL (``server <url>`` ..., then ``router <url>``) and, with
``--url-file``, a JSON file ``{"servers": [...], "router": url|null, "pids": {...}, "launcher_pid": pid|null}``
that multi-node scripts pass to the trainer as ``rollout.server_urls`` and ``stop`` reads. In the
foreground a server that dies is logged and the others (and the router) keep serving; ``--restart``
starts it again on its port. ``--detach`` returns once healthy and leaves the processes running.
"""

from __future__ import annotations

import argparse
import json
import logging
import shlex
import signal
import socket
import sys
from pathlib import Path
from typing import Optional

from megatron_mmr1.config import DataConfig
from megatron_mmr1.rollout.protocol import mm_process_config
from megatron_mmr1.rollout.servers import Fleet, Launch, router_launch, standin_launch, stop_fleet


def _port_free(host: str, port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


def _ports(host: str, first: int, count: int) -> list[int]:
    out, p = [], first
    while len(out) < count:
        if _port_free(host, p):
            out.append(p)
        p += 1
    return out


def build_launches(args: argparse.Namespace, extra: list[str]) -> list[Launch]:
    """The server and router command lines (pure: no process is started)."""
    host = args.host
    ports = _ports(host, args.base_port, args.num_servers) if args.find_free_ports else [
        args.base_port + i for i in range(args.num_servers)
    ]
    url_host = args.advertise_host or host
    launches = []
    for i, port in enumerate(ports):
        if args.backend == "sglang":
            gpus = range(args.gpu_offset + i * args.tp, args.gpu_offset + (i + 1) * args.tp)
            cmd = [sys.executable, "-m", "sglang.launch_server", "--model-path", args.model, "--host", host,
                   "--port", str(port), "--tp-size", str(args.tp), "--trust-remote-code",
                   # the trainer's image resize limits, not the checkpoint's (else other image token counts)
                   "--mm-process-config", json.dumps(mm_process_config(args.min_pixels, args.max_pixels)),
                   # resize with Pillow, as the trainer does (the default picks torchvision: other pixels)
                   "--image-processor-backend", "pil"]
            if args.enable_memory_saver:
                cmd.append("--enable-memory-saver")
            if args.max_running_requests is not None:  # else SGLang sizes it and /get_server_info reports None
                cmd += ["--max-running-requests", str(args.max_running_requests)]
            env = {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}
            launches.append(Launch(f"server{i}", cmd + list(extra), f"http://{url_host}:{port}", env))
        else:
            running = [] if args.max_running_requests is None else ["--max-running-requests", str(args.max_running_requests)]
            launches.append(standin_launch(args.model, port, host, f"server{i}", url_host=url_host, extra=[
                "--min-pixels", str(args.min_pixels), "--max-pixels", str(args.max_pixels), *running, *extra]))
    if args.router_port is not None:
        rport = _ports(host, args.router_port, 1)[0] if args.find_free_ports else args.router_port
        prom = args.router_prometheus_port
        if prom is None and args.find_free_ports:  # the router's metrics port (29000) clashes with a second router
            prom = _ports(host, 29000, 1)[0]
        launches.append(router_launch([l.url for l in launches], rport, host, args.router_policy, prom,
                                      url_host=url_host))
    return launches


def parse_args(argv: Optional[list[str]] = None) -> tuple[argparse.Namespace, list[str]]:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="HF checkpoint directory (Qwen2.5-VL)")
    ap.add_argument("--backend", choices=["sglang", "local"], default="sglang",
                    help="sglang: real SGLang servers (GPU); local: the CPU stand-in with the same API")
    ap.add_argument("--num-servers", type=int, default=1)
    ap.add_argument("--tp", type=int, default=1, help="GPUs per server (SGLang --tp-size)")
    ap.add_argument("--gpu-offset", type=int, default=0, help="first GPU id to use on this node")
    ap.add_argument("--host", default="127.0.0.1", help="bind address (0.0.0.0 for multi-node)")
    ap.add_argument("--advertise-host", default=None, help="host name written into the URLs (default: --host)")
    ap.add_argument("--base-port", type=int, default=30010)
    ap.add_argument("--router-port", type=int, default=None, help="start sglang-router on this port")
    ap.add_argument("--router-policy", default="round_robin")
    ap.add_argument("--router-prometheus-port", type=int, default=None,
                    help="router metrics port (default: the first free port from 29000)")
    ap.add_argument("--no-find-free-ports", dest="find_free_ports", action="store_false",
                    help="use base-port + i exactly instead of the next free ports")
    ap.add_argument("--enable-memory-saver", action="store_true", help="colocated mode (release/resume memory)")
    ap.add_argument("--min-pixels", type=int, default=DataConfig.min_pixels,
                    help="image resize lower bound: the run's data.min_pixels (passed as --mm-process-config)")
    ap.add_argument("--max-pixels", type=int, default=DataConfig.max_pixels,
                    help="image resize upper bound: the run's data.max_pixels")
    ap.add_argument("--max-running-requests", type=int, default=None,
                    help="requests one server decodes at once: the run's rollout.max_running_requests (the client "
                         "admits as many; SGLang reports its own choice as None)")
    ap.add_argument("--timeout-s", type=float, default=900.0, help="health wait per process")
    ap.add_argument("--log-dir", default="outputs/sglang_logs")
    ap.add_argument("--url-file", default=None, help="JSON with the URLs and pids (read by `stop`)")
    ap.add_argument("--restart", action="store_true", help="start a server that died again (foreground only)")
    ap.add_argument("--detach", action="store_true", help="exit once healthy; servers keep running")
    ap.add_argument("--dry-run", action="store_true", help="print the commands and exit")
    return ap.parse_args(argv), extra


def stop_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="launch_sglang.py stop", description="stop a fleet started with --url-file")
    ap.add_argument("--url-file", required=True)
    args = ap.parse_args(argv)
    if not Path(args.url_file).is_file():
        print(f"launch_sglang stop: {args.url_file} not found (nothing running, or stopped already)", file=sys.stderr)
        return 1
    pids = stop_fleet(args.url_file)
    print(f"stopped {len(pids)} process(es): {' '.join(map(str, pids))}")
    return 0


def main(argv: Optional[list[str]] = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["stop"]:
        return stop_main(argv[1:])
    args, extra = parse_args(argv)
    launches = build_launches(args, extra)
    if args.dry_run:
        for l in launches:
            env = " ".join(f"{k}={v}" for k, v in l.env.items())
            print(f"{l.name}: {env + ' ' if env else ''}{shlex.join(l.cmd)}")
        return 0
    logging.basicConfig(level=logging.INFO, format="launch_sglang %(levelname)s %(message)s", stream=sys.stderr)
    fleet = Fleet(launches, args.log_dir, restart=args.restart and not args.detach, state_file=args.url_file,
                  detach=args.detach)

    def on_term(*_: object) -> None:
        raise SystemExit(143)  # unwinds through the cleanup below, wherever SIGTERM lands

    signal.signal(signal.SIGTERM, on_term)
    try:
        fleet.start(args.timeout_s)
    except BaseException as e:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not cut the cleanup short
        fleet.stop()
        if isinstance(e, (KeyboardInterrupt, SystemExit)):
            return 130 if isinstance(e, KeyboardInterrupt) else 143
        print(f"launch_sglang: {e}", file=sys.stderr)
        return 1
    for m in fleet.servers:  # after the URL file is written: readers may act on the print
        print(f"server {m.url}", flush=True)
    if fleet.router:
        print(f"router {fleet.router.url}", flush=True)
    if args.detach:
        return 0
    try:
        return fleet.watch(health_timeout_s=args.timeout_s)
    except KeyboardInterrupt:
        return 130
    except SystemExit:
        return 0  # SIGTERM: a normal stop
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        fleet.stop()


if __name__ == "__main__":
    sys.exit(main())
