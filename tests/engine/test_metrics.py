"""worker.engine.metrics against independent numpy/scipy oracles, identities and the NaN policy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage
from scipy import stats as sps
from skimage.metrics import structural_similarity

from worker.catalog import AUDIT_METRICS, DEFAULT_METRICS, pair_metrics
from worker.catalog import METRICS as CATALOG
from worker.engine.audit import stacked_metrics
from worker.engine.metrics import degenerate, drift_metrics, validate_metric_names

# the pair metrics: functions of the two maps alone (the region metrics, which also need masks,
# are checked in tests/engine/test_localisation.py; the audit-stage consistency_* across
# samples in tests/results/test_consistency.py)
METRICS = [name for name, info in CATALOG.items() if info.requires is None and info.stage == "pair"]
ATOL = 1e-5
SHAPES = [(24, 31), (17, 17), (40, 12)]
KINDS = ["uniform", "relu", "cam"]


def _unit(x: np.ndarray) -> np.ndarray:
    """Per-map min-max to [0, 1], as the attribution engine does."""
    lo = x.min(axis=(1, 2), keepdims=True)
    hi = x.max(axis=(1, 2), keepdims=True)
    return (x - lo) / (hi - lo)


def make_maps(kind: str, n: int, shape: tuple[int, int], seed: int) -> np.ndarray:
    """float32 [n, H, W] in [0, 1]; 'relu' and 'cam' have large zero regions and ties."""
    rng = np.random.default_rng(seed)
    h, w = shape
    if kind == "uniform":
        maps = rng.random((n, h, w))
    elif kind == "relu":
        maps = _unit(np.maximum(rng.normal(size=(n, h, w)), 0.0))
        maps = np.round(maps * 20) / 20  # ties among the non-zero values too
    else:  # coarse map upsampled as a CAM is: zero regions, duplicated border rows/columns
        coarse = torch.from_numpy(rng.normal(size=(n, 1, 5, 4)))
        up = F.interpolate(coarse, size=shape, mode="bilinear", align_corners=False)
        maps = _unit(np.maximum(up.squeeze(1).numpy(), 0.0))
    return maps.astype(np.float32)


# ----------------------------------------------------------------------------- oracles


def _centroid(m: np.ndarray) -> np.ndarray:
    cy, cx = ndimage.center_of_mass(m.astype(np.float64))
    h, w = m.shape
    return np.array([cx / (w - 1), cy / (h - 1)])


def _peak(m: np.ndarray) -> np.ndarray:
    y, x = np.unravel_index(np.argmax(m), m.shape)
    h, w = m.shape
    return np.array([x / (w - 1), y / (h - 1)])


def _top_set(m: np.ndarray, q: int) -> set[int]:
    k = max(1, (q * m.size + 50) // 100)
    return set(np.argsort(-m.ravel(), kind="stable")[:k].tolist())


def _iou(sa: set[int], sb: set[int]) -> float:
    union = len(sa | sb)
    return len(sa & sb) / union if union else math.nan


def _gini(m: np.ndarray) -> float:
    """Mean absolute difference over twice the mean: independent of any sort."""
    x = m.ravel().astype(np.float64)
    return np.abs(x[:, None] - x[None, :]).mean() / (2.0 * x.mean())


def _entropy(m: np.ndarray) -> float:
    x = m.ravel().astype(np.float64)
    return sps.entropy(x) / math.log(x.size)


def oracle(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    fa, fb = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return {
        "displacement": np.linalg.norm(_centroid(a) - _centroid(b)) / math.sqrt(2),
        "peak_displacement": np.linalg.norm(_peak(a) - _peak(b)) / math.sqrt(2),
        "iou_top20": _iou(_top_set(a, 20), _top_set(b, 20)),
        "iou_top5": _iou(_top_set(a, 5), _top_set(b, 5)),
        "iou_t50": _iou(set(np.flatnonzero(fa >= 0.5)), set(np.flatnonzero(fb >= 0.5))),
        "pearson": sps.pearsonr(fa, fb).statistic,
        "spearman": sps.spearmanr(fa, fb).statistic,
        "concentration_change": _gini(b) - _gini(a),
        "entropy_change": _entropy(b) - _entropy(a),
        "ssim": structural_similarity(a.astype(np.float64), b.astype(np.float64), data_range=1.0),
    }


# ----------------------------------------------------------------------------- tests


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("kind", KINDS)
def test_every_metric_matches_oracle(kind: str, shape: tuple[int, int], seed: int) -> None:
    a = make_maps(kind, 4, shape, seed)
    b = make_maps(kind, 4, shape, seed + 100)
    names = [*METRICS, "iou_top5"]
    assert "ssim" in names  # opt-in, but in the catalog: checked against scikit-image
    got = drift_metrics(torch.from_numpy(a), torch.from_numpy(b), names)
    assert list(got) == names
    for i in range(a.shape[0]):
        want = oracle(a[i], b[i])
        for name in names:
            assert got[name][i].item() == pytest.approx(want[name], abs=ATOL), (name, i)


def test_spearman_with_mostly_zero_maps_matches_scipy() -> None:
    """Ties are the norm after ReLU: ~90% zeros plus repeated non-zero values."""
    rng = np.random.default_rng(7)
    a = np.where(rng.random((3, 30, 30)) < 0.9, 0.0, rng.integers(1, 5, (3, 30, 30)) / 4)
    b = np.where(rng.random((3, 30, 30)) < 0.9, 0.0, rng.random((3, 30, 30)))
    got = drift_metrics(torch.from_numpy(a), torch.from_numpy(b), ["spearman"])["spearman"]
    for i in range(3):
        want = sps.spearmanr(a[i].ravel(), b[i].ravel()).statistic
        assert got[i].item() == pytest.approx(want, abs=ATOL)


def test_output_type_and_input_untouched() -> None:
    a = torch.from_numpy(make_maps("cam", 3, (16, 20), 0)).double()
    b = torch.from_numpy(make_maps("cam", 3, (16, 20), 1)).double()
    a_copy = a.clone()
    got = drift_metrics(a, b)
    assert list(got) == pair_metrics(DEFAULT_METRICS)
    for value in got.values():
        assert value.dtype == torch.float32 and value.shape == (3,)
    assert torch.equal(a, a_copy)


def test_audit_stage_names_are_skipped_not_computed() -> None:
    """A job's resolved list (consistency_* among the defaults) passes as it is: the engine
    computes the pair metrics of it and never asks for the audit-stage ones."""
    a = torch.from_numpy(make_maps("cam", 3, (12, 10), 0))
    b = torch.from_numpy(make_maps("cam", 3, (12, 10), 1))
    assert set(AUDIT_METRICS) <= set(DEFAULT_METRICS)
    assert list(drift_metrics(a, b, [*AUDIT_METRICS, "pearson"])) == ["pearson"]
    assert drift_metrics(a, b, list(AUDIT_METRICS)) == {}
    both = drift_metrics(a, b, list(DEFAULT_METRICS))
    assert list(both) == pair_metrics(DEFAULT_METRICS) and not set(both) & set(AUDIT_METRICS)
    stacked = stacked_metrics({"x": a, "y": b}, {"x": b, "y": a}, ["x", "y"], DEFAULT_METRICS)
    assert all(list(named) == pair_metrics(DEFAULT_METRICS) for named in stacked.values())


def test_identity_pair() -> None:
    a = torch.from_numpy(make_maps("cam", 5, (28, 36), 3))
    got = drift_metrics(a, a.clone(), [*METRICS, "iou_top10"])
    want = {"displacement": 0, "peak_displacement": 0, "iou_top20": 1, "iou_top10": 1}
    want |= {"iou_t50": 1, "pearson": 1, "spearman": 1}
    want |= {"concentration_change": 0, "entropy_change": 0}
    for name, value in want.items():
        torch.testing.assert_close(got[name], torch.full((5,), float(value)), atol=ATOL, rtol=0)


def _blob(h: int, w: int, cx: float, cy: float, sigma: float = 3.0) -> np.ndarray:
    ys, xs = np.mgrid[0:h, 0:w]
    return np.exp(-((xs - cx) ** 2 + (ys - cy) ** 2) / (2 * sigma**2)).astype(np.float32)


@pytest.mark.parametrize(("dx", "dy"), [(7, 0), (0, -5), (10, 9), (-12, 4)])
def test_shifted_blob_displacement(dx: int, dy: int) -> None:
    h, w = 60, 80
    a = _blob(h, w, 38, 29)
    b = _blob(h, w, 38 + dx, 29 + dy)
    got = drift_metrics(torch.from_numpy(a[None]), torch.from_numpy(b[None]))
    want = math.hypot(dx / (w - 1), dy / (h - 1)) / math.sqrt(2)
    assert got["displacement"].item() == pytest.approx(want, abs=1e-4)
    assert got["peak_displacement"].item() == pytest.approx(want, abs=1e-6)
    # a pure translation keeps the mass distribution: no concentration/entropy change
    assert got["concentration_change"].item() == pytest.approx(0.0, abs=1e-4)
    assert got["entropy_change"].item() == pytest.approx(0.0, abs=1e-4)


def test_degenerate_maps_give_documented_nans_without_touching_others() -> None:
    good_a = make_maps("cam", 4, (20, 24), 0)
    good_b = make_maps("cam", 4, (20, 24), 1)
    a, b = good_a.copy(), good_b.copy()
    a[1] = 0.0  # no mass
    b[2] = 0.7  # constant, with mass
    a[3] = 0.0  # both sets {>= 0.5} empty
    b[3] = 0.2
    got = drift_metrics(torch.from_numpy(a), torch.from_numpy(b), list(METRICS))
    ref = drift_metrics(torch.from_numpy(good_a), torch.from_numpy(good_b), list(METRICS))
    assert degenerate(torch.from_numpy(a)).tolist() == [False, True, False, True]
    assert degenerate(torch.from_numpy(b)).tolist() == [False, False, True, True]

    always_nan = ["displacement", "peak_displacement", "iou_top20", "pearson", "spearman", "ssim"]
    for name in always_nan:
        assert [math.isnan(v) for v in got[name].tolist()] == [False, True, True, True], name
    for name in ["concentration_change", "entropy_change"]:
        assert [math.isnan(v) for v in got[name].tolist()] == [False, True, False, True], name
    assert got["concentration_change"][2].item() == pytest.approx(0.0 - _gini(good_a[2]), abs=ATOL)
    assert got["entropy_change"][2].item() == pytest.approx(1.0 - _entropy(good_a[2]), abs=ATOL)
    t50 = got["iou_t50"].tolist()
    assert not math.isnan(t50[1]) and t50[1] == 0.0  # b[1] has a {>= 0.5} set, a[1] none
    assert math.isnan(t50[3])
    for name in METRICS:
        assert got[name][0].item() == pytest.approx(ref[name][0].item(), abs=1e-7), name


def test_degenerate_flags() -> None:
    maps = torch.zeros(4, 5, 6)
    maps[1] = 0.3
    maps[2, 1, 1] = 1.0
    maps[3] = torch.rand(5, 6)
    assert degenerate(maps).tolist() == [True, True, False, False]
    maps[3, 0, 0] = math.nan
    assert degenerate(maps.flatten(1)).tolist() == [True, True, False, True]


def test_batch_rows_are_independent() -> None:
    a = torch.from_numpy(make_maps("relu", 6, (18, 22), 4))
    b = torch.from_numpy(make_maps("relu", 6, (18, 22), 5))
    whole = drift_metrics(a, b, list(METRICS))
    for i in (0, 3, 5):
        single = drift_metrics(a[i : i + 1], b[i : i + 1], list(METRICS))
        for name in METRICS:
            assert whole[name][i].item() == pytest.approx(single[name][0].item(), abs=1e-6)


def test_validate_metric_names() -> None:
    assert validate_metric_names(["iou_top10", "pearson", "iou_top10"]) == ["iou_top10", "pearson"]
    assert validate_metric_names("iou_top99") == ["iou_top99"]
    for bad in ["iou_top0", "iou_top100", "iou_top05", "iou_topx", "kl_divergence"]:
        with pytest.raises(ValueError, match=bad):
            validate_metric_names(["pearson", bad])
    with pytest.raises(ValueError):
        validate_metric_names([])
    with pytest.raises(ValueError, match="nope"):
        drift_metrics(torch.rand(1, 4, 4), torch.rand(1, 4, 4), ["nope"])


def test_shape_errors_and_empty_batch() -> None:
    with pytest.raises(ValueError):
        drift_metrics(torch.rand(2, 4, 4), torch.rand(2, 4, 5))
    with pytest.raises(ValueError):
        drift_metrics(torch.rand(4, 4), torch.rand(4, 4))
    got = drift_metrics(torch.rand(0, 4, 4), torch.rand(0, 4, 4))
    assert all(v.shape == (0,) for v in got.values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    a = torch.from_numpy(make_maps("cam", 8, (56, 48), 0))
    b = torch.from_numpy(make_maps("cam", 8, (56, 48), 1))
    cpu = drift_metrics(a, b, list(METRICS))
    gpu = drift_metrics(a.cuda(), b.cuda(), list(METRICS))
    for name in METRICS:
        assert gpu[name].device.type == "cuda"
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], atol=ATOL, rtol=0, equal_nan=True)


def test_stacked_methods_equal_one_call_per_method() -> None:
    """The GPU's one call over every method's rows gives each method what its own call gives."""
    a = {
        "layercam": torch.from_numpy(make_maps("cam", 6, (40, 36), 0)),
        "gradcam++": torch.from_numpy(make_maps("relu", 6, (40, 36), 1)),
    }
    b = {
        "layercam": torch.from_numpy(make_maps("cam", 6, (40, 36), 2)),
        "gradcam++": torch.from_numpy(make_maps("relu", 6, (40, 36), 3)),
    }
    a["layercam"][0] = 0.0  # a degenerate row keeps its NaNs in its own method
    stacked = stacked_metrics(a, b, ["layercam", "gradcam++"], list(METRICS))
    for method in a:
        alone = drift_metrics(a[method], b[method], list(METRICS))
        assert list(stacked[method]) == list(alone)
        for name in METRICS:
            torch.testing.assert_close(
                stacked[method][name], alone[name], atol=1e-12, rtol=0, equal_nan=True
            )
