"""The checks every request passes before it may wait for a generation slot.

A request that can never succeed (unknown model, malformed body, max_tokens over the server's limit)
is answered at once with its 4xx, whichever engine serves: it must not wait behind others for a slot,
nor be told 429 "retry later" when retrying cannot help. The checks are the engine-independent part of
OpenAI's request schema; what only an engine can judge (the prompt's length in tokens, a chat template
that refuses a conversation) stays with the engine.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from kaitopy.inference.engine import RequestError, unknown_model

# Deeper JSON than any OpenAI request needs; deeper input is refused before anything walks it.
MAX_JSON_DEPTH = 32
# name -> (low, high), OpenAI's ranges.
_NUMBERS = {
    "temperature": (0.0, 2.0),
    "top_p": (0.0, 1.0),
    "presence_penalty": (-2.0, 2.0),
    "frequency_penalty": (-2.0, 2.0),
    "repetition_penalty": (0.01, 100.0),
}
_BOOLS = ("stream", "ignore_eos", "echo", "logprobs")
_INTEGERS = {"n": 1, "seed": 0, "min_tokens": 0, "top_k": -1}


@dataclass(frozen=True)
class Limits:
    max_tokens_limit: int


def parse_body(raw: bytes) -> dict[str, Any]:
    """The request body as a JSON object, or a 400 saying what is wrong with it."""
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise RequestError(f"the request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise RequestError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, not {type(body).__name__}")
    if _containers_at_most(raw, MAX_JSON_DEPTH - 1):
        # k containers nest at most k deep, their values one more: no walk needed (the usual case;
        # the walk costs more than the rest of the checks together).
        return body
    if _depth(body) > MAX_JSON_DEPTH:
        raise RequestError(f"the request body nests deeper than {MAX_JSON_DEPTH} levels")
    return body


def _containers_at_most(raw: bytes, limit: int) -> bool:
    """Whether the JSON text has at most `limit` opening brackets (those inside strings count too, so
    the answer errs only towards walking)."""
    return raw.count(b"{") + raw.count(b"[") <= limit


def _depth(value: Any) -> int:
    # Iterative: a recursive walk is what the limit protects against.
    deepest, todo = 0, [(value, 1)]
    while todo:
        item, level = todo.pop()
        deepest = max(deepest, level)
        if deepest > MAX_JSON_DEPTH:
            return deepest
        if isinstance(item, dict):
            todo += [(v, level + 1) for v in item.values()]
        elif isinstance(item, list):
            todo += [(v, level + 1) for v in item]
    return deepest


def check_model(body: dict[str, Any], served: list[str]) -> str:
    """The requested model (the base model when none is named, as vLLM does), or 400/404."""
    model = body.get("model")
    if model is None:
        model = served[0]
        body["model"] = model
    if not isinstance(model, str):
        raise RequestError("'model' must be a string", param="model")
    if model not in served:
        raise unknown_model(model, served)
    return model


def _check_messages(body: dict[str, Any]) -> None:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise RequestError("'messages' must be a non-empty list of messages", param="messages")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{i}] must be an object", param="messages")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise RequestError(f"messages[{i}].role must be a non-empty string", param="messages")
        content = message.get("content")
        if content is not None and not isinstance(content, str | list):
            raise RequestError(
                f"messages[{i}].content must be a string or a list of content parts", param="messages"
            )
        if isinstance(content, list) and not all(isinstance(p, dict) for p in content):
            raise RequestError(f"messages[{i}].content parts must be objects", param="messages")


def _check_prompt(body: dict[str, Any]) -> None:
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return
    if isinstance(prompt, list) and prompt:
        return  # token ids or a batch: the engine says what it supports
    raise RequestError("'prompt' must be a string or a list of token ids", param="prompt")


def _check_scalars(body: dict[str, Any]) -> None:
    for name, (low, high) in _NUMBERS.items():
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise RequestError(f"'{name}' must be a number, not {value!r}", param=name)
        if not low <= value <= high:
            raise RequestError(f"'{name}' must be between {low:g} and {high:g}, not {value}", param=name)
    for name in _BOOLS:
        value = body.get(name)
        if value is not None and not isinstance(value, bool) and not (name == "logprobs" and _is_int(value)):
            raise RequestError(f"'{name}' must be true or false, not {value!r}", param=name)
    for name, low in _INTEGERS.items():
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value):
            raise RequestError(f"'{name}' must be an integer, not {value!r}", param=name)
        if value < low:
            raise RequestError(f"'{name}' must be at least {low}, not {value}", param=name)
    stop = body.get("stop")
    if stop is not None and not (
        isinstance(stop, str) or (isinstance(stop, list) and all(isinstance(s, str) for s in stop))
    ):
        raise RequestError("'stop' must be a string or a list of strings", param="stop")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise RequestError("'stream_options' must be an object", param="stream_options")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_max_tokens(body: dict[str, Any], limits: Limits) -> None:
    """max_tokens (or the chat API's newer max_completion_tokens) within 1 .. the server's limit."""
    for name in ("max_completion_tokens", "max_tokens"):
        value = body.get(name)
        if value is None:
            continue
        if not _is_int(value):
            raise RequestError(f"'{name}' must be an integer, not {value!r}", param=name)
        if value < 1:
            raise RequestError(f"'{name}' must be at least 1, not {value}", param=name)
        if value > limits.max_tokens_limit:
            raise RequestError(
                f"'{name}' {value} exceeds this server's limit of {limits.max_tokens_limit} tokens "
                "per request (--max-tokens-limit)",
                param=name,
                code="max_tokens_exceeded",
            )


def check_request(body: dict[str, Any], kind: str, served: list[str], limits: Limits) -> str:
    """Check a chat ("chat") or completion ("completion") request; returns the model it names."""
    model = check_model(body, served)
    if kind == "chat":
        _check_messages(body)
    else:
        _check_prompt(body)
    _check_scalars(body)
    check_max_tokens(body, limits)
    return model
