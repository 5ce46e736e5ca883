"""Prometheus metrics of the server (GET /metrics)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


class Metrics:
    def __init__(self, engine_adapters):
        self.registry = CollectorRegistry()
        self.requests = Counter("softprompt_requests", "HTTP requests", ["endpoint", "status"], registry=self.registry)
        self.errors = Counter(
            "softprompt_errors", "HTTP requests answered with an error", ["endpoint"], registry=self.registry
        )
        self.latency = Histogram("softprompt_request_seconds", "Request latency", ["endpoint"], registry=self.registry)
        self.queue = Histogram(
            "softprompt_queue_seconds",
            "Time a job waits before its batch runs",
            registry=self.registry,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
        )
        self.batch = Histogram(
            "softprompt_batch_rows",
            "Rows per executed batch",
            registry=self.registry,
            buckets=(1, 2, 4, 8, 16, 32, 64, 128),
        )
        self.tokens = Counter("softprompt_generated_tokens", "Tokens generated", registry=self.registry)
        self.adapters = Gauge("softprompt_adapters_loaded", "Adapters loaded", registry=self.registry)
        self.adapters.set_function(engine_adapters)

    def observe(self, batch_rows=None, queue_seconds=None, generated_tokens=None):
        """The engine's hook: a batch's rows, a job's wait, tokens generated."""
        if generated_tokens is not None:
            self.tokens.inc(generated_tokens)
        if batch_rows is not None:
            self.batch.observe(batch_rows)
        if queue_seconds is not None:
            self.queue.observe(queue_seconds)

    def count(self, endpoint: str, status: int, seconds: float | None = None) -> None:
        """One answered request."""
        self.requests.labels(endpoint, str(status)).inc()
        if status >= 400:
            self.errors.labels(endpoint).inc()
        if seconds is not None:
            self.latency.labels(endpoint).observe(seconds)

    def text(self) -> bytes:
        return generate_latest(self.registry)


router = APIRouter()


@router.get(
    "/metrics",
    response_class=PlainTextResponse,
    responses={200: {"description": "Prometheus' text format (text/plain; version=0.0.4)."}},
)
async def metrics_text(request: Request):
    return PlainTextResponse(request.app.state.service.metrics.text(), media_type="text/plain; version=0.0.4")
