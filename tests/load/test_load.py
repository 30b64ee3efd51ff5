"""A bounded load test on loopback: 64 concurrent clients against ``camdrift serve``.

The clients mix job creation (tiny jobs: LayerCAM on 4-8 samples), status polling and report
fetches for a few seconds while the embedded runner works; no request may fail (no 5xx, no
connection error or timeout, only documented answers) and every created job must succeed.
Run on SQLite and on Postgres (both with the embedded runner). The latency percentiles per
request kind are printed and attached to the test report (``record_property``);
``python -m bench.service`` prints the same figures for the README.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from bench.service import ServerProcess, healthz_floor, mixed_load, print_report, report, seed
from tests.integration.conftest import Inputs, inputs  # noqa: F401  (fixture)
from tests.service.test_services import pg_url  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

CLIENTS = 64


def run_load(
    server: ServerProcess,
    data: Inputs,
    record_property: pytest.RecordProperty,
    database: str,
    **load: float,
) -> None:
    with server as base:
        seeded = seed(base, data.baseline, data.candidate, data.zip_bytes)
        floor = asyncio.run(healthz_floor(base, CLIENTS, duration=2.0))
        mixed = asyncio.run(mixed_load(base, seeded, CLIENTS, drain_timeout=180, **load))
    figures = report(floor, mixed)
    print_report(figures, CLIENTS, database)
    record_property("load_figures", json.dumps(figures))

    errors = floor.errors + mixed.errors
    assert not errors, (
        f"{len(errors)} failed requests, e.g. {errors[:5]}\n" + (server.log.read_text()[-3000:])
    )
    assert set(mixed.latencies) == {"create", "status", "report"}, mixed.summary()
    assert mixed.jobs, "no job was created"
    assert mixed.final == dict.fromkeys(mixed.jobs, "succeeded")


def test_mixed_load_on_embedded_service(
    tmp_path: Path,
    inputs: Inputs,  # noqa: F811
    record_property: pytest.RecordProperty,
) -> None:
    server = ServerProcess(tmp_path / "service")
    run_load(server, inputs, record_property, "SQLite", duration=8.0, max_jobs=16)


@pytest.mark.services
def test_mixed_load_on_postgres(
    pg_url: str,  # noqa: F811
    tmp_path: Path,
    inputs: Inputs,  # noqa: F811
    record_property: pytest.RecordProperty,
) -> None:
    server = ServerProcess(tmp_path / "service", env={"CAMDRIFT_DATABASE_URL": pg_url})
    run_load(server, inputs, record_property, "Postgres", duration=6.0, max_jobs=12)
