"""A running shard's heartbeat: its worker renews ``job_shards.heartbeat_at`` every few seconds.

The sweeper (``worker.runtime.sweeper``) re-sends a pending shard whose heartbeat stopped, so a
shard lost with its worker or its message runs again within seconds, and never one that still
beats. The beat runs on a daemon thread (a batch or a model load may take longer than the
window) and also between batches (``worker.runtime.jobs``); it dies with the process, which is
the point: a worker killed -9 or by the hard time limit stops beating.
"""

from __future__ import annotations

import contextvars
import logging
import threading
from collections.abc import Callable
from types import TracebackType

log = logging.getLogger("camdrift.heartbeat")


class Heartbeat:
    """``with Heartbeat(beat, interval):`` calls ``beat()`` every ``interval`` seconds inside
    the block (never when ``interval`` is 0); a failing beat (database away) is logged and the
    next one tried."""

    def __init__(self, beat: Callable[[], object], interval: float) -> None:
        self.beat = beat
        self.interval = interval
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.beats = 0

    def __enter__(self) -> Heartbeat:
        if self.interval > 0:
            context = contextvars.copy_context()  # the shard's log fields
            self._thread = threading.Thread(
                target=context.run, args=(self._loop,), name="camdrift-heartbeat", daemon=True
            )
            self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.beat()
                self.beats += 1
            except Exception as exc:
                log.warning("heartbeat failed error=%r", str(exc)[:200])
