"""Request-scoped access to the app's settings, SQL sessions and artifact store."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy import ColumnElement, func, select
from sqlalchemy.orm import Session, sessionmaker

from worker.store.artifacts import ArtifactStore
from worker.store.settings import Settings


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
