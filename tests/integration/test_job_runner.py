"""The job runner's promises, driven step by step on SQLite: shards, redelivery, cancel, poison."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select

from service import migrate
from training.checkpoint_format import sha256_file
from training.datasets import discover
from training.phantoms import CLASSES
from worker.runtime import jobs
from worker.store import Settings, session_scope
from worker.store.models import (
    Checkpoint,
    Dataset,
    Job,
    JobSample,
    JobShard,
    Report,
    SampleMetric,
)

pytestmark = pytest.mark.slow


class Recorder:
    """An enqueue that keeps the messages, so the test plays the broker."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, list[Any]]] = []

    def __call__(self, name: str, args: list[Any]) -> None:
        self.messages.append((name, list(args)))

    def take(self, name: str) -> list[list[Any]]:
        picked = [a for n, a in self.messages if n == name]
        self.messages = [(n, a) for n, a in self.messages if n != name]
        return picked


@pytest.fixture
def ctx(tmp_path: Path) -> jobs.WorkerContext:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/db.sqlite",
        storage=str(tmp_path / "store"),
        shard_size=10,
    )
    migrate.upgrade(settings)
    return jobs.WorkerContext.create(settings, Recorder(), device="cpu", batch_size=4)


def make_job(ctx: jobs.WorkerContext, inputs, **config: Any) -> str:
    """A queued job row over the shared checkpoint and dataset records (made on first use)."""
    with session_scope(ctx.sessions) as s:
        ids = []
        for path in (inputs.baseline, inputs.candidate):
            sha = sha256_file(path)
            record = s.scalar(select(Checkpoint).where(Checkpoint.sha256 == sha))
            if record is None:
                record = Checkpoint(
                    sha256=sha,
                    name=path.name,
                    arch="tinycnn",
                    num_classes=5,
                    class_names=list(CLASSES),
                    phase=None,
                    input_size=[64, 64],
                    meta={},
                    size_bytes=path.stat().st_size,
                    storage_path=str(path),
                )
                s.add(record)
                s.flush()
            ids.append(record.id)
        data = s.scalar(select(Dataset).where(Dataset.root_path == str(inputs.data)))
        if data is None:
            index = discover(inputs.data)
            data = Dataset(
                name="phantoms",
                source="path",
                root_path=str(inputs.data),
                num_samples=len(index.samples),
                class_names=index.class_names,
                class_counts=index.counts(),
                fingerprint=index.fingerprint(),
                skipped=[],
            )
            s.add(data)
            s.flush()
        body = {
            "methods": ["layercam", "gradcam++"],
            "sample_filter": "all",
            "split": None,
            "seed": 0,
            **config,
        }
        job = Job(
            baseline_id=ids[0],
            candidate_id=ids[1],
            dataset_id=data.id,
            config=body,
            request_hash="x",
        )
        s.add(job)
        s.flush()
        return job.id


def job_row(ctx: jobs.WorkerContext, job_id: str) -> Job:
    with session_scope(ctx.sessions) as s:
        return s.get(Job, job_id)


def counts(ctx: jobs.WorkerContext, job_id: str) -> tuple[int, int]:
    with session_scope(ctx.sessions) as s:
        samples = s.scalar(
            select(func.count()).select_from(JobSample).where(JobSample.job_id == job_id)
        )
        metrics = s.scalar(
            select(func.count()).select_from(SampleMetric).where(SampleMetric.job_id == job_id)
        )
    return samples, metrics


def test_redelivered_messages_change_nothing(ctx, inputs) -> None:
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    jobs.plan_job(ctx, job_id)  # redelivered plan: only re-sends unfinished shards
    shards = ctx.enqueue.take(jobs.SHARD)
    assert sorted(no for _, no in shards) == [0, 0, 1, 1, 2, 2, 3, 3]
    for job, no in shards:  # every shard delivered twice
        jobs.run_shard(ctx, job, no)
    assert counts(ctx, job_id) == (40, 80)
    assert job_row(ctx, job_id).shards_done == 4
    finals = ctx.enqueue.take(jobs.FINALIZE)
    assert finals == [[job_id]], "exactly one shard completes the set"
    jobs.finalize_job(ctx, job_id)
    jobs.finalize_job(ctx, job_id)
    job = job_row(ctx, job_id)
    assert job.status == "succeeded" and job.progress_done == job.progress_total == 40
    with session_scope(ctx.sessions) as s:
        assert s.scalar(select(func.count()).select_from(Report)) == 1
        config = s.get(Report, job_id).document["config"]
    # the results depend on the batch size at float precision: the report says which ran
    assert config["batch_size"] == ctx.batch_size == 4
    assert "device" not in config and "workers" not in config


