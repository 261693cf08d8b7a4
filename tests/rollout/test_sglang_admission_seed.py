"""Against SGLang 0.5.23's own app (tests/rollout/sglang_app.py): the client's per-server admission limit
engages on a server that reports no ``max_running_requests`` (SGLang's /get_server_info says None unless
started with --max-running-requests), the launcher's flag reaches SGLang's ServerArgs, and why
``rollout.seed`` is refused with SGLang: a request of n samples gives all n one ``sampling_seed``."""

from __future__ import annotations

import requests

from megatron_mmr1.config import RolloutConfig
from megatron_mmr1.data.sample import Sample
from megatron_mmr1.rollout.client import RolloutClient
from tests.rollout.test_sglang_contract import sglang_app  # noqa: F401  (the module's app fixture)


def test_admission_limit_engages_on_sglang(sglang_app):  # noqa: F811
    info = requests.get(sglang_app.url + "/get_server_info", timeout=60).json()
    assert info["max_running_requests"] is None  # SGLang started without the flag
    client = RolloutClient(RolloutConfig(n=1, max_running_requests=3, max_retries=0), [sglang_app.url], max_new_tokens=2)
    out = client.generate([Sample(index=i, prompt=f"p{i}") for i in range(4)])
    assert len(out) == 4
    assert [s.capacity for s in client.servers] == [3]


def test_launcher_max_running_requests_parses_with_sglang_server_args(sglang_app):  # noqa: F811
    from tests.rollout.test_launch_sglang import launch_sglang

    args, extra = launch_sglang.parse_args(["--model", "/ckpt/qwen", "--max-running-requests", "48",
                                            "--no-find-free-ports"])
    (server,) = launch_sglang.build_launches(args, extra)
    r = requests.post(sglang_app.url + "/_contract/server_args", json={"argv": server.cmd[3:]}, timeout=60)
    assert r.status_code == 200, r.text
    assert r.json()["max_running_requests"] == 48


def test_sglang_gives_the_n_samples_of_a_request_one_seed(sglang_app):  # noqa: F811
    """The reason config.validate refuses rollout.seed with rollout.backend=sglang."""
    before = len(sglang_app.state()["log"])
    body = {"text": "seeded", "sampling_params": {"n": 3, "max_new_tokens": 2, "sampling_seed": 11}}
    assert requests.post(sglang_app.url + "/generate", json=body, timeout=60).status_code == 200
    (rec,) = [e for e in sglang_app.state()["log"][before:] if e["endpoint"] == "/generate"]
    assert [r["sampling_params"]["sampling_seed"] for r in rec["requests"]] == [11, 11, 11]
