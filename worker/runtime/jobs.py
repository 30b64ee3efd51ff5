"""What a drift job does, as plain functions: plan -> shards -> finalise.

Celery tasks (``worker.runtime.tasks``) and the embedded runner (``worker.runtime.embedded``)
call exactly these. The SQL row is the source of truth: every state change is a conditional
UPDATE, shard rows are replaced idempotently, and the shard that completes the set (an atomic
counter in SQL, not a chord) enqueues finalisation. A redelivered message therefore does no harm.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session, sessionmaker

from worker.store import ArtifactStore, Settings, make_engine, session_factory, session_scope
from worker.store.models import (
    Checkpoint,
    Dataset,
    Job,
    JobSample,
    JobShard,
    Report,
    SampleMetric,
    records_from_row,
    row_from_records,
    utcnow,
)

log = logging.getLogger("camdrift.jobs")
ACTIVE = ("queued", "running")
Enqueue = Callable[[str, list[Any]], None]  # (task name, args)
PLAN, SHARD, FINALIZE = "camdrift.plan_job", "camdrift.run_shard", "camdrift.finalize_job"
_clock = time.monotonic  # the shard time limit's clock (tests replace it)


def max_shard_attempts() -> int:
    """How often one shard may start (redelivery after a crash or a sweep) before the job fails:
    a shard that kills its worker every time must not loop forever."""
    return max(1, int(os.environ.get("CAMDRIFT_MAX_SHARD_ATTEMPTS", "5")))


class JobFailed(Exception):
    """A deterministic failure: the job ends ``failed`` with this message, no retry."""


@dataclass
class WorkerContext:
    """Everything a task body needs: settings, sessions, the artifact store, an enqueuer."""

    settings: Settings
    sessions: sessionmaker[Session]
    store: ArtifactStore
    enqueue: Enqueue
    device: str = "auto"
    batch_size: int = 16
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def create(cls, settings: Settings, enqueue: Enqueue, **kw: Any) -> WorkerContext:
        engine = make_engine(settings.database_url)
        store = ArtifactStore(settings.storage).ensure()
        return cls(settings, session_factory(engine), store, enqueue, **kw)


# -- building the audit from SQL records ------------------------------------------------


def audit_config(job: Job, ctx: WorkerContext):
    """The job's stored configuration, run with this worker's device and batch size."""
    from worker.engine.audit import AuditConfig
    from worker.job_config import JobConfig

    stored = JobConfig.from_stored(job.config or {})
    return AuditConfig(**stored.model_dump(), batch_size=ctx.batch_size, device=ctx.device)


@lru_cache(maxsize=int(os.environ.get("CAMDRIFT_MODEL_CACHE", "16")))
def _cached_model(path: str, sha256: str, device: str):
    """Checkpoints stay loaded between shards of the same job (LRU by content hash)."""
    from training.checkpoints import load_checkpoint
    from training.protocol import resolve_device
    from worker.engine.audit import LoadedModel

    return LoadedModel(*load_checkpoint(Path(path), map_location=resolve_device(device)))


@lru_cache(maxsize=8)
def _cached_index(root: str, class_names: tuple[str, ...]):
    from training.datasets import discover

    return discover(Path(root), class_names=list(class_names))


def build_audit(session: Session, job: Job, ctx: WorkerContext):
    """An :class:`~worker.engine.audit.Audit` for a job, with cached models and dataset index."""
    from worker.engine.audit import Audit

    baseline = session.get(Checkpoint, job.baseline_id)
    candidate = session.get(Checkpoint, job.candidate_id)
    dataset = session.get(Dataset, job.dataset_id)
    if baseline is None or candidate is None or dataset is None:
        raise JobFailed("a checkpoint or the dataset of this job no longer exists")
    cfg = audit_config(job, ctx)
    models = tuple(
        _cached_model(str(ctx.store.resolve(c.storage_path)), c.sha256, cfg.device)
        for c in (baseline, candidate)
    )
    replica = None
    replica_id = (job.config or {}).get("baseline_replica_id")
    if replica_id:
        record = session.get(Checkpoint, replica_id)
        if record is None:
            raise JobFailed(f"the baseline replica {replica_id} no longer exists")
        replica = _cached_model(
            str(ctx.store.resolve(record.storage_path)), record.sha256, cfg.device
        )
    trajectory = []
    for ident in (job.config or {}).get("trajectory_ids") or []:
        record = session.get(Checkpoint, ident)
        if record is None:
            raise JobFailed(f"the trajectory checkpoint {ident} no longer exists")
        trajectory.append(
            _cached_model(str(ctx.store.resolve(record.storage_path)), record.sha256, cfg.device)
        )
    root = ctx.store.resolve(dataset.root_path)
    index = _cached_index(str(root), tuple(baseline.class_names))
    return Audit(
        baseline.storage_path,
        candidate.storage_path,
        index,
        cfg,
        models=models,
        replica=replica,
        trajectory=trajectory,
    )


def describe(session: Session, job: Job, audit) -> dict[str, Any]:
    from worker.engine.audit import config_dict, describe_dataset, describe_model

    base = session.get(Checkpoint, job.baseline_id)
    cand = session.get(Checkpoint, job.candidate_id)
    data = session.get(Dataset, job.dataset_id)
    return {
        "models": {
            "baseline": describe_model(audit.baseline, f"checkpoint:{base.id}"),
            "candidate": describe_model(audit.candidate, f"checkpoint:{cand.id}"),
            **(
                {
                    "replica": describe_model(
                        audit.replica, f"checkpoint:{job.config['baseline_replica_id']}"
                    )
                }
                if audit.replica is not None
                else {}
            ),
        },
        "dataset": describe_dataset(audit, f"dataset:{data.id}"),
        "config": config_dict(audit.config),
        "trajectory": [
            describe_model(m, f"checkpoint:{ident}")
            for m, ident in zip(audit.trajectory, job.config["trajectory_ids"], strict=True)
        ]
        if audit.trajectory
        else None,
    }


# -- state changes ---------------------------------------------------------------------


def fail_job(ctx: WorkerContext, job_id: str, error: str) -> bool:
    """Mark an active job failed (True) — a finished job keeps its outcome (False)."""
    with session_scope(ctx.sessions) as s:
        result = s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(ACTIVE))
            .values(status="failed", error=error[:4000], finished_at=utcnow())
        )
        changed = result.rowcount == 1
    if changed:
        log.warning("job failed job=%s error=%r", job_id, error[:300])
    return changed


def _cancel(ctx: WorkerContext, job_id: str) -> None:
    with session_scope(ctx.sessions) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status.in_(ACTIVE))
            .values(status="cancelled", finished_at=utcnow())
        )
    log.info("job cancelled job=%s", job_id)


def _cancel_requested(ctx: WorkerContext, job_id: str) -> bool:
    with session_scope(ctx.sessions) as s:
        row = s.execute(select(Job.cancel_requested, Job.status).where(Job.id == job_id)).one()
    return bool(row.cancel_requested) or row.status not in ACTIVE


# -- the three task bodies -------------------------------------------------------------


def plan_job(ctx: WorkerContext, job_id: str) -> None:
    """queued -> running: count evaluated samples, create shard rows, enqueue every shard."""
    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        if job is None or job.status not in ACTIVE:
            return
        if job.cancel_requested:
            job.status, job.finished_at = "cancelled", utcnow()
            return
        existing = s.scalars(select(JobShard).where(JobShard.job_id == job_id)).all()
        if job.status == "running" and existing:  # redelivered plan: re-send unfinished shards
            pending = [sh.shard_no for sh in existing if sh.status != "done"]
        else:
            try:
                audit = build_audit(s, job, ctx)
            except (ValueError, OSError) as exc:
                raise JobFailed(str(exc)) from exc
            total = audit.total
            size = ctx.settings.shard_size
            bounds = [(i, min(i + size, total)) for i in range(0, total, size)]
            started = s.execute(  # conditional: a cancel that came meanwhile wins
                update(Job)
                .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
                .values(
                    status="running",
                    started_at=utcnow(),
                    progress_total=total,
                    progress_done=0,
                    shards_total=len(bounds),
                    shards_done=0,
                    attempts=Job.attempts + 1,
                )
            ).rowcount
            if started != 1:
                return
            for no, (start, stop) in enumerate(bounds):
                s.add(JobShard(job_id=job_id, shard_no=no, start=start, stop=stop))
            pending = list(range(len(bounds)))
    log.info("job planned job=%s shards=%d", job_id, len(pending))
    for no in pending:
        ctx.enqueue(SHARD, [job_id, no])


def run_shard(ctx: WorkerContext, job_id: str, shard_no: int) -> None:
    """Compute one shard's rows and maps; replace its rows; count it done exactly once."""
    from worker.engine.audit import StopRequested

    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        shard = s.get(JobShard, (job_id, shard_no))
        if job is None or shard is None or job.status != "running" or shard.status == "done":
            return
        if job.cancel_requested:
            job.status, job.finished_at = "cancelled", utcnow()
            return
        if shard.attempts >= max_shard_attempts():
            raise JobFailed(
                f"shard {shard_no} gave up after {shard.attempts} attempts"
                " (its worker was lost or it exceeded its time limit each time)"
            )
        shard.attempts += 1
        start, stop = shard.start, shard.stop
        try:
            audit = build_audit(s, job, ctx)
        except (ValueError, OSError) as exc:
            raise JobFailed(str(exc)) from exc

    def progress(n: int) -> None:
        with session_scope(ctx.sessions) as s2:
            s2.execute(
                update(Job).where(Job.id == job_id).values(progress_done=Job.progress_done + n)
            )

    limit = ctx.settings.shard_time_limit_s
    deadline = _clock() + limit
    timed_out = False

    def should_stop() -> bool:  # checked between batches: the cooperative time limit
        nonlocal timed_out
        timed_out = _clock() > deadline
        return timed_out or _cancel_requested(ctx, job_id)

    try:
        rows = audit.compute(
            range(start, stop),
            progress=progress,
            should_stop=should_stop,
            maps_dir=ctx.store.maps_dir(job_id),
        )
    except StopRequested:
        if timed_out:
            raise JobFailed(f"shard {shard_no} exceeded its time limit of {limit} s") from None
        _cancel(ctx, job_id)
        return
    except ValueError as exc:
        raise JobFailed(str(exc)) from exc
    if _store_shard(ctx, job_id, shard_no, start, stop, rows):
        ctx.enqueue(FINALIZE, [job_id])


