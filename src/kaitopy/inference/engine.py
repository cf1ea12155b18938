"""The contract between the HTTP front (server.py) and a model engine (transformers or vLLM).

The front owns routing, parsing, admission, metrics and SSE framing; an engine only turns an
OpenAI-shaped request body into an OpenAI-shaped response (or an async iterator of chunks).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Protocol, runtime_checkable

# What an engine returns for a chat/completion call: a whole response, or chunks when body["stream"].
EngineResult = dict[str, Any] | AsyncIterator[dict[str, Any]]


def error_type(status: int) -> str:
    """OpenAI's error type for a status: the one place that decides it, so both engines (and the
    front's own refusals) answer the same body for the same mistake."""
    if status == 429:
        return "rate_limit_error"
    if status >= 500:
        return "server_error"
    return "invalid_request_error"


class RequestError(Exception):
    """A request that fails: the front answers `status` with OpenAI error JSON
    {"error": {"message", "type", "param", "code"}}; the type follows from the status."""

    def __init__(
        self,
        message: str,
        *,
        status: int = 400,
        param: str | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.type = error_type(status)
        self.code = code

    def to_json(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def queue_full(max_concurrency: int, max_queue: int) -> RequestError:
    """The 429 of a request that finds every generation slot and queue place taken."""
    return RequestError(
        f"too many requests: {max_concurrency} running and {max_queue} waiting; retry later",
        status=429,
        code="queue_full",
    )


def request_timed_out(limit_s: float) -> RequestError:
    """The 504 of a request that passed the server's --request-timeout (both fronts say the same)."""
    return RequestError(
        f"the request took longer than this server's limit of {limit_s:g} s (--request-timeout); "
        "ask for fewer tokens",
        status=504,
        code="request_timeout",
    )


@runtime_checkable
class Engine(Protocol):
    name: str  # "transformers" | "vllm"

    async def start(self) -> None:
        """Load the model (may take long); raise on failure."""
        ...

    async def stop(self) -> None: ...

    def ready(self) -> bool:
        """True only once the model is loaded (and, for vLLM, its child is healthy)."""
        ...

    def model_ids(self) -> list[str]:
        """The served base name first, then each adapter name."""
        ...

    async def chat_completion(self, body: dict[str, Any]) -> EngineResult:
        """`body` is the OpenAI request JSON (already checked to be an object). When body["stream"]
        is true, return an async iterator of chunk objects (the front writes SSE framing and [DONE]);
        otherwise the full response object with "usage". Raise RequestError for an unknown model
        (404, code "model_not_found"), a prompt longer than the context (400), bad parameters."""
        ...

    async def completion(self, body: dict[str, Any]) -> EngineResult: ...

    def extra_metrics(self) -> bytes:
        """Extra Prometheus exposition text appended to /metrics (b"" when none)."""
        ...


@runtime_checkable
class PromptTokenCounter(Protocol):
    """Optional for an engine: how many tokens a request's prompt takes. Kaito's /chat needs it to turn
    generate_kwargs.max_length (prompt plus output) into max_tokens."""

    async def count_prompt_tokens(self, body: dict[str, Any]) -> int:
        """`body` holds "model" and either "messages" (chat template applied) or "prompt"."""
        ...


def unknown_model(model: object, known: list[str]) -> RequestError:
    """The error both engines raise for a model name they do not serve."""
    return RequestError(
        f"The model `{model}` does not exist. Served models: {', '.join(known)}.",
        status=404,
        param="model",
        code="model_not_found",
    )
