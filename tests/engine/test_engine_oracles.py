"""Engine functions against oracles written here in numpy/scipy:

- the drift metrics that order pixels (spearman, iou_topQ, concentration_change) on the
  ``torch.sort`` path of the shared sort, which the CPU otherwise bypasses with its packed
  integer sort (reached by disabling that, and by a map with a negative value, which the
  packed sort declines), and on the packed path;
- Grad-CAM++ with gradients large enough that the sum(A)*G^3 term dominates alpha.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

import worker.engine.ordering as ordering
from worker.engine.attribution import cam_from
from worker.engine.metrics import drift_metrics

NAMES = ["spearman", "iou_top20", "iou_top5", "concentration_change"]


def _maps(seed: int, n: int = 6, h: int = 12, w: int = 14, negative: bool = False):
    """Baseline/candidate pairs on a non-square grid; pair 0 has many ties (quantised)."""
    rng = np.random.default_rng(seed)
    a = rng.random((n, h, w))
    b = np.clip(0.6 * a + 0.4 * rng.random((n, h, w)), 0, 1)
    a[0], b[0] = np.round(a[0] * 4) / 4, np.round(b[0] * 3) / 3  # ties, also at the top-k cut
    if negative:
        a[1, 3, 4] = -0.25  # outside [0, 1]: the packed sort declines every map of the call
    return a.astype(np.float32), b.astype(np.float32)


def _top_set(x: np.ndarray, q: int) -> set[int]:
    """The k highest pixels, k = round(q% of pixels) halves up; ties: lowest row-major index."""
    k = max(1, int(np.floor(q * x.size / 100 + 0.5)))
    return set(np.argsort(-x.ravel().astype(np.float64), kind="stable")[:k].tolist())


def _gini(x: np.ndarray) -> float:
    """Mean absolute difference over twice the mean: sum_ij |x_i - x_j| / (2 n^2 mean)."""
    v = x.ravel().astype(np.float64)
    return float(np.abs(v[:, None] - v[None, :]).sum() / (2 * v.size**2 * v.mean()))


def _oracle(a: np.ndarray, b: np.ndarray, name: str) -> np.ndarray:
    out = []
    for x, y in zip(a, b, strict=True):
        if name == "spearman":
            out.append(sps.spearmanr(x.ravel(), y.ravel()).statistic)
        elif name.startswith("iou_top"):
            sa, sb = _top_set(x, int(name[7:])), _top_set(y, int(name[7:]))
            out.append(len(sa & sb) / len(sa | sb))
        else:
            out.append(_gini(y) - _gini(x))
    return np.asarray(out)


def _check(a: np.ndarray, b: np.ndarray) -> None:
    got = drift_metrics(torch.from_numpy(a), torch.from_numpy(b), NAMES)
    for name in NAMES:
        want = _oracle(a, b, name)
        assert np.all(np.isfinite(want)), name
        np.testing.assert_allclose(got[name].numpy(), want, atol=2e-5, err_msg=name)


class _SortSpy:
    def __init__(self, monkeypatch) -> None:
        self.calls = 0
        real = torch.sort

        def spy(*args, **kw):
            self.calls += 1
            return real(*args, **kw)

        monkeypatch.setattr(torch, "sort", spy)


def test_the_oracle_sees_the_drift() -> None:
    """Guard: the pairs are neither identical nor unrelated, so a reversed sort shows."""
    a, b = _maps(0)
    for name in ("iou_top20", "concentration_change"):
        values = _oracle(a, b, name)
        assert np.ptp(values) > 0.01, name
    bottom = [len(_top_set(-x, 20) & _top_set(-y, 20)) for x, y in zip(a, b, strict=True)]
    top = [len(_top_set(x, 20) & _top_set(y, 20)) for x, y in zip(a, b, strict=True)]
    assert bottom != top


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_on_the_torch_sort_path(monkeypatch, seed: int) -> None:
    monkeypatch.setattr(ordering, "radix_order_cpu", lambda maps: None)
    spy = _SortSpy(monkeypatch)
    _check(*_maps(seed))
    assert spy.calls >= 1  # the torch.sort path ran


def test_metrics_on_the_torch_sort_path_after_a_negative_value(monkeypatch) -> None:
    a, b = _maps(2, negative=True)
    both = torch.from_numpy(np.concatenate([a, b])).flatten(1)
    assert ordering.radix_order_cpu(both) is None
    spy = _SortSpy(monkeypatch)
    _check(a, b)
    assert spy.calls >= 1


def test_metrics_on_the_packed_path(monkeypatch) -> None:
    spy = _SortSpy(monkeypatch)
    _check(*_maps(3))
    assert spy.calls == 0  # the packed CPU sort served every metric


# --------------------------------------------------------------------------- Grad-CAM++


def _gradcam_pp_oracle(a: np.ndarray, g: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Chattopadhyay et al. (2018) with the exp-of-score closed form, in float64:
    alpha = G^2 / (2 G^2 + sum_ij(A_c) G^3 + eps), 0 where G = 0;
    w_c = sum_ij relu(G) alpha; map = sum_c w_c A_c (before ReLU)."""
    a, g = a.astype(np.float64), g.astype(np.float64)
    n, c, h, w = a.shape
    out = np.zeros((n, h, w))
    for i in range(n):
        for ch in range(c):
            s = a[i, ch].sum()
            weight = 0.0
            for y in range(h):
                for x in range(w):
                    grad = g[i, ch, y, x]
                    if grad == 0:
                        continue
                    alpha = grad**2 / (2 * grad**2 + s * grad**3 + eps)
                    weight += max(grad, 0.0) * alpha
            out[i] += weight * a[i, ch]
    return out


