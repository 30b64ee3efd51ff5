"""Request-scoped access to the app's settings, SQL sessions and artifact store."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, sessionmaker

from service.problems import not_found
from worker.store.artifacts import ArtifactStore
from worker.store.models import is_id
from worker.store.settings import Settings

T = TypeVar("T")


def settings_of(request: Request) -> Settings:
    return request.app.state.settings


def store_of(request: Request) -> ArtifactStore:
    return request.app.state.store


def sessions_of(request: Request) -> sessionmaker[Session]:
    return request.app.state.sessions


def get_session(request: Request) -> Iterator[Session]:
    """One session per request; routes commit explicitly, anything left is rolled back."""
    session = sessions_of(request)()
    try:
        yield session
    finally:
        session.close()


# typed dependencies: a route names what it needs by type, e.g. ``session: SessionDep``
SessionDep = Annotated[Session, Depends(get_session)]
SettingsDep = Annotated[Settings, Depends(settings_of)]
StoreDep = Annotated[ArtifactStore, Depends(store_of)]
SessionsDep = Annotated["sessionmaker[Session]", Depends(sessions_of)]


def newest_first(
    session: Session,
    model: Any,
    where: ColumnElement[bool] | None,
    limit: int,
    offset: int,
) -> tuple[Sequence[Any], int]:
    """One page of ``model`` rows (newest first, id breaks ties) and the filtered total."""
    query, count = select(model), select(func.count()).select_from(model)
    if where is not None:
        query, count = query.where(where), count.where(where)
    total = session.scalar(count) or 0
    rows = session.scalars(
        query.order_by(model.created_at.desc(), model.id).limit(limit).offset(offset)
    ).all()
    return rows, total


def record_or_404(session: Session, model: type[T], ident: str, what: str) -> T:
    """The record ``ident`` of ``model``, or a 404 problem naming ``what`` (a malformed id
    cannot exist and is never sent to SQL)."""
    record = session.get(model, ident) if is_id(ident) else None
    if record is None:
        raise not_found(what, ident)
    return record


def page_of(
    session: Session,
    model: Any,
    out: Callable[[Any], Any],
    page: Any,
    where: ColumnElement[bool] | None,
    limit: int,
    offset: int,
) -> Any:
    """One ``page`` of ``model`` rows, newest first, each turned into its response by ``out``."""
    rows, total = newest_first(session, model, where, limit, offset)
    return page(items=[out(r) for r in rows], total=total, limit=limit, offset=offset)
