"""The Celery application: broker settings and reliability options, no task code.

Torch-free, so the API process can enqueue by task name (``send_task``) without importing the
engine. Workers start with ``celery -A worker.tasks worker --pool solo``.
"""

from __future__ import annotations

from celery import Celery

from worker.store import Settings, get_settings

QUEUE = "camdrift"


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
        broker_transport_options={"visibility_timeout": 2 * limit + 60},
        task_soft_time_limit=limit,
        task_time_limit=limit + 60,
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    return app
