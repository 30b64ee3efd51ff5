"""Fixtures for the API tests: a migrated SQLite DB per test, a store, real checkpoints.

``require_service(url)`` is the one rule for tests that need the real Postgres or Redis: skip
when the service is unreachable, except under CI (``CI`` set), where that is a failure.
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import uuid
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy.orm import Session

from service import migrate
from service.app import create_app
from worker.store.db import make_engine, session_factory
from worker.store.settings import Settings

CLASSES = ["normal", "pneumonia", "covid", "tuberculosis", "effusion"]
OTHER_CLASSES = ["a", "b", "c", "d", "e"]
POSTGRES_URL = os.environ.get("CAMDRIFT_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("CAMDRIFT_TEST_REDIS", "redis://127.0.0.1:6379/0")


def require_service(url: str, timeout: float = 2.0) -> None:
    """Skip the test when the service behind ``url`` does not accept connections (fail in CI)."""
    parsed = urlparse(url)
    default_port = {"postgresql": 5432, "postgres": 5432, "redis": 6379}.get(
        parsed.scheme.split("+")[0], 0
    )
    host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return
    except OSError as exc:
        message = f"{parsed.scheme} at {host}:{port} is unreachable ({exc})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI must run the services tests")
    pytest.skip(message)


@contextmanager
def fresh_postgres_database(prefix: str = "camdrift_test") -> Iterator[tuple[str, str, Any]]:
    """(url, name, autocommit admin connection) of a new, uniquely named database on the test
    Postgres; dropped afterwards WITH (FORCE), so connections of killed processes can't block
    it. Skips (fails under CI) when Postgres is unreachable."""
    require_service(POSTGRES_URL)
    import psycopg2
    from sqlalchemy.engine import make_url

    admin = make_url(POSTGRES_URL)
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(admin.render_as_string(hide_password=False))
    conn.autocommit = True
    try:
        with conn.cursor() as cur:
            cur.execute(f'CREATE DATABASE "{name}"')
        yield admin.set(database=name).render_as_string(hide_password=False), name, conn
    finally:
        with conn.cursor() as cur:
            cur.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


# --------------------------------------------------------------------------- checkpoints


@dataclass(frozen=True)
class CheckpointFiles:
    baseline: Path
    candidate: Path
    replica: Path
    other_classes: Path
    no_metadata: Path


@pytest.fixture(scope="session")
def checkpoint_files(tmp_path_factory: pytest.TempPathFactory) -> CheckpointFiles:
    """Tiny real checkpoints written by camdrift's own writer (torch only in the tests)."""
    import safetensors.torch
    import torch

    from training.checkpoints import model_metadata, save_checkpoint
    from training.zoo import create_model

    folder = tmp_path_factory.mktemp("checkpoints")

    def write(name: str, seed: int, classes: list[str], **meta: Any) -> Path:
        torch.manual_seed(seed)
        model = create_model("tinycnn", len(classes))
        path = folder / f"{name}.safetensors"
        save_checkpoint(path, model, model_metadata(model, classes, **meta))
        return path

    plain = folder / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(4)}, str(plain))
    return CheckpointFiles(
        baseline=write("tl", 0, CLASSES, phase="tl"),
        candidate=write("ft", 1, CLASSES, phase="ft"),
        replica=write("tl-seed2", 2, CLASSES, phase="tl"),
        other_classes=write("other", 3, OTHER_CLASSES, phase="ft"),
        no_metadata=plain,
    )


# --------------------------------------------------------------------------- app + DB


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SQLite file migrated once by Alembic; each test gets a copy (fast, same schema)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    migrate.upgrade(Settings(database_url=f"sqlite:///{path}"))
    return path


@pytest.fixture
def make_settings(tmp_path: Path, migrated_template: Path) -> Callable[..., Settings]:
    def build(**overrides: Any) -> Settings:
        db = tmp_path / "camdrift.db"
        if not db.exists() and "database_url" not in overrides:
            shutil.copy(migrated_template, db)
        values: dict[str, Any] = {
            "database_url": f"sqlite:///{db}",
            "storage": str(tmp_path / "storage"),
        }
        values.update(overrides)
        return Settings(**values)

    return build


@pytest.fixture
def submitted(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Job ids handed to ``service.dispatch.submit_job`` (which does nothing else here)."""
    calls: list[str] = []
    monkeypatch.setattr(
        "service.dispatch.submit_job", lambda settings, job_id: calls.append(job_id)
    )
    return calls


@pytest.fixture
def make_client(
    make_settings: Callable[..., Settings], submitted: list[str]
) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def build(**overrides: Any) -> TestClient:
        client = TestClient(create_app(make_settings(**overrides)))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client()


@pytest.fixture
def db(client: TestClient) -> Iterator[Session]:
    """A session on the same database as ``client`` (to play the worker's part)."""
    engine = make_engine(client.app.state.settings.database_url)  # type: ignore[attr-defined]
    with session_factory(engine)() as session:
        yield session
    engine.dispose()


# --------------------------------------------------------------------------- data builders


def png_bytes(size: tuple[int, int] = (32, 32), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, size=(size[1], size[0]), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def make_zip(entries: dict[str, bytes], **kw: Any) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, **kw) as zf:
        for name, data in entries.items():
            zf.writestr(name, data)
    return out.getvalue()


def image_folder(
    classes: list[str] = CLASSES[:3], per_class: int = 2, prefix: str = ""
) -> dict[str, bytes]:
    return {
        f"{prefix}{name}/img{i}.png": png_bytes(seed=k * 10 + i)
        for k, name in enumerate(classes)
        for i in range(per_class)
    }


def write_tree(root: Path, entries: dict[str, bytes]) -> Path:
    for name, data in entries.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def upload_checkpoint(client: TestClient, path: Path, **data: str) -> Any:
    with open(path, "rb") as fh:
        return client.post("/checkpoints", files={"file": (path.name, fh)}, data=data or None)


def upload_zip(client: TestClient, payload: bytes, filename: str = "data.zip", **data: str) -> Any:
    return client.post(
        "/datasets", files={"file": (filename, payload, "application/zip")}, data=data or None
    )


def assert_problem(response: Any, status: int, field: str | None = None) -> dict[str, Any]:
    """The response is RFC 9457 problem+json with ``status`` (and names ``field``)."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert isinstance(body["title"], str) and body["title"]
    assert isinstance(body.get("type", "about:blank"), str)
    if field is not None:
        fields = [e["field"] for e in body.get("errors") or []]
        assert field in fields, body
    return body


@dataclass
class World:
    """A client with two uploaded checkpoints and an uploaded dataset, ready for jobs."""

    client: TestClient
    baseline: str
    candidate: str
    dataset: str
    files: CheckpointFiles

    def job_body(self, **overrides: Any) -> dict[str, Any]:
        body: dict[str, Any] = {
            "baseline_id": self.baseline,
            "candidate_id": self.candidate,
            "dataset_id": self.dataset,
        }
        body.update(overrides)
        return {k: v for k, v in body.items() if v is not ...}


def build_world(client: TestClient, files: CheckpointFiles) -> World:
    baseline = upload_checkpoint(client, files.baseline).json()["id"]
    candidate = upload_checkpoint(client, files.candidate).json()["id"]
    response = upload_zip(client, make_zip(image_folder()))
    assert response.status_code == 201, response.text
    return World(client, baseline, candidate, response.json()["id"], files)


@pytest.fixture
def world(client: TestClient, checkpoint_files: CheckpointFiles) -> World:
    return build_world(client, checkpoint_files)
