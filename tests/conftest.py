"""Suite-wide isolation: a CLI command run in one test configures camdrift's loggers
(``training.logs.configure_logging``: own handler, no propagation); later tests that read logs
through pytest's ``caplog`` must not depend on which command ran before them."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def _camdrift_logging_restored() -> Iterator[None]:
    logger = logging.getLogger("camdrift")
    handlers, propagate, level = list(logger.handlers), logger.propagate, logger.level
    yield
    logger.handlers[:] = handlers
    logger.propagate, logger.level = propagate, level
