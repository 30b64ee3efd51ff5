"""The randomisation ceiling: the baseline vs its randomised-top-layers copy, per sample, and
each drift's position on the floor (0) -> ceiling (1) scale in the report."""

from __future__ import annotations

import numpy as np
import pytest

from tests.builders import tiny_audit_inputs
from training.randomise import randomise_checkpoint
from worker.engine.audit import Audit, AuditConfig
from worker.results.ceiling import ceiling_section, scale_position
from worker.results.report_schema import validate_report
from worker.results.rows import RowTable
from worker.runtime.local_run import run_audit

CLASSES = ["a", "b"]


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    return tiny_audit_inputs(tmp_path_factory.mktemp("ceiling"), per_class=4, seed=3)


def _cfg(**kw) -> AuditConfig:
    return AuditConfig(sample_filter="all", split=None, batch_size=5, **kw)


def test_ceiling_rows_equal_an_audit_of_the_randomised_checkpoint(inputs, tmp_path) -> None:
    """The in-memory copy the engine builds is the checkpoint ``training.randomise`` writes:
    the ceiling series of one audit equals the drift of an audit against that file."""
    rows = Audit(
        inputs / "tl.safetensors", inputs / "ft.safetensors", inputs / "data", _cfg(ceiling="head")
    ).compute()
    randomised = tmp_path / "random.safetensors"
    randomise_checkpoint(inputs / "tl.safetensors", randomised, "head", seed=0)
    direct = Audit(inputs / "tl.safetensors", randomised, inputs / "data", _cfg()).compute()
    assert all(r["ceiling"] for r in rows)
    for row, twin in zip(rows, direct, strict=True):
        for method, values in row["ceiling"].items():
            for metric, value in values.items():
                want = twin["metrics"][method][metric]
                assert value == pytest.approx(want, abs=1e-6, nan_ok=True), (method, metric)
    # another layer choice is another model
    deeper = Audit(
        inputs / "tl.safetensors",
        inputs / "ft.safetensors",
        inputs / "data",
        _cfg(ceiling="head+1"),
    ).compute()
    pearson = [r["ceiling"]["layercam"]["pearson"] for r in rows]
    assert pearson != [r["ceiling"]["layercam"]["pearson"] for r in deeper]


def test_a_model_against_itself_sits_at_the_floor(inputs, tmp_path) -> None:
    report = run_audit(
        inputs / "tl.safetensors",
        inputs / "tl.safetensors",
        inputs / "data",
        _cfg(ceiling="head", metrics=["pearson", "displacement"]),
        tmp_path / "self.json",
    )
    validate_report(report)
    for method, per_metric in report["ceiling"].items():
        for metric, groups in per_metric.items():
            overall = groups["overall"]
            assert overall["floor_source"] == "identical maps"
            assert overall["separable"], (method, metric, overall)
            assert overall["position"] == pytest.approx(0.0, abs=1e-6), (method, metric)
    without = run_audit(
        inputs / "tl.safetensors",
        inputs / "ft.safetensors",
        inputs / "data",
        _cfg(metrics=["pearson"]),
        tmp_path / "plain.json",
    )
    assert without["ceiling"] is None


def _rows(drift, ceiling, floor=None, labels=(0, 0, 1, 1)) -> list[dict]:
    rows = []
    for i, label in enumerate(labels):
        row = {
            "index": i,
            "label": label,
            "included": True,
            "metrics": {"m": {k: v[i] for k, v in drift.items()}},
            "ceiling": {"m": {k: v[i] for k, v in ceiling.items()}},
        }
        if floor is not None:
            row["floor"] = {"m": {k: v[i] for k, v in floor.items()}}
        rows.append(row)
    return rows


def test_positions_equal_a_numpy_computation() -> None:
    drift = {
        "pearson": [0.8, 0.6, 0.4, 0.2],
        "displacement": [0.1, 0.2, 0.3, 0.1],
        "concentration_change": [-0.1, -0.3, 0.2, 0.4],
    }
    ceiling = {
        "pearson": [0.1, 0.0, 0.2, -0.1],
        "displacement": [0.5, 0.6, 0.4, 0.5],
        "concentration_change": [-0.8, -0.6, 0.9, 0.7],
    }
    floor = {
        "pearson": [0.95, 0.9, 0.97, 0.93],
        "displacement": [0.01, 0.02, 0.03, 0.02],
        "concentration_change": [0.01, -0.02, 0.0, 0.03],
    }
    metrics = list(drift)
    for with_floor in (False, True):
        rows = _rows(drift, ceiling, floor if with_floor else None)
        section = ceiling_section(RowTable.from_rows(rows), ["m"], metrics, CLASSES)
        for metric in metrics:
            for name, idx in (("overall", [0, 1, 2, 3]), ("a", [0, 1]), ("b", [2, 3])):
                d = np.mean(np.take(drift[metric], idx))
                c = np.mean(np.take(ceiling[metric], idx))
                f = (
                    np.mean(np.take(floor[metric], idx))
                    if with_floor
                    else (1.0 if metric == "pearson" else 0.0)
                )
                if metric == "concentration_change":  # a signed change: magnitudes
                    d, c, f = abs(d), abs(c), abs(f)
                got = section["m"][metric][name]
                assert got["n"] == len(idx)
                assert got["floor_source"] == ("noise floor" if with_floor else "identical maps")
                assert got["position"] == pytest.approx((d - f) / (c - f)), (metric, name)


def test_no_position_where_the_random_model_is_no_further_than_the_floor() -> None:
    # pearson: a ceiling above the floor is not beyond it in the drift direction (lower)
    assert scale_position("pearson", 0.5, 0.4, 0.6) == (None, False)
    assert scale_position("displacement", 0.1, 0.2, 0.2) == (None, False)
    position, separable = scale_position("displacement", 0.3, 0.1, 0.5)
    assert separable and position == pytest.approx(0.5)
    rows = _rows({"pearson": [0.5] * 4}, {"pearson": [1.0] * 4})
    entry = ceiling_section(RowTable.from_rows(rows), ["m"], ["pearson"], CLASSES)["m"]["pearson"]
    assert entry["overall"]["separable"] is False and entry["overall"]["position"] is None


def test_the_html_page_shows_the_scale(inputs, tmp_path) -> None:
    from worker.render.html_report import write_local_html

    report = tmp_path / "r.json"
    run_audit(
        inputs / "tl.safetensors",
        inputs / "ft.safetensors",
        inputs / "data",
        _cfg(ceiling="head", metrics=["pearson"]),
        report,
    )
    page = tmp_path / "r.html"
    write_local_html(report, page)
    text = page.read_text()
    assert 'id="ceiling"' in text and "Drift on the floor → random model scale" in text
    assert text.count("<tr><td>") >= 2 * 3  # two methods x (overall + two classes at least)
