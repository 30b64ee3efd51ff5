"""RFC 9457 problem details: the one error shape of the API, including FastAPI's own errors.

Validation errors carry ``errors: [{field, message}]`` with the field as a path such as
``body.methods[1]``, ``query.limit`` or ``file``, so a client can point at what to fix.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeoutError
from starlette.exceptions import HTTPException as StarletteHTTPException

PROBLEM_MEDIA_TYPE = "application/problem+json"
TYPE_PREFIX = "urn:camdrift:problem:"
DATABASE_RETRY_AFTER_S = 5  # what a 503 for an unavailable database tells clients to wait

log = logging.getLogger("camdrift.api")


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """An RFC 9457 problem; extension members (e.g. ``job_id``, ``checks``) may follow."""

    model_config = ConfigDict(extra="allow")

    type: str = "about:blank"
    title: str
    status: int
    detail: str | None = None
    errors: list[FieldError] | None = None


class ProblemError(HTTPException):
    """Raise anywhere in a request to answer with a problem document.

    A FastAPI ``HTTPException`` so that it passes unchanged through FastAPI's body parsing.
    """

    def __init__(
        self,
        status: int,
        detail: str,
        *,
        slug: str | None = None,
        title: str | None = None,
        errors: Sequence[tuple[str, str]] | None = None,
        headers: dict[str, str] | None = None,
        **extensions: Any,
    ) -> None:
        super().__init__(status_code=status, detail=detail, headers=headers)
        self.slug = slug
        self.title = title or HTTPStatus(status).phrase
        self.errors = [FieldError(field=f, message=m) for f, m in errors or ()]
        self.extensions = extensions

    def problem(self) -> Problem:
        return Problem(
            type=TYPE_PREFIX + self.slug if self.slug else "about:blank",
            title=self.title,
            status=self.status_code,
            detail=self.detail,
            errors=self.errors or None,
            **self.extensions,
        )


def invalid(field: str, message: str, status: int = 422) -> ProblemError:
    """One field at fault: the most common problem."""
    return ProblemError(
        status,
        f"{field}: {message}",
        slug="validation",
        title="Invalid request",
        errors=[(field, message)],
    )


def not_found(what: str, ident: str) -> ProblemError:
    return ProblemError(404, f"{what} {ident!r} does not exist", slug="not-found")


def problem_response(problem: Problem, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        problem.model_dump(mode="json", exclude_none=True),
        status_code=problem.status,
        media_type=PROBLEM_MEDIA_TYPE,
        headers=headers,
    )


def field_path(loc: Iterable[Any]) -> str:
    """('body', 'methods', 1) -> 'body.methods[1]'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "body"


def _message(error: dict[str, Any]) -> str:
    msg = str(error.get("msg", "invalid"))
    return msg.removeprefix("Value error, ")


def validation_problem(errors: Sequence[Any]) -> Problem:
    """FastAPI/pydantic errors -> 400 (unparseable JSON) or 422 (anything else)."""
    if any(e.get("type") == "json_invalid" for e in errors):
        first = next(e for e in errors if e.get("type") == "json_invalid")
        detail = (first.get("ctx") or {}).get("error", "invalid JSON")
        return Problem(
            type=TYPE_PREFIX + "malformed-json",
            title="Malformed JSON",
            status=400,
            detail=f"the request body is not valid JSON: {detail}",
            errors=[FieldError(field="body", message=str(detail))],
        )
    items = [FieldError(field=field_path(e.get("loc", ())), message=_message(e)) for e in errors]
    detail = "; ".join(f"{i.field}: {i.message}" for i in items[:5])
    return Problem(
        type=TYPE_PREFIX + "validation",
        title="Invalid request",
        status=422,
        detail=detail,
        errors=items,
    )


async def _problem_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ProblemError)
    return problem_response(exc.problem(), exc.headers)


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    phrase = HTTPStatus(exc.status_code).phrase
    detail = exc.detail if isinstance(exc.detail, str) and exc.detail != phrase else None
    problem = Problem(title=phrase, status=exc.status_code, detail=detail)
    return problem_response(problem, getattr(exc, "headers", None))


async def _validation_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return problem_response(validation_problem(exc.errors()))


def database_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the database cannot be reached (down, restarting, pool exhausted,
    connection lost) rather than that a query is wrong."""
    if isinstance(exc, OperationalError | InterfaceError | PoolTimeoutError):
        return True
    return isinstance(exc, DBAPIError) and bool(exc.connection_invalidated)


async def _database_error(request: Request, exc: Exception) -> JSONResponse:
    """503 + ``Retry-After`` while the database is unavailable (as ``/readyz`` says); any
    other database error goes on to the 500 handler."""
    if not database_unavailable(exc):
        raise exc
    log.warning(
        "database_unavailable method=%s path=%s error=%s",
        request.method,
        request.url.path,
        type(getattr(exc, "orig", None) or exc).__name__,
    )
    problem = Problem(
        type=TYPE_PREFIX + "database-unavailable",
        title="Service Unavailable",
        status=503,
        detail="the database is unavailable; retry later",
    )
    return problem_response(problem, {"Retry-After": str(DATABASE_RETRY_AFTER_S)})


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled_error method=%s path=%s", request.method, request.url.path)
    problem = Problem(
        type=TYPE_PREFIX + "internal",
        title="Internal Server Error",
        status=500,
        detail="an unexpected error occurred; the server log has the details",
    )
    return problem_response(problem)


def install_problem_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ProblemError, _problem_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(DBAPIError, _database_error)
    app.add_exception_handler(PoolTimeoutError, _database_error)
    app.add_exception_handler(Exception, _unexpected)


def problem_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for the problem statuses a route can answer."""
    return {code: {"model": Problem, "description": HTTPStatus(code).phrase} for code in codes}
