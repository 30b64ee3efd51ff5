"""Every state change of a job and its shards, in one place (torch-free: the API uses it too).

The job row is the source of truth and several processes move it at once (API, workers,
sweepers), so each transition here is one conditional UPDATE that names the states it may
leave and returns whether it happened; a transition that lost a race changes nothing::

    queued --start--> running --succeed--> succeeded
      |                  |
      +--cancel----------+--> cancelled      (request_cancel: at once when queued, else a
      +--fail------------+--> failed          flag the worker checks between batches)
      +--submit_failed-----> failed          (the broker did not take the job; frees its key)

A shard: ``begin_shard`` (one more attempt, first heartbeat), ``beat_shard`` while it runs,
``claim_shard`` + ``count_shard`` in the transaction that stores its rows (the claim first: it
locks the shard row, so of two copies stored at once one stores and the other finds it done),
``release_shard`` when the sweeper re-sends one whose heartbeat stopped.

The functions run in the caller's session and transaction (the caller commits).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from worker.catalog import ACTIVE_STATUSES, JobStatus, ShardStatus
from worker.store.models import Job, JobShard, utcnow

MAX_ERROR_CHARS = 4000


def _changed(result: Any) -> bool:
    return result.rowcount == 1


def _move(session: Session, job_id: str, *conditions: Any, **values: Any) -> bool:
    """One conditional UPDATE of the job: True when this call changed its row."""
    return _changed(
        session.execute(update(Job).where(Job.id == job_id, *conditions).values(**values))
    )


# --------------------------------------------------------------------------- job transitions


def start(session: Session, job_id: str, *, total: int, bounds: Sequence[tuple[int, int]]) -> bool:
    """queued -> running with ``total`` samples in shards ``bounds`` (``[start, stop)`` each),
    unless a cancel came meanwhile; creates the shard rows. True when it started."""
    started = _move(
        session,
        job_id,
        Job.status == JobStatus.QUEUED,
        Job.cancel_requested.is_(False),
        status=JobStatus.RUNNING,
        started_at=utcnow(),
        progress_total=total,
        progress_done=0,
        shards_total=len(bounds),
        shards_done=0,
        attempts=Job.attempts + 1,
    )
    if started:
        for no, (lo, hi) in enumerate(bounds):
            session.add(
                JobShard(job_id=job_id, shard_no=no, start=lo, stop=hi, status=ShardStatus.PENDING)
            )
    return started


def succeed(session: Session, job_id: str, *, verdict: dict[str, Any] | None, total: int) -> bool:
    """running -> succeeded (once), with the gate verdict and the final progress."""
    return _move(
        session,
        job_id,
        Job.status == JobStatus.RUNNING,
        status=JobStatus.SUCCEEDED,
        finished_at=utcnow(),
        verdict=verdict,
        progress_done=total,
    )


def fail(session: Session, job_id: str, error: str) -> bool:
    """An active job -> failed with ``error``; a finished job keeps its outcome (False)."""
    return _move(
        session,
        job_id,
        Job.status.in_(ACTIVE_STATUSES),
        status=JobStatus.FAILED,
        error=error[:MAX_ERROR_CHARS],
        finished_at=utcnow(),
    )


def submit_failed(session: Session, job_id: str, error: str = "broker unavailable") -> bool:
    """queued -> failed because the job could not be handed to a runner; frees its
    Idempotency-Key so a retry with the same key makes a new job."""
    now = utcnow()
    return _move(
        session,
        job_id,
        Job.status == JobStatus.QUEUED,
        status=JobStatus.FAILED,
        error=error[:MAX_ERROR_CHARS],
        finished_at=now,
        updated_at=now,
        idempotency_key=None,
    )


def cancel(session: Session, job_id: str) -> bool:
    """An active job -> cancelled (a worker saw the request)."""
    return _move(
        session,
        job_id,
        Job.status.in_(ACTIVE_STATUSES),
        status=JobStatus.CANCELLED,
        finished_at=utcnow(),
    )


def request_cancel(session: Session, job_id: str) -> JobStatus | None:
    """A user's cancel: a queued job is cancelled at once (returns ``CANCELLED``); a running
    one is flagged for its worker, which stops between batches (returns ``RUNNING``); a
    finished one is left alone (None)."""
    now = utcnow()
    if _move(
        session,
        job_id,
        Job.status == JobStatus.QUEUED,
        status=JobStatus.CANCELLED,
        cancel_requested=True,
        finished_at=now,
        updated_at=now,
    ):
        return JobStatus.CANCELLED
    if _move(
        session, job_id, Job.status == JobStatus.RUNNING, cancel_requested=True, updated_at=now
    ):
        return JobStatus.RUNNING
    return None


def claim_stuck(session: Session, job_id: str, status: JobStatus, cutoff: datetime) -> bool:
    """Touch a job stuck in ``status`` since before ``cutoff`` if nobody did meanwhile: True
    for the one sweeper that wins (it re-sends the job's messages)."""
    return _move(
        session, job_id, Job.status == status, Job.updated_at < cutoff, updated_at=utcnow()
    )


def add_progress(session: Session, job_id: str, samples: int) -> None:
    """Count ``samples`` more evaluated samples (a running shard's batches)."""
    session.execute(
        update(Job).where(Job.id == job_id).values(progress_done=Job.progress_done + samples)
    )


# --------------------------------------------------------------------------- shards


def _move_shard(session: Session, job_id: str, shard_no: int, *where: Any, **values: Any) -> bool:
    """One conditional UPDATE of one shard row: True when it matched (this caller won)."""
    return _changed(
        session.execute(
            update(JobShard)
            .where(JobShard.job_id == job_id, JobShard.shard_no == shard_no, *where)
            .values(**values)
        )
    )


def begin_shard(session: Session, job_id: str, shard_no: int) -> bool:
    """Count one more start of a pending shard (the redelivery cap reads it) and give it its
    first heartbeat."""
    return _move_shard(
        session,
        job_id,
        shard_no,
        JobShard.status == ShardStatus.PENDING,
        attempts=JobShard.attempts + 1,
        heartbeat_at=utcnow(),
    )


def beat_shard(session: Session, job_id: str, shard_no: int) -> bool:
    """A running shard is alive: its worker says so between batches and every few seconds
    (the sweeper re-sends a pending shard whose heartbeat stopped)."""
    return _move_shard(
        session, job_id, shard_no, JobShard.status == ShardStatus.PENDING, heartbeat_at=utcnow()
    )


def release_shard(session: Session, job_id: str, shard_no: int, cutoff: datetime) -> bool:
    """A started shard whose heartbeat stopped before ``cutoff`` (its worker is gone) -> a
    pending shard waiting for its message again (no heartbeat). True for the one sweeper that
    wins: it re-sends the shard; a copy that beat meanwhile keeps it (False)."""
    return _move_shard(
        session,
        job_id,
        shard_no,
        JobShard.status == ShardStatus.PENDING,
        JobShard.heartbeat_at < cutoff,
        heartbeat_at=None,
    )


def claim_shard(session: Session, job_id: str, shard_no: int) -> bool:
    """pending -> done for the one copy of a shard that stores its rows (True); run it first
    in the transaction that writes them. Its conditional UPDATE takes the shard row's lock, so
    a second copy storing at the same moment waits for the first to commit and then matches
    nothing (False: stored already); on SQLite the write lock serialises them the same way."""
    return _move_shard(
        session,
        job_id,
        shard_no,
        JobShard.status != ShardStatus.DONE,
        status=ShardStatus.DONE,
        finished_at=utcnow(),
    )


def count_shard(session: Session, job_id: str) -> tuple[int, int]:
    """Count a claimed shard on the job and set the progress to the rows of the done shards.
    Returns (shards done, shards total)."""
    done_rows = session.scalar(
        select(func.coalesce(func.sum(JobShard.stop - JobShard.start), 0)).where(
            JobShard.job_id == job_id, JobShard.status == ShardStatus.DONE
        )
    )
    counts = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(shards_done=Job.shards_done + 1, progress_done=done_rows)
        .returning(Job.shards_done, Job.shards_total)
    ).one()
    return counts.shards_done, counts.shards_total


