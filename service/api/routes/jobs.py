"""``/drift-jobs``: create (validated, idempotent), status, list, cancel.

The row is written and committed before the job is handed to the runner; if the hand-off
fails the row is marked failed at once, so no ``queued`` job is left that nobody will run.
"""

from __future__ import annotations

import logging
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import dispatch
from service.api.deps import SessionDep, page_of, record_or_404, settings_of
from service.problems import ProblemError, problem_responses
from service.schemas import (
    MAX_INT,
    JobIn,
    JobOut,
    JobPage,
    JobStatus,
    Links,
    Progress,
    request_hash,
)
from worker.catalog import REGIONS, default_metrics
from worker.results.gate import policy_problems
from worker.store import state
from worker.store.models import Checkpoint, Dataset, Job, is_id
from worker.store.settings import Settings

router = APIRouter(tags=["drift-jobs"])
log = logging.getLogger("camdrift.api")

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=255,
        description="same key + same body: the same job; same key + other body: 422",
    ),
]


def job_out(job: Job) -> JobOut:
    base = f"/drift-jobs/{job.id}"
    return JobOut(
        id=job.id,
        status=job.status,  # type: ignore[arg-type]
        progress=Progress(done=job.progress_done, total=job.progress_total),
        created_at=job.created_at,
        started_at=job.started_at,
        finished_at=job.finished_at,
        error=job.error,
        verdict=job.verdict,
        config=job.config,
        baseline_id=job.baseline_id,
        candidate_id=job.candidate_id,
        dataset_id=job.dataset_id,
        cancel_requested=job.cancel_requested,
        links=Links(
            self=base, report=f"{base}/report", samples=f"{base}/samples", cancel=f"{base}/cancel"
        ),
    )


@router.post(
    "/drift-jobs",
    status_code=202,
    response_model=JobOut,
    summary="Create a drift job (202 + Location; an Idempotency-Key replay answers 200)",
    responses={
        200: {"model": JobOut, "description": "Idempotency-Key replay: the same job"},
        **problem_responses(400, 413, 422, 503),
    },
)
def create_job(
    body: JobIn,
    request: Request,
    response: Response,
    session: SessionDep,
    idempotency_key: IdempotencyKey = None,
) -> JobOut:
    config = body.normalised()
    digest = request_hash(config)
    if idempotency_key is not None:
        replay = _replay(session, idempotency_key, digest, response)
        if replay is not None:
            return replay
    _check_references(session, body, config)
    job = Job(
        status=JobStatus.QUEUED,
        baseline_id=body.baseline_id,
        candidate_id=body.candidate_id,
        dataset_id=body.dataset_id,
        config=config,
        idempotency_key=idempotency_key,
        request_hash=digest,
    )
    session.add(job)
    try:
        session.commit()
    except IntegrityError:  # a concurrent request with the same key won the race
        session.rollback()
        if idempotency_key is not None:
            replay = _replay(session, idempotency_key, digest, response)
            if replay is not None:
                return replay
        raise
    _submit(session, job, settings_of(request))
    session.refresh(job)
    response.headers["Location"] = f"/drift-jobs/{job.id}"
    return job_out(job)


def _replay(session: Session, key: str, digest: str, response: Response) -> JobOut | None:
    job = session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()
    if job is None:
        return None
    if job.request_hash != digest:
        raise ProblemError(
            422,
            "this Idempotency-Key was used with a different request body",
            slug="idempotency-conflict",
            title="Idempotency-Key reused",
            errors=[("header.Idempotency-Key", "already used with a different body")],
            job_id=job.id,
        )
    response.status_code = 200
    response.headers["Location"] = f"/drift-jobs/{job.id}"
    return job_out(job)


