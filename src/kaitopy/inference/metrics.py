"""The model server's Prometheus metrics, in a registry of its own (several servers may live in one
test process, and the global registry would mix them)."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

# Generation latencies span milliseconds (tiny models, cache hits) to minutes (long outputs).
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._series: dict[tuple[str, str], Any] = {}
        self.requests = Counter(
            "kaitopy_inference_requests",
            "Requests answered, by endpoint, model and HTTP status",
            ["endpoint", "model", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "kaitopy_inference_request_duration_seconds",
            "Time from a request's arrival to its last byte, by endpoint",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.time_to_first_token = Histogram(
            "kaitopy_inference_time_to_first_token_seconds",
            "Time from a streaming request's arrival to its first chunk",
            ["endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter(
            "kaitopy_inference_prompt_tokens",
            "Prompt tokens processed",
            ["model"],
            registry=self.registry,
        )
        self.completion_tokens = Counter(
            "kaitopy_inference_completion_tokens",
            "Completion tokens generated",
            ["model"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "kaitopy_inference_queue_depth",
            "Requests waiting for a generation slot",
            registry=self.registry,
        )
        self.running = Gauge(
            "kaitopy_inference_running_requests",
            "Requests holding a generation slot",
            registry=self.registry,
        )
        self.rejected = Counter(
            "kaitopy_inference_rejected",
            "Requests refused with 429 because the queue was full",
            registry=self.registry,
        )

    def count_usage(self, model: str, usage: object) -> None:
        if not isinstance(usage, dict):
            return
        prompt = usage.get("prompt_tokens")
        completion = usage.get("completion_tokens")
        if isinstance(prompt, int) and prompt > 0:
            self._token_series("prompt", model).inc(prompt)
        if isinstance(completion, int) and completion > 0:
            self._token_series("completion", model).inc(completion)

    def _token_series(self, kind: str, model: str) -> Any:
        # A labelled child looked up once per model, not per request (labels() takes a lock).
        series = self._series.get((kind, model))
        if series is None:
            counter = self.prompt_tokens if kind == "prompt" else self.completion_tokens
            series = self._series[(kind, model)] = counter.labels(model)
        return series

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
