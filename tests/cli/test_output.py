"""The gate's verdict table: failing checks come first, so one rule's checks can appear in
several runs of rows; every run must name its rule."""

from __future__ import annotations

from rich.console import Console

from service.cli import output


def _check(name: str, cls: str, passed: bool) -> dict:
    return {
        "name": name,
        "metric": "pearson" if name == "pattern" else "iou_top20",
        "stat": "mean",
        "op": ">=",
        "value": 0.3,
        "method": "layercam",
        "class": cls,
        "n": 40,
        "observed": 0.5 if passed else 0.1,
        "passed": passed,
    }


def test_each_run_of_a_rules_checks_is_labelled(monkeypatch) -> None:
    console = Console(record=True, width=200)
    monkeypatch.setattr(output, "line_console", console)
    verdict = {
        "verdict": "fail",
        "reason": "2 of 3 checks failed",
        "n_included": 120,
        "min_samples": 30,
        "rules": [
            _check("pattern", "covid", False),
            _check("overlap", "normal", False),
            _check("pattern", "normal", True),
        ],
    }
    output.print_verdict(verdict)
    text = console.export_text()
    rows = [line for line in text.splitlines() if "layercam" in line]
    assert len(rows) == 3
    assert rows[0].lstrip().startswith("pattern")
    assert rows[1].lstrip().startswith("overlap")
    assert rows[2].lstrip().startswith("pattern"), rows[2]
