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


def _regions(n: int, h: int, w: int, seed: int = 0) -> dict[str, torch.Tensor]:
    """A non-empty random mask per catalogued region."""
    gen = torch.Generator().manual_seed(seed)
    out = {}
    for name in catalog.REGIONS:
        mask = torch.rand(n, h, w, generator=gen) < 0.3
        mask[:, 0, 0] = True
        out[name] = mask
    return out


PAIR_METRICS = [n for n, i in catalog.METRICS.items() if i.stage == "pair"]


@pytest.mark.parametrize("name", PAIR_METRICS)
def test_every_metric_is_computed_and_unchanged_on_identical_maps(name: str) -> None:
    maps = torch.rand(3, 8, 8)
    info = catalog.metric_info(name)
    regions = _regions(3, 8, 8) if info.requires else None
    same = metrics.drift_metrics(maps, maps.clone(), [name], regions)[name]
    if info.model is None:  # a drift: two identical maps read "unchanged"
        assert torch.allclose(same.double(), torch.full((3,), float(info.unchanged)).double())
    else:  # a level: its model's map alone decides it, whatever the other map
        pair = (maps, torch.rand(3, 8, 8))
        if info.model == "candidate":
            pair = pair[::-1]
        assert torch.equal(same, metrics.drift_metrics(*pair, [name], regions)[name])
        assert info.unchanged in info.bounds  # its ideal is an end of its range
    lo, hi = info.bounds
    moved = metrics.drift_metrics(maps, torch.rand(3, 8, 8), [name], regions)[name]
    assert bool(((moved >= lo - 1e-6) & (moved <= hi + 1e-6)).all())


def test_region_metrics_name_a_region_the_datasets_bring() -> None:
    from training.datasets import REGION_COLUMNS, REGION_DIRS

    assert list(catalog.REGIONS) == list(REGION_COLUMNS) == list(REGION_DIRS)
    needing = {n: i for n, i in catalog.METRICS.items() if i.requires is not None}
    assert needing and all(i.requires in catalog.REGIONS for i in needing.values())
    # a level without a region: only the audit-stage consistency across samples
    assert not any(
        i.model for i in catalog.METRICS.values() if i.requires is None and i.stage == "pair"
    )
    for name, info in needing.items():  # each concept: both models' levels and their change
        stem = name.rsplit("_", 1)[0]
        trio = [catalog.METRICS[f"{stem}_{end}"] for end in ("tl", "ft", "change")]
        assert [i.model for i in trio] == ["baseline", "candidate", None]
        assert {(i.requires, i.worse) for i in trio} == {(info.requires, info.worse)}


def test_defaults_add_region_metrics_only_for_the_regions_given() -> None:
    assert catalog.default_metrics() == list(catalog.DEFAULT_METRICS)
    assert not any(catalog.METRICS[m].requires for m in catalog.DEFAULT_METRICS)
    lung = catalog.default_metrics(["lung"])
    assert lung[: len(catalog.DEFAULT_METRICS)] == list(catalog.DEFAULT_METRICS)
    assert lung[len(catalog.DEFAULT_METRICS) :] == [
        "outside_lung_tl",
        "outside_lung_ft",
        "outside_lung_change",
    ]
    every = catalog.default_metrics(catalog.REGIONS)
    assert "ssim" not in every and "pointing_change" in every and "shortcut_mass_ft" in every
    assert catalog.required_regions(["pearson", "iou_top7"]) == []
    assert catalog.required_regions(["outside_lung_ft", "pointing_tl", "pearson"]) == [
        "lesion",
        "lung",
    ]


def test_the_engine_registers_only_catalogued_metrics() -> None:
    registered = set(metrics.REGISTRY) | {n for n in catalog.METRICS if catalog.topq(n)}
    assert registered == set(PAIR_METRICS)
    with pytest.raises(ValueError, match="no line"):
        metrics.metric("nosuchmetric", None)(lambda ctx: ctx)
    with pytest.raises(ValueError, match="audit-stage"):
        metrics.metric("consistency_change", None)(lambda ctx: ctx)


def test_audit_stage_metrics_are_the_consistency_trio_and_defaults() -> None:
    """Computed across samples after the audit (worker.results.consistency): catalogued with
    the names that module writes, both models' levels and their change, and default."""
    from worker.results import consistency

    assert catalog.AUDIT_METRICS == consistency.NAMES
    trio = [catalog.METRICS[n] for n in consistency.NAMES]
    assert [i.model for i in trio] == ["baseline", "candidate", None]
    assert all(i.default and i.requires is None and i.stage == "audit" for i in trio)
    assert {i.worse for i in trio} == {catalog.Direction.HIGHER}
    assert trio[2].bounds == (-2, 2) and trio[2].unchanged == 0
    assert all(m in catalog.DEFAULT_METRICS for m in consistency.NAMES)
    assert set(consistency.NAMES) <= set(catalog.default_metrics(catalog.REGIONS))
    assert catalog.pair_metrics(["pearson", "consistency_ft", "iou_top7"]) == [
        "pearson",
        "iou_top7",
    ]
    assert catalog.audit_metrics(["consistency_change", "pearson"]) == ["consistency_change"]
    assert catalog.validate_metrics(["consistency_change"]) == ["consistency_change"]


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
