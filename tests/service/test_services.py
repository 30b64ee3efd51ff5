"""The real Postgres and Redis: schema round trip, the API on Postgres, readiness with Redis.

Skipped when a service is away, failed under CI (``require_service``).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from service import migrate
from service.app import create_app
from tests.service.conftest import (
    REDIS_URL,
    assert_problem,
    build_world,
    fresh_postgres_database,
    require_service,
)
from tests.service.test_migrations import check_round_trip
from worker.store import rows as stored_rows
from worker.store.db import make_engine, session_factory
from worker.store.models import Job
from worker.store.settings import Settings

pytestmark = pytest.mark.services


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A fresh, uniquely named database, dropped afterwards."""
    with fresh_postgres_database() as (url, _, _conn):
        yield url


def test_postgres_upgrade_downgrade_upgrade(pg_url) -> None:
    check_round_trip(Settings(database_url=pg_url))


def test_api_on_postgres(pg_url, tmp_path, checkpoint_files, submitted) -> None:
    settings = Settings(database_url=pg_url, storage=str(tmp_path / "storage"))
    migrate.upgrade(settings)
    with TestClient(create_app(settings)) as client:
        assert client.get("/readyz").json()["checks"]["database"] == "ok"
        world = build_world(client, checkpoint_files)
        again = client.post("/checkpoints", files={"file": checkpoint_files.baseline.read_bytes()})
        assert again.status_code == 200 and again.json()["id"] == world.baseline
        headers = {"Idempotency-Key": "pg-1"}
        body = world.job_body(metrics=["iou_top20", "iou_top10"])  # iou_top10: no column
        first = client.post("/drift-jobs", json=body, headers=headers)
        assert first.status_code == 202, first.text
        job_id = first.json()["id"]
        replay = client.post("/drift-jobs", json=body, headers=headers)
        assert replay.status_code == 200 and replay.json()["id"] == job_id
        assert_problem(
            client.post("/drift-jobs", json={**body, "seed": 9}, headers=headers),
            422,
            "header.Idempotency-Key",
        )
        assert submitted == [job_id]

        engine = make_engine(pg_url)
        with session_factory(engine)() as db:
            rows = []
            for i, (iou, top10) in enumerate([(0.2, 0.5), (None, None), (0.7, 0.1)]):
                rows.append(
                    {
                        "index": i,
                        "path": f"normal/img{i % 2}.png",
                        "label": 0,
                        "pred_baseline": 0,
                        "pred_candidate": 0,
                        "target_baseline": 0,
                        "target_candidate": 0,
                        "included": True,
                        "probs_baseline": [1.0, 0, 0, 0, 0],
                        "probs_candidate": [1.0, 0, 0, 0, 0],
                        "metrics": {"layercam": {"iou_top20": iou, "iou_top10": top10}},
                        "degenerate": {"layercam": [False, False]},
                    }
                )
            stored_rows.write_rows(db, job_id, rows)
            db.execute(update(Job).where(Job.id == job_id).values(status="running"))
            db.commit()
        engine.dispose()
        page = client.get(
            f"/drift-jobs/{job_id}/samples", params={"sort": "iou_top20", "order": "desc"}
        ).json()
        assert [s["index"] for s in page["items"]] == [2, 0, 1]
        for order, expected in (("asc", [2, 0, 1]), ("desc", [0, 2, 1])):  # NULL last
            page = client.get(
                f"/drift-jobs/{job_id}/samples", params={"sort": "iou_top10", "order": order}
            ).json()
            assert [s["index"] for s in page["items"]] == expected
        assert page["items"][0]["metrics"] == {"iou_top20": 0.2, "iou_top10": 0.5}
        cancel = client.post(f"/drift-jobs/{job_id}/cancel")
        assert cancel.status_code == 202 and cancel.json()["cancel_requested"] is True
        listed = client.get("/drift-jobs", params={"status": "running"}).json()
        assert listed["total"] == 1
        job = client.get(f"/drift-jobs/{job_id}").json()
        created = datetime.fromisoformat(job["created_at"])
        assert created.utcoffset() == timedelta(0)


def test_readyz_pings_the_real_broker(make_client) -> None:
    require_service(REDIS_URL)
    client = make_client(broker_url=REDIS_URL)
    assert client.get("/readyz").json() == {
        "status": "ready",
        "checks": {"database": "ok", "broker": "ok"},
    }


def test_hostile_strings_on_postgres(pg_url, tmp_path, checkpoint_files, submitted) -> None:
    """NUL bytes, huge numbers and odd ids answer 4xx on Postgres, never 500."""
    settings = Settings(database_url=pg_url, storage=str(tmp_path / "storage"))
    migrate.upgrade(settings)
    with TestClient(create_app(settings)) as client:
        world = build_world(client, checkpoint_files)
        assert_problem(client.get("/drift-jobs/%00"), 404)
        assert_problem(client.get("/checkpoints/x%00y"), 404)
        assert_problem(client.get("/drift-jobs", params={"offset": 2**40}), 422, "query.offset")
        bad = world.job_body(baseline_id="\x00", target_layer="a\x00b")
        problem = assert_problem(client.post("/drift-jobs", json=bad), 422)
        assert {e["field"] for e in problem["errors"]} == {"body.target_layer"}
        problem = assert_problem(
            client.post("/drift-jobs", json=world.job_body(dataset_id="\x00")),
            422,
            "body.dataset_id",
        )
        named = client.post(
            "/checkpoints",
            files={"file": checkpoint_files.replica.read_bytes(), "name": (None, "tl\x00 seed 2")},
        )
        assert named.status_code == 201 and named.json()["name"] == "tl seed 2"
