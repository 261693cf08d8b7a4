"""Generation through the stand-in server (directly and behind the real sglang-router).

Outside references: SGLang 0.5.23's /generate response format (list of n outputs, meta_info
finish_reason / output_token_logprobs triples), and transformers' Qwen2.5-VL forward for the
log-probs (log_softmax(logits / T) of each sampled token, recomputed without KV cache).
"""

import io

import pytest
import requests
import torch
from PIL import Image

from megatron_mmr1.config import RolloutConfig
from megatron_mmr1.data.sample import Sample, Status
from megatron_mmr1.data.vision import VisionSpec, normalized_png
from megatron_mmr1.rollout.client import RolloutClient, RolloutError, server_images
from megatron_mmr1.rollout.engine import LocalEngine
from megatron_mmr1.rollout.protocol import image_data_url

PROMPT = "<|im_start|>user\n{img}How many circles are there?<|im_end|>\n<|im_start|>assistant\n"
IMG = "<|vision_start|><|image_pad|><|vision_end|>"


def _png(color=(200, 30, 30), size=(60, 44)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


def _prompts(tok):
    text_only = PROMPT.format(img="")
    return [
        Sample(index=0, prompt=PROMPT.format(img=IMG), images=[_png()], answer="3"),
        Sample(index=1, prompt=text_only, prompt_ids=tok(text_only, add_special_tokens=False).input_ids, answer="2"),
    ]


def _cfg(**kw) -> RolloutConfig:
    base = dict(n=3, temperature=0.7, top_p=1.0, top_k=-1, max_inflight=4, request_timeout_s=120.0, max_retries=2)
    base.update(kw)
    return RolloutConfig(**base)


def test_raw_generate_follows_sglang_format(servers):
    body = {"text": "hello", "sampling_params": {"max_new_tokens": 4, "n": 2, "temperature": 1.0},
            "return_logprob": True}
    out = requests.post(servers[0].url + "/generate", json=body, timeout=60).json()
    assert isinstance(out, list) and len(out) == 2  # n > 1 turns one prompt into a batch of n
    for o in out:
        meta = o["meta_info"]
        assert set(meta) >= {"id", "finish_reason", "prompt_tokens", "completion_tokens", "weight_version"}
        assert meta["finish_reason"]["type"] in ("stop", "length")
        triples = meta["output_token_logprobs"]
        assert [t[1] for t in triples] == o["output_ids"] and all(t[2] is None for t in triples)
    single = requests.post(servers[0].url + "/generate", json={"text": "hi", "sampling_params": {"max_new_tokens": 2}},
                           timeout=60).json()
    assert isinstance(single, dict) and "output_token_logprobs" not in single["meta_info"]
    bad = requests.post(servers[0].url + "/generate", json={"sampling_params": {}}, timeout=60)
    assert bad.status_code == 400


def test_n_samples_with_logprobs_match_transformers(servers, tiny_ckpt):
    ckpt_dir, _, tok = tiny_ckpt
    client = RolloutClient(_cfg(), [servers[0].url], max_new_tokens=12)
    prompts = _prompts(tok)
    out = client.generate(prompts)
    assert len(out) == len(prompts) * 3
    assert [s.index for s in out] == [0, 0, 0, 1, 1, 1] and [s.group_index for s in out] == [0, 0, 0, 1, 1, 1]
    for s in out:
        assert s.status in (Status.COMPLETED, Status.TRUNCATED)
        assert len(s.response_ids) == len(s.rollout_logprobs) == len(s.loss_mask) > 0
        assert all(lp <= 0 for lp in s.rollout_logprobs)
        assert s.response == tok.decode(s.response_ids, skip_special_tokens=True)
    assert len({tuple(s.response_ids) for s in out[:3]}) > 1, "3 samples at T=0.7 should not all agree"

    # Recompute every response's log-probs with one full forward (no KV cache) of the HF model.
    eng = LocalEngine(str(ckpt_dir))
    img_b64 = server_images(prompts[0])[0]  # what the client sent
    ids, pv, thw = eng.encode(prompts[0].prompt, None, [img_b64])
    h, w = Image.open(io.BytesIO(prompts[0].images[0])).size[::-1]
    assert ids.count(eng.image_token_id) == VisionSpec().num_image_tokens(h, w)  # Qwen's smart_resize rule
    vision_ids = {tok.convert_tokens_to_ids(t) for t in ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>")}
    checked = [s for s in out if not vision_ids & set(s.response_ids)]  # a random model may emit them
    assert len(checked) >= 4
    for s in checked:
        p_ids, kw = (ids, {"pixel_values": pv, "image_grid_thw": thw}) if s.index == 0 else (s.prompt_ids, {})
        x = torch.tensor([p_ids + s.response_ids])
        if kw:  # transformers 5 gives image tokens Qwen2.5-VL's 3-D M-RoPE positions only when told which they are
            kw["mm_token_type_ids"] = (x == eng.image_token_id).int()
        with torch.no_grad():
            logits = eng.model(input_ids=x, **kw).logits[0, len(p_ids) - 1 : -1].float()
        ref = torch.log_softmax(logits / 0.7, -1).gather(-1, torch.tensor(s.response_ids)[:, None])[:, 0]
        torch.testing.assert_close(torch.tensor(s.rollout_logprobs), ref, atol=2e-4, rtol=0)


def test_greedy_is_deterministic_and_stop_token_ends(servers, tiny_ckpt):
    _, _, tok = tiny_ckpt
    client = RolloutClient(_cfg(n=2, temperature=1.0), [servers[0].url], max_new_tokens=8)
    a = client.generate(_prompts(tok)[1:], temperature=0.0)
    assert a[0].response_ids == a[1].response_ids
    stop_at = a[0].response_ids[2]
    b = client.generate(_prompts(tok)[1:], temperature=0.0, n=1, stop_token_ids=[stop_at])
    assert b[0].response_ids == a[0].response_ids[: a[0].response_ids.index(stop_at) + 1]
    assert b[0].status == Status.COMPLETED


def test_two_servers_behind_real_router(servers, router, tiny_ckpt):
    _, _, tok = tiny_ckpt
    before = [requests.get(s.url + "/get_server_info", timeout=10).json()["internal_states"][0]["served_generate_requests"]
              for s in servers]
    client = RolloutClient(_cfg(n=2), [router.url], max_new_tokens=6)
    prompts = _prompts(tok) * 3
    out = client.generate(prompts)
    assert len(out) == 12 and all(len(s.rollout_logprobs) == len(s.response_ids) > 0 for s in out)
    after = [requests.get(s.url + "/get_server_info", timeout=10).json()["internal_states"][0]["served_generate_requests"]
             for s in servers]
    served = [b - a for a, b in zip(before, after)]
    assert sum(served) == 6 and min(served) >= 1, f"round_robin should use both workers: {served}"


def test_bad_request_is_not_retried_and_errors_clearly(servers):
    client = RolloutClient(_cfg(n=1, max_retries=3), [s.url for s in servers], max_new_tokens=4)
    with pytest.raises(RolloutError, match="answered 400"):
        client.generate([Sample(index=0, prompt="two pads " + IMG + IMG, images=[_png()])])
    assert client.stats.retries == 0


def test_no_server_left_names_every_url():
    urls = [f"http://127.0.0.1:{p}" for p in (1, 2)]  # nothing listens on ports 1 and 2
    client = RolloutClient(_cfg(), urls, max_new_tokens=4)
    with pytest.raises(RolloutError, match="no healthy rollout server left") as e:
        client.generate([Sample(index=0, prompt="x")])
    assert all(u in str(e.value) for u in urls)


def test_prompt_token_mismatch_stops_with_a_clear_message(servers, tiny_ckpt):
    """The server expands an image to another token count than the trainer (other pixel limits):
    the step stops naming the sample and both counts, instead of training on another image."""
    _, _, tok = tiny_ckpt
    img, text = _png(size=(64, 64)), PROMPT.format(img=IMG)

    def ids(k: int) -> list[int]:  # the prompt with its image pad expanded to k tokens
        return tok(text.replace("<|image_pad|>", "<|image_pad|>" * k), add_special_tokens=False).input_ids

    client = RolloutClient(_cfg(n=1), [servers[0].url], max_new_tokens=2)
    same = VisionSpec().num_image_tokens(64, 64)  # the stand-in's limits: the data defaults
    assert client.generate([Sample(index=0, prompt=text, images=[img], prompt_ids=ids(same))])[0].response_ids
    other = VisionSpec(min_pixels=3136).num_image_tokens(64, 64)  # Qwen's published minimum
    assert other != same
    with pytest.raises(RolloutError, match=rf"sample 5: the rollout server counted \[{len(ids(same))}\] prompt "
                                           rf"tokens, the trainer {len(ids(other))}.*--mm-process-config"):
        client.generate([Sample(index=5, prompt=text, images=[img], prompt_ids=ids(other))])


def test_requests_queue_at_the_client_up_to_the_servers_capacity(tmp_path):
    """A request's timeout must measure the server's work, not a queue behind other requests: the client
    admits at most SGLang's ``max_running_requests`` (from /get_server_info) per server at once."""
    import asyncio
    import threading

    from aiohttp import web

    from megatron_mmr1.config import RolloutConfig
    from megatron_mmr1.data.sample import Sample
    from megatron_mmr1.rollout.client import RolloutClient
    from megatron_mmr1.utils.net import free_port

    state = {"running": 0, "peak": 0}

    async def info(request):
        return web.json_response({"max_running_requests": 1})

    async def generate(request):
        state["running"] += 1
        state["peak"] = max(state["peak"], state["running"])
        await asyncio.sleep(0.4)  # one request's work
        state["running"] -= 1
        return web.json_response({"text": "x", "output_ids": [1], "meta_info": {
            "finish_reason": {"type": "stop"}, "prompt_tokens": 2, "output_token_logprobs": [[-0.1, 1, None]]}})

    port = free_port()
    loop = asyncio.new_event_loop()
    app = web.Application()
    app.router.add_get("/get_server_info", info)
    app.router.add_post("/generate", generate)
    runner = web.AppRunner(app)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
    t = threading.Thread(target=loop.run_forever, daemon=True)
    t.start()
    try:
        # 6 requests x 0.4 s of work, 1 s timeout: only the queue at the client keeps them within it
        cfg = RolloutConfig(n=1, request_timeout_s=1.0, request_timeout_per_token_s=0.0, max_retries=0)
        client = RolloutClient(cfg, [f"http://127.0.0.1:{port}"], max_new_tokens=1)
        out = client.generate([Sample(index=i, prompt_ids=[1, 2]) for i in range(6)])
        assert len(out) == 6 and state["peak"] == 1
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)


def test_batched_decoding_matches_one_request_at_a_time(tiny_ckpt):
    """Requests decoded together (left-padded rows, an image prompt beside a text one) give each request
    the tokens it gets alone: every row samples with its own generator seeded by its request's
    ``sampling_seed``; log-probs differ only by the padded batch's rounding."""
    from megatron_mmr1.rollout.protocol import SamplingParams

    ckpt_dir, _, tok = tiny_ckpt
    eng = LocalEngine(str(ckpt_dir))
    img = image_data_url(normalized_png(_png())[0])
    texts = [PROMPT.format(img=IMG), PROMPT.format(img=""), "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"]
    for temp in (0.7, 0.0):
        sps = [SamplingParams(temperature=temp, top_p=0.9, top_k=20, n=3, max_new_tokens=10, sampling_seed=s)
               for s in (11, 12, 13)]
        reqs = [eng.prepare(t, None, [img] if IMG in t else [], sp, True, f"r{k}")
                for k, (t, sp) in enumerate(zip(texts, sps))]
        alone = [eng.generate_batch([r], "v")[0] for r in reqs]
        together = eng.generate_batch(reqs, "v")
        for a, b in zip(alone, together):
            assert [o["output_ids"] for o in a] == [o["output_ids"] for o in b]
            la = [lp for o in a for lp, _, _ in o["meta_info"]["output_token_logprobs"]]
            lb = [lp for o in b for lp, _, _ in o["meta_info"]["output_token_logprobs"]]
            torch.testing.assert_close(torch.tensor(lb), torch.tensor(la), atol=1e-4, rtol=0)
        if temp > 0:
            assert len({tuple(o["output_ids"]) for o in together[0]}) > 1, "3 seeded samples should not all agree"
            again = eng.generate_batch(reqs[::-1], "v")[::-1]  # another batch order: the same samples
            assert [[o["output_ids"] for o in x] for x in again] == [[o["output_ids"] for o in x] for x in together]
    with pytest.raises(Exception, match="one set of sampling parameters"):
        eng.generate_batch([reqs[0], eng.prepare(texts[1], None, [], SamplingParams(n=1, max_new_tokens=3), True, "x")],
                           "v")


def test_concurrent_requests_share_decode_batches(servers, tiny_ckpt):
    """The stand-in batches what arrives together (SGLang's scheduler does); seeded samples do not change."""
    _, _, tok = tiny_ckpt
    prompts = [Sample(index=k, prompt=PROMPT.format(img=""), metadata={"sampling_seed": 100 + k}) for k in range(6)]
    info = lambda: requests.get(servers[0].url + "/get_server_info", timeout=10).json()  # noqa: E731
    assert info()["max_running_requests"] > 1
    one_by_one = RolloutClient(_cfg(max_inflight=1), [servers[0].url], max_new_tokens=6).generate(prompts)
    before = info()["internal_states"][0]
    together = RolloutClient(_cfg(max_inflight=8), [servers[0].url], max_new_tokens=6).generate(prompts)
    after = info()["internal_states"][0]
    assert after["served_generate_requests"] - before["served_generate_requests"] == 6
    assert after["decode_batches"] - before["decode_batches"] < 6
    assert [s.response_ids for s in together] == [s.response_ids for s in one_by_one]
