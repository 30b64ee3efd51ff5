"""Probes and metrics: ``/healthz`` (process alive), ``/readyz`` (DB + broker), ``/metrics``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import func, select, text

from service.problems import TYPE_PREFIX, Problem, problem_response, problem_responses
from service.prometheus import CONTENT_TYPE
from service.schemas import Health, Ready
from worker.catalog import JobStatus
from worker.store.models import Job

router = APIRouter(tags=["operations"])

BROKER_TIMEOUT_S = 1.0


@router.get("/healthz", response_model=Health, summary="Liveness: the process answers")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Ready,
    summary="Readiness: the database answers and, when configured, the broker",
    responses=problem_responses(503),
)
def readyz(request: Request) -> JSONResponse:
    checks = {"database": _check_database(request)}
    broker_url = request.app.state.settings.broker_url
    checks["broker"] = _check_broker(broker_url) if broker_url else "embedded"
    down = [name for name, state in checks.items() if state.startswith("down")]
    if down:
        problem = Problem(
            type=TYPE_PREFIX + "not-ready",
            title="Service Unavailable",
            status=503,
            detail=f"not ready: {', '.join(down)} down",
            checks=checks,
        )
        return problem_response(problem)
    return JSONResponse(Ready(status="ready", checks=checks).model_dump())


def _check_database(request: Request) -> str:
    try:
        with request.app.state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


def _check_broker(url: str) -> str:
    if not url.startswith(("redis://", "rediss://", "unix://")):
        return "unchecked"
    try:
        import redis

        client = redis.Redis.from_url(
            url, socket_connect_timeout=BROKER_TIMEOUT_S, socket_timeout=BROKER_TIMEOUT_S
        )
        try:
            client.ping()
        finally:
            client.close()
    except Exception as exc:
        return f"down: {type(exc).__name__}"
    return "ok"


@router.get(
    "/metrics",
    summary="Prometheus metrics (text exposition format)",
    response_class=PlainTextResponse,
    responses={
        200: {"content": {"text/plain": {"schema": {"type": "string"}}}, "description": "metrics"}
    },
)
def metrics(request: Request) -> PlainTextResponse:
    body = request.app.state.http_metrics.render()
    return PlainTextResponse(body, media_type=CONTENT_TYPE)


def job_counts(sessions) -> dict[str, int] | None:
    """Jobs by status (every status, zeros included); None when the database is down."""
    counts = dict.fromkeys([s.value for s in JobStatus], 0)
    try:
        with sessions() as session:
            for status, count in session.execute(
                select(Job.status, func.count()).group_by(Job.status)
            ):
                counts[status] = int(count)
    except Exception:
        return None
    return counts
