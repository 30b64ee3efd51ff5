"""A job's results: the report (JSON or markdown), per-sample rows, overlay PNGs."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from sqlalchemy import and_, case, func, select
from sqlalchemy.orm import Session

from service.api.deps import get_session, store_of
from service.api.jobs import get_job_or_404
from service.api.markdown import report_markdown
from service.overlay import find_maps, render_overlay
from service.problems import ProblemError, invalid, problem_responses
from service.schemas import MAX_INT, Degenerate, SampleOut, SamplePage
from training.imageio import ImageReadError, read_image
from worker.report_schema import DriftReport
from worker.store.artifacts import ArtifactStore
from worker.store.models import (
    METRIC_COLUMNS,
    Checkpoint,
    Dataset,
    Job,
    JobSample,
    Report,
    SampleMetric,
)

router = APIRouter(tags=["results"])

SORTABLE = ("index", "label", *METRIC_COLUMNS)


@router.get(
    "/drift-jobs/{job_id}/report",
    summary="The drift report (JSON, or ?format=md for a markdown summary)",
    response_model=None,
    responses={
        200: {
            "description": "the report",
            "model": DriftReport,
            "content": {"text/markdown": {"schema": {"type": "string"}}},
        },
        **problem_responses(404, 406, 409, 422),
    },
)
def get_report(
    job_id: str,
    session: Annotated[Session, Depends(get_session)],
    fmt: Annotated[Literal["json", "md", "html"], Query(alias="format")] = "json",
) -> Response:
    job = get_job_or_404(session, job_id)
    if fmt == "html":
        raise ProblemError(
            406, "the HTML report is not yet available; use json or md", slug="not-acceptable"
        )
    report = session.get(Report, job_id)
    if report is None:
        if job.status == "succeeded":
            raise ProblemError(404, "the job succeeded but its report is missing", slug="not-found")
        detail = (
            f"the job is {job.status}; the report is ready when it has succeeded"
            if job.status in ("queued", "running")
            else f"the job {job.status}; it has no report"
        )
        raise ProblemError(409, detail, slug="report-not-ready", job_status=job.status)
    if fmt == "md":
        return PlainTextResponse(
            report_markdown(report.document, job_id), media_type="text/markdown; charset=utf-8"
        )
    return JSONResponse(report.document)


@router.get(
    "/drift-jobs/{job_id}/samples",
    response_model=SamplePage,
    summary="Per-sample rows with one method's metrics, sortable and paged",
    responses=problem_responses(404, 422),
)
def list_samples(
    job_id: str,
    session: Annotated[Session, Depends(get_session)],
    method: Annotated[str | None, Query(description="default: the job's first method")] = None,
    sort: Annotated[str, Query(description="index, label or a metric column")] = "index",
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    included: Annotated[bool | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> SamplePage:
    job = get_job_or_404(session, job_id)
    method = _method(job, method)
    if sort not in SORTABLE:
        raise invalid("query.sort", f"cannot sort by {sort!r}; choose from {', '.join(SORTABLE)}")
    joined = and_(
        SampleMetric.job_id == JobSample.job_id,
        SampleMetric.index == JobSample.index,
        SampleMetric.method == method,
    )
    where = [JobSample.job_id == job_id]
    if included is not None:
        where.append(JobSample.included == included)
    total = session.scalar(select(func.count()).select_from(JobSample).where(*where)) or 0
    column = getattr(SampleMetric, sort) if sort in METRIC_COLUMNS else getattr(JobSample, sort)
    direction = column.desc() if order == "desc" else column.asc()
    rows = session.execute(
        select(JobSample, SampleMetric)
        .outerjoin(SampleMetric, joined)
        .where(*where)
        .order_by(case((column.is_(None), 1), else_=0), direction, JobSample.index)
        .limit(limit)
        .offset(offset)
    ).all()
    names = list(job.config.get("class_names") or _class_names(session, job))
    metrics = list(job.config.get("metrics") or METRIC_COLUMNS)
    items = [_sample_out(job, method, s, m, names, metrics) for s, m in rows]
    return SamplePage(
        items=items, total=total, limit=limit, offset=offset, method=method, sort=sort, order=order
    )


def _method(job: Job, method: str | None) -> str:
    methods = list(job.config.get("methods") or [])
    if method is None:
        return methods[0]
    if method not in methods:
        raise invalid("query.method", f"{method!r} is not one of the job's methods {methods}")
    return method


def _class_names(session: Session, job: Job) -> list[str]:
    baseline = session.get(Checkpoint, job.baseline_id)
    return list(baseline.class_names) if baseline is not None else []


def _sample_out(
    job: Job,
    method: str,
    sample: JobSample,
    metric: SampleMetric | None,
    names: list[str],
    metrics: list[str],
) -> SampleOut:
    values = metric.values() if metric is not None else None
    return SampleOut(
        index=sample.index,
        path=sample.path,
        label=sample.label,
        label_name=names[sample.label] if 0 <= sample.label < len(names) else None,
        pred_baseline=sample.pred_baseline,
        pred_candidate=sample.pred_candidate,
        target_baseline=sample.target_baseline,
        target_candidate=sample.target_candidate,
        included=sample.included,
        probs_baseline=list(sample.probs_baseline),
        probs_candidate=list(sample.probs_candidate),
        method=method,
        metrics={k: values.get(k) for k in metrics} if values is not None else None,
        degenerate=Degenerate(
            baseline=metric.degenerate_baseline, candidate=metric.degenerate_candidate
        )
        if metric
        else None,
        overlay=(
            f"/drift-jobs/{job.id}/samples/{sample.index}/overlay.png?method={method}"
            if metric is not None
            else None
        ),
    )


@router.get(
    "/drift-jobs/{job_id}/samples/{index}/overlay.png",
    summary="The input image with the baseline and candidate maps, side by side",
    response_class=Response,
    responses={
        200: {
            "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}},
            "description": "PNG image",
        },
        **problem_responses(404, 422),
    },
)
def overlay(
    job_id: str,
    index: Annotated[int, PathParam(ge=0, le=MAX_INT)],
    request: Request,
    session: Annotated[Session, Depends(get_session)],
    method: Annotated[str | None, Query(description="default: the job's first method")] = None,
) -> Response:
    job = get_job_or_404(session, job_id)
    method = _method(job, method)
    sample = session.get(JobSample, (job_id, index))
    if sample is None:
        raise ProblemError(404, f"job {job_id!r} has no evaluated sample {index}", slug="not-found")
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is None:
        raise ProblemError(404, "the job's dataset is gone", slug="not-found")
    png = _render(store_of(request), job_id, sample, dataset, method)
    return Response(png, media_type="image/png")


def _render(
    store: ArtifactStore, job_id: str, sample: JobSample, dataset: Dataset, method: str
) -> bytes:
    maps = find_maps(store.maps_dir(job_id), sample.index, method)
    if maps is None:
        raise ProblemError(
            404,
            f"no {method} maps for sample {sample.index} (samples outside the filter have none)",
            slug="not-found",
        )
    root = store.resolve(dataset.root_path).resolve()
    path = (root / sample.path).resolve()
    if not path.is_relative_to(root):
        raise ProblemError(404, "the sample's image is outside its dataset", slug="not-found")
    try:
        image = read_image(path)
    except ImageReadError as exc:
        raise ProblemError(
            404, f"the input image cannot be read ({exc.reason})", slug="not-found"
        ) from None
    return render_overlay(
        image, maps[0], maps[1], (f"baseline - {method}", f"candidate - {method}")
    )
