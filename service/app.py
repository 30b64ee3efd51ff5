"""The FastAPI application: ``create_app(settings)`` wires routes, errors, auth and metrics.

Torch-free by design (a test imports it in a fresh interpreter and checks ``sys.modules``).
The schema is never created here: run ``camdrift db upgrade`` (Alembic) first; ``/readyz``
reports a database that does not answer.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse

import training
from service.api import checkpoints, datasets, health, jobs, results
from service.auth import OPEN_PATHS, BearerAuthMiddleware
from service.problems import (
    PROBLEM_MEDIA_TYPE,
    ProblemError,
    install_problem_handlers,
    problem_response,
)
from service.prometheus import HttpMetrics, RequestObserver
from service.schemas import DatasetPathIn
from service.uploads import BodyLimitMiddleware, Rejected
from worker.store.artifacts import ArtifactStore
from worker.store.db import make_engine, session_factory
from worker.store.settings import Settings, get_settings

UPLOAD_PATHS = frozenset({"/checkpoints", "/datasets"})
DESCRIPTION = (
    "Audit attribution drift between two checkpoints of a medical-image classifier. "
    "Errors are RFC 9457 `application/problem+json`."
)


def create_app(settings: Settings | None = None) -> FastAPI:
    """A ready-to-serve app for ``settings`` (default: from the environment)."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="camdrift",
        version=training.__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.store = ArtifactStore(settings.storage).ensure()
    app.state.http_metrics = HttpMetrics()

    install_problem_handlers(app)
    app.add_exception_handler(Rejected, _rejected)
    for module in (checkpoints, datasets, jobs, results, health):
        app.include_router(module.router)

    # Added last = outermost: observer -> auth -> body limit -> routes.
    app.add_middleware(
        BodyLimitMiddleware, upload_limit=settings.max_upload_bytes, upload_paths=UPLOAD_PATHS
    )
    app.add_middleware(BearerAuthMiddleware, tokens=settings.api_tokens)
    app.add_middleware(RequestObserver, metrics=app.state.http_metrics)

    app.openapi = lambda: _openapi(app, secured=bool(settings.api_tokens))  # type: ignore[method-assign]
    return app


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
