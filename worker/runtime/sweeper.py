"""The sweeper: re-enqueue work that a lost message or a lost worker left behind.

A job row is the source of truth, so nothing is lost for good when a message is: a job still
``queued`` long after it was stored (the broker was down, or its message vanished) gets its plan
task again, and a ``running`` job without any progress for longer than the broker's visibility
timeout gets its pending shards again (or its finalisation, when every shard is done). The
task bodies are idempotent (conditional UPDATEs), so a message sent twice does no harm. Each
stuck job is claimed with a conditional UPDATE of ``updated_at``, so several sweepers (one per
worker) do not all re-send it, and a job is re-sent at most once per ``stale_after_s``.

Runs in the embedded runner's thread when it is idle and in a daemon thread of each Celery
worker (``worker.runtime.tasks``); ``CAMDRIFT_SWEEP_INTERVAL_S=0`` turns the periodic sweep off.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import select, update

from worker.runtime import jobs
from worker.store import Settings, session_scope
from worker.store.models import Job, JobShard, Report, utcnow

log = logging.getLogger("camdrift.sweeper")


def _env_seconds(name: str, default: float) -> float:
    value = os.environ.get(name, "").strip()
    return float(value) if value else default


@dataclass(frozen=True)
class SweepPolicy:
    """When a job counts as stuck, and how often to look."""

    queued_after_s: float = 300.0
    stale_after_s: float = 3660.0
    interval_s: float = 60.0

    @classmethod
    def from_env(cls, settings: Settings) -> SweepPolicy:
        """``CAMDRIFT_SWEEP_QUEUED_AFTER_S`` (300), ``CAMDRIFT_SWEEP_STALE_AFTER_S`` (the
        visibility timeout, ``CAMDRIFT_VISIBILITY_TIMEOUT_S``, default 2 x shard time limit
        + 60), ``CAMDRIFT_SWEEP_INTERVAL_S`` (60)."""
        visibility = _env_seconds(
            "CAMDRIFT_VISIBILITY_TIMEOUT_S", 2 * settings.shard_time_limit_s + 60
        )
        return cls(
            queued_after_s=_env_seconds("CAMDRIFT_SWEEP_QUEUED_AFTER_S", 300.0),
            stale_after_s=_env_seconds("CAMDRIFT_SWEEP_STALE_AFTER_S", visibility),
            interval_s=_env_seconds("CAMDRIFT_SWEEP_INTERVAL_S", 60.0),
        )


def _claim(ctx: jobs.WorkerContext, job_id: str, status: str, cutoff) -> bool:
    """Touch a stuck job's ``updated_at`` if nobody did meanwhile: True for the one winner."""
    with session_scope(ctx.sessions) as s:
        return (
            s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == status, Job.updated_at < cutoff)
                .values(updated_at=utcnow())
            ).rowcount
            == 1
        )


def sweep(ctx: jobs.WorkerContext, policy: SweepPolicy) -> dict[str, int]:
    """One pass: re-enqueue stuck jobs' tasks; returns how many messages of each kind it sent."""
    now = utcnow()
    queued_cutoff = now - timedelta(seconds=policy.queued_after_s)
    stale_cutoff = now - timedelta(seconds=policy.stale_after_s)
    sent = {"plan": 0, "shard": 0, "finalize": 0}
    with session_scope(ctx.sessions) as s:
        queued = s.scalars(
            select(Job.id).where(Job.status == "queued", Job.updated_at < queued_cutoff)
        ).all()
        running = s.scalars(
            select(Job.id).where(Job.status == "running", Job.updated_at < stale_cutoff)
        ).all()
    for job_id in queued:
        if _claim(ctx, job_id, "queued", queued_cutoff):
            log.warning("sweeper: job still queued, re-enqueueing its plan job=%s", job_id)
            ctx.enqueue(jobs.PLAN, [job_id])
            sent["plan"] += 1
    for job_id in running:
        if not _claim(ctx, job_id, "running", stale_cutoff):
            continue
        with session_scope(ctx.sessions) as s:
            pending = s.scalars(
                select(JobShard.shard_no)
                .where(JobShard.job_id == job_id, JobShard.status != "done")
                .order_by(JobShard.shard_no)
            ).all()
            finished = not pending and s.get(Report, job_id) is None
        if pending:
            log.warning("sweeper: job stalled, re-enqueueing job=%s shards=%s", job_id, pending)
        for shard_no in pending:
            ctx.enqueue(jobs.SHARD, [job_id, shard_no])
            sent["shard"] += 1
        if finished:
            log.warning("sweeper: job stalled before finalisation job=%s", job_id)
            ctx.enqueue(jobs.FINALIZE, [job_id])
            sent["finalize"] += 1
    return sent


def safe_sweep(ctx: jobs.WorkerContext, policy: SweepPolicy) -> dict[str, int] | None:
    """:func:`sweep` for a background loop: errors (database or broker down) are logged."""
    try:
        return sweep(ctx, policy)
    except Exception:
        log.exception("sweeper pass failed; trying again at the next interval")
        return None
