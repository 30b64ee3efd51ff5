"""``/drift-studies``: several succeeded jobs on one dataset, ranked together
(docs/architecture.md, "Samples and statistics").

The study row only names its jobs; the report is built on request by
``worker.results.study`` from the jobs' stored reports and per-sample rows, so it always
reflects what is stored.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.orm import Session

from service.api.deps import SessionDep, record_or_404
from service.problems import ProblemError, invalid, problem_responses
from service.schemas import Links, StudyIn, StudyOut, StudyReport
from worker.catalog import JobStatus
from worker.render.markdown import render_study_markdown
from worker.results.report_schema import report_view
from worker.results.study import study_report
from worker.store import rows as stored_rows
from worker.store.models import Checkpoint, Dataset, Job, Report, Study, is_id

router = APIRouter(tags=["drift-studies"])


def study_out(study: Study) -> StudyOut:
    base = f"/drift-studies/{study.id}"
    return StudyOut(
        id=study.id,
        name=study.name,
        job_ids=list(study.job_ids),
        created_at=study.created_at,
        links=Links(self=base, report=f"{base}/report"),
    )


def get_study_or_404(session: Session, study_id: str) -> Study:
    return record_or_404(session, Study, study_id, "drift study")


def _fingerprint(session: Session, job: Job) -> str | None:
    report = session.get(Report, job.id)
    fingerprint = report_view(report.document).dataset.fingerprint if report else None
    if fingerprint:
        return str(fingerprint)
    dataset = session.get(Dataset, job.dataset_id)
    return dataset.fingerprint if dataset is not None else None


@router.post(
    "/drift-studies",
    status_code=201,
    response_model=StudyOut,
    summary="Create a study of succeeded drift jobs on the same dataset (e.g. one per arch)",
    responses=problem_responses(400, 422),
)
def create_study(body: StudyIn, response: Response, session: SessionDep) -> StudyOut:
    first: tuple[str | None, list[int]] | None = None
    for i, job_id in enumerate(body.job_ids):
        field = f"body.job_ids[{i}]"
        if job_id in body.job_ids[:i]:
            raise invalid(field, f"job {job_id!r} is listed twice")
        job = session.get(Job, job_id) if is_id(job_id) else None
        if job is None:
            raise invalid(field, f"drift job {job_id!r} does not exist")
        if job.status != JobStatus.SUCCEEDED or session.get(Report, job_id) is None:
            raise invalid(field, f"drift job {job_id!r} is {job.status}, not succeeded")
        seen = (_fingerprint(session, job), stored_rows.sample_indices(session, job_id))
        if first is None:
            first = seen
        elif seen[0] != first[0]:
            raise invalid(field, f"drift job {job_id!r} ran on another dataset than the first")
        elif seen[1] != first[1]:
            raise invalid(
                field,
                f"drift job {job_id!r} evaluated another sample set than the first "
                "(other split, max_samples or seed)",
            )
    study = Study(name=body.name, job_ids=list(body.job_ids))
    session.add(study)
    session.commit()
    response.headers["Location"] = f"/drift-studies/{study.id}"
    return study_out(study)


@router.get(
    "/drift-studies/{study_id}",
    response_model=StudyOut,
    summary="A drift study",
    responses=problem_responses(404),
)
def get_study(study_id: str, session: SessionDep) -> StudyOut:
    return study_out(get_study_or_404(session, study_id))


def study_entries(session: Session, job_ids: list[str]) -> list[dict[str, Any]]:
    """The study entries of the jobs: stored reports + rows (409 if not ready)."""
    entries: list[dict[str, Any]] = []
    for job_id in job_ids:
        job = session.get(Job, job_id)
        report = session.get(Report, job_id)
        if job is None or job.status != JobStatus.SUCCEEDED or report is None:
            status = job.status if job is not None else "deleted"
            raise ProblemError(
                409,
                f"drift job {job_id!r} is {status}; a study needs every job succeeded",
                slug="report-not-ready",
                job_id=job_id,
                job_status=status,
            )
        document = report.document
        names = report_view(document).config.metrics or job.config.get("metrics")
        rows = stored_rows.load_rows(session, job_id, names)
        candidate = session.get(Checkpoint, job.candidate_id)
        label = candidate.name if candidate is not None else job_id
        entries.append({"name": label, "job_id": job_id, "report": document, "rows": rows})
    labels = [e["name"] for e in entries]
    for entry in entries:
        if labels.count(entry["name"]) > 1:
            entry["name"] = f"{entry['name']} ({entry['job_id'][:8]})"
    return entries


@router.get(
    "/drift-studies/{study_id}/report",
    response_model=None,
    summary=(
        "The study report: per method x metric rankings of the model pairs, Kendall tau "
        "between methods, bootstrap order probabilities and ranking reversals; ?format=md "
        "for a markdown summary"
    ),
    responses={
        200: {
            "description": "the study report",
            "model": StudyReport,
            "content": {"text/markdown": {"schema": {"type": "string"}}},
        },
        **problem_responses(404, 409, 422),
    },
)
def get_study_report(
    study_id: str,
    session: SessionDep,
    n_boot: Annotated[int, Query(ge=1, le=20000, description="bootstrap replicates")] = 2000,
    seed: Annotated[int, Query(ge=0, le=2**32 - 1, description="bootstrap seed")] = 0,
    fmt: Annotated[Literal["json", "md"], Query(alias="format")] = "json",
) -> Response:
    study = get_study_or_404(session, study_id)
    entries = study_entries(session, list(study.job_ids))
    try:
        document = study_report(entries, n_boot=n_boot, seed=seed)
    except ValueError as exc:
        raise ProblemError(409, str(exc), slug="study-incompatible") from None
    document = {**document, "study_id": study.id, "name": study.name}
    if fmt == "md":
        return PlainTextResponse(
            render_study_markdown(document), media_type="text/markdown; charset=utf-8"
        )
    return JSONResponse(StudyReport.model_validate(document).model_dump(mode="json"))
