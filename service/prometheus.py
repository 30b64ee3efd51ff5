"""Prometheus metrics of the API (prometheus_client, one registry per app) and the request
observer.

The observer is the outermost middleware: it times every request, counts it by route template
(not raw path, to keep label cardinality bounded) and writes the one log line per request. Jobs
by status are read from SQL at scrape time by a collector; in the embedded deployment the
worker's own counters (``worker.runtime.metrics``) are served here too, since they run in this
process.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

disable_created_metrics()  # no *_created series: scrapers track start times themselves
log = logging.getLogger("camdrift.api")

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JobCounts = Callable[[], Mapping[str, int] | None]


class _JobsByStatus(Collector):
    """``camdrift_jobs{status}``: read at scrape time; absent when the database is down."""

    def __init__(self, counts: JobCounts) -> None:
        self.counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self.counts()
        if counts is None:
            return
        family = GaugeMetricFamily("camdrift_jobs", "Drift jobs by status.", labels=["status"])
        for status, count in counts.items():
            family.add_metric([status], count)
        yield family


class _Forward(Collector):
    """Another registry's metrics, served from this one."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def collect(self) -> Iterator[Metric]:
        yield from self.registry.collect()


class HttpMetrics:
    """This app's registry: request counter and latency histogram (prometheus_client's are
    thread-safe, and sync routes run in a pool), jobs by status, and any forwarded registry."""

    def __init__(self, job_counts: JobCounts | None = None, buckets: tuple[float, ...] = BUCKETS):
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "camdrift_http_requests",
            "HTTP requests by method, route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "camdrift_http_request_duration_seconds",
            "HTTP request latency.",
            ["method", "route"],
            buckets=buckets,
            registry=self.registry,
        )
        if job_counts is not None:
            self.registry.register(_JobsByStatus(job_counts))

    def forward(self, registry: CollectorRegistry) -> None:
        self.registry.register(_Forward(registry))

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class RequestObserver:
    """Time, count and log every HTTP request (method, path, status, ms; never headers)."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            elapsed = time.perf_counter() - start
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.observe(scope["method"], template, status, elapsed)
            log.info(
                "http_request method=%s path=%s status=%d ms=%.1f",
                scope["method"],
                scope["path"],
                status,
                elapsed * 1000,
            )