def _check_references(session: Session, body: JobIn, config: dict) -> None:
    """Ids exist, class sets agree, policy rules name the job's methods and metrics."""
    errors: list[tuple[str, str]] = []
    found: dict[str, Checkpoint] = {}
    for field in ("baseline_id", "candidate_id", "baseline_replica_id"):
        ident = getattr(body, field)
        if ident is None:
            continue
        record = session.get(Checkpoint, ident) if is_id(ident) else None
        if record is None:
            errors.append((f"body.{field}", f"checkpoint {ident!r} does not exist"))
        else:
            found[field] = record
    dataset = session.get(Dataset, body.dataset_id) if is_id(body.dataset_id) else None
    if dataset is None:
        errors.append(("body.dataset_id", f"dataset {body.dataset_id!r} does not exist"))
    baseline = found.get("baseline_id")
    if baseline is not None:
        names = list(baseline.class_names)
        for field in ("candidate_id", "baseline_replica_id"):
            other = found.get(field)
            if other is not None and list(other.class_names) != names:
                errors.append(
                    (
                        f"body.{field}",
                        f"class sets do not match: baseline has "
                        f"{names}, {field[:-3]} has {list(other.class_names)}",
                    )
                )
        if dataset is not None:
            extra = sorted(set(dataset.class_names) - set(names))
            if extra:
                errors.append(
                    (
                        "body.dataset_id",
                        f"dataset classes {extra} are not among the checkpoints' classes {names}",
                    )
                )
    for i, ident in enumerate(body.trajectory_ids):
        record = session.get(Checkpoint, ident) if is_id(ident) else None
        where = f"body.trajectory_ids[{i}]"
        if record is None:
            errors.append((where, f"checkpoint {ident!r} does not exist"))
        elif baseline is not None and list(record.class_names) != list(baseline.class_names):
            errors.append(
                (
                    where,
                    f"class sets do not match: baseline has {list(baseline.class_names)}, "
                    f"this checkpoint has {list(record.class_names)}",
                )
            )
    errors += _check_policy(body, config, list(baseline.class_names) if baseline else None)
    if errors:
        detail = "; ".join(f"{f}: {m}" for f, m in errors)
        raise ProblemError(422, detail, slug="validation", title="Invalid request", errors=errors)


def _check_policy(
    body: JobIn, config: dict, class_names: list[str] | None
) -> list[tuple[str, str]]:
    """Rules name the job's methods and metrics, a floor it measures and classes of the
    baseline (:func:`worker.results.gate.policy_problems`, the check the CLI runs too)."""
    if body.policy is None:
        return []
    problems = policy_problems(
        body.policy,
        class_names=class_names,
        methods=config["methods"],
        # no metrics named: the audit computes the defaults its data can measure (region
        # metrics only with masks), so a rule may name any of them
        metrics=config["metrics"] or default_metrics(REGIONS),
        noise_floor=body.noise_floor,
    )
    return [(f"body.policy.{p.field}", p.message) for p in problems]


def _submit(session: Session, job: Job, settings: Settings) -> None:
    """Hand the job over; on failure fail it (and free its key so a retry can reuse it)."""
    try:
        dispatch.submit_job(settings, job.id)
    except Exception as exc:
        log.error("job_submit_failed job=%s error=%s", job.id, type(exc).__name__)
        state.submit_failed(session, job.id, "broker unavailable")
        session.commit()
        raise ProblemError(
            503,
            "the job could not be queued (broker unavailable); it was marked failed, retry later",
            slug="broker-unavailable",
            title="Service Unavailable",
            headers={"Retry-After": "30"},
            job_id=job.id,
        ) from None


@router.get(
    "/drift-jobs",
    response_model=JobPage,
    summary="List drift jobs, newest first",
    responses=problem_responses(422),
)
def list_jobs(
    session: SessionDep,
    status: Annotated[JobStatus | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> JobPage:
    where = Job.status == status if status is not None else None
    return page_of(session, Job, job_out, JobPage, where, limit, offset)


def get_job_or_404(session: Session, job_id: str) -> Job:
    return record_or_404(session, Job, job_id, "drift job")


@router.get(
    "/drift-jobs/{job_id}",
    response_model=JobOut,
    summary="Status of a drift job",
    responses=problem_responses(404),
)
def get_job(job_id: str, session: SessionDep) -> JobOut:
    return job_out(get_job_or_404(session, job_id))


@router.post(
    "/drift-jobs/{job_id}/cancel",
    status_code=202,
    response_model=JobOut,
    summary="Cancel a job (a queued job at once; a running one between batches)",
    responses=problem_responses(404, 409),
)
def cancel_job(job_id: str, session: SessionDep) -> JobOut:
    job = get_job_or_404(session, job_id)
    state.request_cancel(session, job_id)
    session.commit()
    session.refresh(job)
    if job.status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        raise ProblemError(
            409,
            f"the job already {job.status}; nothing to cancel",
            slug="job-finished",
            job_status=job.status,
        )
    return job_out(job)
