"""Request-scoped access to the app's settings, SQL sessions and artifact store."""

from __future__ import annotations

from collections.abc import Iterator

from fastapi import Request
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
