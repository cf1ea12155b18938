"""Training progress as Prometheus metrics: a textfile beside the adapter (for a node exporter's
textfile collector or a sidecar) and, when a port is given, an HTTP endpoint. The metrics live
in their own registry, so nothing else in the process leaks into them."""

from __future__ import annotations

import logging
import math
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, start_http_server, write_to_textfile

log = logging.getLogger(__name__)

TEXTFILE = "metrics.prom"


class TrainingMetrics:
    def __init__(self, output_dir: Path, method: str, port: int | None = None) -> None:
        self.path = output_dir / TEXTFILE
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["method"]

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"kaitopy_tuning_{name}", doc, labels, registry=self.registry)

        self._step = gauge("step", "Optimizer steps done")
        self._total = gauge("total_steps", "Optimizer steps the run will take")
        self._epoch = gauge("epoch", "Epochs done (fractional)")
        self._loss = gauge("loss", "Training loss of the last logged steps")
        self._lr = gauge("learning_rate", "Current learning rate")
        self._eval = gauge("eval_loss", "Loss on the held-out split (NaN until evaluated)")
        self._tokens = gauge("trained_tokens", "Tokens with a label trained on, resumed runs included")
        self._eta = gauge("eta_seconds", "Estimated seconds until the run finishes")
        self._checkpoint = gauge("checkpoint_step", "Step of the newest checkpoint")
        self._done = gauge("completed", "1 once the adapter is written")
        self._method = method
        for g in (self._eval,):
            g.labels(method).set(math.nan)
        if port is not None:
            start_http_server(port, registry=self.registry)
            log.info("serving training metrics on port %d", port)

    def progress(
        self, step: int, total: int, epoch: float, loss: float, lr: float, tokens: int, eta_s: float
    ) -> None:
        m = self._method
        self._step.labels(m).set(step)
        self._total.labels(m).set(total)
        self._epoch.labels(m).set(epoch)
        self._loss.labels(m).set(loss)
        self._lr.labels(m).set(lr)
        self._tokens.labels(m).set(tokens)
        self._eta.labels(m).set(eta_s)

    def checkpoint(self, step: int) -> None:
        self._checkpoint.labels(self._method).set(step)

    def evaluated(self, loss: float) -> None:
        self._eval.labels(self._method).set(loss)

    def completed(self) -> None:
        self._done.labels(self._method).set(1)
        self._eta.labels(self._method).set(0)

    def write(self) -> None:
        write_to_textfile(str(self.path), self.registry)
