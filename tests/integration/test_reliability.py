"""Faults on purpose: a worker killed mid-shard, the broker down, the database restarted,
shards over their time limit and poison jobs. Nothing is lost, nothing counted twice, nothing
loops forever.

The in-process tests drive ``worker.runtime.jobs`` / ``worker.runtime.sweeper`` / the embedded
runner on SQLite;
the ``services`` tests run real ``celery worker`` processes, uvicorn, Postgres and a private
``redis-server`` (started and killed by the test, never the shared one).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, text, update

from tests.ci import skip_or_fail
from tests.integration.conftest import (
    JOB,
    Inputs,
    assert_reports_equal,
    camdrift_command,
    free_port,
    local_audit,
    upload_inputs,
)
from tests.integration.test_job_runner import counts, ctx, job_row, make_job
from tests.service.conftest import fresh_postgres_database
from worker.runtime import jobs
from worker.runtime.sweeper import SweepPolicy, sweep
from worker.store import Settings, session_scope
from worker.store.db import make_engine, session_factory
from worker.store.models import Checkpoint, Job, JobSample, JobShard, SampleMetric, utcnow

__all__ = ["ctx"]  # the fixture, shared with test_job_runner
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def local_report(inputs, tmp_path_factory):
    # the deployment's CAMDRIFT_BATCH_SIZE: batching may flip a tied argmax (peak_displacement)
    return local_audit(inputs, tmp_path_factory.mktemp("local") / "report.json", batch_size=1)


# ----------------------------------------------------------------------- in process (SQLite)


def _age(ctx: jobs.WorkerContext, job_id: str, seconds: float) -> None:
    with session_scope(ctx.sessions) as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(updated_at=utcnow() - timedelta(seconds=seconds))
        )


def test_sweeper_requeues_stuck_queued_and_stalled_jobs(ctx, inputs) -> None:
    policy = SweepPolicy(queued_after_s=30, stale_after_s=60, interval_s=0)
    job_id = make_job(ctx, inputs)
    assert sweep(ctx, policy) == {"plan": 0, "shard": 0, "finalize": 0}, "fresh: left alone"
    _age(ctx, job_id, 31)  # its plan message was lost (e.g. the broker restarted empty)
    assert sweep(ctx, policy)["plan"] == 1
    assert sweep(ctx, policy)["plan"] == 0, "claimed: not re-sent at every pass"
    assert ctx.enqueue.take(jobs.PLAN) == [[job_id]]
    jobs.plan_job(ctx, job_id)
    shards = ctx.enqueue.take(jobs.SHARD)
    jobs.run_shard(ctx, job_id, 0)
    jobs.run_shard(ctx, job_id, 1)  # shards 2 and 3 lost with a worker
    assert sweep(ctx, policy)["shard"] == 0, "progress is recent: not stalled"
    _age(ctx, job_id, 61)
    assert sweep(ctx, policy) == {"plan": 0, "shard": 2, "finalize": 0}
    resent = ctx.enqueue.take(jobs.SHARD)
    assert sorted(no for _, no in resent) == [2, 3]
    for job, no in shards + resent:  # the originals show up too: harmless
        jobs.run_shard(ctx, job, no)
    assert counts(ctx, job_id) == (40, 80)
    assert job_row(ctx, job_id).shards_done == 4
    assert ctx.enqueue.take(jobs.FINALIZE) == [[job_id]]
    _age(ctx, job_id, 61)  # finalisation message lost too
    assert sweep(ctx, policy)["finalize"] == 1
    for (job,) in ctx.enqueue.take(jobs.FINALIZE) * 2:
        jobs.finalize_job(ctx, job)
    assert job_row(ctx, job_id).status == "succeeded"
    _age(ctx, job_id, 3600)
    assert sweep(ctx, policy) == {"plan": 0, "shard": 0, "finalize": 0}, "finished: ignored"


def test_crash_between_rows_and_done_mark_does_not_double_count(ctx, inputs) -> None:
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    ctx.enqueue.take(jobs.SHARD)
    jobs.run_shard(ctx, job_id, 1)
    with session_scope(ctx.sessions) as s:  # rows written, the done mark lost with the worker
        s.get(JobShard, (job_id, 1)).status = "pending"
        s.get(Job, job_id).shards_done = 0
    for no in (0, 1, 1, 2, 3, 3):
        jobs.run_shard(ctx, job_id, no)
    assert counts(ctx, job_id) == (40, 80)
    job = job_row(ctx, job_id)
    assert job.shards_done == 4 and job.progress_done == 40
    assert ctx.enqueue.take(jobs.FINALIZE) == [[job_id]]


def test_shard_over_its_time_limit_fails_the_job(ctx, inputs, monkeypatch) -> None:
    from worker.runtime.embedded import EmbeddedRunner

    ticks = iter(range(0, 10_000, 5))  # every look at the clock: 5 s later
    monkeypatch.setattr(jobs, "_clock", lambda: float(next(ticks)))
    settings = ctx.settings.model_copy(update={"shard_time_limit_s": 7})
    job_id = make_job(ctx, inputs)
    runner = EmbeddedRunner(settings, device="cpu", batch_size=2)
    try:
        runner.submit(job_id)
        assert runner.join(timeout=120)
    finally:
        runner.stop()
    job = job_row(ctx, job_id)
    assert job.status == "failed", job.error
    assert "exceeded its time limit of 7 s" in job.error
    with session_scope(ctx.sessions) as s:
        attempts = s.scalars(select(JobShard.attempts).where(JobShard.job_id == job_id)).all()
    assert max(attempts) == 1, "failed on the first try, not retried"


def test_redelivery_is_capped(ctx, inputs, monkeypatch) -> None:
    monkeypatch.setenv("CAMDRIFT_MAX_SHARD_ATTEMPTS", "2")  # read through Settings
    derived = {"max_shard_attempts", "visibility_timeout_s", "sweep_stale_after_s"}
    monkeypatch.setattr(ctx, "settings", Settings(**ctx.settings.model_dump(exclude=derived)))
    assert ctx.max_shard_attempts == 2
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    with session_scope(ctx.sessions) as s:  # it killed its worker twice already
        s.get(JobShard, (job_id, 0)).attempts = 2
    with pytest.raises(jobs.JobFailed, match="shard 0 gave up after 2 attempts"):
        jobs.run_shard(ctx, job_id, 0)


def test_deleted_checkpoint_fails_on_the_first_try_named_by_its_id(ctx, inputs, tmp_path) -> None:
    """The stored error names the checkpoint by id, never by where the server kept it."""
    from worker.runtime.embedded import EmbeddedRunner

    job_id = make_job(ctx, inputs)
    gone = tmp_path / "gone.safetensors"
    shutil.copy(inputs.candidate, gone)
    with session_scope(ctx.sessions) as s:
        job = s.get(Job, job_id)
        cp = s.get(Checkpoint, job.candidate_id)
        clone = Checkpoint(
            **{
                c: getattr(cp, c)
                for c in ("name", "arch", "num_classes", "class_names", "input_size", "meta")
            },
            sha256="0" * 64,
            phase=None,
            size_bytes=1,
            storage_path=str(gone),
        )
        s.add(clone)
        s.flush()
        job.candidate_id = clone.id
    gone.unlink()  # removed from the store after the upload
    runner = EmbeddedRunner(ctx.settings, device="cpu", batch_size=4)
    try:
        runner.submit(job_id)
        assert runner.join(timeout=60)
    finally:
        runner.stop()
    job = job_row(ctx, job_id)
    assert job.status == "failed", job.error
    assert job.error.startswith(f"checkpoint:{clone.id}: "), job.error
    assert "/" not in job.error and "gone" not in job.error, "no server path"
    assert job.attempts <= 1


def test_a_failed_job_error_names_ids_and_the_log_keeps_the_paths(ctx, inputs, caplog) -> None:
    job_id = make_job(ctx, inputs)
    with session_scope(ctx.sessions) as s:
        dataset_id = s.get(Job, job_id).dataset_id
    maps = ctx.store.maps_dir(job_id) / "rows-000000-000003.npz"
    raw = f"OSError: cannot decode {inputs.data}/NORMAL/img1.png; {maps} is missing"
    with caplog.at_level("WARNING", logger="camdrift.jobs"):
        assert jobs.fail_job(ctx, job_id, raw)
    assert job_row(ctx, job_id).error == (
        f"OSError: cannot decode dataset:{dataset_id}/NORMAL/img1.png;"
        f" <store>/jobs/{job_id}/maps/rows-000000-000003.npz is missing"
    )
    assert str(inputs.data) in caplog.text and str(maps) in caplog.text, "operators see them"


# ------------------------------------------------------------------ real processes (services)


class PrivateRedis:
    """A redis-server of the test's own on a free port: stopped and started at will."""

    def __init__(self, folder: Path) -> None:
        self.port = free_port()
        self.folder = folder
        self.proc: subprocess.Popen | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        if shutil.which("redis-server") is None:
            skip_or_fail("redis-server is not installed")
        self.proc = subprocess.Popen(
            [
                "redis-server",
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.folder),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        import redis

        while time.monotonic() < deadline:
            try:
                if redis.Redis(port=self.port, socket_connect_timeout=0.5).ping():
                    return
            except redis.RedisError:
                time.sleep(0.1)
        raise AssertionError("private redis-server did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


@pytest.fixture
def private_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    server = PrivateRedis(tmp_path)
    server.start()
    yield server
    server.stop()


def _migrate(env: dict[str, str]) -> None:
    done = subprocess.run(
        camdrift_command("db", "upgrade"),
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr


@pytest.mark.services
def test_broker_outage_503_readyz_and_the_sweeper_requeues_lost_jobs(
    inputs, processes, private_redis, tmp_path
) -> None:
    env = {
        "CAMDRIFT_DATABASE_URL": f"sqlite:///{tmp_path}/camdrift.db",
        "CAMDRIFT_STORAGE": str(tmp_path / "storage"),
        "CAMDRIFT_BROKER_URL": private_redis.url,
    }
    _migrate(env)
    client = httpx.Client(base_url=processes.api(env), timeout=60)
    assert client.get("/readyz").json()["checks"] == {"database": "ok", "broker": "ok"}
    body = {**upload_inputs(client, inputs), **JOB}
    private_redis.stop()
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert ready.headers["content-type"].startswith("application/problem+json")
    assert ready.json()["checks"]["broker"].startswith("down")
    r = client.post("/drift-jobs", json=body)
    assert r.status_code == 503, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert "broker unavailable" in r.json()["detail"]
    job_id = r.json()["job_id"]
    job = client.get(f"/drift-jobs/{job_id}").json()
    assert job["status"] == "failed" and job["error"] == "broker unavailable"
    assert client.get("/drift-jobs", params={"status": "queued"}).json()["items"] == []
    private_redis.start()  # same port: the API recovers without a restart
    deadline = time.monotonic() + 30
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "readyz did not recover"
        time.sleep(0.5)
    r = client.post("/drift-jobs", json={**body, "max_samples": 6})
    assert r.status_code == 202, r.text
    location = r.headers["location"]
    assert client.get(location).json()["status"] == "queued"
    private_redis.stop()  # restarted without persistence: the queued message is lost
    private_redis.start()
    sweeping = {**env, "CAMDRIFT_SWEEP_INTERVAL_S": "1", "CAMDRIFT_SWEEP_QUEUED_AFTER_S": "2"}
    sweeping |= {"CAMDRIFT_DEVICE": "cpu"}
    worker = processes.celery_worker("w1", sweeping)
    status = _wait_finished(client, location.rsplit("/", 1)[1], timeout=120)
    assert status["status"] == "succeeded", status
    assert "sweeper: job still queued" in processes.log(worker)


@pytest.fixture
def deployment(inputs, processes, private_redis, tmp_path) -> Iterator[dict[str, Any]]:
    """A fresh Postgres database + private Redis + migrated schema + the API; no workers."""
    with fresh_postgres_database("camdrift_rel") as (db_url, name, conn):
        yield from _deployment(processes, private_redis, tmp_path, db_url, name, conn)


def _deployment(processes, private_redis, tmp_path, db_url, name, conn):
    env = {
        "CAMDRIFT_DATABASE_URL": db_url,
        "CAMDRIFT_BROKER_URL": private_redis.url,
        "CAMDRIFT_STORAGE": str(tmp_path / "storage"),
        "CAMDRIFT_SHARD_SIZE": "20",
        "CAMDRIFT_BATCH_SIZE": "1",
        "CAMDRIFT_DEVICE": "cpu",
        "CAMDRIFT_VISIBILITY_TIMEOUT_S": "3",
    }
    engine = None
    try:
        _migrate(env)
        engine = make_engine(db_url)
        yield {
            "env": env,
            "name": name,
            "admin": conn,
            "sessions": session_factory(engine),
            "base": processes.api(env),
        }
    finally:
        processes.stop_all()
        if engine is not None:
            engine.dispose()


def _submit(client: httpx.Client, inputs: Inputs) -> str:
    r = client.post("/drift-jobs", json={**upload_inputs(client, inputs), **JOB})
    assert r.status_code == 202, r.text
    return r.headers["location"].rsplit("/", 1)[1]


def _wait_mid_shard(sessions, job_id: str, timeout: float = 120.0) -> None:
    """Until the job has made progress inside its first shards but finished none."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with session_scope(sessions) as s:
            job = s.get(Job, job_id)
            done = s.scalar(
                select(func.count())
                .select_from(JobShard)
                .where(JobShard.job_id == job_id, JobShard.status == "done")
            )
        assert job.status in ("queued", "running"), job.error
        if job.status == "running" and job.progress_done >= 1 and done == 0:
            return
        assert done == 0, "a shard finished before the fault could be injected"
        time.sleep(0.05)
    raise AssertionError("the job made no progress")


def _wait_finished(client: httpx.Client, job_id: str, timeout: float = 150.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/drift-jobs/{job_id}").json()
        if status["status"] not in ("queued", "running"):
            return status
        time.sleep(0.5)
    raise AssertionError(f"job {job_id} did not finish: {status}")


def _check_exact(client, sessions, job_id: str, local_report) -> list[int]:
    """The report equals the uninterrupted one; one row per sample x method; shard attempts."""
    assert_reports_equal(local_report, client.get(f"/drift-jobs/{job_id}/report").json())
    with session_scope(sessions) as s:
        per_method = s.execute(
            select(SampleMetric.method, func.count(), func.count(func.distinct(SampleMetric.index)))
            .where(SampleMetric.job_id == job_id)
            .group_by(SampleMetric.method)
        ).all()
        assert sorted(per_method) == [("gradcam++", 40, 40), ("layercam", 40, 40)]
        n = s.scalar(select(func.count()).select_from(JobSample).where(JobSample.job_id == job_id))
        assert n == 40
        job = s.get(Job, job_id)
        assert job.shards_done == job.shards_total == 2
        assert job.progress_done == job.progress_total == 40
        return list(
            s.scalars(
                select(JobShard.attempts)
                .where(JobShard.job_id == job_id)
                .order_by(JobShard.shard_no)
            )
        )


@pytest.mark.services
def test_worker_killed_mid_shard_is_redelivered(
    inputs, processes, deployment, local_report
) -> None:
    env = {**deployment["env"], "CAMDRIFT_SWEEP_INTERVAL_S": "0"}  # the broker alone redelivers
    client = httpx.Client(base_url=deployment["base"], timeout=60)
    first = processes.celery_worker("w1", env)
    job_id = _submit(client, inputs)
    _wait_mid_shard(deployment["sessions"], job_id)
    os.killpg(first.pid, signal.SIGKILL)  # kill -9, mid-shard, message unacknowledged
    first.wait(timeout=10)
    processes.celery_worker("w2", env)
    status = _wait_finished(client, job_id)
    assert status["status"] == "succeeded", status
    attempts = _check_exact(client, deployment["sessions"], job_id, local_report)
    assert max(attempts) == 2, f"the killed shard ran again, once: {attempts}"


@pytest.mark.services
def test_database_restart_mid_job_recovers(inputs, processes, deployment, local_report) -> None:
    client = httpx.Client(base_url=deployment["base"], timeout=60)
    processes.celery_worker("w1", deployment["env"])
    job_id = _submit(client, inputs)
    _wait_mid_shard(deployment["sessions"], job_id)
    cur = deployment["admin"].cursor()
    cur.execute(  # every connection of the API, the worker and the test dies, as in a restart
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
        " WHERE datname = %s AND pid <> pg_backend_pid()",
        (deployment["name"],),
    )
    assert cur.fetchone()[0] >= 1
    assert client.get("/readyz").status_code == 200, "the API reconnects by itself"
    status = _wait_finished(client, job_id)
    assert status["status"] == "succeeded", status
    _check_exact(client, deployment["sessions"], job_id, local_report)
    with session_scope(deployment["sessions"]) as s:
        assert s.execute(text("SELECT 1")).scalar() == 1
