"""Prometheus metrics of one app: its own registry (no global state), request counts by route template."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.jobs_submitted = Counter(
            "artgen_jobs_submitted", "Jobs accepted and queued, by model.", ["model"], registry=self.registry
        )
        self.jobs_rejected = Counter(
            "artgen_jobs_rejected",
            "Jobs refused before queueing, by reason.",
            ["reason"],
            registry=self.registry,
        )
        self.queue_depth = Gauge(
            "artgen_queue_depth",
            "Jobs waiting, per queue (read at scrape time).",
            ["queue"],
            registry=self.registry,
        )
        self.jobs_running = Gauge(
            "artgen_jobs_running", "Jobs a worker has started and not finished.", registry=self.registry
        )
        self.workers_alive = Gauge(
            "artgen_workers_alive", "Workers with a heartbeat younger than 30 s.", registry=self.registry
        )
        self.http_requests = Counter(
            "artgen_http_requests",
            "HTTP requests by route template, method and status.",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.http_seconds = Histogram(
            "artgen_http_request_seconds",
            "Time to the response headers, by route template.",
            ["route"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10),
            registry=self.registry,
        )

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Counts every HTTP request by its route template (never the raw path, which holds job ids)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_and_record(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                route = _route_of(scope)
                self.metrics.http_seconds.labels(route).observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            self.metrics.http_requests.labels(_route_of(scope), scope["method"], str(status)).inc()


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None) if isinstance(route, BaseRoute) else None
    return path if isinstance(path, str) else "unmatched"
