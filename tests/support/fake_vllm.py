"""A stand-in for `python -m vllm.entrypoints.openai.api_server`: the few routes and error shapes the
vLLM engine relies on, so its forwarding, health following and child handling are tested where vLLM
is not installed. Run as `fake_vllm.py -m <module> --port P --served-model-name N [--lora-modules a=p]`.

A file named by $FAKE_VLLM_UNHEALTHY, when it exists, makes /health answer 503.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from aiohttp import web


def vllm_error(message: str, param: str | None, status: int = 400) -> web.Response:
    body = {"error": {"message": message, "type": "BadRequestError", "param": param, "code": status}}
    return web.json_response(body, status=status)


def main() -> None:
    if sys.argv[1:3] != ["-m", "vllm.entrypoints.openai.api_server"]:
        sys.exit(1)  # e.g. the option probe: no vLLM here, the engine falls back to its list
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    parser.add_argument("--lora-modules", nargs="*", default=[])
    args, _ = parser.parse_known_args(sys.argv[3:])
    models = [args.served_model_name, *(m.split("=")[0] for m in args.lora_modules)]
    unhealthy = os.environ.get("FAKE_VLLM_UNHEALTHY")

    def is_unhealthy() -> bool:
        return bool(unhealthy) and Path(str(unhealthy)).exists()

    async def health(_: web.Request) -> web.Response:
        return web.Response(status=503 if is_unhealthy() else 200)

    async def metrics(_: web.Request) -> web.Response:
        text = (
            "# HELP python_gc_objects_collected_total Objects collected\n"
            "# TYPE python_gc_objects_collected_total counter\n"
            'python_gc_objects_collected_total{generation="0"} 1.0\n'
            "# HELP vllm:num_requests_running Requests running\n"
            "# TYPE vllm:num_requests_running gauge\n"
            f'vllm:num_requests_running{{model_name="{args.served_model_name}"}} 0.0\n'
        )
        return web.Response(text=text)

    async def tokenize(request: web.Request) -> web.Response:
        body = await request.json()
        text = " ".join(m["content"] for m in body["messages"]) if "messages" in body else body["prompt"]
        return web.json_response({"count": len(text.split()) + 3, "max_model_len": 512})

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        if not isinstance(body.get("temperature", 0), int | float):
            return vllm_error("Input should be a valid number", "body.temperature")
        if body.get("max_tokens", 4) > 512:
            return vllm_error(
                f"max_tokens={body['max_tokens']} cannot be greater than max_model_len=512.", "max_tokens"
            )
        words = [f"{body['model']}-{i}" for i in range(body.get("max_tokens", 4))]
        if not body.get("stream"):
            message = {"role": "assistant", "content": " ".join(words)}
            usage = {"prompt_tokens": 5, "completion_tokens": len(words), "total_tokens": 5 + len(words)}
            return web.json_response(
                {
                    "id": "chatcmpl-1",
                    "object": "chat.completion",
                    "model": body["model"],
                    "choices": [{"index": 0, "message": message, "finish_reason": "length"}],
                    "usage": usage,
                }
            )
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)
        events: list[bytes] = []
        for i, word in enumerate(words):
            chunk = {
                "id": "chatcmpl-1",
                "object": "chat.completion.chunk",
                "model": body["model"],
                "choices": [
                    {
                        "index": 0,
                        "delta": {"content": (" " if i else "") + word},
                        "finish_reason": "length" if i == len(words) - 1 else None,
                    }
                ],
            }
            events.append(f"data: {json.dumps(chunk)}\n\n".encode())
        # The first event alone, the rest in one write: a reader must split events, not reads.
        await response.write(events[0])
        await response.write(b"".join(events[1:]) + b"data: [DONE]\n\n")
        return response

    async def models_route(_: web.Request) -> web.Response:
        return web.json_response({"object": "list", "data": [{"id": m} for m in models]})

    app = web.Application()
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/v1/models", models_route)
    app.router.add_post("/tokenize", tokenize)
    app.router.add_post("/v1/chat/completions", chat)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None)


if __name__ == "__main__":
    main()
