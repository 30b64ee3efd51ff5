"""What a drift job does, as plain functions: plan -> shards -> finalise.

Celery tasks (``worker.runtime.tasks``) and the embedded runner (``worker.runtime.embedded``)
call exactly these. The SQL row is the source of truth: every state change is a conditional
UPDATE, shard rows are replaced idempotently, and the shard that completes the set (an atomic
counter in SQL, not a chord) enqueues finalisation. A redelivered message therefore does no harm,
even when two copies of one shard run at once: both compute, the one that claims the shard in the
transaction that writes its rows stores them, the other finds it stored. A running shard beats
(``worker.runtime.heartbeat``) so the sweeper re-sends a lost one within seconds. Every log line of
a task carries its job, shard and attempt (``worker.runtime.logcontext``); a stored error names
checkpoints and datasets by id, never by a server path (``worker.runtime.redact``).
"""

from __future__ import annotations

import contextlib
import contextvars
import gc
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from worker.catalog import ACTIVE_STATUSES, JobStatus, ShardStatus
from worker.results.rows import RowTable
from worker.runtime import logcontext, redact
from worker.runtime import metrics as worker_metrics
from worker.runtime.heartbeat import Heartbeat
from worker.store import ArtifactStore, Settings, make_engine, session_factory, session_scope, state
from worker.store import rows as stored_rows
from worker.store.bulk import refresh_statistics
from worker.store.models import (
    Checkpoint,
    Dataset,
    Job,
    JobSample,
    JobShard,
    Report,
    SampleMetric,
    SampleSeries,
    utcnow,
)

log = logging.getLogger("camdrift.jobs")
ACTIVE = ACTIVE_STATUSES
Enqueue = Callable[[str, list[Any]], None]  # (task name, args)
PLAN, SHARD, FINALIZE = "camdrift.plan_job", "camdrift.run_shard", "camdrift.finalize_job"
_clock = time.monotonic  # the shard time limit's clock (tests replace it)
# a shard tells SQL its progress after its first batch, then at most this often: one
# transaction per batch cost a 1,000-image shard of small images ~0.06 s
PROGRESS_EVERY_S = 1.0


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
        """A context for ``settings``; device and batch size default to the settings' own."""
        logcontext.install()
        engine = make_engine(settings.database_url)
        store = ArtifactStore(settings.storage).ensure()
        kw.setdefault("device", settings.device)
        kw.setdefault("batch_size", settings.batch_size)
        return cls(settings, session_factory(engine), store, enqueue, **kw)

    @property
    def max_shard_attempts(self) -> int:
        """How often one shard may start (redelivery after a crash or a sweep) before the job
        fails: a shard that kills its worker every time must not loop forever."""
        return self.settings.max_shard_attempts


# -- building the audit from SQL records ------------------------------------------------


def audit_config(job: Job, ctx: WorkerContext):
    """The job's stored configuration, run with this worker's device and batch size."""
    from worker.engine.audit import AuditConfig
    from worker.job_config import JobConfig

    stored = JobConfig.from_stored(job.config or {})
    return AuditConfig(**stored.model_dump(), batch_size=ctx.batch_size, device=ctx.device)


def _load_model(path: str, sha256: str, device: str):
    from training.checkpoints import load_checkpoint
    from training.protocol import resolve_device
    from worker.engine.audit import LoadedModel

    return LoadedModel(*load_checkpoint(Path(path), map_location=resolve_device(device)))


@cache
def _model_cache(size: int) -> Callable[[str, str, str], Any]:
    """The process's checkpoint cache of ``size`` entries (``CAMDRIFT_MODEL_CACHE``)."""
    return lru_cache(maxsize=size)(_load_model)


def _cached_model(ctx: WorkerContext, path: str, sha256: str, device: str):
    """Checkpoints stay loaded between shards of the same job (LRU by content hash)."""
    return _model_cache(ctx.settings.model_cache)(path, sha256, device)


