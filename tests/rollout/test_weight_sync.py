"""Weight sync trainer -> stand-in servers over SGLang's endpoints.

Outside references: SGLang 0.5.23's weight-update protocol (init group, begin/end session,
update_weights_from_distributed with per-tensor or flattened_bucket broadcasts over gloo,
get_weights_by_name rows), and transformers' greedy generate of the pushed weights.
"""

import threading

import pytest
import requests
import torch

from megatron_mmr1.config import RolloutConfig
from megatron_mmr1.data.sample import Sample
from megatron_mmr1.rollout.client import RolloutClient
from megatron_mmr1.rollout.weight_sync import (
    DiskWeightSender,
    DistributedWeightSender,
    TensorWeightSender,
    WeightSyncError,
    bucket_named_tensors,
)
from megatron_mmr1.utils.hf_names import to_hub
from tests.rollout.helpers import tiny_qwen25vl_config

@pytest.fixture(scope="module", autouse=True)
def restore_checkpoint(servers, tiny_ckpt, tmp_path_factory):
    """Other modules share these servers: put the original weights back afterwards."""
    yield
    sender = DiskWeightSender([s.url for s in servers], str(tmp_path_factory.mktemp("restore")))
    sender.update(model_path=str(tiny_ckpt[0]), weight_version="default")
    sender.close()


PROMPT = "<|im_start|>user\nWhat is 2+3?<|im_end|>\n<|im_start|>assistant\n"
PROBE = "model.layers.0.self_attn.q_proj.weight"


