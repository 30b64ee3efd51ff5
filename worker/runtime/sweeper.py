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
from dataclasses import dataclass
from datetime import timedelta

from worker.catalog import JobStatus
from worker.runtime import jobs
from worker.store import Settings, session_scope, state
from worker.store.models import Report, utcnow

log = logging.getLogger("camdrift.sweeper")


@dataclass(frozen=True)
class SweepPolicy:
    """When a job counts as stuck, and how often to look."""

    queued_after_s: float = 300.0
    stale_after_s: float = 3660.0
    interval_s: float = 60.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SweepPolicy:
        """``CAMDRIFT_SWEEP_QUEUED_AFTER_S`` (300), ``CAMDRIFT_SWEEP_STALE_AFTER_S`` (the
        visibility timeout, ``CAMDRIFT_VISIBILITY_TIMEOUT_S``, default 2 x shard time limit
        + 60), ``CAMDRIFT_SWEEP_INTERVAL_S`` (60), all read by ``Settings``."""
        return cls(
            queued_after_s=settings.sweep_queued_after_s,
            stale_after_s=settings.sweep_stale_after,
            interval_s=settings.sweep_interval_s,
        )


def sweep(ctx: jobs.WorkerContext, policy: SweepPolicy) -> dict[str, int]:
    """One pass: re-enqueue stuck jobs' tasks; returns how many messages of each kind it sent."""
    now = utcnow()
    queued_cutoff = now - timedelta(seconds=policy.queued_after_s)
    stale_cutoff = now - timedelta(seconds=policy.stale_after_s)
    sent = {"plan": 0, "shard": 0, "finalize": 0}
    with session_scope(ctx.sessions) as s:
        queued = state.stuck_job_ids(s, JobStatus.QUEUED, queued_cutoff)
        running = state.stuck_job_ids(s, JobStatus.RUNNING, stale_cutoff)
    for job_id in queued:
        with session_scope(ctx.sessions) as s:
            claimed = state.claim_stuck(s, job_id, JobStatus.QUEUED, queued_cutoff)
        if claimed:
            log.warning("sweeper: job still queued, re-enqueueing its plan job=%s", job_id)
            ctx.enqueue(jobs.PLAN, [job_id])
            sent["plan"] += 1
    for job_id in running:
        with session_scope(ctx.sessions) as s:
            claimed = state.claim_stuck(s, job_id, JobStatus.RUNNING, stale_cutoff)
        if not claimed:
            continue
        with session_scope(ctx.sessions) as s:
            pending = state.pending_shards(s, job_id)
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
