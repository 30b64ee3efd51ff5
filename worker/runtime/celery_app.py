"""The Celery application: broker settings and reliability options, no task code.

Torch-free, so the API process can enqueue by task name (``send_task``) without importing the
engine. Workers start with ``celery -A worker.runtime.tasks worker --pool solo``.
"""

from __future__ import annotations

from celery import Celery

from worker.store import Settings, get_settings

QUEUE = "camdrift"


def visibility_timeout_s(settings: Settings) -> int:
    """Seconds after which Redis hands an unacknowledged message (its worker died) to another
    worker: ``CAMDRIFT_VISIBILITY_TIMEOUT_S``, default well above one shard's time limit."""
    return settings.visibility_timeout


def transport_options(settings: Settings) -> dict[str, int]:
    """Redis transport options: the visibility timeout, and how often a worker looks for
    unacknowledged messages past it (kombu's default, every 10th tick of 10 s, is tuned for
    hour-long timeouts; with a short timeout the lost message would wait 100 s)."""
    visibility = visibility_timeout_s(settings)
    period = min(100, max(1, visibility // 2))
    interval = max(1, min(10, period))
    return {
        "visibility_timeout": visibility,
        "unacked_restore_interval": interval,
        "unacked_restore_throttle": max(1, period // interval),
    }


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or get_settings()
    if not settings.broker_url:
        raise ValueError("CAMDRIFT_BROKER_URL is not set: no broker to send tasks to")
    app = Celery("camdrift", broker=settings.broker_url)
    limit = settings.shard_time_limit_s
    app.conf.update(
        task_default_queue=QUEUE,
        task_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        # A task is acknowledged only after it ran, and a worker killed mid-shard gives it
        # back: the shard is redelivered to another worker (its rows are replaced, not added).
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        # Redis redelivers unacknowledged messages after this long: well above a shard's time.
        broker_transport_options=transport_options(settings),
        task_soft_time_limit=limit,
        task_time_limit=limit + 60,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app
