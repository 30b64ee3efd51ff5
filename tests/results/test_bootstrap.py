"""Bootstrap statistics against independent oracles written here in plain numpy/python:

- ``bootstrap_mean_ci``: exactly ``n_boot`` resample means, also on the blocked path
  (n * n_boot > the block budget), and a 95% percentile interval -- checked against the
  documented draw sequence (one seeded ``default_rng``, resamples of n indices drawn in order)
  and, independently of any draw sequence, against the normal-theory width 1.96 s/sqrt(n);
- the study's order probabilities: a brute-force loop over bootstrap replicates on data with
  NaNs, where replicates without a defined sample must not count.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from worker.results import stats
from worker.results.stats import (
    bootstrap_mean_ci,
    summarize,
    summarize_groups,
    summarize_groups_many,
    summarize_many,
)
from worker.results.study import _order_probabilities, study_report


def _oracle_ci(values: np.ndarray, n_boot: int, seed: int, level: float = 0.95):
    """Percentile bootstrap: resample i is n indices drawn after resamples 0..i-1."""
    rng = np.random.default_rng(seed)
    n = values.size
    means = np.empty(n_boot)
    for i in range(n_boot):
        means[i] = values[rng.integers(0, n, size=n)].mean()
    tail = (1.0 - level) / 2.0
    return np.quantile(means, [tail, 1.0 - tail]), means


class _QuantileSpy:
    """Stands in for numpy inside worker.results.stats and records what np.quantile sees."""

    def __init__(self) -> None:
        self.calls: list[np.ndarray] = []

    def __getattr__(self, name: str):
        return getattr(np, name)

    def quantile(self, a, q, *args, **kw):
        self.calls.append(np.asarray(a).copy())
        return np.quantile(a, q, *args, **kw)


@pytest.mark.parametrize(
    ("n", "n_boot", "budget"),
    [
        (2500, 2000, None),  # the real budget: blocks of 1600 + 400 resamples
        (300, 2000, 1000),  # blocks of 3 resamples, the last one holds 2
        (7, 301, 1000),  # blocks of 142: 142 + 142 + 17
        (50, 1000, None),  # one block
    ],
)
def test_bootstrap_uses_exactly_n_boot_resample_means(monkeypatch, n, n_boot, budget) -> None:
    if budget is not None:
        monkeypatch.setattr(stats, "_BOOT_BLOCK", budget)
    blocked = n * n_boot > stats._BOOT_BLOCK
    assert blocked == (n != 50)
    values = np.random.default_rng(n).gamma(2.0, 1.0, size=n)
    spy = _QuantileSpy()
    monkeypatch.setattr(stats, "np", spy)
    low, high = bootstrap_mean_ci(values, n_boot=n_boot, seed=11)
    monkeypatch.setattr(stats, "np", np)
    (means,) = spy.calls
    assert means.shape == (n_boot,)
    (want_low, want_high), oracle_means = _oracle_ci(values, n_boot, seed=11)
    np.testing.assert_allclose(np.sort(means), np.sort(oracle_means), rtol=1e-12)
    assert low == pytest.approx(want_low, rel=1e-12)
    assert high == pytest.approx(want_high, rel=1e-12)


def test_summarize_ci_is_the_95_percent_percentile_interval() -> None:
    values = np.random.default_rng(3).lognormal(0.0, 0.6, size=40)
    got = summarize(values, n_boot=3000, seed=5)
    (low, high), _ = _oracle_ci(values, 3000, seed=5)
    assert got["ci95_low"] == pytest.approx(low, rel=1e-12)
    assert got["ci95_high"] == pytest.approx(high, rel=1e-12)
    # the oracle tells 95% from its neighbours at this n_boot
    (low93, high93), _ = _oracle_ci(values, 3000, seed=5, level=0.93)
    (low97, high97), _ = _oracle_ci(values, 3000, seed=5, level=0.97)
    assert low97 < low < low93 and high93 < high < high97


@pytest.mark.parametrize("ci", [0.9, 0.8])
def test_other_levels_follow_ci(ci: float) -> None:
    values = np.random.default_rng(4).normal(size=60)
    (low, high), _ = _oracle_ci(values, 2000, seed=0, level=ci)
    assert bootstrap_mean_ci(values, n_boot=2000, seed=0, ci=ci) == pytest.approx((low, high))


def test_ci_width_is_1_96_standard_errors_without_any_draw_sequence() -> None:
    """Independent of how the code draws: for normal data the percentile interval of the mean
    is mean +- z * sd/sqrt(n) with z = 1.96 at 95% (93%: 1.81, 97%: 2.17). 20000 resamples
    put z within ~0.02; the tolerance 0.07 separates 95% from both neighbours."""
    n = 400
    values = np.random.default_rng(8).normal(3.0, 2.0, size=n)
    se = values.std(ddof=0) / np.sqrt(n)  # the bootstrap's own standard error of the mean
    for seed in (0, 1):
        low, high = bootstrap_mean_ci(values, n_boot=20_000, seed=seed)
        z_low, z_high = (values.mean() - low) / se, (high - values.mean()) / se
        assert z_low == pytest.approx(1.96, abs=0.07), z_low
        assert z_high == pytest.approx(1.96, abs=0.07), z_high


@pytest.mark.parametrize("budget", [None, 500])  # one block per size; blocks of 10 and 71
def test_arrays_summarised_together_equal_the_oracle_one_by_one(monkeypatch, budget) -> None:
    """Arrays of one finite count share their draws; each CI still equals the oracle's for
    that array alone, whatever else is in the batch (other sizes, NaNs, empty, one value)."""
    if budget is not None:
        monkeypatch.setattr(stats, "_BOOT_BLOCK", budget)
    rng = np.random.default_rng(21)
    arrays = [rng.gamma(2.0, 1.0, size=50) for _ in range(3)]
    arrays[1][[4, 9]] = np.nan  # 48 finite: resampled apart from the other two
    arrays += [rng.normal(size=7), np.array([]), np.array([0.5]), rng.lognormal(size=50)]
    got = summarize_many(arrays, n_boot=700, seed=4)
    for values, out in zip(arrays, got, strict=True):
        finite = values[np.isfinite(values)]
        assert out["n"] == finite.size
        if finite.size < 2:
            assert out["ci95_low"] is None and out["ci95_high"] is None
            continue
        (low, high), _ = _oracle_ci(finite, 700, seed=4)
        assert out["ci95_low"] == pytest.approx(low, rel=1e-12)
        assert out["ci95_high"] == pytest.approx(high, rel=1e-12)
        assert out["mean"] == pytest.approx(finite.mean(), rel=1e-12)


def test_grouped_columns_together_equal_each_column_alone() -> None:
    rng = np.random.default_rng(5)
    codes = rng.integers(0, 3, size=120)
    names = ["normal", "covid", "effusion"]
    columns = [rng.random(120), rng.normal(size=120), rng.random(120)]
    columns[2][::7] = np.nan
    together = summarize_groups_many(columns, codes, names, n_boot=300, seed=2)
    for values, got in zip(columns, together, strict=True):
        alone = summarize_groups(values, codes, names, n_boot=300, seed=2)
        assert list(got) == ["overall", *names]
        for group in got:
            assert got[group] == pytest.approx(alone[group], rel=1e-12), group


# --------------------------------------------------------------------------- study


def _brute_order_probabilities(scores: np.ndarray, n_boot: int, rng) -> np.ndarray:
    """P(entry i's mean score > entry j's), ties 1/2, over replicates that resample the n
    samples; samples undefined for any entry are left out, replicates with none left out."""
    e, n = scores.shape
    valid = [k for k in range(n) if all(np.isfinite(scores[i, k]) for i in range(e))]
    wins = np.zeros((e, e))
    counted = 0
    for _ in range(n_boot):
        draw = rng.integers(0, n, size=n)
        picked = [int(k) for k in draw if int(k) in valid]
        if not picked:
            continue
        counted += 1
        means = [sum(scores[i, k] for k in picked) / len(picked) for i in range(e)]
        for i, j in itertools.product(range(e), repeat=2):
            if means[i] > means[j]:
                wins[i, j] += 1.0
            elif means[i] == means[j]:
                wins[i, j] += 0.5
    return wins / counted if counted else np.full((e, e), np.nan)


NAN = np.nan
# Values are multiples of 1/16, so every sum of up to 4 of them is exact: a tie of two means
# (0.5 + 0.625 = 0.375 + 0.75) is a tie for any summation order, the code's and the oracle's.
# 3 entries x 4 samples; only sample 2 is defined for every entry in "sparse": about 32% of the
# replicates draw no defined sample at all; "ties" ties entries 0 and 2 on every sample.
SCORES = {
    ("layercam", "sparse"): np.array([[14, NAN, 3, 8], [2, 5, 6, NAN], [NAN, 13, 5, 11]]) / 16,
    ("layercam", "dense"): np.array([[8, 10, 2, 14], [6, 12, 3, 5], [10, 8, 5, 13]]) / 16,
    ("gradcam++", "ties"): np.array([[8, 3, NAN, 14], [6, 5, 2, 5], [8, 3, 11, 14]]) / 16,
}


def test_the_sparse_scores_leave_replicates_without_a_defined_sample() -> None:
    rng = np.random.default_rng(0)
    empty = sum(2 not in rng.integers(0, 4, size=4) for _ in range(4000))
    assert 0.25 < empty / 4000 < 0.4  # (3/4)^4 = 0.32


def test_order_probabilities_equal_a_brute_force_loop_with_nans() -> None:
    n_boot, seed = 600, 7  # more than one chunk of replicates
    got = _order_probabilities(SCORES, 4, n_boot=n_boot, seed=seed)
    for key, score in SCORES.items():
        # the documented draw: one seeded generator, replicate after replicate
        want = _brute_order_probabilities(score, n_boot, np.random.default_rng(seed))
        np.testing.assert_allclose(got[key], want, rtol=1e-12, atol=1e-12, err_msg=str(key))
        off = ~np.eye(3, dtype=bool)
        np.testing.assert_allclose((got[key] + got[key].T)[off], 1.0)  # P(i>j) + P(j>i) = 1


def test_order_probabilities_match_an_independent_bootstrap_within_noise() -> None:
    """No shared draw sequence: another seed, a tolerance of ~4 standard errors. Dividing by
    all replicates instead of those with a defined sample would shrink 'sparse' by ~32%."""
    got = _order_probabilities(SCORES, 4, n_boot=4000, seed=1)
    for key, score in SCORES.items():
        want = _brute_order_probabilities(score, 4000, np.random.default_rng(12345))
        np.testing.assert_allclose(got[key], want, atol=0.04, err_msg=str(key))


def _entry(name: str, values: dict[str, list[float | None]]) -> dict:
    rows = [
        {
            "index": k,
            "included": True,
            "metrics": {m: {"pearson": values[m][k]} for m in values},
        }
        for k in range(len(values["layercam"]))
    ]
    report = {
        "dataset": {"fingerprint": "same"},
        "config": {"methods": list(values), "metrics": ["pearson"]},
    }
    return {"name": name, "job_id": None, "report": report, "rows": rows}


def test_study_report_order_probability_equals_the_brute_force_loop() -> None:
    """Through study_report: pearson (higher = more stable), None (NaN) on some samples."""
    pearson = {  # sixteenths, as above: ties are exact
        "A": {"layercam": [14, None, 3, 8, 10], "gradcam++": [2, 3, 5, 6, 8]},
        "B": {"layercam": [2, 5, 6, None, 8], "gradcam++": [8, 6, None, 3, 2]},
        "C": {"layercam": [None, 13, 5, 11, 6], "gradcam++": [5, 5, 5, 5, 5]},
    }
    pearson = {
        e: {m: [None if v is None else v / 16 for v in vs] for m, vs in per.items()}
        for e, per in pearson.items()
    }
    entries = [_entry(name, values) for name, values in pearson.items()]
    report = study_report(entries, n_boot=500, seed=3)
    names = list(pearson)
    for method in ("layercam", "gradcam++"):
        score = np.array(
            [[np.nan if v is None else v for v in pearson[e][method]] for e in names], dtype=float
        )
        want = _brute_order_probabilities(score, 500, np.random.default_rng(3))
        prob = report["rankings"][method]["pearson"]["order_probability"]
        for i, a in enumerate(names):
            for j, b in enumerate(names):
                if i != j:
                    assert prob[a][b] == pytest.approx(want[i, j], abs=1e-12), (method, a, b)