def _store_shard(
    ctx: WorkerContext,
    job_id: str,
    shard_no: int,
    start: int,
    stop: int,
    rows: list[dict[str, Any]],
) -> bool:
    """Replace the shard's rows and mark it done in one transaction; True when it was the
    last shard to finish (the caller then enqueues finalisation)."""
    with session_scope(ctx.sessions) as s:
        in_shard = (JobSample.job_id == job_id) & JobSample.index.between(start, stop - 1)
        s.execute(
            delete(SampleMetric).where(
                SampleMetric.job_id == job_id, SampleMetric.index.between(start, stop - 1)
            )
        )
        s.execute(delete(JobSample).where(in_shard))
        s.flush()
        for row in rows:
            s.add_all(records_from_row(job_id, row))
        s.flush()
        marked = s.execute(
            update(JobShard)
            .where(
                JobShard.job_id == job_id, JobShard.shard_no == shard_no, JobShard.status != "done"
            )
            .values(status="done", finished_at=utcnow())
        ).rowcount
        if marked != 1:
            return False
        done_rows = s.scalar(
            select(func.coalesce(func.sum(JobShard.stop - JobShard.start), 0)).where(
                JobShard.job_id == job_id, JobShard.status == "done"
            )
        )
        counts = s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(shards_done=Job.shards_done + 1, progress_done=done_rows)
            .returning(Job.shards_done, Job.shards_total)
        ).one()
    log.info(
        "shard done job=%s shard=%d rows=%d (%d/%d)",
        job_id,
        shard_no,
        len(rows),
        counts.shards_done,
        counts.shards_total,
    )
    return counts.shards_done == counts.shards_total