def complete_shard(session: Session, job_id: str, shard_no: int) -> tuple[int, int] | None:
    """pending -> done, exactly once: :func:`claim_shard` + :func:`count_shard`. Returns
    (shards done, shards total), or None when it was done already."""
    if not claim_shard(session, job_id, shard_no):
        return None
    return count_shard(session, job_id)


# --------------------------------------------------------------------------- reads


def is_active(status: str | None) -> bool:
    return status in ACTIVE_STATUSES


def should_stop(session: Session, job_id: str) -> bool:
    """A cancel was requested, or the job left the active states (someone else ended it)."""
    row = session.execute(select(Job.cancel_requested, Job.status).where(Job.id == job_id)).one()
    return bool(row.cancel_requested) or not is_active(row.status)


def active_job_ids(session: Session) -> list[str]:
    return list(session.scalars(select(Job.id).where(Job.status.in_(ACTIVE_STATUSES))))


def stuck_job_ids(session: Session, status: JobStatus, cutoff: datetime) -> list[str]:
    """Jobs in ``status`` untouched since before ``cutoff``."""
    return list(
        session.scalars(select(Job.id).where(Job.status == status, Job.updated_at < cutoff))
    )


def pending_shards(session: Session, job_id: str) -> list[int]:
    """The job's shards not done yet, in order."""
    return [no for no, _ in shard_beats(session, job_id)]


def shard_beats(session: Session, job_id: str) -> list[tuple[int, datetime | None]]:
    """(shard number, last heartbeat or None when not started) of the job's pending shards."""
    return [
        (row.shard_no, row.heartbeat_at)
        for row in session.execute(
            select(JobShard.shard_no, JobShard.heartbeat_at)
            .where(JobShard.job_id == job_id, JobShard.status != ShardStatus.DONE)
            .order_by(JobShard.shard_no)
        )
    ]


def dead_shard_job_ids(session: Session, cutoff: datetime) -> list[str]:
    """Running jobs with a started, pending shard whose heartbeat stopped before ``cutoff``."""
    return list(
        session.scalars(
            select(JobShard.job_id)
            .join(Job, Job.id == JobShard.job_id)
            .where(
                Job.status == JobStatus.RUNNING,
                JobShard.status != ShardStatus.DONE,
                JobShard.heartbeat_at < cutoff,
            )
            .distinct()
        )
    )


def any_shard_alive(session: Session, cutoff: datetime) -> bool:
    """Whether some worker runs a shard (of any running job) that beat since ``cutoff``."""
    return (
        session.scalar(
            select(JobShard.job_id)
            .join(Job, Job.id == JobShard.job_id)
            .where(
                Job.status == JobStatus.RUNNING,
                JobShard.status != ShardStatus.DONE,
                JobShard.heartbeat_at >= cutoff,
            )
            .limit(1)
        )
        is not None
    )
