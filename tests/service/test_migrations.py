"""Alembic is the only schema path: up/down/up is clean and matches the ORM models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service import migrate
from worker.store.db import make_engine
from worker.store.models import Base
from worker.store.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HEAD = "0004_dataset_content"  # the newest revision
TABLES = {
    "checkpoints",
    "datasets",
    "jobs",
    "job_shards",
    "job_samples",
    "sample_metrics",
    "reports",
    "studies",
    "alembic_version",
}


def schema_diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def check_round_trip(settings: Settings) -> None:
    migrate.upgrade(settings)
    assert table_names(settings.database_url) == TABLES
    assert schema_diff(settings.database_url) == []
    assert migrate.current(settings) == HEAD
    migrate.downgrade(settings, "base")
    assert table_names(settings.database_url) <= {"alembic_version"}
    assert migrate.current(settings) is None
    migrate.upgrade(settings, "head")
    assert schema_diff(settings.database_url) == []


def test_sqlite_upgrade_downgrade_upgrade(tmp_path) -> None:
    check_round_trip(Settings(database_url=f"sqlite:///{tmp_path}/m.db"))


def test_alembic_command_line_reads_the_environment(tmp_path) -> None:
    """``alembic upgrade head`` from the repo root takes CAMDRIFT_DATABASE_URL."""
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {**os.environ, "CAMDRIFT_DATABASE_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert schema_diff(url) == []


def test_migrate_works_from_any_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(database_url="sqlite:///./relative.db")
    migrate.upgrade(settings)
    assert (tmp_path / "relative.db").is_file()
    assert migrate.current(settings) == HEAD
