"""The catalog is the one vocabulary: every entry has its engine function, and the engine
registers nothing the catalog does not name (timm's ``list_models()`` habit: parametrize
over it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from worker import catalog
from worker.engine import attribution, metrics


@pytest.mark.parametrize("name", catalog.ONE_PASS_METHODS)
def test_every_one_pass_method_has_a_cam(name: str) -> None:
    a, g = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert attribution.cam_from(name, a, g).shape == (2, 4, 4)


def test_the_engine_registers_only_catalogued_methods() -> None:
    assert set(attribution.CAMS) == set(catalog.ONE_PASS_METHODS)
    with pytest.raises(ValueError, match="not a one-pass method"):
        attribution.one_pass("nosuchcam")(lambda a, g: a.sum(1))


@pytest.mark.parametrize("name", list(catalog.METRICS))
def test_every_metric_is_computed_and_unchanged_on_identical_maps(name: str) -> None:
    maps = torch.rand(3, 8, 8)
    info = catalog.metric_info(name)
    same = metrics.drift_metrics(maps, maps.clone(), [name])[name]
    assert torch.allclose(same.double(), torch.full((3,), float(info.unchanged)).double())
    lo, hi = info.bounds
    moved = metrics.drift_metrics(maps, torch.rand(3, 8, 8), [name])[name]
    assert bool(((moved >= lo - 1e-6) & (moved <= hi + 1e-6)).all())


def test_the_engine_registers_only_catalogued_metrics() -> None:
    registered = set(metrics.REGISTRY) | {n for n in catalog.METRICS if catalog.topq(n)}
    assert registered == set(catalog.METRICS)
    with pytest.raises(ValueError, match="no line"):
        metrics.metric("nosuchmetric", None)(lambda ctx: ctx)


@pytest.mark.parametrize("name", ["iou_top1", "iou_top10", "iou_top99"])
def test_topq_family(name: str) -> None:
    assert catalog.is_metric(name)
    assert catalog.validate_metrics([name, name]) == [name]
    assert catalog.metric_info(name).worse is catalog.Direction.LOWER


@pytest.mark.parametrize("name", ["iou_top0", "iou_top100", "iou_top05", "ssim2", ""])
def test_unknown_metrics_are_refused(name: str) -> None:
    assert not catalog.is_metric(name)
    with pytest.raises(ValueError, match="metrics: unknown"):
        catalog.validate_metrics([name])


@pytest.mark.parametrize(
    ("worse", "values", "threshold", "expected"),
    [
        (catalog.Direction.LOWER, [0.1, 0.5, 0.9], 0.5, [True, False, False]),
        (catalog.Direction.HIGHER, [0.1, 0.5, 0.9], 0.5, [False, False, True]),
        (catalog.Direction.ABS, [-0.9, 0.2, 0.6], 0.5, [True, False, True]),
    ],
)
def test_direction_beyond(worse, values, threshold, expected) -> None:
    assert worse.beyond(np.asarray(values), threshold).tolist() == expected


def test_stability_is_the_other_side_of_drift() -> None:
    assert catalog.Direction.LOWER.stable() == "higher"
    assert catalog.Direction.HIGHER.stable() == "lower"
    assert catalog.Direction.ABS.stable() == "abs"


def test_statuses() -> None:
    assert set(catalog.ACTIVE_STATUSES) | set(catalog.FINISHED_STATUSES) == set(catalog.JobStatus)
    assert catalog.JobStatus.QUEUED == "queued"
