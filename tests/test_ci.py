"""tests/ci.py: a missing optional dependency skips on a laptop and fails under CI."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed, Skipped

from tests.ci import require_module, skip_or_fail

MISSING = "camdrift_no_such_module_for_tests"


def test_skips_without_ci(monkeypatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(Skipped, match="chromium"):
        skip_or_fail("chromium is not installed")
    with pytest.raises(Skipped, match=MISSING):
        require_module(MISSING)


@pytest.mark.parametrize("value", ["1", "true"])
def test_fails_under_ci(monkeypatch, value: str) -> None:
    monkeypatch.setenv("CI", value)
    with pytest.raises(Failed, match="chromium"):
        skip_or_fail("chromium is not installed")
    with pytest.raises(Failed, match=MISSING):
        require_module(MISSING)


def test_an_empty_ci_variable_is_not_ci(monkeypatch) -> None:
    monkeypatch.setenv("CI", "")
    with pytest.raises(Skipped):
        skip_or_fail("x")


def test_present_module_is_returned(monkeypatch) -> None:
    monkeypatch.setenv("CI", "1")
    assert require_module("json").dumps([1]) == "[1]"
