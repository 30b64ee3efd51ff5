"""Schema migrations from code (``camdrift db upgrade``, tests, the api container's start).

The Alembic Config is built here, not read from alembic.ini, so it works from any directory.
"""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config

from worker.store.settings import Settings

MIGRATIONS = Path(__file__).resolve().parent.parent / "migrations"


def alembic_config(settings: Settings) -> Config:
    """An Alembic Config pointing at ``migrations/`` and the settings' database."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    # ConfigParser interpolation: a literal '%' (URL-encoded passwords) must be doubled.
    config.set_main_option("sqlalchemy.url", settings.database_url.replace("%", "%%"))
    config.attributes["configure_logging"] = False
    return config


def upgrade(settings: Settings, revision: str = "head") -> None:
    """Bring the database to ``revision`` (default: the newest)."""
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    """Step the database back to ``revision`` (default: empty)."""
    command.downgrade(alembic_config(settings), revision)


def current(settings: Settings) -> str | None:
    """The database's current revision, or None when it was never migrated."""
    from alembic.runtime.migration import MigrationContext

    from worker.store.db import make_engine

    engine = make_engine(settings.database_url)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()