@lru_cache(maxsize=8)
def _cached_index(root: str, class_names: tuple[str, ...], fingerprint: str):
    """A folder's listing, kept between shards. Keyed by the registered fingerprint too, so a
    folder registered again after it changed is listed again, not served from the cache."""
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
        _cached_model(ctx, str(ctx.store.resolve(c.storage_path)), c.sha256, cfg.device)
        for c in (baseline, candidate)
    )
    replica = None
    replica_id = (job.config or {}).get("baseline_replica_id")
    if replica_id:
        record = session.get(Checkpoint, replica_id)
        if record is None:
            raise JobFailed(f"the baseline replica {replica_id} no longer exists")
        replica = _cached_model(
            ctx, str(ctx.store.resolve(record.storage_path)), record.sha256, cfg.device
        )
    trajectory = []
    for ident in (job.config or {}).get("trajectory_ids") or []:
        record = session.get(Checkpoint, ident)
        if record is None:
            raise JobFailed(f"the trajectory checkpoint {ident} no longer exists")
        trajectory.append(
            _cached_model(
                ctx, str(ctx.store.resolve(record.storage_path)), record.sha256, cfg.device
            )
        )
    root = ctx.store.resolve(dataset.root_path)
    index = _cached_index(str(root), tuple(baseline.class_names), dataset.fingerprint)
    if len(index.samples) != dataset.num_samples:  # shards index samples by position
        raise JobFailed(
            f"the dataset's folder changed since it was registered ({dataset.num_samples} "
            f"images then, {len(index.samples)} now): register it again"
        )
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


# -- state changes (each one a transition of ``worker.store.state``) -------------------


def fail_job(ctx: WorkerContext, job_id: str, error: str) -> bool:
    """Mark an active job failed (True) — a finished job keeps its outcome (False). The stored
    error names the job's checkpoints and dataset by id, not by their server paths; the log
    line keeps the full text for the operator."""
    with session_scope(ctx.sessions) as s:
        changed = state.fail(s, job_id, public_error(s, ctx, job_id, error))
    if changed:
        with logcontext.bound(job=job_id):
            log.warning("job failed error=%r", error[:300])
    return changed


def public_error(session: Session, ctx: WorkerContext, job_id: str, error: str) -> str:
    """``error`` as users may see it: without the server's paths (``worker.runtime.redact``)."""
    job = session.get(Job, job_id)
    labels = redact.job_labels(session, job, ctx.store) if job is not None else []
    roots = [(ctx.store.root, redact.STORE), *((r, redact.DATA) for r in ctx.settings.data_roots)]
    return redact.redact(error, labels, roots)


def _cancel(ctx: WorkerContext, job_id: str) -> None:
    with session_scope(ctx.sessions) as s:
        state.cancel(s, job_id)
    with logcontext.bound(job=job_id):
        log.info("job cancelled")


def _cancel_requested(ctx: WorkerContext, job_id: str) -> bool:
    with session_scope(ctx.sessions) as s:
        return state.should_stop(s, job_id)


# -- the three task bodies -------------------------------------------------------------


def plan_job(ctx: WorkerContext, job_id: str) -> None:
    """queued -> running: count evaluated samples, create shard rows, enqueue every shard."""
    with logcontext.bound(job=job_id):
        _plan_job(ctx, job_id)


def _plan_job(ctx: WorkerContext, job_id: str) -> None:
    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        if job is None or not state.is_active(job.status):
            return
        if job.cancel_requested:
            state.cancel(s, job_id)
            return
        existing = s.scalars(select(JobShard).where(JobShard.job_id == job_id)).all()
        if job.status == JobStatus.RUNNING and existing:  # redelivered plan: re-send the rest
            # but a shard that still beats: its worker is on it
            alive = utcnow() - timedelta(seconds=ctx.settings.sweep_lost_after_s)
            pending = [
                sh.shard_no
                for sh in existing
                if sh.status != ShardStatus.DONE
                and (sh.heartbeat_at is None or sh.heartbeat_at < alive)
            ]
        else:
            try:
                audit = build_audit(s, job, ctx)
            except (ValueError, OSError) as exc:
                raise JobFailed(str(exc)) from exc
            total = audit.total
            size = ctx.settings.shard_size
            bounds = [(i, min(i + size, total)) for i in range(0, total, size)]
            # conditional: a cancel that came meanwhile wins
            if not state.start(s, job_id, total=total, bounds=bounds):
                return
            pending = list(range(len(bounds)))
    log.info("job planned shards=%d", len(pending))
    for no in pending:
        ctx.enqueue(SHARD, [job_id, no])


def run_shard(ctx: WorkerContext, job_id: str, shard_no: int) -> None:
    """Compute one shard's rows and maps; replace its rows; count it done exactly once."""
    with logcontext.bound(job=job_id, shard=shard_no):
        _run_shard(ctx, job_id, shard_no)


