"""The one progress display: plain structured lines when the output is not a terminal."""

from __future__ import annotations

import io
import logging

import pytest

from training import progress as progress_module
from training.progress import progress


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


@pytest.fixture
def lines():
    """The progress logger's lines, whatever another test did to camdrift's log handlers."""
    logger = logging.getLogger("camdrift.progress")
    handler, level = _Lines(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield handler.lines
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_plain_lines_off_a_terminal(lines, monkeypatch) -> None:
    monkeypatch.setattr(progress_module, "PLAIN_EVERY_S", 0.0)  # a line per advance
    stream = io.StringIO()  # not a tty
    with progress("drift", total=3, unit="img", stream=stream) as bar:
        bar.advance(2)
        bar.set_note("loss=0.5")
        bar.advance(1)
    assert lines[0].startswith("progress task='drift' done=2 total=3 unit=img")
    assert "done=3 total=3" in lines[-1] and lines[-1].endswith("loss=0.5")
    assert "\r" not in stream.getvalue()  # nothing written to the stream: no bar, no flood


def test_an_interval_bounds_the_lines(lines) -> None:
    with progress("train", total=1000, stream=io.StringIO()) as bar:
        for _ in range(1000):
            bar.advance()
    assert len(lines) == 1 and "done=1000" in lines[0]  # only the final line


def test_disabled_shows_nothing(lines) -> None:
    with progress("x", total=2, enabled=False, stream=io.StringIO()) as bar:
        bar.update(2, 2)
    assert not lines
    assert bar.done == 2


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_terminal_gets_a_rich_bar() -> None:
    stream = _Tty()
    with progress("phantoms", total=4, unit="img", stream=stream) as bar:
        bar.update(4)
        assert bar._rich is not None
    assert bar.done == 4


@pytest.mark.parametrize("total", [None, 5])
def test_unknown_total_is_fine(total, lines) -> None:
    with progress("y", total=total, stream=io.StringIO()) as bar:
        bar.advance(5)
    assert f"total={total}" in lines[-1]
