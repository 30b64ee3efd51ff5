"""The FastAPI application: ``create_app(settings)`` wires routes, errors, auth and metrics.

Torch-free by design (a test imports it in a fresh interpreter and checks ``sys.modules``).
The schema is never created here: run ``camdrift db upgrade`` (Alembic) first; ``/readyz``
reports a database that does not answer.
"""

from __future__ import annotations

import asyncio
import importlib.resources
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from sqlalchemy.pool import QueuePool
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

import training
from service import dispatch
from service.api.routes import (
    calibrations,
    checkpoints,
    datasets,
    health,
    jobs,
    pages,
    results,
)
from service.api.routes import studies as studies_api
from service.api.routes.health import job_counts
from service.auth import OPEN_PATHS, BearerAuthMiddleware
from service.problems import (
    PROBLEM_MEDIA_TYPE,
    ProblemError,
    install_problem_handlers,
    problem_response,
)
from service.prometheus import HttpMetrics, RequestObserver
from service.schemas import DatasetPathIn
from service.staging import StagingOwner, sweep_interval, sweep_staging
from service.uploads import BodyLimitMiddleware, Rejected
from worker.store.artifacts import ArtifactStore
from worker.store.db import make_engine, session_factory
from worker.store.settings import Settings, get_settings

log = logging.getLogger("camdrift.api")