def job_verdict(job: Job, report: dict[str, Any]) -> dict[str, Any] | None:
    """The gate verdict of the job's policy on ``report`` (None when the job has no policy)."""
    from pydantic import ValidationError

    from worker.results.gate import Policy, evaluate_policy

    policy = (job.config or {}).get("policy")
    if not policy:
        return None
    try:
        return evaluate_policy(report, Policy.model_validate(policy))
    except ValidationError as exc:
        raise JobFailed(f"the job's policy is invalid: {exc.errors()[0]['msg']}") from exc


def finalize_job(ctx: WorkerContext, job_id: str) -> None:
    """Build the report from the stored rows; running -> succeeded, once."""
    from worker.results.report import build_report

    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        if job is None or job.status != "running" or job.shards_done != job.shards_total:
            return
        if s.get(Report, job_id) is not None:
            return
        audit = build_audit(s, job, ctx)
        names = list(audit.config.metrics)
        samples = s.scalars(select(JobSample).where(JobSample.job_id == job_id)).all()
        metrics: dict[int, list[SampleMetric]] = {}
        for rec in s.scalars(select(SampleMetric).where(SampleMetric.job_id == job_id)):
            metrics.setdefault(rec.index, []).append(rec)
        rows = [row_from_records(x, metrics.get(x.index, []), names) for x in samples]
        if len(rows) != audit.total:
            raise JobFailed(f"finalise found {len(rows)} rows for {audit.total} samples")
        report = build_report(
            rows, samples_location=f"/drift-jobs/{job_id}/samples", **describe(s, job, audit)
        )
        report["verdict"] = job_verdict(job, report)
        s.add(Report(job_id=job_id, document=report))
        s.flush()
        s.execute(
            update(Job)
            .where(Job.id == job_id, Job.status == "running")
            .values(
                status="succeeded",
                finished_at=utcnow(),
                verdict=report.get("verdict"),
                progress_done=audit.total,
            )
        )
    log.info("job succeeded job=%s samples=%d", job_id, len(rows))
