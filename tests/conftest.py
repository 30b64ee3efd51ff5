"""Suite-wide isolation: a CLI command run in one test configures camdrift's loggers
(``training.logs.configure_logging``: own handler, no propagation); later tests that read logs
through pytest's ``caplog`` must not depend on which command ran before them.

The pristine state is taken once per session: a module-scoped fixture that runs a command is
set up before any function-scoped fixture, so a per-test snapshot would keep its changes."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

_Snapshot = tuple[list[logging.Handler], bool, int]


@pytest.fixture(scope="session")
def _camdrift_logging_pristine() -> _Snapshot:
    logger = logging.getLogger("camdrift")
    return list(logger.handlers), logger.propagate, logger.level


@pytest.fixture(autouse=True)
def _camdrift_logging_restored(_camdrift_logging_pristine: _Snapshot) -> Iterator[None]:
    handlers, propagate, level = _camdrift_logging_pristine
    logger = logging.getLogger("camdrift")
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level
