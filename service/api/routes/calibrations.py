"""``/drift-calibrations``: a gate policy calibrated on K succeeded reference jobs (the API form
of ``camdrift calibrate --from-reports``; docs/architecture.md, "Gate").

A team audits its K known-good fine-tunes as ordinary drift jobs (one baseline, one dataset, the
same audit options; the gate's sample filter is ``all``) and posts their ids. The policy comes
from the jobs' stored per-sample rows by :mod:`worker.results.calibration`, the same math as the
CLI, and is answered as JSON (with the policy as a job body's ``policy`` takes it) or as TOML
(``?format=toml``) to commit beside the CI job. Nothing new is stored: the jobs are the record,
so the answer always reflects what is stored.
"""

from __future__ import annotations

import tomllib
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Response
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy.orm import Session

from service.api.deps import SessionDep
from service.problems import invalid, problem_responses
from service.schemas import CalibrationIn, CalibrationOut
from worker.catalog import DEFAULT_METHODS, JobStatus
from worker.results import calibration as calib
from worker.results.rows import RowTable
from worker.store import rows as stored_rows
from worker.store.models import Checkpoint, Job, Report, is_id

router = APIRouter(tags=["drift-calibrations"])


def _succeeded_job(session: Session, job_id: str, field: str) -> tuple[Job, dict[str, Any]]:
    job = session.get(Job, job_id) if is_id(job_id) else None
    if job is None:
        raise invalid(field, f"drift job {job_id!r} does not exist")
    report = session.get(Report, job_id)
    if job.status != JobStatus.SUCCEEDED or report is None:
        raise invalid(field, f"drift job {job_id!r} is {job.status}, not succeeded")
    return job, report.document


def _rows(session: Session, job_id: str, metrics: list[str]) -> RowTable:
    return RowTable.from_rows(stored_rows.load_rows(session, job_id, metrics))


@router.post(
    "/drift-calibrations",
    response_model=None,
    summary=(
        "A gate policy calibrated on K >= 3 succeeded reference jobs (known-good fine-tunes of "
        "one baseline on one dataset); ?format=toml for the policy file"
    ),
    responses={
        200: {
            "description": "the calibrated policy",
            "model": CalibrationOut,
            "content": {"application/toml": {"schema": {"type": "string"}}},
        },
        **problem_responses(400, 422),
    },
)
def create_calibration(
    body: CalibrationIn,
    session: SessionDep,
    fmt: Annotated[Literal["json", "toml"], Query(alias="format")] = "json",
) -> Response:
    metrics = list(body.metrics or [])
    documents: list[dict[str, Any]] = []
    names: list[str] = []
    first: dict[str, Any] | None = None
    for i, job_id in enumerate(body.job_ids):
        field = f"body.job_ids[{i}]"
        if job_id in body.job_ids[:i]:
            raise invalid(field, f"job {job_id!r} is listed twice")
        job, document = _succeeded_job(session, job_id, field)
        seen = calib.reference_key(document)
        if first is None:
            first = seen
        else:
            for key, value in seen.items():
                if value != first[key]:
                    raise invalid(
                        field,
                        f"drift job {job_id!r}: {key} {value!r} differs from the first job's "
                        f"{first[key]!r}; every reference audits the same baseline on the same "
                        "data with the same options",
                    )
        config = document.get("config") or {}
        if not metrics:  # the calibration's default metrics that the audits computed
            metrics = [m for m in calib.DEFAULT_METRICS if m in (config.get("metrics") or [])]
            if not metrics:
                raise invalid(
                    "body.metrics",
                    f"drift job {job_id!r} computed none of {', '.join(calib.DEFAULT_METRICS)}; "
                    "name the metrics to calibrate",
                )
        for kind, wanted, have in (
            ("methods", body.methods or [], config.get("methods") or []),
            ("metrics", metrics, config.get("metrics") or []),
        ):
            missing = [n for n in wanted if n not in have]
            if missing:
                raise invalid(
                    f"body.{kind}",
                    f"drift job {job_id!r} computed no {missing[0]!r} (it has {', '.join(have)})",
                )
        candidate = session.get(Checkpoint, job.candidate_id)
        names.append(f"job {job_id}" + (f" ({candidate.name})" if candidate is not None else ""))
        documents.append(document)
    assert first is not None  # job_ids has at least MIN_REFERENCES entries
    config = documents[0].get("config") or {}
    methods = list(body.methods or config.get("methods") or DEFAULT_METHODS)
    tables = [_rows(session, job_id, metrics) for job_id in body.job_ids]
    try:
        cal = calib.calibrate(
            tables,
            first["class_names"],
            methods,
            metrics,
            alpha=body.alpha,
            names=names,
            min_samples=body.min_samples,
            min_class_samples=body.min_class_samples,
        )
    except calib.CalibrationError as exc:
        raise invalid("body.job_ids", str(exc)) from None
    cal.audit = calib.gate_options(config)
    if body.ceiling_job_id is not None:
        field = "body.ceiling_job_id"
        _, document = _succeeded_job(session, body.ceiling_job_id, field)
        seen = calib.reference_key(document)
        for key in ("baseline", "dataset fingerprint", "class_names"):
            if seen[key] != first[key]:
                raise invalid(field, f"the ceiling job's {key} differs from the references'")
        cal.ceiling = calib.ceiling_scale(cal, _rows(session, body.ceiling_job_id, metrics), tables)
        cal.ceiling_model = {"job_id": body.ceiling_job_id}
    command = f"POST /drift-calibrations job_ids={','.join(body.job_ids)} alpha={body.alpha:g}"
    text = calib.policy_toml(cal, command)
    if fmt == "toml":
        return PlainTextResponse(text, media_type="application/toml; charset=utf-8")
    out = CalibrationOut(
        alpha=cal.alpha,
        k=cal.k,
        m=cal.m,
        level=cal.level,
        job_ids=list(body.job_ids),
        methods=cal.methods,
        metrics=cal.metrics,
        skipped_classes=cal.skipped_classes,
        min_samples=cal.min_samples,
        min_class_samples=cal.min_class_samples,
        policy=tomllib.loads(text),
        policy_toml=text,
    )
    return JSONResponse(out.model_dump(mode="json"))
