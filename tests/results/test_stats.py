"""worker.results.stats against numpy/scipy, plus the JSON contract (plain floats, None not NaN)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from worker.results.stats import (
    SUMMARY_KEYS,
    kendall_tau,
    paired_test,
    summarize,
    summarize_groups,
)


def _assert_json_plain(obj: object) -> None:
    """Serialisable without NaN, and every number a plain int/float."""
    json.dumps(obj, allow_nan=False)
    if isinstance(obj, dict):
        for value in obj.values():
            _assert_json_plain(value)
    elif obj is not None:
        assert type(obj) in (int, float), type(obj)


def test_summarize_matches_numpy_and_ignores_nans() -> None:
    rng = np.random.default_rng(0)
    clean = rng.gamma(2.0, size=300)
    values = np.concatenate([clean, [np.nan] * 7, [np.inf]])
    out = summarize(values)
    assert set(out) == set(SUMMARY_KEYS)
    _assert_json_plain(out)
    assert out["n"] == 300 and out["n_nan"] == 8
    assert out["mean"] == pytest.approx(clean.mean(), rel=1e-12)
    assert out["std"] == pytest.approx(clean.std(ddof=1), rel=1e-12)
    assert out["median"] == pytest.approx(np.median(clean), rel=1e-12)
    for key, q in {"q05": 0.05, "q25": 0.25, "q75": 0.75, "q95": 0.95}.items():
        assert out[key] == pytest.approx(np.quantile(clean, q), rel=1e-12)
    assert out["ci95_low"] < out["mean"] < out["ci95_high"]
    # the percentile CI of a mean is close to the normal one for n=300
    half = 1.96 * clean.std(ddof=1) / math.sqrt(clean.size)
    assert out["ci95_high"] - out["ci95_low"] == pytest.approx(2 * half, rel=0.15)


def test_bootstrap_is_seeded_and_shrinks_with_n() -> None:
    rng = np.random.default_rng(1)
    values = rng.normal(size=50)
    assert summarize(values, seed=3) == summarize(values, seed=3)
    assert summarize(values, seed=3)["ci95_low"] != summarize(values, seed=4)["ci95_low"]
    widths = []
    for n in (20, 200, 2000):
        out = summarize(rng.normal(size=n))
        widths.append(out["ci95_high"] - out["ci95_low"])
    assert widths[0] > widths[1] > widths[2]
    narrow = summarize(values, ci=0.5)
    wide = summarize(values, ci=0.99)
    assert wide["ci95_low"] < narrow["ci95_low"] < narrow["ci95_high"] < wide["ci95_high"]


def test_summarize_large_n_is_vectorised_in_blocks() -> None:
    values = np.random.default_rng(2).normal(size=5000)
    out = summarize(values, n_boot=3000)
    assert out["ci95_low"] < values.mean() < out["ci95_high"]


def test_summarize_small_and_empty() -> None:
    empty = summarize(np.array([np.nan, np.nan]))
    assert empty["n"] == 0 and empty["n_nan"] == 2
    assert all(empty[k] is None for k in SUMMARY_KEYS if k not in ("n", "n_nan"))
    _assert_json_plain(empty)
    one = summarize(np.array([0.25]))
    assert one["mean"] == one["median"] == 0.25
    assert one["std"] is None and one["ci95_low"] is None
    with pytest.raises(ValueError):
        summarize(np.array([1.0, 2.0]), ci=1.5)


def test_summarize_groups_by_code_and_by_name() -> None:
    rng = np.random.default_rng(3)
    values = rng.random(90)
    values[5] = np.nan
    codes = np.repeat([0, 1, 2], 30)
    names = ["normal", "pneumonia", "covid", "effusion"]
    out = summarize_groups(values, codes, names, n_boot=200)
    assert list(out) == ["overall", *names]
    assert out["overall"] == summarize(values, n_boot=200)
    assert out["normal"]["n"] == 29 and out["normal"]["n_nan"] == 1
    assert out["pneumonia"]["mean"] == pytest.approx(values[30:60].mean())
    assert out["effusion"]["n"] == 0 and out["effusion"]["mean"] is None
    by_name = summarize_groups(values, np.array(names)[codes], names, n_boot=200)
    assert by_name == out
    _assert_json_plain(out)
    with pytest.raises(ValueError):
        summarize_groups(values, codes[:-1], names)
    with pytest.raises(ValueError):
        summarize_groups(values, codes, ["overall", "x", "y"])


@pytest.mark.parametrize(("n", "shift"), [(12, 0.3), (40, 0.2), (200, 0.1), (80, 0.0)])
def test_paired_test_matches_scipy(n: int, shift: float) -> None:
    rng = np.random.default_rng(n)
    x = rng.normal(size=n) + shift
    y = rng.normal(size=n)
    x[0], y[1] = np.nan, np.inf  # dropped pairs
    out = paired_test(x, y)
    _assert_json_plain(out)
    keep = np.isfinite(x) & np.isfinite(y)
    ref = sps.wilcoxon(x[keep], y[keep])
    assert out["n"] == n - 2
    assert out["statistic"] == pytest.approx(ref.statistic)
    assert out["p_value"] == pytest.approx(ref.pvalue, rel=1e-10)


def test_paired_test_effect_size() -> None:
    x = np.arange(1.0, 11.0)
    assert paired_test(x + 1, x)["effect_size"] == pytest.approx(1.0)
    assert paired_test(x, x + 1)["effect_size"] == pytest.approx(-1.0)
    # differences 1..4 with one negative: ranks 1..4, R- = 1 -> (9 - 1) / 10
    d = np.array([-1.0, 2.0, 3.0, 4.0])
    out = paired_test(d, np.zeros(4))
    assert out["effect_size"] == pytest.approx(0.8)
    # zero differences are left out, as in the test itself
    out = paired_test(np.append(d, 5.0), np.append(np.zeros(4), 5.0))
    assert out["n"] == 5 and out["effect_size"] == pytest.approx(0.8)
    rng = np.random.default_rng(5)
    strong = paired_test(rng.normal(size=100) + 1.0, rng.normal(size=100))["effect_size"]
    weak = paired_test(rng.normal(size=100) + 0.1, rng.normal(size=100))["effect_size"]
    assert strong > weak and 0 < strong <= 1


def test_paired_test_undefined_cases() -> None:
    none = {"statistic": None, "p_value": None, "effect_size": None}
    assert paired_test(np.array([1.0]), np.array([2.0])) == {"n": 1, **none}
    assert paired_test(np.ones(5), np.ones(5)) == {"n": 5, **none}
    assert paired_test(np.array([np.nan, 1.0]), np.array([1.0, np.nan])) == {"n": 0, **none}
    with pytest.raises(ValueError):
        paired_test(np.ones(3), np.ones(4))


def test_kendall_tau() -> None:
    x = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    y = np.array([2.0, 1.0, 3.0, 5.0, 4.0])
    ref = sps.kendalltau(x, y)
    out = kendall_tau(x, y)
    _assert_json_plain(out)
    assert out["tau"] == pytest.approx(ref.statistic) and out["p_value"] == pytest.approx(
        ref.pvalue
    )
    assert kendall_tau(x, x)["tau"] == pytest.approx(1.0)
    assert kendall_tau(x, -x)["tau"] == pytest.approx(-1.0)
    assert kendall_tau([1.0], [2.0])["tau"] is None
    assert kendall_tau(x, np.ones(5))["tau"] is None
    assert kendall_tau(np.append(x, np.nan), np.append(y, 1.0))["n"] == 5
