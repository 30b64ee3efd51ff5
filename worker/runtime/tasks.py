"""Celery tasks: thin wrappers that run the bodies in ``worker.runtime.jobs`` with retry rules.

Transient errors (database or broker unreachable) are retried with backoff; anything else is
deterministic for this job and ends it ``failed`` with the reason, so a poison job does not
loop through redelivery.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from celery.signals import worker_ready
from sqlalchemy.exc import DBAPIError, OperationalError

from training.logs import configure_logging
from worker.runtime import imports, jobs, logcontext
from worker.runtime import metrics as worker_metrics
from worker.runtime.celery_app import make_celery
from worker.runtime.sweeper import SweepPolicy, safe_sweep
from worker.store import get_settings

log = logging.getLogger("camdrift.tasks")
app = make_celery()
TRANSIENT = (OperationalError, ConnectionError, TimeoutError)
_context: jobs.WorkerContext | None = None


def _enqueue(name: str, args: list[Any]) -> None:
    app.send_task(name, args=args)


def context() -> jobs.WorkerContext:
    """One context per worker process (engine pool, model cache)."""
    global _context
    if _context is None:
        settings = get_settings()
        configure_logging(settings.log_level)
        # device and batch size: CAMDRIFT_DEVICE, CAMDRIFT_BATCH_SIZE
        _context = jobs.WorkerContext.create(settings, _enqueue)
    return _context


@worker_ready.connect
def serve_metrics(**_: Any) -> None:
    """The worker's Prometheus counters on ``CAMDRIFT_WORKER_METRICS_PORT``, when set."""
    port = get_settings().worker_metrics_port
    if port:
        worker_metrics.serve(port)
        log.info("worker metrics served port=%d", port)


@worker_ready.connect
def start_sweeper(**_: Any) -> None:
    """A daemon thread per worker that re-enqueues stuck jobs (see ``worker.runtime.sweeper``)."""
    settings = get_settings()
    configure_logging(settings.log_level)
    policy = SweepPolicy.from_settings(settings)
    if policy.interval_s <= 0:
        return
    # its own context (engine): with a prefork pool the task context must not be made in the
    # parent process, whose connections the forked children would share
    ctx = jobs.WorkerContext.create(settings, _enqueue)
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(policy.interval_s):
            safe_sweep(ctx, policy)

    threading.Thread(target=loop, name="camdrift-sweeper", daemon=True).start()
    log.info("sweeper started interval=%ss", policy.interval_s)


Fail = Callable[[jobs.WorkerContext, str, str], bool]


def _run(
    task: Any,
    job_id: str,
    body: Callable[[], None],
    shard: int | None = None,
    fail: Fail = jobs.fail_job,
) -> None:
    """``body`` with the retry rules; ``fail`` records a failure on the task's row (a job's,
    or an import's for :data:`imports.IMPORT`)."""
    with logcontext.bound(job=job_id, shard=shard):
        _run_bound(task, job_id, body, fail)


def _run_bound(task: Any, job_id: str, body: Callable[[], None], fail: Fail) -> None:
    outcome = "ok"
    try:
        body()
    except jobs.JobFailed as exc:
        outcome = "failed"
        fail(context(), job_id, str(exc))
    except SoftTimeLimitExceeded:
        outcome = "failed"
        fail(context(), job_id, f"{task.name} exceeded its time limit")
    except TRANSIENT as exc:
        if task.request.retries >= task.max_retries:
            outcome = "failed"
            fail(context(), job_id, f"gave up after retries: {exc}")
            return
        outcome = "retried"
        log.warning("transient error task=%s error=%r", task.name, str(exc))
        raise task.retry(exc=exc, countdown=min(2**task.request.retries, 30)) from None
    except DBAPIError as exc:
        outcome = "failed"
        fail(context(), job_id, f"database error: {exc.orig}")
    except Exception as exc:  # a bug or bad input: fail the job, keep the worker alive
        outcome = "crashed"
        log.exception("task crashed task=%s", task.name)
        fail(context(), job_id, f"{type(exc).__name__}: {exc}")
    finally:
        worker_metrics.TASKS.labels(task.name, outcome).inc()


@app.task(name=jobs.PLAN, bind=True, max_retries=5)
def plan_job(self, job_id: str) -> None:
    _run(self, job_id, lambda: jobs.plan_job(context(), job_id))


@app.task(name=jobs.SHARD, bind=True, max_retries=5)
def run_shard(self, job_id: str, shard_no: int) -> None:
    _run(self, job_id, lambda: jobs.run_shard(context(), job_id, shard_no), shard=shard_no)


@app.task(name=jobs.FINALIZE, bind=True, max_retries=5)
def finalize_job(self, job_id: str) -> None:
    _run(self, job_id, lambda: jobs.finalize_job(context(), job_id))


@app.task(name=imports.IMPORT, bind=True, max_retries=5)
def import_checkpoint(self, import_id: str) -> None:
    _run(
        self,
        import_id,
        lambda: imports.import_checkpoint(context(), import_id),
        fail=imports.fail_import,
    )
