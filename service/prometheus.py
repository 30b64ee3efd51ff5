"""Prometheus text exposition, hand-written (no client library), and the request observer.

The observer is the outermost middleware: it times every request, counts it by route
template (not raw path, to keep label cardinality bounded) and writes the one log line per
request. Jobs by status are read from SQL at scrape time.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping

from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("camdrift.api")

BUCKETS: tuple[float, ...] = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(pairs: Mapping[str, str]) -> str:
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in pairs.items()) + "}"


def _number(value: float) -> str:
    if value == float("inf"):
        return "+Inf"
    return repr(float(value)) if not float(value).is_integer() else str(int(value))


class HttpMetrics:
    """Request counter and latency histogram, thread-safe (sync routes run in a pool)."""

    def __init__(self, buckets: tuple[float, ...] = BUCKETS) -> None:
        self.buckets = buckets
        self._lock = threading.Lock()
        self._requests: dict[tuple[str, str, str], int] = {}
        self._latency: dict[tuple[str, str], list[float]] = {}  # bucket counts..., sum, count

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        with self._lock:
            key = (method, route, str(status))
            self._requests[key] = self._requests.get(key, 0) + 1
            hist = self._latency.setdefault((method, route), [0.0] * (len(self.buckets) + 2))
            for i, bound in enumerate(self.buckets):
                if seconds <= bound:
                    hist[i] += 1
            hist[-2] += seconds
            hist[-1] += 1

    def render(self, jobs_by_status: Mapping[str, int] | None = None) -> str:
        lines: list[str] = []
        if jobs_by_status is not None:
            lines += [
                "# HELP camdrift_jobs Drift jobs by status.",
                "# TYPE camdrift_jobs gauge",
            ]
            for status, count in jobs_by_status.items():
                lines.append(f"camdrift_jobs{_labels({'status': status})} {count}")
        with self._lock:
            requests = dict(self._requests)
            latency = {k: list(v) for k, v in self._latency.items()}
        lines += [
            "# HELP camdrift_http_requests_total HTTP requests by method, route and status.",
            "# TYPE camdrift_http_requests_total counter",
        ]
        for (method, route, status), count in sorted(requests.items()):
            labels = _labels({"method": method, "route": route, "status": status})
            lines.append(f"camdrift_http_requests_total{labels} {count}")
        lines += [
            "# HELP camdrift_http_request_duration_seconds HTTP request latency.",
            "# TYPE camdrift_http_request_duration_seconds histogram",
        ]
        name = "camdrift_http_request_duration_seconds"
        for (method, route), hist in sorted(latency.items()):
            base = {"method": method, "route": route}
            for bound, count in zip(self.buckets, hist, strict=False):
                labels = _labels({**base, "le": _number(bound)})
                lines.append(f"{name}_bucket{labels} {_number(count)}")
            lines.append(f"{name}_bucket{_labels({**base, 'le': '+Inf'})} {_number(hist[-1])}")
            lines.append(f"{name}_sum{_labels(base)} {hist[-2]!r}")
            lines.append(f"{name}_count{_labels(base)} {_number(hist[-1])}")
        return "\n".join(lines) + "\n"


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
