"""Hand a stored job (or a checkpoint import) to the runner: Celery when a broker is
configured, else embedded.

``submit_job`` raises when the job cannot be enqueued (e.g. the broker is down); the API then
marks the job failed and answers 503, so no queued row is left that nobody will run.
"""

from __future__ import annotations

import threading
from functools import lru_cache
from typing import Any

from worker.runtime.imports import IMPORT
from worker.runtime.jobs import PLAN
from worker.store.settings import Settings

_lock = threading.Lock()
_runners: dict[tuple[str, str], Any] = {}


class BrokerUnavailable(RuntimeError):
    """The broker did not take the message."""


@lru_cache(maxsize=4)
def _celery(broker_url: str, shard_time_limit_s: int, visibility_timeout_s: int):
    from worker.runtime.celery_app import make_celery

    return make_celery(
        Settings(
            broker_url=broker_url,
            shard_time_limit_s=shard_time_limit_s,
            visibility_timeout_s=visibility_timeout_s,
        )
    )


def embedded_runner(settings: Settings):
    """The process's embedded runner for this database and store (started on first use)."""
    from worker.runtime.embedded import EmbeddedRunner

    key = (settings.database_url, settings.storage)
    with _lock:
        if key not in _runners:
            _runners[key] = EmbeddedRunner(settings)
        return _runners[key]


def stop_embedded_runner(settings: Settings) -> None:
    """Stop the embedded runner for this database and store, if one was started: the app's
    shutdown, so no thread outlives the app and sweeps a database that may be gone."""
    with _lock:
        runner = _runners.pop((settings.database_url, settings.storage), None)
    if runner is not None:
        runner.stop()


def submit_job(settings: Settings, job_id: str) -> None:
    """Enqueue job ``job_id``; raise :class:`BrokerUnavailable` when that is impossible."""
    send(settings, PLAN, [job_id])


def submit_import(settings: Settings, import_id: str) -> None:
    """Enqueue the conversion of an uploaded weights file (``worker.runtime.imports``)."""
    send(settings, IMPORT, [import_id])


def send(settings: Settings, name: str, args: list[Any]) -> None:
    """Task ``name`` to a worker: Celery's queue, or the embedded runner when no broker."""
    if not settings.broker_url:
        embedded_runner(settings).enqueue(name, args)
        return
    app = _celery(settings.broker_url, settings.shard_time_limit_s, settings.visibility_timeout)
    try:
        app.send_task(
            name,
            args=args,
            retry=True,
            retry_policy={
                "max_retries": 2,
                "interval_start": 0.2,
                "interval_step": 0.3,
                "interval_max": 1.0,
            },
        )
    except Exception as exc:  # kombu raises OperationalError / ConnectionError variants
        raise BrokerUnavailable(f"broker unavailable: {exc}") from exc
