"""Trajectories: drift along baseline -> intermediate checkpoints -> candidate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.builders import tiny_audit_inputs
from training.checkpoints import load_checkpoint, model_metadata, save_checkpoint
from training.evaluation import classification_metrics
from training.phantoms import CLASSES
from worker.engine.attribution import attribute
from worker.engine.audit import Audit, AuditConfig, config_dict, describe_dataset, describe_model
from worker.engine.metrics import drift_metrics
from worker.render.html_report import render_html
from worker.render.markdown import render_markdown
from worker.results.report import build_report
from worker.results.report_schema import validate_report
from worker.results.stats import summarize
from worker.results.trajectory import sharpest_step
from worker.store.models import JobSample, SampleMetric
from worker.store.rows import records_from_row, row_from_records

STEPS = (1 / 3, 2 / 3)  # the intermediates: weights interpolated between TL and FT


def interpolated(root, t: float, name: str):
    """A checkpoint whose weights lie at ``t`` on the line from TL to FT: a stand-in for a
    per-epoch checkpoint of a fine-tune that moves steadily."""
    tl, meta = load_checkpoint(root / "tl.safetensors")
    ft, _ = load_checkpoint(root / "ft.safetensors")
    target = ft.state_dict()
    mixed = {
        k: torch.lerp(v, target[k], t) if v.is_floating_point() else v
        for k, v in tl.state_dict().items()
    }
    tl.load_state_dict(mixed)
    path = root / f"{name}.safetensors"
    save_checkpoint(
        path,
        tl,
        model_metadata(tl, list(CLASSES), phase=name, input_size=meta["input_size"]),
    )
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tiny_audit_inputs(tmp_path_factory.mktemp("trajectory"), per_class=4, seed=3)
    steps = [interpolated(root, t, f"ft-epoch{i}") for i, t in enumerate(STEPS, start=1)]
    return root, steps


def make_audit(inputs, sample_filter: str = "all", **kw) -> Audit:
    root, steps = inputs
    cfg = AuditConfig(sample_filter=sample_filter, split=None, **kw)
    return Audit(
        root / "tl.safetensors", root / "ft.safetensors", root / "data", cfg, trajectory=steps
    )


def sequence_maps(audit: Audit, labels: torch.Tensor | None):
    """Every checkpoint's maps of all evaluated images, computed independently."""
    images = torch.cat([batch[0] for batch in audit._loader(list(range(audit.total)))])
    models = [audit.baseline, *audit.trajectory, audit.candidate]
    maps = [attribute(m.model, m.prepare(images), labels, audit.config.methods) for m in models]
    probs = [torch.softmax(m.model(m.prepare(images)), 1).detach().numpy() for m in models]
    return maps, probs


def column(rows, method: str, kind: str, step: int, metric: str) -> np.ndarray:
    values = [r["trajectory"][method][kind][step][metric] for r in rows]
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def test_rows_equal_an_independent_computation(inputs) -> None:
    audit = make_audit(inputs, batch_size=5)
    rows = audit.compute()
    labels = torch.tensor([r["label"] for r in rows])
    maps, probs = sequence_maps(audit, labels)
    n = len(maps) - 1
    for method in audit.config.methods:
        for step in range(n):
            pairs = {"from_first": (0, step + 1), "consecutive": (step, step + 1)}
            for kind, (a, b) in pairs.items():
                expected = drift_metrics(maps[a][method], maps[b][method])
                for name, values in expected.items():
                    got = column(rows, method, kind, step, name)
                    np.testing.assert_allclose(got, values.numpy(), atol=1e-5, equal_nan=True)
    for k in range(1, n):
        got = np.array([r["probs_trajectory"][k - 1] for r in rows])
        np.testing.assert_allclose(got, probs[k], atol=1e-5)


def test_the_ends_agree_with_the_pair_metrics(inputs) -> None:
    rows = make_audit(inputs).compute()
    for r in rows:
        for method, series in r["trajectory"].items():
            assert len(series["from_first"]) == len(series["consecutive"]) == len(STEPS) + 1
            assert series["from_first"][-1] == r["metrics"][method]
            assert series["consecutive"][0] == series["from_first"][0]


def test_own_prediction_targets(inputs) -> None:
    """``predicted``: every checkpoint's map explains its own prediction."""
    audit = make_audit(inputs, sample_filter="predicted")
    rows = audit.compute()
    maps, _ = sequence_maps(audit, None)
    expected = drift_metrics(maps[1]["layercam"], maps[2]["layercam"])
    got = column(rows, "layercam", "consecutive", 1, "pearson")
    np.testing.assert_allclose(got, expected["pearson"].numpy(), atol=1e-5, equal_nan=True)


def test_excluded_samples_carry_probabilities_but_no_trajectory(inputs) -> None:
    rows = make_audit(inputs, sample_filter="true_positive").compute()
    assert any(r["included"] for r in rows) and not all(r["included"] for r in rows)
    for r in rows:
        assert len(r["probs_trajectory"]) == len(STEPS)
        assert ("trajectory" in r) == r["included"]


