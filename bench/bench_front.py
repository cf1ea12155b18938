"""What KaitoFront (kaitopy's ASGI middleware inside vLLM's server) costs per request, in-process, with
no server, socket or model: a stand-in ASGI app streams a chat completion the way vLLM's does (one SSE
event per token, the usage event, [DONE]) and is called directly, alone and wrapped in KaitoFront. The
difference is the middleware's own CPU per request: its checks, admission, deadline, metrics and the
per-token relay. Far less noisy than bench_inference.py on a shared machine, which measures the whole
server against bare vLLM.

    python bench/bench_front.py [--tokens 32] [--requests 5000] [--repeats 5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from kaitopy.inference.vllm_front import FrontConfig, KaitoFront  # noqa: E402

Message = dict[str, Any]
MODEL = "tiny"
PROMPT = [{"role": "user", "content": "hello world , tell me about the kubernetes operator please"}]
# A chunk as vLLM 0.32 writes it for one token.
EVENT = (
    b'data: {"id":"chatcmpl-8d1f","object":"chat.completion.chunk","created":1764890000,"model":"tiny",'
    b'"choices":[{"index":0,"delta":{"content":" word"},"logprobs":null,"finish_reason":null}]}\n\n'
)
USAGE = (
    b'data: {"id":"chatcmpl-8d1f","object":"chat.completion.chunk","created":1764890000,"model":"tiny",'
    b'"choices":[],"usage":{"prompt_tokens":20,"total_tokens":52,"completion_tokens":32}}\n\n'
)


def streamer(tokens: int) -> Any:
    async def app(scope: Message, receive: Any, send: Any) -> None:
        await receive()
        start = {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"text/event-stream")],
        }
        await send(start)
        for _ in range(tokens):
            await send({"type": "http.response.body", "body": EVENT, "more_body": True})
        await send({"type": "http.response.body", "body": USAGE, "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    return app


async def per_request_us(target: Any, body: bytes, requests: int) -> float:
    """CPU microseconds per request of `target`, called `requests` times in a row."""
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]

    async def send(message: Message) -> None:
        return None

    started = time.process_time()
    for _ in range(requests):
        delivered = False

        async def receive() -> Message:
            nonlocal delivered
            if delivered:
                await asyncio.Event().wait()
            delivered = True
            return {"type": "http.request", "body": body, "more_body": False}

        scope = {"type": "http", "method": "POST", "path": "/v1/chat/completions", "headers": list(headers)}
        await target(scope, receive, send)
    return (time.process_time() - started) / requests * 1e6


async def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tokens", type=int, default=32, help="SSE token events per response")
    parser.add_argument("--requests", type=int, default=5000, help="requests per measurement")
    parser.add_argument("--repeats", type=int, default=5, help="measurements per side; the fastest counts")
    args = parser.parse_args()
    body = json.dumps(
        {
            "model": MODEL,
            "messages": PROMPT,
            "max_tokens": args.tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
    ).encode()
    config = FrontConfig(
        model_ids=[MODEL],
        max_model_len=2048,
        max_concurrency=256,
        max_queue=1024,
        default_max_tokens=512,
        max_tokens_limit=4096,
        request_timeout_s=600.0,
    )
    app = streamer(args.tokens)
    front = KaitoFront(app, config)
    for target in (app, front):  # warm-up
        await per_request_us(target, body, args.requests // 5)
    # The fastest of the repeats: the one least disturbed by other work on the machine.
    alone = min([await per_request_us(app, body, args.requests) for _ in range(args.repeats)])
    wrapped = min([await per_request_us(front, body, args.requests) for _ in range(args.repeats)])
    cost = wrapped - alone
    print(f"stand-in app alone: {alone:.1f} us/request; with KaitoFront: {wrapped:.1f} us/request")
    print(f"KaitoFront's own CPU: {cost:.1f} us per request, {cost / args.tokens:.2f} us per token")
    return 0


if __name__ == "__main__":
    import uvloop

    sys.exit(uvloop.run(main()))
