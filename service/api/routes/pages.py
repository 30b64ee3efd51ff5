"""``GET /``: the service's front page -- recent drift jobs (status, verdict, models, dataset,
progress, links to each report, the error of a failed one) and studies, filterable by status
and verdict, paged like ``GET /drift-jobs``. Server-rendered HTML (Jinja2, no script), so it
works wherever the API does; behind the same bearer auth as the API when tokens are set."""

from __future__ import annotations

from typing import Annotated, Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse
from sqlalchemy import ColumnElement, and_
from sqlalchemy.orm import Session

from service.api.deps import SessionDep, newest_first
from service.problems import problem_responses
from worker.catalog import JobStatus
from worker.render.templating import html_environment, stylesheet
from worker.store.models import Checkpoint, Dataset, Job, Study

router = APIRouter(tags=["pages"])

Verdict = Literal["pass", "fail", "inconclusive", "none"]
STUDIES_SHOWN = 20


def _name(session: Session, model: Any, ident: str, cache: dict) -> str:
    """A checkpoint's or dataset's name (and arch), looked up once per page."""
    key = (model, ident)
    if key not in cache:
        row = session.get(model, ident)
        if row is None:
            cache[key] = "(deleted)"
        elif model is Checkpoint:
            cache[key] = f"{row.name} ({row.arch})"
        else:
            cache[key] = row.name
    return cache[key]


def _verdict_filter(verdict: Verdict | None) -> ColumnElement[bool] | None:
    if verdict is None:
        return None
    if verdict == "none":
        return Job.verdict.is_(None)
    return Job.verdict["verdict"].as_string() == verdict


def _link(**params: Any) -> str:
    return "/?" + urlencode({k: v for k, v in params.items() if v not in (None, "")})


@router.get(
    "/",
    response_class=HTMLResponse,
    summary="The jobs page: recent drift jobs and studies (HTML)",
    responses=problem_responses(422),
)
def jobs_page(
    session: SessionDep,
    status: Annotated[JobStatus | None, Query()] = None,
    verdict: Annotated[Verdict | None, Query(description="none: jobs without a policy")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=2**31 - 1)] = 0,
) -> HTMLResponse:
    clauses = [c for c in (_status_filter(status), _verdict_filter(verdict)) if c is not None]
    where = and_(*clauses) if clauses else None
    rows, total = newest_first(session, Job, where, limit, offset)
    names: dict = {}
    jobs = []
    for job in rows:
        base = f"/drift-jobs/{job.id}"
        done = job.status == JobStatus.SUCCEEDED
        jobs.append(
            {
                "id": job.id,
                "self": base,
                "status": job.status,
                "verdict": (job.verdict or {}).get("verdict"),
                "baseline": _name(session, Checkpoint, job.baseline_id, names),
                "candidate": _name(session, Checkpoint, job.candidate_id, names),
                "dataset": _name(session, Dataset, job.dataset_id, names),
                "done": job.progress_done,
                "total": job.progress_total,
                "created": job.created_at.isoformat(timespec="seconds"),
                "report": f"{base}/report?format=html" if done else None,
                "markdown": f"{base}/report?format=md" if done else None,
                "error": job.error if job.status == JobStatus.FAILED else None,
            }
        )
    studies, _ = newest_first(session, Study, None, STUDIES_SHOWN, 0)
    keep = {"status": status.value if status else None, "verdict": verdict, "limit": limit}
    filters = ", ".join(f"{k} {v}" for k, v in keep.items() if k != "limit" and v)
    page = (
        html_environment()
        .get_template("jobs.html.j2")
        .render(
            css=stylesheet(),
            total=total,
            jobs=jobs,
            status=keep["status"],
            verdict=verdict,
            statuses=[s.value for s in JobStatus],
            verdicts=list(Verdict.__args__),
            limit=limit,
            filters=filters,
            previous=_link(**keep, offset=max(0, offset - limit)) if offset > 0 else None,
            next=_link(**keep, offset=offset + limit) if offset + limit < total else None,
            studies=[
                {
                    "id": s.id,
                    "self": f"/drift-studies/{s.id}",
                    "name": s.name,
                    "jobs": len(s.job_ids),
                    "created": s.created_at.isoformat(timespec="seconds"),
                    "report": f"/drift-studies/{s.id}/report",
                    "markdown": f"/drift-studies/{s.id}/report?format=md",
                }
                for s in studies
            ],
        )
    )
    return HTMLResponse(page)


def _status_filter(status: JobStatus | None) -> ColumnElement[bool] | None:
    return Job.status == status if status is not None else None
