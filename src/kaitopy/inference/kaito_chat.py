"""Kaito's classic `POST /chat`, translated to an OpenAI request and back.

Kaito's text-generation server takes `{"prompt": ...}` (raw text, no chat template) or
`{"messages": [...]}` (a conversation) plus `generate_kwargs` with Hugging Face names, and answers
`{"Result": "<text>"}`. With a prompt the result is the prompt followed by the generated text unless
`return_full_text` is false, as Kaito's pipeline does. Kaito's defaults apply to what the request
leaves out: max_length 200 (prompt plus new tokens), sampling with top_k 10.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kaitopy.inference.engine import RequestError

KAITO_DEFAULTS: dict[str, Any] = {
    "max_length": 200,
    "do_sample": True,
    "temperature": 1.0,
    "top_k": 10,
    "top_p": 1.0,
}
# Hugging Face generate() names that map one to one onto OpenAI (or vLLM's extra) parameters.
_PASSED = ("temperature", "top_p", "top_k", "seed", "repetition_penalty")


@dataclass(frozen=True)
class KaitoRequest:
    kind: str  # "chat" (messages) or "completion" (prompt)
    body: dict[str, Any]  # the OpenAI request, without max_tokens when max_length still needs a prompt length
    prompt: str | None  # the raw prompt, for return_full_text
    return_full_text: bool
    max_length: int | None  # the prompt-plus-output budget, when given instead of max_new_tokens


def _positive(kwargs: dict[str, Any], name: str) -> int | None:
    value = kwargs.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RequestError(f"generate_kwargs.{name} must be a positive integer, not {value!r}", param=name)
    return value


def translate(payload: dict[str, Any], model: str) -> KaitoRequest:
    generate_kwargs = payload.get("generate_kwargs")
    if generate_kwargs is None:
        generate_kwargs = {}
    if not isinstance(generate_kwargs, dict):
        raise RequestError("'generate_kwargs' must be an object", param="generate_kwargs")
    kwargs = {**KAITO_DEFAULTS, **generate_kwargs}
    body: dict[str, Any] = {"model": payload.get("model") or model, "stream": False}
    for name in _PASSED:
        if kwargs.get(name) is not None:
            body[name] = kwargs[name]
    if kwargs.get("do_sample") is False:
        body["temperature"] = 0.0
    max_new_tokens = _positive(kwargs, "max_new_tokens")
    max_length = None
    if max_new_tokens is not None:
        body["max_tokens"] = max_new_tokens
    else:
        max_length = _positive(kwargs, "max_length")
    return_full_text = payload.get("return_full_text", True)
    if not isinstance(return_full_text, bool):
        raise RequestError("'return_full_text' must be true or false", param="return_full_text")

    prompt = payload.get("prompt")
    messages = payload.get("messages")
    if prompt is not None and messages is not None:
        raise RequestError("send either 'prompt' or 'messages', not both", param="prompt")
    if messages is not None:
        body["messages"] = messages
        return KaitoRequest("chat", body, None, False, max_length)
    if not isinstance(prompt, str) or not prompt:
        raise RequestError("Text generation parameter prompt required", param="prompt")
    body["prompt"] = prompt
    return KaitoRequest("completion", body, prompt, return_full_text, max_length)


def with_prompt_length(request: KaitoRequest, prompt_tokens: int | None) -> dict[str, Any]:
    """The OpenAI body with max_length turned into max_tokens. Without the prompt's length (an engine
    that cannot count tokens) max_length bounds the new tokens alone."""
    body = dict(request.body)
    if request.max_length is not None:
        budget = request.max_length - (prompt_tokens or 0)
        if budget < 1:
            raise RequestError(
                f"generate_kwargs.max_length {request.max_length} leaves no room after the prompt's "
                f"{prompt_tokens} tokens",
                param="max_length",
            )
        body["max_tokens"] = budget
    return body


def result(request: KaitoRequest, response: dict[str, Any]) -> dict[str, Any]:
    choice = (response.get("choices") or [{}])[0]
    if request.kind == "chat":
        text = (choice.get("message") or {}).get("content") or ""
    else:
        text = choice.get("text") or ""
        if request.return_full_text and request.prompt is not None:
            text = request.prompt + text
    return {"Result": text}