def test_gradcam_pp_with_large_gradients_matches_the_formula() -> None:
    rng = np.random.default_rng(0)
    n, c, h, w = 2, 6, 5, 4
    a = rng.gamma(2.0, 1.0, size=(n, c, h, w)).astype(np.float32)
    a[0, 2] = 0.0  # a dead channel: sum(A) = 0, alpha = 1/2 there
    g = rng.uniform(5.0, 50.0, size=(n, c, h, w)).astype(np.float32)
    g[:, :, 0, 0] *= -1  # negative gradients: no weight, and |sum(A) G| >> 2 keeps alpha finite
    g[1, 1, 2, 3] = 0.0
    sums = a.astype(np.float64).sum(axis=(2, 3), keepdims=True)
    live = np.broadcast_to(sums > 0, g.shape) & (g > 0)
    ratio = (np.broadcast_to(sums, g.shape) * np.abs(g) / 2)[live]  # sum(A) |G|^3 / (2 G^2)
    assert ratio.min() > 50  # the sum(A) G^3 term dominates alpha's denominator
    got = cam_from("gradcam++", torch.from_numpy(a), torch.from_numpy(g)).double().numpy()
    want = _gradcam_pp_oracle(a, g)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6)
    # and the term matters: without it (alpha = 1/2) the map is another one
    without = np.einsum("nc,nchw->nhw", (np.maximum(g, 0) * 0.5).sum(axis=(2, 3)), a)
    assert not np.allclose(without, want, rtol=0.1)


# ----------------------------------------------------------------- the ordering at full size


def _cam_sized_maps(seed: int, n: int = 4, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Upsampled ReLU maps (zeros and border-constant ties, as real CAMs have), plus a pair
    quantised so that the top-20% cut falls inside a run of equal values."""
    gen = torch.Generator().manual_seed(seed)

    def one() -> np.ndarray:
        low = torch.relu(torch.randn(n, 1, 7, 7, generator=gen))
        up = torch.nn.functional.interpolate(low, (size, size), mode="bilinear")[:, 0]
        return (up / up.flatten(1).amax(1).clamp_min(1e-9)[:, None, None]).numpy()

    a, b = one(), one()
    a[0], b[0] = np.round(a[0] * 5) / 5, np.round(b[0] * 4) / 4
    return a.astype(np.float32), b.astype(np.float32)


@pytest.mark.parametrize("threads", [1, 2])
def test_rank_metrics_at_cam_size_match_scipy(threads: int) -> None:
    """Rows enough for the row pool (threads 2) and the serial loop (threads 1)."""
    a, b = _cam_sized_maps(threads)
    k = int(np.floor(20 * a[0].size / 100 + 0.5))
    cut = np.sort(a[0].ravel())[::-1][k - 1]
    assert (a[0] > cut).sum() < k < (a[0] >= cut).sum()  # the cut splits a run of ties
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        _check(a, b)
    finally:
        torch.set_num_threads(before)


def test_average_ranks_equal_scipy_rankdata() -> None:
    a, b = _cam_sized_maps(5)
    maps = torch.from_numpy(np.concatenate([a, b]).reshape(2 * a.shape[0], -1))
    perm, values = ordering.ascending_order(maps)
    assert torch.equal(perm, torch.sort(maps, dim=1, stable=True).indices)
    want = sps.rankdata(maps.numpy(), axis=1)
    np.testing.assert_array_equal(ordering.average_ranks(perm, values).numpy(), want)
    # the torch path (other devices) gives the same ranks
    ranked = ordering._average_ranks_sorted(values)
    np.testing.assert_array_equal(torch.empty_like(ranked).scatter_(1, perm, ranked), want)