def new_weights(tok, seed: int):
    """A differently-seeded model of the same shape: its HF checkpoint names and tensors."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    torch.manual_seed(seed)
    m = Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config(tok)).eval()
    with torch.no_grad():
        m.lm_head.weight.mul_(20)
    return m, [(to_hub(n), p.detach().clone()) for n, p in m.named_parameters()]


def hf_greedy(model, tok, n_tokens: int = 8) -> list[int]:
    ids = torch.tensor([tok(PROMPT, add_special_tokens=False).input_ids])
    with torch.no_grad():
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id)
    seq = out[0, ids.shape[1]:].tolist()
    eos = model.generation_config.eos_token_id
    return seq[: seq.index(eos) + 1] if eos in seq else seq


def served_greedy(url: str, tok, n_tokens: int = 8) -> tuple[list[int], str]:
    out = requests.post(url + "/generate", json={
        "input_ids": tok(PROMPT, add_special_tokens=False).input_ids,
        "sampling_params": {"max_new_tokens": n_tokens, "temperature": 0.0}}, timeout=60).json()
    return out["output_ids"], out["meta_info"]["weight_version"]


def probe(url: str, rows: int = 2) -> torch.Tensor:
    r = requests.post(url + "/get_weights_by_name", json={"name": PROBE, "truncate_size": rows}, timeout=30)
    assert r.status_code == 200, r.text
    return torch.tensor(r.json())


def test_buckets_respect_size_and_dtype():
    ts = [("a", torch.zeros(4)), ("b", torch.zeros(4)), ("c", torch.zeros(2, dtype=torch.bfloat16)), ("d", torch.zeros(100))]
    assert [[n for n, _ in b] for b in bucket_named_tensors(ts, 32)] == [["a", "b"], ["c"], ["d"]]
    assert [[n for n, _ in b] for b in bucket_named_tensors(ts, 0)] == [["a"], ["b"], ["c"], ["d"]]


@pytest.mark.parametrize("flattened,bucket_mb", [(False, 0), (True, 1)])
def test_distributed_update_over_gloo(servers, tiny_ckpt, flattened, bucket_mb):
    _, model0, tok = tiny_ckpt
    urls = [s.url for s in servers]
    before = [served_greedy(u, tok)[0] for u in urls]
    seed = 11 if flattened else 12
    model1, named = new_weights(tok, seed)
    expected = hf_greedy(model1, tok)
    assert expected != before[0], "seeds must give different greedy output for the test to mean anything"

    sender = DistributedWeightSender(urls, backend="gloo", bucket_mb=bucket_mb, flattened=flattened)
    try:
        stats = sender.update(named, weight_version=f"v{seed}")
        assert stats.tensors == len(named)
        assert stats.buckets == (1 if flattened else len(named))
        for u in urls:
            ref = dict(named)[PROBE][:2]
            torch.testing.assert_close(probe(u), ref, rtol=0, atol=0)
            got, version = served_greedy(u, tok)
            assert got == expected and version == f"v{seed}"
        # a second update through the same group (the group is created once)
        _, named2 = new_weights(tok, seed + 100)
        sender.update(named2)
        torch.testing.assert_close(probe(urls[1]), dict(named2)[PROBE][:2], rtol=0, atol=0)
    finally:
        sender.close()


def test_flattened_buckets_of_any_layout(servers, tiny_ckpt):
    """Flattened buckets land in the stand-in's parameters whatever their layout: straight into them
    (the usual case), names twice in a bucket (the last value wins), big tensors unpacked beside the
    packed rest, another dtype (cast), several buckets packed while the previous one is sent; an
    unknown name fails the update without a hang."""
    _, _, tok = tiny_ckpt
    urls = [s.url for s in servers]
    sender = DistributedWeightSender(urls, backend="gloo", bucket_mb=1, flattened=True)
    try:
        _, a = new_weights(tok, 21)
        _, b = new_weights(tok, 22)
        dict(a)["model.norm.weight"].fill_(0.5)  # a small tensor (packed) that differs between a and b
        sender.update(a)
        sender.update(a + b)  # every name twice in one bucket per 1 MiB: b's values win
        for u in urls:
            torch.testing.assert_close(probe(u), dict(b)[PROBE][:2], rtol=0, atol=0)
        sender.unpacked_min_bytes = 16 << 10  # tensors from 16 KiB (the probe's size) go unpacked
        sender.update(b + a)
        assert sender.last_stats.buckets == 2  # one tensor-by-tensor request, one flattened
        for u in urls:
            torch.testing.assert_close(probe(u), dict(a)[PROBE][:2], rtol=0, atol=0)
            served = requests.post(u + "/get_weights_by_name", json={"name": "model.norm.weight"}, timeout=30).json()
            torch.testing.assert_close(torch.tensor(served), dict(a)["model.norm.weight"], rtol=0, atol=0)
        sender.bucket_bytes = 64 << 10  # many buckets, one dtype
        half = [(n, t.to(torch.bfloat16)) for n, t in a]
        sender.update(half)
        torch.testing.assert_close(probe(urls[0]), dict(half)[PROBE][:2].float(), rtol=0, atol=0)
        sender.update(b)
        torch.testing.assert_close(probe(urls[1]), dict(b)[PROBE][:2], rtol=0, atol=0)
        with pytest.raises(WeightSyncError, match="unknown parameter"):
            sender.update([("model.no_such.weight", torch.zeros(4))] + a[:2])
        sender.update(a)  # the group and the sessions are still usable
        torch.testing.assert_close(probe(urls[0]), dict(a)[PROBE][:2], rtol=0, atol=0)
    finally:
        sender.close()


def test_update_during_rollout_loses_no_request(servers, tiny_ckpt):
    """Generation paused (abort) mid-rollout: aborted requests are resubmitted, all complete."""
    _, _, tok = tiny_ckpt
    cfg = RolloutConfig(n=2, temperature=1.0, max_inflight=2, request_timeout_s=120.0, max_retries=1)
    client = RolloutClient(cfg, [servers[0].url], max_new_tokens=48, backoff_s=0.1)
    prompts = [Sample(index=i, prompt=PROMPT) for i in range(6)]
    result = {}
    t = threading.Thread(target=lambda: result.update(out=client.generate(prompts)))
    t.start()
    _, named = new_weights(tok, 21)
    sender = DistributedWeightSender([servers[0].url], backend="gloo")
    try:
        while client.stats.requests < 2:  # wait until generation is under way
            threading.Event().wait(0.05)
        sender.update(named, weight_version="mid")
    finally:
        sender.close()
        t.join(timeout=300)
    out = result["out"]
    assert len(out) == 12 and all(s.response_ids for s in out)
    assert "mid" in {s.metadata.get("weight_version") for s in out}  # later requests saw the new weights


def test_disk_fallback(servers, tiny_ckpt, tmp_path):
    _, _, tok = tiny_ckpt
    model, named = new_weights(tok, 31)
    sender = DiskWeightSender([s.url for s in servers], str(tmp_path / "sync"))
    sender.update(named, weight_version="disk1")
    for s in servers:
        torch.testing.assert_close(probe(s.url), dict(named)[PROBE][:2], rtol=0, atol=0)
        assert served_greedy(s.url, tok) == (hf_greedy(model, tok), "disk1")
    sender.close()


def _released(url: str) -> list[str]:
    return requests.get(url + "/get_server_info", timeout=10).json()["internal_states"][0]["memory_released"]


def test_colocated_release_resume_and_tensor_update(servers, tiny_ckpt):
    """SGLang's memory-saver rules on the stand-in: release frees every tag (weights, kv_cache,
    cuda_graph); the update resumes all of them, weights first, and generation continues."""
    _, _, tok = tiny_ckpt
    url = servers[0].url
    sender = TensorWeightSender([url], bucket_mb=1)
    sender.release()
    assert _released(url) == ["cuda_graph", "kv_cache", "weights"]
    model, named = new_weights(tok, 41)
    called = []
    stats = sender.update(named, weight_version="colo1", before_kv=lambda: called.append(_released(url)))
    assert called == [["cuda_graph", "kv_cache"]] and stats.tensors == len(named)  # weights in, then the rest
    assert _released(url) == []
    torch.testing.assert_close(probe(url), dict(named)[PROBE][:2], rtol=0, atol=0)
    assert served_greedy(url, tok) == (hf_greedy(model, tok), "colo1")
    sender.close()


def test_update_outside_session_is_refused_like_sglang(servers):
    r = requests.post(servers[0].url + "/update_weights_from_distributed",
                      json={"names": ["lm_head.weight"], "dtypes": ["float32"], "shapes": [[1]]}, timeout=30)
    assert r.status_code == 400 and "begin_weight_update" in r.json()["message"]
    r = requests.post(servers[0].url + "/init_weights_update_group", json={"master_address": "127.0.0.1"}, timeout=30)
    assert r.status_code == 400  # master_port, rank_offset, world_size are required


def test_sender_factory_follows_config(tmp_path):
    from megatron_mmr1.rollout.servers import make_weight_sender, rollout_servers

    urls = ["http://127.0.0.1:1"]
    for cfg, cls in [(RolloutConfig(), DistributedWeightSender), (RolloutConfig(weight_sync="disk"), DiskWeightSender),
                     (RolloutConfig(weight_sync="tensor"), TensorWeightSender), (RolloutConfig(colocate=True), TensorWeightSender)]:
        s = make_weight_sender(cfg, urls, work_dir=str(tmp_path))
        assert type(s) is cls
        s.close()
    assert make_weight_sender(RolloutConfig(weight_sync_bucket_mb=64), urls).bucket_bytes == 64 << 20
    with rollout_servers(RolloutConfig(server_urls=urls)) as got:
        assert got == urls
    with pytest.raises(ValueError, match="server_urls"):
        with rollout_servers(RolloutConfig(backend="sglang")):
            pass


def test_two_pipeline_stage_senders_share_one_session(servers, tiny_ckpt):
    """PP > 1: each stage's source rank broadcasts its own layers over its own group."""
    _, _, tok = tiny_ckpt
    urls = [s.url for s in servers]
    model, named = new_weights(tok, 51)
    half = len(named) // 2
    stage0 = DistributedWeightSender(urls, backend="gloo", group_name="mmr1-pp0")
    stage1 = DistributedWeightSender(urls, backend="gloo", group_name="mmr1-pp1")
    try:
        stage0.connect()
        stage1.connect()
        stage0.begin()
        stage0.update(named[:half], weight_version="pp", manage_generation=False)
        stage1.update(named[half:], weight_version="pp", manage_generation=False)
        stage0.finish()
        for u in urls:
            assert served_greedy(u, tok) == (hf_greedy(model, tok), "pp")
    finally:
        stage0.close()
        stage1.close()


