"""A shard delivered twice, both copies running at once, is harmless (issue 15, item 4).

Celery's at-least-once delivery and the sweeper's re-send both produce it. The two copies run
on threads against a real Postgres (and SQLite) through the Celery task wrapper's own error
handling (``worker.runtime.tasks._run``), lined up so that both store the shard at the same
moment: the job must end ``succeeded`` with every row once and the report of a single run.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
from sqlalchemy import func, select

from service import migrate
from tests.integration.conftest import assert_reports_equal
from tests.integration.test_job_runner import Recorder, counts, job_row, make_job
from tests.service.conftest import fresh_postgres_database
from worker.runtime import jobs
from worker.store import Settings, get_settings, session_scope
from worker.store import rows as stored_rows
from worker.store.models import JobSample, Report, SampleMetric

pytestmark = pytest.mark.slow
STORE_PAUSE_S = 0.5  # a copy holds its written, uncommitted rows this long before committing


def _context(url: str, tmp_path: Path) -> jobs.WorkerContext:
    settings = Settings(database_url=url, storage=str(tmp_path / "store"), shard_size=10)
    migrate.upgrade(settings)
    return jobs.WorkerContext.create(settings, Recorder(), device="cpu", batch_size=4)


@pytest.fixture(params=["sqlite", "postgres"])
def any_ctx(request, tmp_path: Path) -> Iterator[jobs.WorkerContext]:
    if request.param == "sqlite":
        ctx = _context(f"sqlite:///{tmp_path}/db.sqlite", tmp_path)
        yield ctx
        ctx.sessions.kw["bind"].dispose()
        return
    with fresh_postgres_database("camdrift_dup") as (url, _name, _conn):
        ctx = _context(url, tmp_path)
        try:
            yield ctx
        finally:
            ctx.sessions.kw["bind"].dispose()


@pytest.fixture
def tasks(monkeypatch, any_ctx):
    """The Celery task module, its worker context replaced by the test's."""
    monkeypatch.setenv("CAMDRIFT_BROKER_URL", "redis://127.0.0.1:1/0")  # never connected to
    get_settings.cache_clear()
    from worker.runtime import tasks as module

    get_settings.cache_clear()
    monkeypatch.setattr(module, "_context", any_ctx)
    yield module
    get_settings.cache_clear()


def _deliver(tasks, ctx: jobs.WorkerContext, job_id: str, shard_no: int) -> None:
    """One delivery of a ``run_shard`` message, as a Celery worker runs it (no retry left)."""
    task = SimpleNamespace(name=jobs.SHARD, request=SimpleNamespace(retries=5), max_retries=5)
    tasks._run(task, job_id, lambda: jobs.run_shard(ctx, job_id, shard_no))


def _single_run_report(ctx: jobs.WorkerContext, inputs) -> dict[str, Any]:
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    for job, no in ctx.enqueue.take(jobs.SHARD):
        jobs.run_shard(ctx, job, no)
    for (job,) in ctx.enqueue.take(jobs.FINALIZE):
        jobs.finalize_job(ctx, job)
    with session_scope(ctx.sessions) as s:
        return s.get(Report, job_id).document


def test_two_copies_of_a_shard_at_once_are_harmless(any_ctx, tasks, inputs, monkeypatch) -> None:
    ctx = any_ctx
    reference = _single_run_report(ctx, inputs)
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    shards = ctx.enqueue.take(jobs.SHARD)
    # both copies computed their rows; they store them at the same moment
    both_computed = threading.Barrier(2, timeout=60)
    real_store, real_replace = jobs._store_shard, stored_rows.replace_rows

    def store_together(*args: Any) -> bool:
        if args[2] == 0:
            both_computed.wait()
        return real_store(*args)

    def replace_slowly(*args: Any, **kw: Any) -> int:
        written = real_replace(*args, **kw)
        time.sleep(STORE_PAUSE_S)  # the other copy writes meanwhile
        return written

    monkeypatch.setattr(jobs, "_store_shard", store_together)
    monkeypatch.setattr(stored_rows, "replace_rows", replace_slowly)
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            _deliver(tasks, ctx, job_id, 0)
        except BaseException as exc:  # pragma: no cover - reported by the assertion below
            errors.append(exc)

    copies = [threading.Thread(target=copy) for _ in range(2)]
    for thread in copies:
        thread.start()
    for thread in copies:
        thread.join(timeout=120)
    assert not errors, errors
    job = job_row(ctx, job_id)
    assert job.status == "running", job.error
    assert job.shards_done == 1 and job.progress_done == 10
    for job_, no in shards[1:]:
        _deliver(tasks, ctx, job_, no)
    assert ctx.enqueue.take(jobs.FINALIZE) == [[job_id]], "one copy completed the set"
    jobs.finalize_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert job.status == "succeeded", job.error
    assert job.shards_done == job.shards_total == 4
    assert counts(ctx, job_id) == (40, 80)
    with session_scope(ctx.sessions) as s:
        distinct = s.scalar(
            select(func.count(func.distinct(JobSample.index))).where(JobSample.job_id == job_id)
        )
        per_method = s.execute(
            select(SampleMetric.method, func.count(func.distinct(SampleMetric.index)))
            .where(SampleMetric.job_id == job_id)
            .group_by(SampleMetric.method)
        ).all()
        report = s.get(Report, job_id).document
    assert distinct == 40, "each sample exactly once"
    assert sorted(per_method) == [("gradcam++", 40), ("layercam", 40)]
    assert_reports_equal(reference, report)


def test_raw_maps_written_by_two_copies_at_once(tmp_path, monkeypatch) -> None:
    """Both copies save the maps of the same rows; each must finish with a complete file."""
    from worker.engine import audit

    maps = {"layercam": torch.rand(3, 4, 4) + 0.01}
    results = [SimpleNamespace(raw=maps), SimpleNamespace(raw={"layercam": maps["layercam"] * 2})]
    keep = torch.tensor([True, False, True])
    both_written = threading.Barrier(2, timeout=30)
    real_save = np.savez_compressed

    def save_then_wait(file: Any, **arrays: Any) -> None:
        real_save(file, **arrays)
        both_written.wait()  # neither has renamed its temp file yet

    monkeypatch.setattr(np, "savez_compressed", save_then_wait)
    errors: list[BaseException] = []

    def copy() -> None:
        try:
            audit._save_raw_maps(tmp_path, [7, 9], results, keep, ["layercam"])
        except BaseException as exc:
            errors.append(exc)

    copies = [threading.Thread(target=copy) for _ in range(2)]
    for thread in copies:
        thread.start()
    for thread in copies:
        thread.join(timeout=60)
    assert not errors, errors
    assert [p.name for p in tmp_path.iterdir()] == ["rows-000007-000009.npz"], "no temp left"
    with np.load(tmp_path / "rows-000007-000009.npz") as data:
        assert data["rows"].tolist() == [7, 9]
        expected = maps["layercam"][keep] / maps["layercam"][keep].amax(dim=(1, 2), keepdim=True)
        np.testing.assert_allclose(data["baseline__layercam"], expected.numpy(), atol=1e-3)
