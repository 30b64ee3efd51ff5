"""Lost shard messages recover in seconds, and a live shard is never duplicated (issue 15).

After a broker restart without persistence or a long database outage, shard messages are
gone; a killed worker's shard waits for the broker's visibility timeout. Heartbeats tell the
sweeper which pending shard still runs. The state is set directly in SQL (heartbeats and
``updated_at`` moved into the past) and the sweeper judged by the real clock; one test runs a
real shard on a thread with a fast heartbeat.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select, update

from tests.integration.test_job_runner import ctx, job_row, make_job
from tests.integration.test_reliability import (
    _submit,
    _wait_finished,
    _wait_mid_shard,
    deployment,
    private_redis,
)
from worker.runtime import jobs
from worker.runtime.sweeper import SweepPolicy, sweep
from worker.store import Settings, session_scope
from worker.store.models import Job, JobSample, JobShard, SampleMetric, utcnow

__all__ = ["ctx", "deployment", "private_redis"]  # fixtures, shared with the other files
pytestmark = pytest.mark.slow
# the defaults but for the stale window of the broker's visibility timeout (an hour)
POLICY = SweepPolicy(queued_after_s=300, stale_after_s=3660, interval_s=0, lost_after_s=30)
NOTHING = {"plan": 0, "shard": 0, "finalize": 0}


def _set(ctx: jobs.WorkerContext, job_id: str, **ages: float | None) -> None:
    """``updated=s``: the job was last touched ``s`` seconds ago; ``shard<n>=s``: that shard
    last beat ``s`` seconds ago (None: never started)."""
    now = utcnow()

    def ago(seconds: float | None):
        return None if seconds is None else now - timedelta(seconds=seconds)

    with session_scope(ctx.sessions) as s:
        for key, seconds in ages.items():
            if key == "updated":
                s.execute(update(Job).where(Job.id == job_id).values(updated_at=ago(seconds)))
            else:
                no = int(key.removeprefix("shard"))
                s.execute(
                    update(JobShard)
                    .where(JobShard.job_id == job_id, JobShard.shard_no == no)
                    .values(heartbeat_at=ago(seconds))
                )


def _beats(ctx: jobs.WorkerContext, job_id: str) -> list[Any]:
    with session_scope(ctx.sessions) as s:
        return list(
            s.scalars(
                select(JobShard.heartbeat_at)
                .where(JobShard.job_id == job_id)
                .order_by(JobShard.shard_no)
            )
        )


def _planned(ctx: jobs.WorkerContext, inputs) -> str:
    """A running job of 4 shards whose shard messages were all lost."""
    job_id = make_job(ctx, inputs)
    jobs.plan_job(ctx, job_id)
    assert len(ctx.enqueue.take(jobs.SHARD)) == 4
    return job_id


def test_an_idle_fleet_gets_lost_messages_again_within_the_window(ctx, inputs) -> None:
    job_id = _planned(ctx, inputs)  # e.g. the broker restarted empty right after the plan
    assert sweep(ctx, POLICY) == NOTHING, "just sent: its messages may be on their way"
    _set(ctx, job_id, updated=31)  # 31 s and no worker has started anything
    assert sweep(ctx, POLICY) == {"plan": 0, "shard": 4, "finalize": 0}
    assert sorted(no for _, no in ctx.enqueue.take(jobs.SHARD)) == [0, 1, 2, 3]
    assert sweep(ctx, POLICY) == NOTHING, "claimed: re-sent once per window"
    queued = make_job(ctx, inputs)  # its plan message lost too
    _set(ctx, queued, updated=31)
    assert sweep(ctx, POLICY)["plan"] == 1, "an idle fleet: 31 s, not queued_after_s (300 s)"
    assert ctx.enqueue.take(jobs.PLAN) == [[queued]]
    for no in range(4):
        jobs.run_shard(ctx, job_id, no)
    assert ctx.enqueue.take(jobs.FINALIZE) == [[job_id]]
    _set(ctx, job_id, updated=31)  # the finalisation message lost as well
    assert sweep(ctx, POLICY)["finalize"] == 1
    jobs.finalize_job(ctx, ctx.enqueue.take(jobs.FINALIZE)[0][0])
    assert job_row(ctx, job_id).status == "succeeded"


def test_a_silent_shard_is_resent_and_a_beating_one_never(ctx, inputs) -> None:
    job_id = _planned(ctx, inputs)
    # shard 0's worker was killed 100 s ago; shard 1 beat 5 s ago (a live worker, no progress
    # for 100 s: one long batch); shards 2 and 3 wait in the queue behind them
    _set(ctx, job_id, updated=100, shard0=100, shard1=5)
    assert sweep(ctx, POLICY) == {"plan": 0, "shard": 1, "finalize": 0}
    assert ctx.enqueue.take(jobs.SHARD) == [[job_id, 0]]
    assert _beats(ctx, job_id)[0] is None, "re-sent: waits for its message, as if unstarted"
    assert sweep(ctx, POLICY) == NOTHING, "a busy fleet: waiting messages are not duplicated"
    _set(ctx, job_id, shard1=31)  # now shard 1's worker went silent too: nothing runs
    assert sweep(ctx, POLICY) == {"plan": 0, "shard": 4, "finalize": 0}
    assert sorted(no for _, no in ctx.enqueue.take(jobs.SHARD)) == [0, 1, 2, 3]
    assert sweep(ctx, POLICY) == NOTHING


def test_a_redelivered_plan_leaves_a_beating_shard_alone(ctx, inputs) -> None:
    job_id = _planned(ctx, inputs)
    _set(ctx, job_id, shard0=1, shard1=100)  # shard 0 runs; shard 1's worker is gone
    jobs.plan_job(ctx, job_id)  # the plan delivered again (a sweep of a queued-looking job)
    assert sorted(no for _, no in ctx.enqueue.take(jobs.SHARD)) == [1, 2, 3]


def test_a_busy_fleet_leaves_waiting_shards_to_the_stale_window(ctx, inputs) -> None:
    busy = _planned(ctx, inputs)
    _set(ctx, busy, shard0=1)  # a worker runs shard 0 of this job
    waiting = _planned(ctx, inputs)
    _set(ctx, waiting, updated=600)  # queued behind it for 10 minutes
    assert sweep(ctx, POLICY) == NOTHING
    _set(ctx, waiting, updated=3661)
    assert sweep(ctx, POLICY) == {"plan": 0, "shard": 4, "finalize": 0}
    assert {tuple(m) for m in ctx.enqueue.take(jobs.SHARD)} == {(waiting, n) for n in range(4)}


def test_a_running_shard_beats_and_is_never_duplicated(ctx, inputs, monkeypatch) -> None:
    from worker.engine.audit import Audit

    fast = Settings(**{**ctx.settings.model_dump(), "shard_heartbeat_s": 0.05})
    monkeypatch.setattr(ctx, "settings", fast)
    policy = SweepPolicy(queued_after_s=0.3, stale_after_s=0.3, interval_s=0, lost_after_s=0.3)
    job_id = _planned(ctx, inputs)
    release = threading.Event()
    real_compute = Audit.compute

    def long_compute(self, *args: Any, **kw: Any):  # a model load longer than the window
        assert release.wait(60)
        return real_compute(self, *args, **kw)

    monkeypatch.setattr(Audit, "compute", long_compute)
    worker = threading.Thread(target=jobs.run_shard, args=(ctx, job_id, 0))
    worker.start()
    while _beats(ctx, job_id)[0] is None:  # until the worker started it
        assert worker.is_alive()
        time.sleep(0.01)
    seen, resent = set(), []
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:  # ~7 windows of the sweeper while shard 0 runs
        sweep(ctx, policy)
        resent += [no for _, no in ctx.enqueue.take(jobs.SHARD)]
        seen.add(_beats(ctx, job_id)[0])
        time.sleep(0.1)
    release.set()
    worker.join(timeout=120)
    assert 0 not in resent, "the live shard was duplicated"
    assert {1, 2, 3} <= set(resent), "the others were re-sent (stale window 0.3 s)"
    assert None not in seen and len(seen) >= 5, f"it beat all along: {len(seen)} beats seen"
    with session_scope(ctx.sessions) as s:
        shard = s.get(JobShard, (job_id, 0))
        assert (shard.status, shard.attempts) == ("done", 1)


@pytest.mark.services
def test_a_broker_restart_mid_job_recovers_in_seconds(
    inputs, processes, private_redis, deployment
) -> None:
    """Redis restarts without persistence while a worker runs shard 0: shard 1's message and
    shard 0's unacknowledged one are gone. With the stale window at an hour, heartbeats alone
    bring the job to its end."""
    env = {
        **deployment["env"],
        "CAMDRIFT_SWEEP_INTERVAL_S": "1",
        "CAMDRIFT_SWEEP_LOST_AFTER_S": "3",
        "CAMDRIFT_SHARD_HEARTBEAT_S": "0.5",
        "CAMDRIFT_SWEEP_STALE_AFTER_S": "3660",
        "CAMDRIFT_SWEEP_QUEUED_AFTER_S": "3660",
    }
    client = httpx.Client(base_url=deployment["base"], timeout=60)
    worker = processes.celery_worker("w1", env)
    job_id = _submit(client, inputs)
    _wait_mid_shard(deployment["sessions"], job_id)
    private_redis.stop()
    private_redis.start()  # same port, empty
    lost_at = time.monotonic()
    status = _wait_finished(client, job_id, timeout=150)
    recovered_s = time.monotonic() - lost_at
    assert status["status"] == "succeeded", status
    log = processes.log(worker)
    assert "sweeper:" in log, log[-3000:]
    with session_scope(deployment["sessions"]) as s:
        samples = s.scalar(
            select(func.count(func.distinct(JobSample.index))).where(JobSample.job_id == job_id)
        )
        rows = s.scalar(
            select(func.count()).select_from(JobSample).where(JobSample.job_id == job_id)
        )
        metrics = s.scalar(
            select(func.count()).select_from(SampleMetric).where(SampleMetric.job_id == job_id)
        )
        job = s.get(Job, job_id)
        assert (samples, rows, metrics) == (40, 40, 80)
        assert job.shards_done == job.shards_total == 2
    print(f"recovered {recovered_s:.1f} s after the broker restart")
