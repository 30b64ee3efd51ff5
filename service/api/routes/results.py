"""A job's results: the report (JSON, markdown or HTML), per-sample rows, overlay PNGs."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi import Path as PathParam
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from sqlalchemy.orm import Session

from service.api.deps import SessionDep, store_of
from service.api.routes.jobs import get_job_or_404
from service.problems import ProblemError, invalid, problem_responses
from service.schemas import MAX_INT, Degenerate, SampleOut, SamplePage
from worker.catalog import ACTIVE_STATUSES, METRICS, JobStatus
from worker.render.html_report import input_frame, render_html
from worker.render.markdown import render_markdown
from worker.render.overlay import OverlayUnavailable, overlay_for_sample
from worker.results.report_schema import DriftReport, report_view
from worker.store import rows as stored_rows
from worker.store.artifacts import ArtifactStore
from worker.store.models import Checkpoint, Dataset, Job, Report

router = APIRouter(tags=["results"])


@router.get(
    "/drift-jobs/{job_id}/report",
    summary=(
        "The drift report: JSON, ?format=md for a markdown summary, ?format=html for a "
        "self-contained page with plots and overlays"
    ),
    response_model=None,
    responses={
        200: {
            "description": "the report",
            "model": DriftReport,
            "content": {
                "text/markdown": {"schema": {"type": "string"}},
                "text/html": {"schema": {"type": "string"}},
            },
        },
        **problem_responses(404, 409, 422),
    },
)
def get_report(
    job_id: str,
    request: Request,
    session: SessionDep,
    fmt: Annotated[Literal["json", "md", "html"], Query(alias="format")] = "json",
) -> Response:
    job = get_job_or_404(session, job_id)
    report = session.get(Report, job_id)
    if report is None:
        if job.status == JobStatus.SUCCEEDED:
            raise ProblemError(404, "the job succeeded but its report is missing", slug="not-found")
        detail = (
            f"the job is {job.status}; the report is ready when it has succeeded"
            if job.status in ACTIVE_STATUSES
            else f"the job {job.status}; it has no report"
        )
        raise ProblemError(409, detail, slug="report-not-ready", job_status=job.status)
    if fmt == "md":
        return PlainTextResponse(
            render_markdown(report.document, job_id=job_id),
            media_type="text/markdown; charset=utf-8",
        )
    if fmt == "html":
        return HTMLResponse(_report_html(store_of(request), session, job, report.document))
    return JSONResponse(report.document)


def _report_html(store: ArtifactStore, session: Session, job: Job, document: dict[str, Any]) -> str:
    """The report page: rows from SQL, overlays drawn from the artifact store's maps."""
    report = report_view(document)
    names = report.config.metrics or job.config.get("metrics")
    rows = stored_rows.load_rows(session, job.id, names)
    dataset = session.get(Dataset, job.dataset_id)
    root = store.resolve(dataset.root_path) if dataset is not None else None
    phases = tuple(
        m.phase if (m := report.models.get(role)) is not None else None
        for role in ("baseline", "candidate")
    )
    class_names = list(
        report.dataset.class_names or job.config.get("class_names") or _class_names(session, job)
    )
    rows_by_index = {row["index"]: row for row in rows}

    def overlay_png(index: int, method: str) -> bytes | None:
        row = rows_by_index.get(index)
        if row is None or root is None:
            return None
        return overlay_for_sample(
            row,
            method,
            maps_dir=store.maps_dir(job.id),
            image_root=root,
            class_names=class_names,
            phases=phases,
            frame=input_frame(report),
        )

    return render_html(report, rows, overlay_png)