def test_a_shard_run_twice_replaces_its_rows(ctx, inputs) -> None:
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    ctx.enqueue.take(jobs.SHARD)
    jobs.run_shard(ctx, job_id, 0)
    with session_scope(ctx.sessions) as s:  # as if the worker died before acknowledging
        s.get(JobShard, (job_id, 0)).status = "pending"
        s.get(Job, job_id).shards_done = 0
    jobs.run_shard(ctx, job_id, 0)
    assert counts(ctx, job_id) == (10, 20)
    assert job_row(ctx, job_id).shards_done == 1


def test_cancel_stops_a_running_job_between_batches(ctx, inputs, monkeypatch) -> None:
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    checks = {"n": 0}
    real = jobs._cancel_requested

    def cancel_after_first_batch(c, jid):
        checks["n"] += 1
        if checks["n"] == 2:  # the user cancels while the first batch is being computed
            with session_scope(c.sessions) as s:
                s.get(Job, jid).cancel_requested = True
        return real(c, jid)

    monkeypatch.setattr(jobs, "_cancel_requested", cancel_after_first_batch)
    jobs.run_shard(ctx, job_id, 0)
    job = job_row(ctx, job_id)
    assert job.status == "cancelled" and job.finished_at is not None
    assert job.progress_done == 4, "one batch of 4 ran, then it stopped"
    for _, no in ctx.enqueue.take(jobs.SHARD)[1:]:
        jobs.run_shard(ctx, job_id, no)  # later shards see the cancel and do nothing
    assert counts(ctx, job_id) == (0, 0)
    assert ctx.enqueue.take(jobs.FINALIZE) == []


def test_cancel_while_queued_is_never_started(ctx, inputs) -> None:
    job_id = make_job(ctx, inputs)
    with session_scope(ctx.sessions) as s:
        s.get(Job, job_id).cancel_requested = True
    jobs.plan_job(ctx, job_id)
    assert job_row(ctx, job_id).status == "cancelled"
    assert ctx.enqueue.messages == []


def test_poison_job_fails_with_its_reason_and_the_runner_goes_on(ctx, inputs) -> None:
    from worker.runtime.embedded import EmbeddedRunner
    from worker.runtime.metrics import REGISTRY

    def count(name: str, **labels: str) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    before = {
        "plan_failed": count("camdrift_worker_tasks_total", task=jobs.PLAN, outcome="failed"),
        "finalize_ok": count("camdrift_worker_tasks_total", task=jobs.FINALIZE, outcome="ok"),
        "samples": count("camdrift_worker_samples_total"),
        "shards": count("camdrift_worker_shard_seconds_count"),
        "batches": count("camdrift_worker_batch_seconds_count"),
    }
    bad = make_job(ctx, inputs, target_layer="net.nope")
    runner = EmbeddedRunner(ctx.settings, device="cpu", batch_size=8)
    try:
        runner.submit(bad)
        runner.join(timeout=60)
        job = job_row(ctx, bad)
        assert job.status == "failed" and "net.nope" in job.error
        assert not jobs.fail_job(ctx, bad, "again"), "a finished job keeps its outcome"
        good_id = make_job(ctx, inputs)
        runner.submit(good_id)
        runner.join(timeout=120)
        good = job_row(ctx, good_id)
        assert good.status == "succeeded"
        # the worker's Prometheus counters saw both jobs
        assert count("camdrift_worker_tasks_total", task=jobs.PLAN, outcome="failed") == (
            before["plan_failed"] + 1
        )
        assert count("camdrift_worker_tasks_total", task=jobs.FINALIZE, outcome="ok") == (
            before["finalize_ok"] + 1
        )
        assert count("camdrift_worker_samples_total") == before["samples"] + good.progress_total
        assert count("camdrift_worker_shard_seconds_count") == before["shards"] + good.shards_total
        # one latency per batch: shards of 10 samples in batches of 8 -> two batches a shard
        batches = count("camdrift_worker_batch_seconds_count") - before["batches"]
        assert batches == 2 * good.shards_total
        assert REGISTRY.get_sample_value("camdrift_worker_gpu_memory_peak_bytes") == 0.0  # CPU
    finally:
        runner.stop()