def test_colocated_call_order_and_servers_without_sessions():
    """slime's colocated order; an SGLang without /begin_weight_update (404) updates without a session."""
    from tests.rollout.helpers import FakeSGLang

    fake = FakeSGLang(status={"/begin_weight_update": 404})
    try:
        sender = TensorWeightSender([fake.url])
        sender.release()
        sender.update([("lm_head.weight", torch.zeros(2, 2))])
        sender.close()
        assert fake.calls == [
            "/pause_generation", "/release_memory_occupation",  # SGLang asserts an idle server on release
            "/resume_memory_occupation", "/pause_generation", "/flush_cache",
            "/begin_weight_update", "/update_weights_from_tensor",
            "/resume_memory_occupation", "/continue_generation",  # KV cache + graphs back before generating
        ]
    finally:
        fake.stop()


def test_failed_flush_still_continues_generation():
    from megatron_mmr1.rollout.weight_sync import WeightSyncError
    from tests.rollout.helpers import FakeSGLang

    fake = FakeSGLang(status={"/flush_cache": 500})
    try:
        sender = DiskWeightSender([fake.url], "/nonexistent-unused")
        with pytest.raises(WeightSyncError, match="flush_cache answered 500"):
            sender.update(model_path="/ckpt")
        assert fake.calls == ["/pause_generation", "/flush_cache", "/continue_generation"]
    finally:
        fake.stop()


def test_in_place_pause_updates_without_a_flush(servers, tiny_ckpt):
    """pause_mode=in_place keeps a running request inside the server, where SGLang refuses
    /flush_cache (400): the sender skips the flush as SGLang's in-place path does, and the held
    request finishes after the update."""
    _, _, tok = tiny_ckpt
    url = servers[1].url
    client = RolloutClient(RolloutConfig(n=1, temperature=0.0, max_retries=0), [url], max_new_tokens=3000)
    result: dict = {}
    t = threading.Thread(target=lambda: result.update(out=client.generate([Sample(index=0, prompt=PROMPT)])),
                         daemon=True)
    t.start()
    while requests.get(url + "/get_server_info", timeout=10).json()["internal_states"][0]["running_requests"] == 0:
        threading.Event().wait(0.02)
    _, named = new_weights(tok, 61)
    sender = DistributedWeightSender([url], backend="gloo", pause_mode="in_place")
    try:
        sender.update(named, weight_version="inplace")
        torch.testing.assert_close(probe(url), dict(named)[PROBE][:2], rtol=0, atol=0)
    finally:
        sender.close()
        t.join(300)
    assert result["out"][0].response_ids
