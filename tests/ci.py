"""One rule for optional test dependencies: skip on a laptop, fail under CI (``CI`` set).

CI must run every test; a missing tool or package there is a broken environment, not a
reason to skip. ``tests/service/conftest.py``'s ``require_service`` follows the same rule.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

import pytest


def under_ci() -> bool:
    """True when the environment variable ``CI`` is set (to anything but an empty string)."""
    return bool(os.environ.get("CI"))


def skip_or_fail(reason: str) -> None:
    """Skip the current test (or module, at import time) with ``reason``; under CI, fail."""
    if under_ci():
        pytest.fail(f"{reason}; CI must run this test (CI is set)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def require_module(name: str) -> ModuleType:
    """``pytest.importorskip`` that fails instead of skipping under CI; returns the module."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        reason = f"could not import {name!r}: {exc}"
    skip_or_fail(reason)  # outside the except block: no chained traceback in the report
    raise AssertionError("unreachable: skip_or_fail raises")