def test_a_folder_changed_since_registration_fails_the_job_not_its_shards(
    ctx, inputs, tmp_path
) -> None:
    """Shards take samples by position in the folder's listing, so every worker must list
    the registered folder alike: the changed folder registered again (a new fingerprint) is
    listed again instead of served from a worker's cache, and a worker that lists the
    folder afresh for a job on the old registration fails the job with the way out."""
    import shutil
    from dataclasses import replace

    data = tmp_path / "data"
    shutil.copytree(inputs.data, data)
    moved = replace(inputs, data=data)
    first = make_job(ctx, moved)
    jobs.plan_job(ctx, first)  # this worker's cache now holds the listing
    assert job_row(ctx, first).status == "running"
    manifest = data / "manifest.csv"
    lines = manifest.read_text().splitlines()
    path = lines[1].split(",")[0]
    shutil.copy(data / path, data / path.replace(".png", "_added.png"))
    added = ",".join([path.replace(".png", "_added.png"), *lines[1].split(",")[1:]])
    manifest.write_text("\n".join([*lines, added]) + "\n")

    def register(count: int, fingerprint: str) -> None:
        with session_scope(ctx.sessions) as s:
            record = s.scalar(select(Dataset).where(Dataset.root_path == str(data)))
            record.num_samples, record.fingerprint = count, fingerprint

    with session_scope(ctx.sessions) as s:
        old = s.scalar(select(Dataset).where(Dataset.root_path == str(data)))
        before = (old.num_samples, old.fingerprint)
    fresh = discover(data)
    register(len(fresh.samples), fresh.fingerprint())  # registered again
    second = make_job(ctx, moved, seed=1)
    jobs.plan_job(ctx, second)
    assert job_row(ctx, second).progress_total == len(fresh.samples) == before[0] + 1

    register(*before)  # a job on the old registration, on a worker that lists it now
    jobs._cached_index.cache_clear()
    third = make_job(ctx, moved, seed=2)
    with pytest.raises(jobs.JobFailed, match=r"changed since it was registered .* register it"):
        jobs.plan_job(ctx, third)


def test_every_log_line_of_a_shard_names_its_job_shard_and_attempt(ctx, inputs, caplog) -> None:
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    with caplog.at_level("DEBUG", logger="camdrift"):
        caplog.clear()
        jobs.run_shard(ctx, job_id, 0)
        with session_scope(ctx.sessions) as s:  # its worker died before acknowledging
            s.get(JobShard, (job_id, 0)).status = "pending"
            s.get(Job, job_id).shards_done = 0
        jobs.run_shard(ctx, job_id, 0)
    # the shard's lines are this thread's; another thread's (a sweeper) are not the shard's
    here = threading.get_ident()
    ours = [r for r in caplog.records if r.name.startswith("camdrift") and r.thread == here]
    assert [r.getMessage().split(" ")[:2] for r in ours] == [["shard", "done"]] * 2
    for record, attempt in zip(ours, ("1", "2"), strict=True):
        assert (record.job, record.shard, record.attempt) == (job_id, "0", attempt)
        assert record.getMessage().endswith(f"job={job_id} shard=0 attempt={attempt}")


