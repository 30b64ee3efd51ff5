"""Log fields bound to a job's work (``worker.runtime.logcontext``): every ``camdrift.*`` line
made inside the block ends with them, nothing outside it does."""

from __future__ import annotations

import logging
import threading

import pytest

from training.logs import FORMAT
from worker.runtime import logcontext


class Keep(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter(FORMAT))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self) -> list[str]:
        return [self.format(r) for r in self.records]


@pytest.fixture
def kept():
    logcontext.install()
    handler = Keep()
    loggers = [logging.getLogger(n) for n in ("camdrift", "celery.worker")]
    saved = [(lg.level, lg.propagate) for lg in loggers]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.INFO)
        lg.propagate = False
    yield handler
    for lg, (level, propagate) in zip(loggers, saved, strict=True):
        lg.removeHandler(handler)
        lg.setLevel(level)
        lg.propagate = propagate


def test_bound_fields_end_every_camdrift_line_in_the_block(kept) -> None:
    engine, jobs, other = (
        logging.getLogger(n) for n in ("camdrift.audit", "camdrift.jobs", "celery.worker")
    )
    with logcontext.bound(job="j1", shard=3):
        engine.info("batch done samples=%d rate=%s", 4, "50%")
        logcontext.bind(attempt=2)
        jobs.warning("100% done")
        other.info("not ours")
        seen_by_thread: list[dict[str, str]] = []
        thread = threading.Thread(target=lambda: seen_by_thread.append(logcontext.fields()))
        thread.start()
        thread.join()
    jobs.info("after")
    messages = [r.getMessage() for r in kept.records]
    assert messages == [
        "batch done samples=4 rate=50% job=j1 shard=3",
        "100% done job=j1 shard=3 attempt=2",
        "not ours",
        "after",
    ]
    assert (kept.records[1].job, kept.records[1].shard, kept.records[1].attempt) == ("j1", "3", "2")
    assert not hasattr(kept.records[3], "job")
    assert seen_by_thread == [{}], "another thread has its own fields"
    assert all("\n" not in line for line in kept.lines())
    assert kept.lines()[1].endswith("event=100% done job=j1 shard=3 attempt=2")


def test_a_block_restores_the_fields_it_found(kept) -> None:
    with logcontext.bound(job="outer"):
        with logcontext.bound(shard=1, job="inner"):
            assert logcontext.fields() == {"job": "inner", "shard": "1"}
        assert logcontext.fields() == {"job": "outer"}
    assert logcontext.fields() == {}


def test_installing_twice_appends_once(kept) -> None:
    logcontext.install()
    with logcontext.bound(job="j"):
        logging.getLogger("camdrift.x").info("once")
    assert kept.records[-1].getMessage() == "once job=j"