def _run_shard(ctx: WorkerContext, job_id: str, shard_no: int) -> None:
    from worker.engine.audit import StopRequested

    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        shard = s.get(JobShard, (job_id, shard_no))
        if (
            job is None
            or shard is None
            or job.status != JobStatus.RUNNING
            or shard.status == ShardStatus.DONE
        ):
            return
        if job.cancel_requested:
            state.cancel(s, job_id)
            return
        if shard.attempts >= ctx.max_shard_attempts:
            raise JobFailed(
                f"shard {shard_no} gave up after {shard.attempts} attempts"
                " (its worker was lost or it exceeded its time limit each time)"
            )
        attempt = shard.attempts + 1  # read before the UPDATE refreshes the object
        if not state.begin_shard(s, job_id, shard_no):
            return
        logcontext.bind(attempt=attempt)
        start, stop = shard.start, shard.stop
        try:
            audit = build_audit(s, job, ctx)
        except (ValueError, OSError) as exc:
            raise JobFailed(str(exc)) from exc

    last_batch = _clock()
    last_told = -float("inf")
    untold = 0  # samples computed since the progress last went to SQL

    def progress(n: int) -> None:  # after each batch: its latency; progress + a heartbeat
        nonlocal last_batch, last_told, untold
        now = _clock()
        worker_metrics.BATCH_SECONDS.observe(now - last_batch)
        last_batch = now
        untold += n
        if now - last_told < PROGRESS_EVERY_S:  # the shard's end counts its rows anyway
            return
        with session_scope(ctx.sessions) as s2:
            state.add_progress(s2, job_id, untold)
            state.beat_shard(s2, job_id, shard_no)
        last_told, untold = now, 0

    def beat() -> None:  # meanwhile, every CAMDRIFT_SHARD_HEARTBEAT_S seconds
        with session_scope(ctx.sessions) as s2:
            state.beat_shard(s2, job_id, shard_no)

    limit = ctx.settings.shard_time_limit_s
    began = _clock()
    deadline = began + limit
    timed_out = False

    def should_stop() -> bool:  # checked between batches: the cooperative time limit
        nonlocal timed_out
        timed_out = _clock() > deadline
        return timed_out or _cancel_requested(ctx, job_id)

    try:
        with Heartbeat(beat, ctx.settings.shard_heartbeat_s):
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
    last = _store_shard(ctx, job_id, shard_no, start, stop, rows, audit.timing)
    worker_metrics.SAMPLES.inc(len(rows))
    worker_metrics.SHARD_SECONDS.observe(_clock() - began)
    memory = audit.device_memory()
    if memory is not None:  # CUDA: the shard's peak, then the peak starts again
        worker_metrics.GPU_MEMORY.set(memory)
    if last:
        ctx.enqueue(FINALIZE, [job_id])


def _store_shard(
    ctx: WorkerContext,
    job_id: str,
    shard_no: int,
    start: int,
    stop: int,
    rows: list[dict[str, Any]],
    timing: dict[str, float],
) -> bool:
    """Claim the shard, replace its rows and count it done, in one transaction; True when it
    was the last shard to finish (the caller then enqueues finalisation). Its log line carries
    the shard's ``timing`` (loader and compute seconds, ``Audit.timing``) and the store's.

    The claim comes first: it locks the shard's row, so another copy of this shard storing at
    the same moment waits for this transaction and then finds the shard stored (its rows are
    the same), instead of inserting the same keys a second time.
    """
    began = _clock()
    with session_scope(ctx.sessions) as s:
        if not state.claim_shard(s, job_id, shard_no):
            log.info("shard stored already by another copy rows=%d", len(rows))
            return False
        stored_rows.replace_rows(s, job_id, start, stop, rows)
        s.flush()
        done, total = state.count_shard(s, job_id)
    load_s, compute_s = timing["load_s"], timing["compute_s"]
    log.info(
        "shard done rows=%d shards=%d/%d load_s=%.2f compute_s=%.2f store_s=%.2f loader_share=%.3f",
        len(rows),
        done,
        total,
        load_s,
        compute_s,
        _clock() - began,
        load_s / max(load_s + compute_s, 1e-9),
    )
    return done == total


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
    with logcontext.bound(job=job_id), gc_paused():
        _finalize_job(ctx, job_id)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector off for a bulk read: parsing a job's rows makes hundreds
    of thousands of short-lived containers, and the full collections they trigger walk every
    object of a worker that has torch loaded (a 20,000-image job's read: 1.1-1.2 s paused,
    1.4-2.0 s collected). Those containers hold no cycles, so reference counting frees them
    all the same, and a cycle made meanwhile waits for the collector's next run; it comes back
    on (if it was on) however the block ends."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def consistency_values(ctx: WorkerContext, job_id: str, table: RowTable, config):
    """(``table`` with the job's audit-stage metrics of its resolved ``config.metrics``
    (``consistency_*``), the values or None): computed from every shard's raw maps in the
    job's maps folder as ``camdrift drift`` does; :func:`store_consistency_values` stores
    them."""
    from worker.results.consistency import add_consistency_table

    try:
        return add_consistency_table(
            table, ctx.store.maps_dir(job_id), config.methods, config.metrics
        )
    except ValueError as exc:  # a maps folder that mixes runs, a foreign file
        raise JobFailed(f"map consistency: {exc}") from exc


