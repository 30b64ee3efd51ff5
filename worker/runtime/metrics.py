"""The worker's own Prometheus counters (prometheus_client, one registry for the process).

Celery workers serve them on ``CAMDRIFT_WORKER_METRICS_PORT`` when it is set; the embedded
runner runs inside the API process, whose ``/metrics`` serves this registry as well.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)

disable_created_metrics()  # no *_created series: scrapers track start times themselves
REGISTRY = CollectorRegistry()
TASKS = Counter(
    "camdrift_worker_tasks",
    "Task bodies run by this worker, by task and outcome (ok, failed, retried, crashed).",
    ["task", "outcome"],
    registry=REGISTRY,
)
SAMPLES = Counter(
    "camdrift_worker_samples",
    "Evaluated samples whose rows this worker stored.",
    registry=REGISTRY,
)
SHARD_SECONDS = Histogram(
    "camdrift_worker_shard_seconds",
    "Wall time of one shard: attribution, metrics and row writes.",
    buckets=(1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
    registry=REGISTRY,
)

BATCH_SECONDS = Histogram(
    "camdrift_worker_batch_seconds",
    "Wall time of one batch of a shard: loading, attribution of every model, metrics.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
GPU_MEMORY = Gauge(
    "camdrift_worker_gpu_memory_peak_bytes",
    "Peak CUDA memory allocated during the last shard (stays 0 on CPU).",
    registry=REGISTRY,
)


def serve(port: int) -> None:
    """Expose the registry over HTTP on ``port`` (a daemon thread of prometheus_client)."""
    start_http_server(port, registry=REGISTRY)
