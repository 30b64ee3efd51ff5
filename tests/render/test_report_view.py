"""Reading a report as its model: a valid report validates as it is (extras kept), a partial
document reads as far as it goes, and the renderers read it through :func:`report_view`."""

from __future__ import annotations

import copy

import pytest
from pydantic import ValidationError

from tests.render.test_html_report import synthetic
from worker.results.gate.evaluate import evaluate_policy
from worker.results.gate.policy import Policy
from worker.results.report_schema import (
    DriftReport,
    Stats,
    Verdict,
    read_model,
    report_view,
    validate_report,
)


def _gated() -> dict:
    report, _ = synthetic(["a", "b", "c"], n=36, floor=True)
    policy = Policy.model_validate(
        {
            "min_samples": 3,
            "rule": [
                {"method": "*", "metric": "iou_top20", "stat": "mean", "op": ">=", "value": 0.5},
                {
                    "method": "layercam",
                    "metric": "pearson",
                    "stat": "beyond_floor",
                    "op": "<=",
                    "value": 0.5,
                },
            ],
        }
    )
    report["verdict"] = evaluate_policy(report, policy)
    return report


def test_a_built_report_with_the_gates_verdict_validates_strictly() -> None:
    report = _gated()
    model = validate_report(report)
    assert report_view(report) == model
    verdict = report["verdict"]
    assert isinstance(model.verdict, Verdict) and model.verdict.verdict == verdict["verdict"]
    assert [c.class_ for c in model.verdict.rules] == [c["class"] for c in verdict["rules"]]
    assert [c.passed for c in model.verdict.rules] == [c["passed"] for c in verdict["rules"]]
    assert model.verdict.counts.checks == len(verdict["rules"])
    assert model.noise_floor["layercam"]["pearson"].beyond_floor == pytest.approx(
        report["noise_floor"]["layercam"]["pearson"]["beyond_floor"]
    )
    # the verdict's order: failed, undecided, passed
    ranks = [{False: 0, None: 1, True: 2}[c.passed] for c in model.verdict.ordered()]
    assert ranks == sorted(ranks)


def test_old_and_extended_reports_validate_and_keep_what_they_add() -> None:
    report = _gated()
    old = copy.deepcopy(report)
    for key in ("counts", "policy", "min_class_samples", "undecided_classes"):
        old["verdict"].pop(key, None)
    validate_report(old)  # a verdict as an older gate wrote it
    new = copy.deepcopy(report)
    new["shortcut_clusters"] = {"layercam": {"a": 0.4}}  # a section this schema does not know
    new["verdict"]["rules"][0]["min_class_samples"] = 5  # a key a newer gate adds
    new["summaries"]["layercam"]["lesion_mass_change"] = new["summaries"]["layercam"]["pearson"]
    model = validate_report(new)
    assert model.model_extra == {"shortcut_clusters": {"layercam": {"a": 0.4}}}
    assert model.verdict.rules[0].model_extra == {"min_class_samples": 5}
    assert "lesion_mass_change" in model.summaries["layercam"]
    with pytest.raises(ValidationError):
        validate_report({**report, "verdict": {**report["verdict"], "verdict": "maybe"}})
    with pytest.raises(ValidationError):
        validate_report({**report, "subsets": {**report["subsets"], "evaluated": "many"}})


def test_a_partial_document_reads_as_far_as_it_goes() -> None:
    doc = {
        "models": {"baseline": {"arch": "tinycnn", "name": "tl-1"}, "ghost": {"arch": "x"}},
        "subsets": {"evaluated": "many", "included": 4},
        "summaries": {"layercam": {"pearson": {"overall": {"mean": 0.5, "n": 4}}}},
        "verdict": {"verdict": "fail", "rules": [{"method": "layercam", "passed": False}]},
        "trajectory": None,
        "shortcut_clusters": [1, 2],
    }
    with pytest.raises(ValidationError):
        DriftReport.model_validate(doc)
    view = report_view(doc)
    assert view.subsets.evaluated is None and view.subsets.included == 4
    assert view.subsets.per_class == {} and view.config.methods == []
    assert list(view.models) == ["baseline"]  # a role the schema does not name is dropped
    baseline = view.models["baseline"]
    assert baseline.arch == "tinycnn" and baseline.sha256 is None
    assert baseline.model_extra == {"name": "tl-1"}
    cell = view.summaries["layercam"]["pearson"]["overall"]
    assert isinstance(cell, Stats) and (cell.mean, cell.n, cell.median) == (0.5, 4, None)
    check = view.verdict.rules[0]
    assert check.passed is False and check.metric is None and view.verdict.failed() == [check]
    assert view.trajectory is None and view.noise_floor is None
    assert view.model_extra == {"shortcut_clusters": [1, 2]}
    assert read_model(Verdict, {"something": "else"}).verdict is None
    assert read_model(Stats, "not a dict").mean is None
