"""The embedded runner: the same task bodies on a background thread, no broker.

``camdrift serve`` without ``CAMDRIFT_BROKER_URL`` uses it: one process, SQLite, no servers.
Jobs left queued or running by a previous process are picked up again at start, and the
sweeper (``worker.runtime.sweeper``) runs whenever the runner has been idle for its interval.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from worker.runtime import imports, jobs, logcontext
from worker.runtime import metrics as worker_metrics
from worker.runtime.sweeper import SweepPolicy, safe_sweep
from worker.store import Settings, session_scope, state

log = logging.getLogger("camdrift.embedded")


class EmbeddedRunner:
    """A FIFO of (task name, args) drained by one daemon thread."""

    def __init__(
        self, settings: Settings, device: str | None = None, batch_size: int | None = None
    ) -> None:
        """``device`` and ``batch_size`` default to the settings' (``CAMDRIFT_DEVICE``,
        ``CAMDRIFT_BATCH_SIZE``)."""
        self._queue: queue.Queue[tuple[str, list[Any]] | None] = queue.Queue()
        self.ctx = jobs.WorkerContext.create(
            settings,
            self.enqueue,
            device=device or settings.device,
            batch_size=batch_size or settings.batch_size,
        )
        self.sweep_policy = SweepPolicy.from_settings(settings)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="camdrift-runner", daemon=True)
        self._thread.start()

    def enqueue(self, name: str, args: list[Any]) -> None:
        self._queue.put((name, list(args)))

    def submit(self, job_id: str) -> None:
        self.enqueue(jobs.PLAN, [job_id])

    def resume_unfinished(self) -> int:
        """Re-plan jobs a previous process left queued or running (plans are idempotent)."""
        with session_scope(self.ctx.sessions) as s:
            ids = state.active_job_ids(s)
        for job_id in ids:
            self.submit(job_id)
        return len(ids)

    def join(self, timeout: float = 600.0) -> bool:
        """Wait until every task ran, including tasks that tasks enqueue; False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread after the task it runs now; queued tasks stay undone (their jobs'
        rows say what is left, and the next runner's ``resume_unfinished`` or the sweeper of
        another process picks them up)."""
        self._stopping.set()
        self._queue.put(None)
        self._thread.join(timeout=timeout)

    def _loop(self) -> None:
        bodies = {  # task name -> (body, what records its failure)
            jobs.PLAN: (jobs.plan_job, jobs.fail_job),
            jobs.SHARD: (jobs.run_shard, jobs.fail_job),
            jobs.FINALIZE: (jobs.finalize_job, jobs.fail_job),
            imports.IMPORT: (imports.import_checkpoint, imports.fail_import),
        }
        interval = self.sweep_policy.interval_s
        while True:
            try:
                item = self._queue.get(timeout=interval if interval > 0 else None)
            except queue.Empty:  # idle: look for jobs whose messages were lost
                safe_sweep(self.ctx, self.sweep_policy)
                continue
            if item is None or self._stopping.is_set():
                self._queue.task_done()
                break
            name, args = item
            try:
                self._run(name, *bodies[name], args)
            finally:
                self._queue.task_done()

    def _run(self, name: str, body, fail, args: list[Any]) -> None:
        """One task; whatever happens, the runner thread lives on for the next job."""
        shard = args[1] if name == jobs.SHARD else None
        with logcontext.bound(job=args[0], shard=shard):
            outcome = self._run_bound(body, args, fail)
        worker_metrics.TASKS.labels(name, outcome).inc()

    def _run_bound(self, body, args: list[Any], fail) -> str:
        outcome = "ok"
        try:
            try:
                body(self.ctx, *args)
            except jobs.JobFailed as exc:
                outcome = "failed"
                fail(self.ctx, args[0], str(exc))
            except Exception as exc:
                outcome = "crashed"
                log.exception("task crashed task=%s", body.__name__)
                fail(self.ctx, args[0], f"{type(exc).__name__}: {exc}")
        except Exception:  # e.g. the database itself is gone: log, keep the thread
            log.exception("could not record the task's failure")
        return outcome
