"""Property-based fuzzing of the REST API from its own OpenAPI document (schemathesis).

For every operation, hypothesis generates requests from the schema (valid ones and, in
negative mode, invalid ones); each response must not be a 5xx, must use a documented status
code and content type, and its body must conform to the documented schema. The database is
seeded first (two checkpoints, a dataset and one succeeded job) and half of the generated cases
get those real ids (path parameters, and the ids in a job body), so the fuzzer reaches the deep
paths (report, samples, overlays, job creation) rather than stopping at 404 or 422. Run against
the embedded default (SQLite) and against Postgres.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st

from service import migrate
from service.app import create_app
from tests.ci import require_module
from tests.integration.conftest import Inputs, inputs  # noqa: F401  (fixture)
from tests.service.conftest import fresh_postgres_database
from worker.store.settings import Settings

schemathesis = require_module("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.slow

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
MAX_EXAMPLES = 50
MODES = [GenerationMode.POSITIVE, GenerationMode.NEGATIVE]


def seed(app: FastAPI, data: Inputs) -> dict[str, Any]:
    """Two checkpoints, a dataset and one succeeded job; returns their ids."""
    with TestClient(app) as client:
        ids = []
        for path in (data.baseline, data.candidate):
            with open(path, "rb") as fh:
                r = client.post("/checkpoints", files={"file": (path.name, fh)})
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        files = {"file": ("data.zip", data.zip_bytes, "application/zip")}
        r = client.post("/datasets", files=files)
        assert r.status_code == 201, r.text
        dataset = r.json()["id"]
        body = {
            "baseline_id": ids[0],
            "candidate_id": ids[1],
            "dataset_id": dataset,
            "methods": ["layercam"],
            "sample_filter": "all",
            "max_samples": 4,
            "noise_floor": False,
        }
        r = client.post("/drift-jobs", json=body)
        assert r.status_code == 202, r.text
        job = r.json()["id"]
        deadline = time.monotonic() + 120
        while (status := client.get(f"/drift-jobs/{job}").json())["status"] in (
            "queued",
            "running",
        ):
            assert time.monotonic() < deadline, status
            time.sleep(0.2)
        assert status["status"] == "succeeded", status
    return {
        "checkpoint_id": ids[0],
        "candidate_id": ids[1],
        "dataset_id": dataset,
        "job_id": job,
        "index": 0,
    }


def fuzz(app: FastAPI, known: dict[str, Any]) -> list[str]:
    """Fuzz every operation of ``app``; returns the failures (empty when all checks hold)."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    failures: list[str] = []

    for result in schema.get_all_operations():
        operation = result.ok()

        def with_known_ids(case: Any) -> Any:
            for name in list(case.path_parameters or {}):
                if name in known:
                    case.path_parameters[name] = known[name]
            if isinstance(case.body, dict) and "baseline_id" in case.body:
                # Real ids in a job body: the request gets past the lookups (jobs stay tiny).
                case.body.update(
                    baseline_id=known["checkpoint_id"],
                    candidate_id=known["candidate_id"],
                    dataset_id=known["dataset_id"],
                    max_samples=2,
                    noise_floor=False,
                )
            return case

        strategies = [operation.as_strategy(generation_mode=mode) for mode in MODES]
        if operation.path_parameters or operation.body:
            strategies += [s.map(with_known_ids) for s in strategies]
        strategy = st.one_of(*strategies)

        @hypothesis.settings(
            max_examples=MAX_EXAMPLES,
            derandomize=True,
            database=None,
            deadline=None,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @hypothesis.given(case=strategy)
        def check(case: Any) -> None:
            case.call_and_validate(checks=CHECKS)

        try:
            check()
        except Exception as exc:  # a schemathesis failure group or a hypothesis error
            failures.append(f"{operation.label}: {exc}")
    return failures


def test_fuzz_embedded_sqlite(tmp_path: Path, inputs: Inputs) -> None:  # noqa: F811
    settings = Settings(
        database_url=f"sqlite:///{tmp_path / 'camdrift.db'}", storage=str(tmp_path / "storage")
    )
    migrate.upgrade(settings)
    app = create_app(settings)
    failures = fuzz(app, seed(app, inputs))
    assert not failures, "\n\n".join(failures)


@pytest.fixture
def fuzz_pg_url() -> Iterator[str]:
    """A fresh, uniquely named Postgres database, dropped afterwards."""
    with fresh_postgres_database("camdrift_fuzz") as (url, _, _conn):
        yield url


@pytest.mark.services
def test_fuzz_postgres(fuzz_pg_url: str, tmp_path: Path, inputs: Inputs) -> None:  # noqa: F811
    settings = Settings(database_url=fuzz_pg_url, storage=str(tmp_path / "storage"))
    migrate.upgrade(settings)
    app = create_app(settings)
    try:
        failures = fuzz(app, seed(app, inputs))
    finally:
        app.state.engine.dispose()
    assert not failures, "\n\n".join(failures)
