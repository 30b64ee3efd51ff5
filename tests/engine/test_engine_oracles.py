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

import worker.engine.metrics as metrics_module
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
    monkeypatch.setattr(metrics_module, "_packed_sort_cpu", lambda maps: None)
    spy = _SortSpy(monkeypatch)
    _check(*_maps(seed))
    assert spy.calls >= 1  # the torch.sort path ran


def test_metrics_on_the_torch_sort_path_after_a_negative_value(monkeypatch) -> None:
    a, b = _maps(2, negative=True)
    both = torch.from_numpy(np.concatenate([a, b])).flatten(1)
    assert metrics_module._packed_sort_cpu(both) is None
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
