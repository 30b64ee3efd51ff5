"""The markdown summaries: a drift report with its noise floor and gate verdict, and a study."""

from __future__ import annotations

import numpy as np
import pytest

from tests.render.test_html_report import synthetic
from tests.results.test_study import make_entry, scipy_means
from worker.render.markdown import render_markdown, render_study_markdown
from worker.results.study import study_report


def _floor_row(rows: list[dict], method: str, metric: str, key: str = "floor") -> str:
    """The table row the summary should hold, computed from the rows by numpy alone."""
    kept = [r for r in rows if r["included"]]
    floor = np.array([r[key][method][metric] for r in kept])
    drift = np.array([r["metrics"][method][metric] for r in kept])
    if metric in ("iou_top20", "pearson"):  # similarities: drift is the low side
        threshold = np.quantile(floor, 0.05)
        share = np.mean(drift < threshold)
    else:
        threshold = np.quantile(np.abs(floor), 0.95)
        share = np.mean(np.abs(drift) > threshold)
    return f"| {method} | {metric} | {np.median(floor):.3f} | {threshold:.3f} | {share:.0%} |"


def test_the_summary_has_the_noise_floor_when_the_audit_measured_one() -> None:
    report, rows = synthetic(["a", "b", "c"], n=60, floor=True)
    text = render_markdown(report)
    assert "### Noise floor" in text and "vs perturbed baseline:" in text
    assert "vs baseline replica" not in text  # only the floors measured
    lines = text.splitlines()
    for method in ("layercam", "gradcam++"):
        for metric in ("iou_top20", "displacement", "pearson", "concentration_change"):
            assert _floor_row(rows, method, metric) in lines, (method, metric)
    # the section sits after the drift table, before nothing else
    assert text.index("### Drift") < text.index("### Noise floor")
    plain, _ = synthetic(["a", "b", "c"], n=60)
    assert "Noise floor" not in render_markdown(plain)


def test_the_summary_lists_failed_checks_first() -> None:
    report, _ = synthetic(["a", "b"])
    check = {"method": "layercam", "stat": "mean", "class": "overall", "op": ">=", "n": 9}
    verdict = {
        "verdict": "fail",
        "reason": "1 of 2 checks failed",
        "rules": [
            {
                **check,
                "name": "kept",
                "metric": "pearson",
                "value": 0.3,
                "observed": 0.6,
                "passed": True,
                "reason": "",
            },
            {
                **check,
                "name": "overlap",
                "metric": "iou_top20",
                "value": 0.5,
                "observed": 0.2,
                "passed": False,
                "reason": "",
            },
        ],
    }
    text = render_markdown(report, verdict)
    assert "**Gate: FAIL** — 1 of 2 checks failed" in text
    assert text.index("| overlap<br>") < text.index("| kept<br>")
    assert "| 0.200 | >= 0.5 | **FAIL** |" in text


@pytest.fixture(scope="module")
def study() -> tuple[list[dict], dict]:
    entries = [make_entry(name) for name in "ABC"]
    return entries, study_report(entries, n_boot=300, seed=1)


def test_the_study_summary_has_rankings_tau_and_reversals(study) -> None:
    entries, document = study
    text = render_study_markdown({**document, "name": "archs | v2", "study_id": "s1"})
    assert text.startswith("## camdrift study — archs \\| v2 (`s1`)\n")
    assert "3 model pairs on 108 common samples" in text
    lines = text.splitlines()
    # the rankings' means: the scipy oracle of tests/results/test_study.py
    layer = scipy_means(entries, "layercam", "pearson")
    gradpp = scipy_means(entries, "gradcam++", "pearson")
    assert (
        f"| pearson | higher mean | A ({layer[0]:.3f}) > B ({layer[1]:.3f}) > C ({layer[2]:.3f}) "
        f"| C ({gradpp[2]:.3f}) > B ({gradpp[1]:.3f}) > A ({gradpp[0]:.3f}) |"
    ) in lines
    disp = [line for line in lines if line.startswith("| displacement | lower mean |")]
    ent = [line for line in lines if line.startswith("| entropy_change | lower mean absolute")]
    assert len(disp) == 1 and len(ent) == 1
    assert "| pearson | layercam vs gradcam++ | -1.000 |" in text
    # the sure reversal in bold, the noisy one not
    assert any(
        line.startswith("| pearson | A / C |") and line.endswith("| **1.00** |") for line in lines
    )
    noisy = next(line for line in lines if line.startswith("| displacement | A / B |"))
    assert "**" not in noisy


def test_a_study_without_reversals_says_so(study) -> None:
    _, document = study
    assert "No ranking reversals." in render_study_markdown({**document, "reversals": []})
    assert "No ranking reversals." not in render_study_markdown(document)
