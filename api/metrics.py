"""Prometheus metrics of one app: its own registry (no global state), request counts by route template.

With several API processes (`api.multiprocess`), counters and histograms are summed over the processes;
the gauges are read from Redis at scrape time, so the most recent reading (any process's) is the truth.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any, Literal

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.multiprocess import multiprocess_dir
from shared.stats import WEBHOOK_OUTCOMES, JobStats

# Gauges set from Redis just before each scrape: across processes, the latest value set is the answer.
_SCRAPED: Literal["mostrecent"] = "mostrecent"


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
            multiprocess_mode=_SCRAPED,
        )
        self.jobs_running = Gauge(
            "artgen_jobs_running",
            "Jobs a worker has started and not finished.",
            registry=self.registry,
            multiprocess_mode=_SCRAPED,
        )
        self.workers_alive = Gauge(
            "artgen_workers_alive",
            "Workers with a heartbeat younger than 30 s.",
            registry=self.registry,
            multiprocess_mode=_SCRAPED,
        )
        self.redis_used_memory = Gauge(
            "artgen_redis_used_memory_bytes",
            "Bytes the data Redis uses (INFO memory used_memory, read at scrape time).",
            registry=self.registry,
            multiprocess_mode=_SCRAPED,
        )
        self.redis_maxmemory = Gauge(
            "artgen_redis_maxmemory_bytes",
            "The data Redis' maxmemory (0 = no limit); new jobs are refused above "
            "ARTGEN_REDIS_MEMORY_HIGH of it.",
            registry=self.registry,
            multiprocess_mode=_SCRAPED,
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
        """This process's metrics, or with several API processes, every process's, summed."""
        if multiprocess_dir() is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        MultiProcessCollector(merged)  # type: ignore[no-untyped-call]
        return generate_latest(merged)


class MetricsMiddleware:
    """Counts every HTTP request by its route template (never the raw path, which holds job ids)."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics
        # Children by label values, found once: `labels()` on every request costs a lock and a lookup.
        self._seconds: dict[str, Any] = {}
        self._requests: dict[tuple[str, str, int], Any] = {}

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
                seconds = self._seconds.get(route)
                if seconds is None:
                    seconds = self._seconds[route] = self.metrics.http_seconds.labels(route)
                seconds.observe(time.perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            key = (_route_of(scope), scope["method"], status)
            requests = self._requests.get(key)
            if requests is None:
                requests = self._requests[key] = self.metrics.http_requests.labels(
                    key[0], key[1], str(status)
                )
            requests.inc()


def _route_of(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None) if isinstance(route, BaseRoute) else None
    return path if isinstance(path, str) else "unmatched"


class _JobStatsCollector:
    """One scrape's snapshot of the job statistics all workers keep in Redis."""

    def __init__(self, stats: JobStats, running_its: dict[str, float]) -> None:
        self.stats = stats
        self.running_its = running_its

    def collect(self) -> Iterator[Metric]:
        finished = CounterMetricFamily(
            "artgen_jobs_finished", "Jobs that ended, by model and final state.", labels=["model", "state"]
        )
        for (model, state), count in sorted(self.stats.finished.items()):
            finished.add_metric([model, state], count)
        yield finished
        iterations = CounterMetricFamily(
            "artgen_iterations", "Optimisation steps done by finished jobs, by model.", labels=["model"]
        )
        for model, count in sorted(self.stats.iterations.items()):
            iterations.add_metric([model], count)
        yield iterations
        speed = GaugeMetricFamily(
            "artgen_iterations_per_second",
            "Iterations per second summed over the jobs running now, by model.",
            labels=["model"],
        )
        for model, its in sorted(self.running_its.items()):
            speed.add_metric([model], its)
        yield speed
        deliveries = CounterMetricFamily(
            "artgen_webhook_deliveries",
            "Webhook delivery attempts, by outcome: delivered, retrying, failed (the last attempt), refused "
            "(the address is not allowed), dropped (the job was deleted).",
            labels=["outcome"],
        )
        for outcome in WEBHOOK_OUTCOMES:
            deliveries.add_metric([outcome], self.stats.webhooks.get(outcome, 0.0))
        yield deliveries
        for name, help_text in (
            ("duration", "Seconds from a job's start to its end, by model."),
            ("queue_wait", "Seconds a job waited in the queue before it started, by model."),
        ):
            family = HistogramMetricFamily(f"artgen_job_{name}_seconds", help_text, labels=["model"])
            for (kind, model), histogram in sorted(self.stats.histograms.items()):
                if kind == name:
                    family.add_metric([model], histogram.buckets, histogram.total)
            yield family


def render_job_stats(stats: JobStats, running_its: dict[str, float]) -> bytes:
    """Prometheus text for the aggregated job statistics (a fresh registry per scrape)."""
    registry = CollectorRegistry()
    registry.register(_JobStatsCollector(stats, running_its))
    return generate_latest(registry)
