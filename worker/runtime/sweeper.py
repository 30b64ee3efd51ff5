"""The sweeper: re-enqueue work that a lost message or a lost worker left behind.

A job row is the source of truth, so nothing is lost for good when a message is. A worker
renews its shard's ``heartbeat_at`` while it runs it (``worker.runtime.heartbeat``), which
tells a live shard from a lost one within ``lost_after_s`` (30 s by default):

- a pending shard whose heartbeat stopped (its worker was killed, or the broker or the
  database dropped its message mid-way) is re-sent: one sweeper wins the conditional UPDATE
  that clears the heartbeat (``state.release_shard``);
- when no worker runs any shard (no heartbeat anywhere is fresh), an idle fleet would have
  taken a waiting message within seconds: a job untouched for ``lost_after_s`` gets its
  unstarted shards (or its plan, or its finalisation) re-sent, e.g. after a broker restart
  without persistence;
- otherwise, a job still ``queued`` after ``queued_after_s`` gets its plan again and a
  ``running`` one without progress for ``stale_after_s`` its unstarted shards again (the
  fleet may be busy with a backlog, so these wait long).

A shard that still beats is never re-sent, however long it runs. The task bodies are
idempotent (conditional UPDATEs; a shard is stored by one copy), so a message sent twice does
no harm. Each stuck job is claimed with a conditional UPDATE of ``updated_at``, so several
sweepers (one per worker) do not all re-send it, and a job is re-sent at most once per window.

Runs in the embedded runner's thread when it is idle and in a daemon thread of each Celery
worker (``worker.runtime.tasks``); ``CAMDRIFT_SWEEP_INTERVAL_S=0`` turns the periodic sweep off.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.catalog import JobStatus
from worker.runtime import jobs
from worker.store import Settings, session_scope, state
from worker.store.models import Report, utcnow

log = logging.getLogger("camdrift.sweeper")
BEATS_PER_WINDOW = 3  # a shard counts as lost after missing at least this many heartbeats


@dataclass(frozen=True)
class SweepPolicy:
    """When a job counts as stuck, and how often to look."""

    queued_after_s: float = 300.0
    stale_after_s: float = 3660.0
    interval_s: float = 60.0
    lost_after_s: float = 30.0

    @classmethod
    def from_settings(cls, settings: Settings) -> SweepPolicy:
        """``CAMDRIFT_SWEEP_QUEUED_AFTER_S`` (300), ``CAMDRIFT_SWEEP_STALE_AFTER_S`` (the
        visibility timeout, ``CAMDRIFT_VISIBILITY_TIMEOUT_S``, default 2 x shard time limit
        + 60), ``CAMDRIFT_SWEEP_INTERVAL_S`` (15) and ``CAMDRIFT_SWEEP_LOST_AFTER_S`` (30, at
        least 3 heartbeats of ``CAMDRIFT_SHARD_HEARTBEAT_S``), all read by ``Settings``."""
        return cls(
            queued_after_s=settings.sweep_queued_after_s,
            stale_after_s=settings.sweep_stale_after,
            interval_s=settings.sweep_interval_s,
            lost_after_s=max(
                settings.sweep_lost_after_s, BEATS_PER_WINDOW * settings.shard_heartbeat_s
            ),
        )


def sweep(ctx: jobs.WorkerContext, policy: SweepPolicy) -> dict[str, int]:
    """One pass: re-enqueue stuck jobs' tasks; returns how many messages of each kind it sent."""
    now = utcnow()
    lost_cutoff = now - timedelta(seconds=policy.lost_after_s)
    with session_scope(ctx.sessions) as s:
        idle = not state.any_shard_alive(s, lost_cutoff)
    # an idle fleet would have taken a waiting message by now: the short window applies
    queued_cutoff = now - timedelta(seconds=_window(policy.queued_after_s, policy, idle))
    stale_cutoff = now - timedelta(seconds=_window(policy.stale_after_s, policy, idle))
    sent = {"plan": 0, "shard": 0, "finalize": 0}
    with session_scope(ctx.sessions) as s:
        queued = state.stuck_job_ids(s, JobStatus.QUEUED, queued_cutoff)
        stalled = state.stuck_job_ids(s, JobStatus.RUNNING, stale_cutoff)
        silent = state.dead_shard_job_ids(s, lost_cutoff)
    for job_id in queued:
        with session_scope(ctx.sessions) as s:
            claimed = state.claim_stuck(s, job_id, JobStatus.QUEUED, queued_cutoff)
        if claimed:
            log.warning("sweeper: job still queued, re-enqueueing its plan job=%s", job_id)
            ctx.enqueue(jobs.PLAN, [job_id])
            sent["plan"] += 1
    for job_id in sorted(set(stalled) | set(silent)):
        shards, finish = _running_job(ctx, job_id, job_id in stalled, stale_cutoff, lost_cutoff)
        for shard_no in shards:
            ctx.enqueue(jobs.SHARD, [job_id, shard_no])
            sent["shard"] += 1
        if finish:
            log.warning("sweeper: job stalled before finalisation job=%s", job_id)
            ctx.enqueue(jobs.FINALIZE, [job_id])
            sent["finalize"] += 1
    return sent


def _window(seconds: float, policy: SweepPolicy, idle: bool) -> float:
    return min(seconds, policy.lost_after_s) if idle else seconds


def _running_job(
    ctx: jobs.WorkerContext,
    job_id: str,
    stalled: bool,
    stale_cutoff: datetime,
    lost_cutoff: datetime,
) -> tuple[list[int], bool]:
    """(shards to re-send, whether to re-send the finalisation) of a running job: its silent
    shards, and when the job stalled (and this sweeper claimed it) its unstarted ones."""
    with session_scope(ctx.sessions) as s:
        beats = state.shard_beats(s, job_id)
        silent = [
            no
            for no, beat in beats
            if beat is not None
            and beat < lost_cutoff
            and state.release_shard(s, job_id, no, lost_cutoff)
        ]
    if silent:
        log.warning(
            "sweeper: shard's worker went silent, re-sending job=%s shards=%s", job_id, silent
        )
    unstarted: list[int] = []
    finish = False
    if stalled:
        with session_scope(ctx.sessions) as s:
            claimed = state.claim_stuck(s, job_id, JobStatus.RUNNING, stale_cutoff)
            if claimed:
                unstarted = [no for no, beat in beats if beat is None]
                finish = not beats and s.get(Report, job_id) is None
        if unstarted:
            log.warning("sweeper: job stalled, re-enqueueing job=%s shards=%s", job_id, unstarted)
    return sorted(set(silent) | set(unstarted)), finish


def safe_sweep(ctx: jobs.WorkerContext, policy: SweepPolicy) -> dict[str, int] | None:
    """:func:`sweep` for a background loop: errors (database or broker down) are logged."""
    try:
        return sweep(ctx, policy)
    except Exception:
        log.exception("sweeper pass failed; trying again at the next interval")
        return None
