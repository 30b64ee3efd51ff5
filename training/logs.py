"""Structured logs: one line per event, ``key=value`` pairs a log shipper can parse."""

from __future__ import annotations

import logging
import sys
import time

FORMAT = "ts=%(asctime)s level=%(levelname)s logger=%(name)s event=%(message)s"


class _UTCFormatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        return super().format(record).replace("\n", " | ")


def configure_logging(level: str = "info") -> None:
    """Route camdrift's loggers to stderr in one-line ``key=value`` form."""
    name = level.upper()
    if name not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError(f"log level: unknown {level!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_UTCFormatter(FORMAT, "%Y-%m-%dT%H:%M:%SZ"))
    root = logging.getLogger("camdrift")
    root.handlers[:] = [handler]
    root.setLevel(name)
    root.propagate = False