def store_consistency_values(session: Session, job_id: str, values, config) -> None:
    """Replace the job's stored consistency values by ``values`` (None: nothing to store)."""
    from worker.catalog import audit_metrics

    if values is None:
        return
    stored_rows.replace_values(
        session, job_id, values.index, values.values, audit_metrics(config.metrics)
    )
    if values.missing:
        log.warning("map consistency: %d included samples have no stored maps", values.missing)


def _finalize_job(ctx: WorkerContext, job_id: str) -> None:
    from worker.results.report import build_report

    clock = [_clock()]

    def lap() -> float:  # seconds since the previous lap: the finaliser's timing line
        clock.append(_clock())
        return clock[-1] - clock[-2]

    # the job's rows are new to the statistics; in a transaction of its own, so ANALYZE's
    # table lock is not held through the finalisation (another job's finaliser would wait)
    with session_scope(ctx.sessions) as s:
        refresh_statistics(s, (JobSample, SampleMetric, SampleSeries))
    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        if job is None or job.status != JobStatus.RUNNING or job.shards_done != job.shards_total:
            return
        if s.get(Report, job_id) is not None:
            return
        audit = build_audit(s, job, ctx)
        names = list(audit.config.metrics)
        setup_s = lap()
        table = stored_rows.load_table(s, job_id, names)
        load_s = lap()
        if len(table) != audit.total:
            raise JobFailed(f"finalise found {len(table)} rows for {audit.total} samples")
        table, values = consistency_values(ctx, job_id, table, audit.config)
        consistency_s = lap()
        described = describe(s, job, audit)
        # the report is computed from the table alone, so it builds on a thread (no session)
        # while this one stores the consistency values: their COPY runs in the database's
        # process, the report on the core the other shards' worker no longer needs
        with ThreadPoolExecutor(1, thread_name_prefix="camdrift-report") as pool:
            building = pool.submit(
                contextvars.copy_context().run,
                build_report,
                table,
                samples_location=f"/drift-jobs/{job_id}/samples",
                **described,
            )
            store_consistency_values(s, job_id, values, audit.config)
            values_s = lap()
            report = building.result()
        report["verdict"] = job_verdict(job, report)
        report_s = lap()
        target = (job.config or {}).get("mlflow")
        s.add(Report(job_id=job_id, document=report))
        s.flush()
        state.succeed(s, job_id, verdict=report.get("verdict"), total=audit.total)
    log.info(
        "job succeeded samples=%d setup_s=%.2f load_s=%.2f consistency_s=%.2f values_s=%.2f"
        " report_s=%.2f store_s=%.2f",
        len(table),
        setup_s,
        load_s,
        consistency_s,
        values_s,
        report_s,
        _clock() - clock[-1],
    )
    if target:
        _log_to_mlflow(report, target)


def _log_to_mlflow(report: dict[str, Any], target: dict[str, Any]) -> None:
    """The job's ``mlflow`` option: its verdict, checks and report in the named (or a new) run
    of the tracking server this worker's ``MLFLOW_TRACKING_URI`` names. The job has succeeded
    already; a tracking server that is down costs a warning, not the job."""
    from worker.runtime.mlflow_log import log_gate

    verdict = report.get("verdict") or {"verdict": "none", "rules": []}
    try:
        run_id = log_gate(
            report, verdict, {}, run_id=target.get("run_id"), experiment=target.get("experiment")
        )
    except Exception as exc:  # any failure of a side channel
        log.warning("mlflow_log_failed error=%s", f"{type(exc).__name__}: {exc}")
        return
    log.info("mlflow_logged run_id=%s", run_id)
