"""Noise floor: baseline vs a perturbed baseline, per sample, and drift measured against it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.builders import tiny_audit_inputs
from worker.catalog import drift_direction as floor_direction
from worker.catalog import pair_metrics
from worker.engine.attribution import attribute
from worker.engine.audit import Audit, AuditConfig, perturb
from worker.engine.metrics import drift_metrics
from worker.results.report import build_report
from worker.results.report_schema import validate_report


@pytest.fixture(scope="module")
def audit_inputs(tmp_path_factory):
    return tiny_audit_inputs(tmp_path_factory.mktemp("floor"), per_class=4, seed=2)


def _audit(root, **kw) -> Audit:
    cfg = AuditConfig(sample_filter="all", split=None, noise_floor=True, **kw)
    return Audit(root / "tl.safetensors", root / "ft.safetensors", root / "data", cfg)


def test_perturbation_is_seeded_per_row_and_keeps_geometry() -> None:
    images = torch.rand(4, 3, 32, 32)
    a = perturb(images, [10, 11, 12, 13], seed=3)
    b = perturb(images[2:], [12, 13], seed=3)
    assert torch.equal(a[2:], b), "a row's copy must not depend on its batch"
    assert not torch.equal(perturb(images, [10, 11, 12, 13], seed=4), a)
    assert a.min() >= 0 and a.max() <= 1
    for x, y in zip(images, a, strict=True):
        assert np.corrcoef(x.flatten(), y.flatten())[0, 1] > 0.95


def test_floor_rows_equal_an_independent_computation(audit_inputs) -> None:
    audit = _audit(audit_inputs, batch_size=3)
    rows = audit.compute()
    model = audit.baseline.model
    loader = audit._loader(list(range(audit.total)))
    images = torch.cat([x for x, *_ in loader])
    labels = torch.tensor([r["label"] for r in rows])
    prepare = audit.baseline.prepare
    clean = attribute(model, prepare(images), labels, audit.config.methods)
    noisy = attribute(
        model, prepare(perturb(images, list(range(len(rows))), 0)), labels, audit.config.methods
    )
    for method in audit.config.methods:
        expected = drift_metrics(clean[method], noisy[method])
        for name, values in expected.items():
            got = np.array([r["floor"][method][name] for r in rows], dtype=float)
            np.testing.assert_allclose(got, values.numpy(), atol=1e-5, equal_nan=True)


def test_sharding_and_batching_do_not_change_the_floor(audit_inputs) -> None:
    whole = _audit(audit_inputs, batch_size=20).compute()
    first, second = _audit(audit_inputs, batch_size=3), _audit(audit_inputs, batch_size=4)
    parts = first.compute(range(0, 7)) + second.compute(range(7, 20))
    for a, b in zip(whole, parts, strict=True):
        for method, named in a["floor"].items():
            for name, value in named.items():
                other = b["floor"][method][name]
                assert (value is None and other is None) or abs(value - other) < 1e-5


def test_report_gives_drift_next_to_its_floor(audit_inputs) -> None:
    audit = _audit(audit_inputs)
    rows = audit.compute()
    report = build_report(
        rows,
        models={},
        dataset={"class_names": audit.class_names},
        config={
            "methods": audit.config.methods,
            # the engine's rows: per-pair metrics (consistency is added after the audit)
            "metrics": pair_metrics(audit.config.metrics),
            "seed": 0,
            "n_boot": 200,
        },
        samples_location=None,
    )
    section = report["noise_floor"]
    for method in audit.config.methods:
        for metric in pair_metrics(audit.config.metrics):
            entry = section[method][metric]
            floor = np.array(
                [
                    np.nan if r["floor"][method][metric] is None else r["floor"][method][metric]
                    for r in rows
                ]
            )
            drift = np.array(
                [
                    np.nan if r["metrics"][method][metric] is None else r["metrics"][method][metric]
                    for r in rows
                ]
            )
            ok = np.isfinite(floor)
            direction = floor_direction(metric)
            assert entry["direction"] == direction
            if direction == "lower":
                threshold = np.quantile(floor[ok], 0.05)
                hit = drift < threshold
            elif direction == "higher":
                threshold = np.quantile(floor[ok], 0.95)
                hit = drift > threshold
            else:
                threshold = np.quantile(np.abs(floor[ok]), 0.95)
                hit = np.abs(drift) > threshold
            assert entry["threshold"] == pytest.approx(threshold)
            valid = np.isfinite(drift)
            assert entry["beyond_floor"] == pytest.approx(hit[valid].mean())
    assert (
        build_report(
            [{**r, "floor": None} for r in rows],
            models={},
            dataset={"class_names": audit.class_names},
            config={"methods": ["layercam"], "metrics": ["pearson"]},
            samples_location=None,
        )["noise_floor"]
        is None
    )


def test_local_report_with_floor_validates(audit_inputs, tmp_path) -> None:
    from worker.runtime.local_run import run_audit

    cfg = AuditConfig(sample_filter="all", split=None, noise_floor=True)
    report = run_audit(
        audit_inputs / "tl.safetensors",
        audit_inputs / "ft.safetensors",
        audit_inputs / "data",
        cfg,
        tmp_path / "r.json",
    )
    validate_report(report)
    assert report["config"]["noise_floor"] is True