def test_finalisation_reads_with_the_collector_paused_and_turns_it_back_on(
    ctx, inputs, monkeypatch
) -> None:
    """The finaliser's bulk read runs with the cyclic collector off; it is on again after a
    finalisation that succeeds and after one that fails, and stays off for a caller that had
    turned it off itself."""
    import gc

    seen: list[bool] = []
    real_load = jobs.stored_rows.load_table

    def load_table(*args: Any, **kw: Any):
        seen.append(gc.isenabled())
        return real_load(*args, **kw)

    monkeypatch.setattr(jobs.stored_rows, "load_table", load_table)
    assert gc.isenabled()
    _run_to_the_end(ctx, make_job(ctx, inputs))
    assert seen == [False] and gc.isenabled()

    def broken(*args: Any, **kw: Any):
        raise RuntimeError("the report broke")

    monkeypatch.setattr("worker.results.report.build_report", broken)
    failing = make_job(ctx, inputs)
    jobs.plan_job(ctx, failing)
    for job, no in ctx.enqueue.take(jobs.SHARD):
        jobs.run_shard(ctx, job, no)
    with pytest.raises(RuntimeError, match="the report broke"):
        jobs.finalize_job(ctx, failing)
    assert seen == [False, False] and gc.isenabled()
    gc.disable()
    try:
        with jobs.gc_paused():
            pass
        assert not gc.isenabled()
    finally:
        gc.enable()


def _run_to_the_end(ctx: jobs.WorkerContext, job_id: str) -> None:
    jobs.plan_job(ctx, job_id)
    for job, no in ctx.enqueue.take(jobs.SHARD):
        jobs.run_shard(ctx, job, no)
    for (job,) in ctx.enqueue.take(jobs.FINALIZE):
        jobs.finalize_job(ctx, job)


def test_a_job_with_an_mlflow_target_logs_its_verdict(ctx, inputs, tmp_path, monkeypatch) -> None:
    """The job's ``mlflow`` option: when it succeeds the worker logs the verdict, the checks'
    values and the report to a new run of the named experiment; a tracking server that fails
    costs a warning, not the job."""
    from tests.ci import require_module

    mlflow = require_module("mlflow")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    mlflow.set_tracking_uri(uri)
    mlflow.create_experiment("nightly", artifact_location=(tmp_path / "artifacts").as_uri())
    rule = {"method": "*", "metric": "pearson", "stat": "mean", "class": "*", "op": ">="}
    policy = {"min_samples": 1, "rule": [{**rule, "value": -1}]}
    job_id = make_job(ctx, inputs, policy=policy, mlflow={"experiment": "nightly"})
    _run_to_the_end(ctx, job_id)
    assert job_row(ctx, job_id).status == "succeeded"
    client = mlflow.tracking.MlflowClient()
    (run,) = client.search_runs([client.get_experiment_by_name("nightly").experiment_id])
    assert run.data.tags["camdrift.verdict"] == "pass" and run.data.metrics["camdrift.gate"] == 1
    with session_scope(ctx.sessions) as s:
        verdict = s.get(Report, job_id).document["verdict"]
    for check in verdict["rules"]:
        if check.get("metric") and check.get("observed") is not None:
            method = check["method"].replace("+", "_")  # MLflow's names take no "+"
            key = f"camdrift.{method}.pearson.{check['class']}.mean"
            assert run.data.metrics[key] == pytest.approx(check["observed"])
    assert {a.path for a in client.list_artifacts(run.info.run_id, "camdrift")} == {
        "camdrift/report.json"
    }

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # nothing listens
    mlflow.set_tracking_uri("http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    other = make_job(ctx, inputs, seed=1, mlflow={"experiment": "nightly"})
    _run_to_the_end(ctx, other)
    assert job_row(ctx, other).status == "succeeded"


@pytest.mark.parametrize(("every", "told"), [(3600.0, [4]), (0.0, [4, 4, 2])])
def test_progress_goes_to_sql_after_the_first_batch_then_at_most_every_interval(
    ctx, inputs, monkeypatch, every, told
) -> None:
    """A 10-sample shard in batches of 4: told after its first batch, then not again within
    the interval (every batch when it is 0); its end sets the progress to its rows."""
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    calls: list[int] = []
    real = jobs.state.add_progress

    def spy(session, jid, samples):
        calls.append(samples)
        real(session, jid, samples)

    monkeypatch.setattr(jobs.state, "add_progress", spy)
    monkeypatch.setattr(jobs, "PROGRESS_EVERY_S", every)
    jobs.run_shard(ctx, job_id, 0)
    assert calls == told
    assert job_row(ctx, job_id).progress_done == 10
