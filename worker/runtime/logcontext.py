"""Structured logs for a job's work: the job id, shard and attempt on every line of it.

The task bodies bind the fields (``with bound(job=..., shard=...)``, ``bind(attempt=...)``);
every record of a ``camdrift.*`` logger made while they are bound, by any module (the engine's
too), ends with them as ``key=value`` pairs and carries them as attributes (``record.job``...)
for a JSON formatter. Context variables keep them per thread (the embedded runner, the
heartbeat thread, API request threads) without passing them down. One line per event stays one
line: nothing here adds a line break.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

PREFIX = "camdrift"
_fields: ContextVar[tuple[tuple[str, str], ...]] = ContextVar("camdrift_log_fields", default=())
_installed: list[Any] = []  # the factory this module chained in, once per process


def fields() -> dict[str, str]:
    """The fields bound in this context."""
    return dict(_fields.get())


def _merged(values: dict[str, Any]) -> tuple[tuple[str, str], ...]:
    merged = dict(_fields.get())
    merged.update({key: str(value) for key, value in values.items() if value is not None})
    return tuple(merged.items())


@contextmanager
def bound(**values: Any) -> Iterator[None]:
    """Bind ``values`` to every log line in this block (restored after it)."""
    token = _fields.set(_merged(values))
    try:
        yield
    finally:
        _fields.reset(token)


def bind(**values: Any) -> None:
    """Add ``values`` to the fields bound by the enclosing :func:`bound` block."""
    _fields.set(_merged(values))


def _suffix(record: logging.LogRecord, pairs: tuple[tuple[str, str], ...]) -> None:
    for key, value in pairs:
        if not hasattr(record, key):  # never a LogRecord attribute of its own
            setattr(record, key, value)
    text = " ".join(f"{key}={value}" for key, value in pairs)
    if isinstance(record.msg, str):
        record.msg = f"{record.msg} {text.replace('%', '%%') if record.args else text}"


def install() -> None:
    """Chain a log record factory that appends the bound fields (idempotent)."""
    if _installed:
        return
    previous = logging.getLogRecordFactory()

    def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = previous(*args, **kwargs)
        pairs = _fields.get()
        if pairs and (record.name == PREFIX or record.name.startswith(PREFIX + ".")):
            _suffix(record, pairs)
        return record

    logging.setLogRecordFactory(factory)
    _installed.append(factory)