@router.get(
    "/drift-jobs/{job_id}/samples",
    response_model=SamplePage,
    summary="Per-sample rows with one method's metrics, sortable and paged",
    responses=problem_responses(404, 422),
)
def list_samples(
    job_id: str,
    session: SessionDep,
    method: Annotated[str | None, Query(description="default: the job's first method")] = None,
    sort: Annotated[
        str, Query(description="index, label or a metric (of the job or the catalog)")
    ] = "index",
    order: Annotated[Literal["asc", "desc"], Query()] = "asc",
    included: Annotated[bool | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> SamplePage:
    job = get_job_or_404(session, job_id)
    method = _method(job, method)
    metrics = _metrics(job)
    sortable = [*stored_rows.SAMPLE_SORTS, *dict.fromkeys([*METRICS, *metrics])]
    if sort not in sortable:
        raise invalid("query.sort", f"cannot sort by {sort!r}; choose from {', '.join(sortable)}")
    total = stored_rows.count_samples(session, job_id, included)
    page = stored_rows.sorted_indices(
        session, job_id, method, sort, order, included=included, limit=limit, offset=offset
    )
    rows = stored_rows.load_rows(session, job_id, metrics, indices=page, methods=[method])
    names = list(job.config.get("class_names") or _class_names(session, job))
    items = [_sample_out(job, method, row, names) for row in rows]
    return SamplePage(
        items=items, total=total, limit=limit, offset=offset, method=method, sort=sort, order=order
    )


def _metrics(job: Job) -> list[str]:
    """The job's metric names (every catalogued one for a job stored without a list)."""
    return list(job.config.get("metrics") or METRICS)


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


def _sample_out(job: Job, method: str, row: dict[str, Any], names: list[str]) -> SampleOut:
    """One sample under ``method`` (a row of :func:`worker.store.rows.load_rows`)."""
    label = row["label"]
    measured = method in row["degenerate"]  # the sample was explained under the method
    flags = row["degenerate"].get(method)
    return SampleOut(
        index=row["index"],
        path=row["path"],
        label=label,
        label_name=names[label] if 0 <= label < len(names) else None,
        pred_baseline=row["pred_baseline"],
        pred_candidate=row["pred_candidate"],
        target_baseline=row["target_baseline"],
        target_candidate=row["target_candidate"],
        included=row["included"],
        probs_baseline=row["probs_baseline"],
        probs_candidate=row["probs_candidate"],
        method=method,
        metrics=row["metrics"].get(method) if measured else None,
        trajectory=(row.get("trajectory") or {}).get(method) if measured else None,
        probs_trajectory=row.get("probs_trajectory"),
        degenerate=Degenerate(baseline=flags[0], candidate=flags[1]) if measured else None,
        overlay=(
            f"/drift-jobs/{job.id}/samples/{row['index']}/overlay.png?method={method}"
            if measured
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
    session: SessionDep,
    method: Annotated[str | None, Query(description="default: the job's first method")] = None,
) -> Response:
    job = get_job_or_404(session, job_id)
    method = _method(job, method)
    found = stored_rows.load_rows(session, job_id, indices=[index], methods=[])
    if not found:
        raise ProblemError(404, f"job {job_id!r} has no evaluated sample {index}", slug="not-found")
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is None:
        raise ProblemError(404, "the job's dataset is gone", slug="not-found")
    baseline = session.get(Checkpoint, job.baseline_id)
    candidate = session.get(Checkpoint, job.candidate_id)
    phases = tuple(c.phase if c is not None else None for c in (baseline, candidate))
    names = list(job.config.get("class_names") or _class_names(session, job))
    store = store_of(request)
    try:
        png = overlay_for_sample(
            found[0],
            method,
            maps_dir=store.maps_dir(job_id),
            image_root=store.resolve(dataset.root_path),
            class_names=names,
            phases=phases,
            frame=_frame(baseline),
        )
    except OverlayUnavailable as exc:
        raise ProblemError(404, str(exc), slug="not-found") from None
    return Response(png, media_type="image/png")


def _frame(checkpoint: Checkpoint | None) -> tuple[str, list[int]] | None:
    """(resize policy, input size) of the job's baseline: where its maps sit on the image."""
    if checkpoint is None:
        return None
    return ((checkpoint.meta or {}).get("resize") or "stretch", list(checkpoint.input_size))
