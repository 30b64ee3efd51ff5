"""One progress display for every long command: a rich bar on a terminal, a structured log line
every few seconds when the output is not a terminal (CI logs get one line per interval, not a
flood of carriage returns).

Usage::

    with progress("drift", total=150, unit="img") as bar:
        for batch in batches:
            ...
            bar.advance(len(batch))
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import IO

PLAIN_EVERY_S = 10.0  # a plain line at most this often (and at the end)
log = logging.getLogger("camdrift.progress")


class Bar:
    """The handle a loop advances; ``total`` may be set once it is known."""

    def __init__(self, label: str, total: int | None, unit: str, stream: IO[str], tty: bool):
        self.label, self.total, self.unit = label, total, unit
        self.done = 0
        self.note = ""  # e.g. the running loss, shown after the counts
        self._stream, self._tty = stream, tty
        self._started = self._last = time.monotonic()
        self._rich = None
        self._task = None

    def advance(self, n: int = 1) -> None:
        self.done += n
        self._show()

    def set_note(self, note: str) -> None:
        self.note = note
        if self._rich is not None:
            self._rich.update(self._task, description=f"{self.label} {note}")

    def update(self, done: int, total: int | None = None) -> None:
        """Set the absolute count (callbacks that report ``done, total``)."""
        if total is not None:
            self.total = total
        self.done = done
        self._show()

    def _show(self, final: bool = False) -> None:
        if self._rich is not None:
            self._rich.update(self._task, completed=self.done, total=self.total)
            return
        now = time.monotonic()
        if final or now - self._last >= PLAIN_EVERY_S:
            self._last = now
            rate = self.done / max(now - self._started, 1e-9)
            log.info(
                "progress task=%r done=%d total=%s unit=%s rate=%.1f%s",
                self.label,
                self.done,
                self.total,
                self.unit,
                rate,
                f" {self.note}" if self.note else "",
            )


@contextmanager
def progress(
    label: str,
    total: int | None = None,
    unit: str = "it",
    *,
    enabled: bool = True,
    stream: IO[str] | None = None,
) -> Iterator[Bar]:
    """A progress display for one loop; ``enabled=False`` shows nothing."""
    stream = stream or sys.stderr
    tty = bool(getattr(stream, "isatty", lambda: False)())
    bar = Bar(label, total, unit, stream, tty)
    if not enabled:
        bar._show = lambda final=False: None  # type: ignore[method-assign]
        yield bar
        return
    if not tty:
        try:
            yield bar
        finally:
            bar._show(final=True)
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(unit),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(file=stream),
        transient=True,
    ) as rich_progress:
        bar._rich = rich_progress
        bar._task = rich_progress.add_task(label, total=total)
        yield bar