UPLOAD_PATHS = frozenset({"/checkpoints", "/datasets"})
DOCS_ASSETS = "/docs/assets"  # Swagger UI's and ReDoc's files (fastapi-offline)
DOCS_REDIRECT = "/docs/oauth2-redirect"
# Requests handled at once (others wait their turn on the event loop, which costs nothing). The
# SQL pool holds more connections than this, so a route never waits for a connection: FastAPI
# serialises a sync route's response on the shared thread pool *before* the request's session
# is closed, so with more requests in flight than connections, every pool thread could sit in a
# route waiting for a connection held by a finished route waiting for a thread -- the API froze
# until the pool timeout (found by tests/load with 64 clients).
MAX_CONCURRENT_REQUESTS = 24
SQL_POOL_SIZE = 8
SQL_POOL_MAX_OVERFLOW = MAX_CONCURRENT_REQUESTS + 8 - SQL_POOL_SIZE  # + health, metrics, runner
DESCRIPTION = (
    "Audit attribution drift between two checkpoints of a medical-image classifier. "
    "Errors are RFC 9457 `application/problem+json`."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A ready-to-serve app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    engine = _make_engine(settings.database_url)

    store = ArtifactStore(settings.storage).ensure()
    staging = StagingOwner(store.tmp_dir)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(sweep_staging, store.tmp_dir, settings.tmp_max_age_s)
        sweeper = asyncio.create_task(_sweep_forever(store.tmp_dir, settings.tmp_max_age_s))
        try:
            yield
        finally:
            sweeper.cancel()
            if not settings.broker_url:  # its jobs' rows stay; a later start resumes them
                await run_in_threadpool(dispatch.stop_embedded_runner, settings)
            staging.release()
            engine.dispose()

    app = FastAPI(
        title="camdrift",
        version=training.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,  # both served by _install_docs from local files
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.store = store
    app.state.staging = staging
    app.state.http_metrics = HttpMetrics(job_counts=lambda: job_counts(app.state.sessions))
    if not settings.broker_url:  # the embedded runner's tasks run in this process
        from worker.runtime.metrics import REGISTRY as WORKER_REGISTRY

        app.state.http_metrics.forward(WORKER_REGISTRY)

    install_problem_handlers(app)
    app.add_exception_handler(Rejected, _rejected)
    for module in (checkpoints, datasets, jobs, results, calibrations, health, pages):
        app.include_router(module.router)
    app.include_router(studies_api.router)
    _install_docs(app)

    # Added last = outermost: observer -> auth -> body limit -> concurrency limit -> routes.
    app.add_middleware(ConcurrencyLimitMiddleware, limit=MAX_CONCURRENT_REQUESTS, exempt=OPEN_PATHS)
    app.add_middleware(
        BodyLimitMiddleware, upload_limit=settings.max_upload_bytes, upload_paths=UPLOAD_PATHS
    )
    app.add_middleware(BearerAuthMiddleware, tokens=settings.api_tokens)
    app.add_middleware(RequestObserver, metrics=app.state.http_metrics)

    app.openapi = lambda: _openapi(app, secured=bool(settings.api_tokens))  # type: ignore[method-assign]
    return app


async def _sweep_forever(tmp_dir: Path, max_age_s: float) -> None:
    """Sweep ``store/tmp`` for orphaned uploads while the app runs (service/staging.py)."""
    while True:
        await asyncio.sleep(sweep_interval(max_age_s))
        try:
            await run_in_threadpool(sweep_staging, tmp_dir, max_age_s)
        except Exception:  # a sweep that fails must not stop the next one
            log.exception("staging_sweep_failed")


def _install_docs(app: FastAPI) -> None:
    """Swagger UI at ``/docs`` and ReDoc at ``/redoc`` from the files the ``fastapi-offline``
    package ships (Swagger UI 5, which renders OpenAPI 3.1), never from a CDN: an offline
    hospital network saw a blank page."""
    try:
        assets = importlib.resources.files("fastapi_offline") / "static"
    except ModuleNotFoundError:
        log.warning("docs_disabled reason='fastapi-offline is not installed'")
        return
    app.mount(DOCS_ASSETS, StaticFiles(directory=str(assets)), name="docs-assets")

    def urls(request: Request) -> tuple[str, str]:
        root = request.scope.get("root_path", "").rstrip("/")
        return f"{root}{app.openapi_url}", f"{root}{DOCS_ASSETS}"

    @app.get("/docs", include_in_schema=False)
    def swagger(request: Request) -> HTMLResponse:
        openapi_url, static = urls(request)
        return get_swagger_ui_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            swagger_js_url=f"{static}/swagger-ui-bundle.js",
            swagger_css_url=f"{static}/swagger-ui.css",
            swagger_favicon_url=f"{static}/favicon.png",
            oauth2_redirect_url=DOCS_REDIRECT,
        )

    @app.get(DOCS_REDIRECT, include_in_schema=False)
    def swagger_redirect() -> HTMLResponse:
        return get_swagger_ui_oauth2_redirect_html()

    @app.get("/redoc", include_in_schema=False)
    def redoc(request: Request) -> HTMLResponse:
        openapi_url, static = urls(request)
        return get_redoc_html(
            openapi_url=openapi_url,
            title=f"{app.title} API",
            redoc_js_url=f"{static}/redoc.standalone.js",
            redoc_favicon_url=f"{static}/favicon.png",
            with_google_fonts=False,
        )


def _make_engine(url: str) -> Engine:
    """The API's engine: a queue pool sized above ``MAX_CONCURRENT_REQUESTS`` where it has one
    (SQLite ``:memory:`` gets a singleton pool, which takes no size)."""
    engine = make_engine(url)
    if isinstance(engine.pool, QueuePool):
        engine.dispose()
        engine = make_engine(url, pool_size=SQL_POOL_SIZE, max_overflow=SQL_POOL_MAX_OVERFLOW)
    return engine


class ConcurrencyLimitMiddleware:
    """At most ``limit`` HTTP requests inside the app at once (``exempt`` paths always pass)."""

    def __init__(self, app: ASGIApp, limit: int, exempt: frozenset[str] = frozenset()) -> None:
        self.app = app
        self.limit = limit
        self.exempt = exempt
        # One semaphore per event loop (test clients run the same app on several loops).
        self._semaphores: dict[asyncio.AbstractEventLoop, asyncio.Semaphore] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in self.exempt:
            await self.app(scope, receive, send)
            return
        loop = asyncio.get_running_loop()
        semaphore = self._semaphores.get(loop)
        if semaphore is None:
            for stale in [other for other in self._semaphores if other.is_closed()]:
                del self._semaphores[stale]
            semaphore = self._semaphores[loop] = asyncio.Semaphore(self.limit)
        async with semaphore:
            await self.app(scope, receive, send)


async def _rejected(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, Rejected)
    problem = ProblemError(
        422,
        f"{exc.field}: {exc}",
        slug="validation",
        title="Invalid request",
        errors=[(exc.field, str(exc))],
    ).problem()
    return problem_response(problem)


def _openapi(app: FastAPI, *, secured: bool) -> dict[str, Any]:
    """FastAPI's document, with problem+json for every error and the bearer scheme."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    schemas["DatasetPathIn"] = DatasetPathIn.model_json_schema(
        ref_template="#/components/schemas/{model}"
    )
    problem_ref = {"$ref": "#/components/schemas/Problem"}
    for path, operations in doc.get("paths", {}).items():
        for operation in operations.values():
            responses = operation.setdefault("responses", {})
            for code, response in responses.items():
                if code.isdigit() and int(code) >= 400:
                    response["content"] = {PROBLEM_MEDIA_TYPE: {"schema": problem_ref}}
            if secured and path not in OPEN_PATHS:
                operation["security"] = [{"bearerAuth": []}]
                responses.setdefault(
                    "401",
                    {
                        "description": "Unauthorized",
                        "content": {PROBLEM_MEDIA_TYPE: {"schema": problem_ref}},
                    },
                )
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    doc["components"]["securitySchemes"] = {"bearerAuth": {"type": "http", "scheme": "bearer"}}
    app.openapi_schema = doc
    return doc
