"""End to end through HTTP only, with real processes.

1. The embedded default: ``camdrift serve`` (SQLite, in-process runner).
2. The deployment: ``camdrift db upgrade`` + the API under uvicorn + two ``celery worker``
   processes on the real Postgres and Redis, sharing one job's shards.
Both reports must equal the one ``camdrift drift`` computes locally for the same inputs.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from sqlalchemy import func, select

from tests.integration.conftest import (
    JOB,
    assert_reports_equal,
    camdrift_command,
    free_port,
    local_audit,
    run_job_over_http,
    wait_http,
)
from tests.service.conftest import REDIS_URL, fresh_postgres_database, require_service
from worker.store.db import make_engine, session_factory
from worker.store.models import JobSample, JobShard, SampleMetric

pytestmark = pytest.mark.slow
E2E_JOB = {**JOB, "with_replica": True, "with_trajectory": True}


@pytest.fixture(scope="module")
def local_report(inputs, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "report.json"
    return local_audit(inputs, out, replica=True, trajectory=True)


def _check_job(client, status, local_report) -> None:
    report = client.get(f"/drift-jobs/{status['id']}/report").json()
    assert_reports_equal(local_report, report)
    assert status["progress"]["done"] == status["progress"]["total"] == 40
    rows = client.get(
        f"/drift-jobs/{status['id']}/samples",
        params={"method": "layercam", "sort": "iou_top20", "limit": 5},
    ).json()
    index = rows["items"][0]["index"]
    png = client.get(
        f"/drift-jobs/{status['id']}/samples/{index}/overlay.png", params={"method": "layercam"}
    )
    assert png.status_code == 200 and png.content[:8] == b"\x89PNG\r\n\x1a\n"
    md = client.get(f"/drift-jobs/{status['id']}/report", params={"format": "md"})
    assert md.status_code == 200 and "layercam" in md.text and "### Trajectory" in md.text
    assert report["trajectory"]["steps"] == 2  # TL -> the intermediate -> FT
    item = rows["items"][0]
    assert len(item["trajectory"]["from_first"]) == 2 and len(item["probs_trajectory"]) == 1
    page = client.get(f"/drift-jobs/{status['id']}/report", params={"format": "html"})
    assert page.status_code == 200 and 'id="trajectory"' in page.text


def test_embedded_default_end_to_end(inputs, processes, tmp_path, local_report) -> None:
    port = free_port()
    env = {
        "CAMDRIFT_DATABASE_URL": f"sqlite:///{tmp_path}/camdrift.db",
        "CAMDRIFT_STORAGE": str(tmp_path / "storage"),
        "CAMDRIFT_SHARD_SIZE": "16",
        "CAMDRIFT_BROKER_URL": "",
    }
    api = processes.start("serve", camdrift_command("serve", "--port", str(port)), env)
    wait_http(f"http://127.0.0.1:{port}/healthz", api)
    client, status = run_job_over_http(f"http://127.0.0.1:{port}", inputs, E2E_JOB)
    _check_job(client, status, local_report)


@pytest.mark.services
def test_two_celery_workers_share_one_job(inputs, processes, tmp_path, local_report) -> None:
    require_service(REDIS_URL)
    with fresh_postgres_database("camdrift_e2e") as (db_url, _, _conn):
        _two_workers_share_one_job(inputs, processes, tmp_path, local_report, db_url)


def _two_workers_share_one_job(inputs, processes, tmp_path, local_report, db_url) -> None:
    broker = REDIS_URL.rsplit("/", 1)[0] + "/7"
    subprocess.run(["redis-cli", "-u", broker, "flushdb"], check=False, capture_output=True)
    env = {
        "CAMDRIFT_DATABASE_URL": db_url,
        "CAMDRIFT_BROKER_URL": broker,
        "CAMDRIFT_STORAGE": str(tmp_path / "storage"),
        "CAMDRIFT_SHARD_SIZE": "5",
        "CAMDRIFT_BATCH_SIZE": "4",
    }
    try:
        # the compose services' commands, run natively
        migrate = subprocess.run(
            camdrift_command("db", "upgrade"),
            env={**_env(), **env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert migrate.returncode == 0, migrate.stderr
        workers = [processes.celery_worker(f"w{i}", env) for i in (1, 2)]
        base = processes.api(env, ready="/readyz")
        _wait_ready(processes, workers)
        client, status = run_job_over_http(base, inputs, E2E_JOB)
        _check_job(client, status, local_report)
        engine = make_engine(db_url)
        with session_factory(engine)() as s:
            job_id = status["id"]
            per_method = s.execute(
                select(
                    SampleMetric.method, func.count(), func.count(func.distinct(SampleMetric.index))
                )
                .where(SampleMetric.job_id == job_id)
                .group_by(SampleMetric.method)
            ).all()
            assert sorted(per_method) == [("gradcam++", 40, 40), ("layercam", 40, 40)]
            # the finaliser read the bulk-loaded values on fresh statistics (autovacuum,
            # a minute away, never analysed this database)
            analysed = s.connection().exec_driver_sql(
                "SELECT reltuples FROM pg_class WHERE relname = 'sample_series'"
            )
            assert analysed.scalar_one() >= 40 * 2
            assert (
                s.scalar(
                    select(func.count()).select_from(JobSample).where(JobSample.job_id == job_id)
                )
                == 40
            )
            assert (
                s.scalar(
                    select(func.count())
                    .select_from(JobShard)
                    .where(JobShard.job_id == job_id, JobShard.status == "done")
                )
                == 8
            )
        engine.dispose()
        shards_by_worker = [processes.log(w).count("shard done") for w in workers]
        assert all(n > 0 for n in shards_by_worker), shards_by_worker
        assert sum(shards_by_worker) == 8
        ready = client.get("/readyz").json()
        assert ready["checks"] == {"database": "ok", "broker": "ok"}, json.dumps(ready)
        _import_through_celery(client, inputs, tmp_path, workers, processes)
    finally:
        processes.stop_all()


def _import_through_celery(client, inputs, tmp_path, workers, processes) -> None:
    """A plain state dict uploaded with its fields is converted by a Celery worker (the API
    has no torch) into a checkpoint holding the same tensors."""
    import torch

    from training.checkpoints import load_checkpoint

    model, meta = load_checkpoint(inputs.baseline)
    plain = tmp_path / "trained-elsewhere.pt"
    torch.save({f"module.{k}": v for k, v in model.net.state_dict().items()}, plain)
    fields = {"arch": meta["arch"], "class_names": ",".join(meta["class_names"])}
    with open(plain, "rb") as fh:
        r = client.post("/checkpoints", files={"file": (plain.name, fh)}, data=fields)
    assert r.status_code == 202, r.text
    deadline = time.monotonic() + 60
    while (row := client.get(r.headers["location"]).json())["status"] in ("queued", "running"):
        assert time.monotonic() < deadline, row
        time.sleep(0.3)
    assert row["status"] == "succeeded", row
    record = client.get(f"/checkpoints/{row['checkpoint_id']}").json()
    assert record["arch"] == meta["arch"] and record["class_names"] == meta["class_names"]
    assert sum(processes.log(w).count("import succeeded") for w in workers) == 1


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)


def _wait_ready(processes, workers, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all("ready." in processes.log(w) for w in workers):
            return
        for w in workers:
            assert w.poll() is None, processes.log(w)[-3000:]
        time.sleep(0.5)
    raise AssertionError("celery workers did not become ready")
