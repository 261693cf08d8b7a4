"""Tiny random Qwen2.5-VL checkpoints, and the rollout tests' shorthands for servers.py's processes."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch

from megatron_mmr1.rollout.servers import ManagedProcess, router_launch, standin_launch
from megatron_mmr1.utils.net import free_port

ROOT = Path(__file__).resolve().parents[2]


def tiny_qwen25vl_config(tok, vocab_size: int = 512):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tok.convert_tokens_to_ids(t) for t in
           ["<|image_pad|>", "<|vision_start|>", "<|vision_end|>", "<|video_pad|>", "<|endoftext|>", "<|im_end|>"]}
    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096,
            rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}, tie_word_embeddings=False,
            eos_token_id=ids["<|im_end|>"], pad_token_id=ids["<|endoftext|>"], bos_token_id=None,
        ),
        vision_config=dict(
            depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32, patch_size=14,
            spatial_merge_size=2, temporal_patch_size=2, window_size=112, fullatt_block_indexes=[0],
        ),
        image_token_id=ids["<|image_pad|>"], video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"], vision_end_token_id=ids["<|vision_end|>"],
        tie_word_embeddings=False,
    )


def make_tiny_checkpoint(out_dir: str | Path, seed: int = 0, tokenizer_dir: Optional[str | Path] = None):
    """Save a random tiny Qwen2_5_VLForConditionalGeneration + tokenizer (HF format) into out_dir."""
    from transformers import AutoTokenizer, Qwen2_5_VLForConditionalGeneration

    from megatron_mmr1.data.tokenizer import build_tokenizer

    out_dir = Path(out_dir)
    tok = AutoTokenizer.from_pretrained(str(tokenizer_dir)) if tokenizer_dir else build_tokenizer(out_dir / "_tok", vocab_size=512)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(tiny_qwen25vl_config(tok)).eval()
    with torch.no_grad():  # larger logits than the default init, so greedy output depends on weights
        model.lm_head.weight.mul_(20)
    model.save_pretrained(str(out_dir))
    tok.save_pretrained(str(out_dir))
    return model, tok


def ServerProcess(model_dir: str | Path, log_dir: str | Path, name: str = "server",
                  extra: tuple[str, ...] = ()) -> ManagedProcess:
    """A stand-in server on a free 127.0.0.1 port (``.wait_healthy()``, ``.kill()``, ``.url``)."""
    return ManagedProcess(standin_launch(str(model_dir), free_port(), name=name,
                                         extra=["--log-level", "WARNING", *extra]), log_dir)


def RouterProcess(worker_urls: list[str], log_dir: str | Path, extra: Optional[list[str]] = None) -> ManagedProcess:
    """The real sglang-router (Rust) in front of the given workers."""
    return ManagedProcess(router_launch(worker_urls, free_port(), prometheus_port=free_port(),  # not 29000 twice
                                        extra=extra or ()), log_dir)


class FakeSGLang:
    """In-process HTTP server that records the endpoints called; ``status[path]`` overrides 200."""

    def __init__(self, status=None):
        import asyncio
        import threading

        from aiohttp import web

        self.calls: list[str] = []
        self.status = dict(status or {})
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.loop = asyncio.new_event_loop()

        async def handle(request):
            self.calls.append(request.path)
            code = self.status.get(request.path, 200)
            if request.path == "/get_server_info":
                return web.json_response({"tp_size": 1})
            return web.json_response({"success": code == 200, "message": "fake"}, status=code)

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handle)
        self.runner = web.AppRunner(app, shutdown_timeout=0.5)
        self.loop.run_until_complete(self.runner.setup())
        self.loop.run_until_complete(web.TCPSite(self.runner, "127.0.0.1", self.port).start())
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        import asyncio

        asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()