def test_sharding_and_batching_do_not_change_the_rows(inputs) -> None:
    whole = make_audit(inputs, batch_size=32).compute()
    parts = make_audit(inputs, batch_size=3).compute(range(0, 7))
    parts += make_audit(inputs, batch_size=4).compute(range(7, len(whole)))
    for a, b in zip(whole, parts, strict=True):
        np.testing.assert_allclose(a["probs_trajectory"], b["probs_trajectory"], atol=1e-5)
        for method in a["trajectory"]:
            for kind in ("from_first", "consecutive"):
                for x, y in zip(
                    a["trajectory"][method][kind], b["trajectory"][method][kind], strict=True
                ):
                    assert x == pytest.approx(y, abs=1e-5, nan_ok=True)


def test_incompatible_intermediate_is_refused(inputs, tmp_path) -> None:
    root, steps = inputs
    torch.manual_seed(0)
    model, meta = load_checkpoint(steps[0])
    odd = tmp_path / "odd.safetensors"
    names = [f"c{i}" for i in range(len(CLASSES))]
    save_checkpoint(odd, model, model_metadata(model, names, input_size=meta["input_size"]))
    with pytest.raises(ValueError, match="class sets do not match"):
        Audit(
            root / "tl.safetensors",
            root / "ft.safetensors",
            root / "data",
            AuditConfig(split=None),
            trajectory=[odd],
        )


@pytest.fixture(scope="module")
def report_and_rows(inputs):
    audit = make_audit(inputs)
    rows = audit.compute()
    root, steps = inputs
    report = build_report(
        rows,
        models={
            "baseline": describe_model(audit.baseline, "tl.safetensors"),
            "candidate": describe_model(audit.candidate, "ft.safetensors"),
        },
        dataset=describe_dataset(audit, str(root / "data")),
        config=config_dict(audit.config),
        samples_location=None,
        trajectory=[
            describe_model(m, str(p)) for m, p in zip(audit.trajectory, steps, strict=True)
        ],
    )
    return report, rows


def test_report_section_equals_numpy_on_the_rows(report_and_rows) -> None:
    report, rows = report_and_rows
    validate_report(json.loads(json.dumps(report)))
    section = report["trajectory"]
    n = len(STEPS) + 1
    assert section["steps"] == n and section["samples"] == len(rows)
    assert [c["label"] for c in section["checkpoints"]] == ["tl", "ft-epoch1", "ft-epoch2", "ft"]
    labels = np.array([r["label"] for r in rows])
    for k, score in enumerate(section["performance"]):
        if k == 0:
            probs = [r["probs_baseline"] for r in rows]
        elif k == n:
            probs = [r["probs_candidate"] for r in rows]
        else:
            probs = [r["probs_trajectory"][k - 1] for r in rows]
        expected = classification_metrics(labels, np.array(probs), list(CLASSES))
        assert score["macro_auc"] == pytest.approx(expected["macro_auc"])
        assert score["accuracy"] == pytest.approx(expected["accuracy"])
    for method, by_metric in section["series"].items():
        for metric, entry in by_metric.items():
            for kind in ("from_first", "consecutive"):
                for step, stats in enumerate(entry[kind]):
                    values = column(rows, method, kind, step, metric)
                    assert stats == summarize(values, n_boot=2000, seed=0)
            means = np.array([s["mean"] for s in entry["consecutive"]], dtype=float)
            if metric == "pearson":
                assert entry["sharpest_step"] == int(np.nanargmin(means)) + 1
            if metric == "displacement":
                assert entry["sharpest_step"] == int(np.nanargmax(means)) + 1
    # interpolated weights: the evidence moves further from the baseline at each step
    pearson = [s["mean"] for s in section["series"]["layercam"]["pearson"]["from_first"]]
    assert pearson[0] > pearson[-1]


def test_sharpest_step_reads_the_metric_direction() -> None:
    steps = [{"mean": 0.9}, {"mean": 0.2}, {"mean": None}, {"mean": 0.5}]
    assert sharpest_step("pearson", steps) == 2
    assert sharpest_step("iou_top20", steps) == 2
    assert sharpest_step("displacement", steps) == 1
    assert sharpest_step("entropy_change", [{"mean": 0.1}, {"mean": -0.4}]) == 2
    assert sharpest_step("pearson", [{"mean": None}]) is None


def test_a_description_that_does_not_match_the_rows_is_an_error(report_and_rows) -> None:
    report, rows = report_and_rows
    with pytest.raises(ValueError, match="intermediate checkpoints"):
        build_report(
            rows,
            models=report["models"],
            dataset=report["dataset"],
            config=report["config"],
            samples_location=None,
            trajectory=[],
        )


def test_sql_records_round_trip(report_and_rows) -> None:
    _, rows = report_and_rows
    for row in rows:
        records = records_from_row("j" * 32, row)
        sample = next(r for r in records if isinstance(r, JobSample))
        metrics = [r for r in records if isinstance(r, SampleMetric)]
        back = row_from_records(sample, metrics)
        assert back["trajectory"] == row["trajectory"]
        assert back["probs_trajectory"] == row["probs_trajectory"]
        assert back["metrics"] == row["metrics"]


def test_html_and_markdown_show_the_trajectory(report_and_rows) -> None:
    report, rows = report_and_rows
    page = render_html(report, rows, lambda index, method: None)
    assert 'id="trajectory"' in page and "<svg" in page
    for label in ("ft-epoch1", "ft-epoch2"):
        assert label in page
    text = render_markdown(report)
    assert "Trajectory" in text and "ft-epoch2" in text
