"""Summary statistics and tests for per-sample drift values
(docs/architecture.md, "Samples and statistics").

Every function returns plain Python numbers (JSON-serialisable); a value that cannot be
computed is ``None``, never NaN. Non-finite inputs (NaN from degenerate maps, inf) are counted
in ``n_nan`` and otherwise ignored, so a sample is never silently dropped.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats as sps

SUMMARY_KEYS: tuple[str, ...] = (
    "n",
    "n_nan",
    "mean",
    "std",
    "median",
    "q05",
    "q25",
    "q75",
    "q95",
    "ci95_low",
    "ci95_high",
)
_QUANTILES = {"q05": 0.05, "q25": 0.25, "median": 0.5, "q75": 0.75, "q95": 0.95}
# resamples x samples per bootstrap block: bounds memory at ~32 MB of indices
_BOOT_BLOCK = 4_000_000


def _float(value: Any) -> float | None:
    """Plain float, or None for NaN/inf/None: JSON has no NaN."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def summarize(
    values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95
) -> dict[str, Any]:
    """n, n_nan, mean, std (ddof=1), median, q05/q25/q75/q95 and a bootstrap CI of the mean.

    The CI is the percentile interval of ``n_boot`` seeded resample means at level ``ci``
    (keys keep the ``ci95_`` names whatever ``ci`` is). No finite values -> every statistic
    None; std and CI need at least 2 values.
    """
    return summarize_many([values], n_boot=n_boot, seed=seed, ci=ci)[0]


def summarize_many(
    arrays: Sequence[np.ndarray], *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95
) -> list[dict[str, Any]]:
    """:func:`summarize` of each array, the bootstrap paid once per count of finite values:
    every array of n finite values resamples by the same seeded draws (one call each would
    draw them identically), so they are drawn once and applied to all of them together."""
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    outs: list[dict[str, Any]] = []
    resampled: list[tuple[dict[str, Any], np.ndarray]] = []
    for values in arrays:
        flat = np.asarray(values, dtype=np.float64).ravel()
        finite = flat[np.isfinite(flat)]
        out: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
        out["n"], out["n_nan"] = int(finite.size), int(flat.size - finite.size)
        outs.append(out)
        if finite.size == 0:
            continue
        out["mean"] = _float(finite.mean())
        quantiles = np.quantile(finite, list(_QUANTILES.values()))
        out.update({key: _float(q) for key, q in zip(_QUANTILES, quantiles, strict=True)})
        if finite.size >= 2:
            out["std"] = _float(finite.std(ddof=1))
            resampled.append((out, finite))
    intervals = bootstrap_mean_cis([f for _, f in resampled], n_boot=n_boot, seed=seed, ci=ci)
    for (out, _), (low, high) in zip(resampled, intervals, strict=True):
        out["ci95_low"], out["ci95_high"] = low, high
    return outs


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95
) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean of finite ``values`` (:func:`bootstrap_mean_cis`)."""
    return bootstrap_mean_cis([values], n_boot=n_boot, seed=seed, ci=ci)[0]


def bootstrap_mean_cis(
    samples: Sequence[np.ndarray], *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95
) -> list[tuple[float | None, float | None]]:
    """The percentile bootstrap CI of the mean of each array of finite values.

    Resample i is n indices drawn from one ``default_rng(seed)`` after resamples 0..i-1, so
    it depends on n alone: arrays of one length share it, and their resample means come from
    one count matrix (how often each sample was drawn) times the stacked arrays, in blocks of
    bounded memory. Deterministic for a given (values, n_boot, seed).
    """
    out: list[tuple[float | None, float | None]] = [(None, None)] * len(samples)
    by_size: dict[int, list[int]] = {}
    for k, values in enumerate(samples):
        if np.size(values):
            by_size.setdefault(int(np.size(values)), []).append(k)
    alpha = (1.0 - ci) / 2.0
    for members in by_size.values():
        stacked = np.stack([np.asarray(samples[k], dtype=np.float64).ravel() for k in members], 1)
        means = _resample_means(stacked, n_boot, seed)
        for column, k in enumerate(members):
            low, high = np.quantile(means[:, column], [alpha, 1.0 - alpha])
            out[k] = (_float(low), _float(high))
    return out


def _resample_means(stacked: np.ndarray, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, m) resample means of the m columns of ``stacked`` (n, m)."""
    n = stacked.shape[0]
    rng = np.random.default_rng(seed)
    block = max(1, _BOOT_BLOCK // n)
    parts = []
    for done in range(0, n_boot, block):
        size = min(block, n_boot - done)
        draws = rng.integers(0, n, size=(size, n))
        draws += np.arange(0, size * n, n)[:, None]  # resample r counts in bins r*n .. r*n+n-1
        counts = np.bincount(draws.ravel(), minlength=size * n).reshape(size, n)
        parts.append(counts.astype(np.float64) @ stacked / n)
    return np.concatenate(parts)


def summarize_groups(
    values: np.ndarray, groups: np.ndarray, group_names: list[str], **kw: Any
) -> dict[str, dict[str, Any]]:
    """``"overall"`` plus one :func:`summarize` per group name (empty groups included).

    ``groups`` holds, per value, either an integer code indexing ``group_names`` or the
    group's name itself. ``kw`` is passed to :func:`summarize`.
    """
    return summarize_groups_many([values], groups, group_names, **kw)[0]


def summarize_groups_many(
    columns: Sequence[np.ndarray], groups: np.ndarray, group_names: list[str], **kw: Any
) -> list[dict[str, dict[str, Any]]]:
    """:func:`summarize_groups` of each column over the same ``groups``, the bootstraps of
    all of them shared (:func:`summarize_many`)."""
    groups = np.asarray(groups).ravel()
    if "overall" in group_names:
        raise ValueError("'overall' is reserved and cannot be a group name")
    by_code = np.issubdtype(groups.dtype, np.number)
    masks = [groups == (code if by_code else name) for code, name in enumerate(group_names)]
    names = ["overall", *group_names]
    arrays: list[np.ndarray] = []
    for values in columns:
        values = np.asarray(values).ravel()
        if values.shape != groups.shape:
            raise ValueError(f"values and groups differ in length: {values.size} vs {groups.size}")
        arrays.extend([values, *(values[mask] for mask in masks)])
    flat = summarize_many(arrays, **kw)
    step = len(names)
    return [dict(zip(names, flat[at : at + step], strict=True)) for at in range(0, len(flat), step)]


def paired_test(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Wilcoxon signed-rank test of x vs y on pairs where both are finite.

    ``statistic`` and ``p_value`` are scipy's (two-sided, zero differences dropped);
    ``effect_size`` is the matched-pairs rank-biserial correlation (R+ - R-) / (R+ + R-) over
    the non-zero differences x - y: +1 when every x > y, -1 when every x < y. All three are
    None when n < 2 or every difference is zero.
    """
    x, y = _finite_pairs(x, y)
    out: dict[str, Any] = {"n": int(x.size), "statistic": None, "p_value": None}
    out["effect_size"] = None
    diff = x - y
    if x.size < 2 or not np.any(diff != 0):
        return out
    res = sps.wilcoxon(x, y, zero_method="wilcox", alternative="two-sided")
    out["statistic"], out["p_value"] = _float(res.statistic), _float(res.pvalue)
    out["effect_size"] = _rank_biserial(diff)
    return out


def _rank_biserial(diff: np.ndarray) -> float | None:
    """Matched-pairs rank-biserial correlation of non-zero paired differences."""
    diff = diff[diff != 0]
    ranks = sps.rankdata(np.abs(diff))
    total = ranks.sum()
    return _float((ranks[diff > 0].sum() - ranks[diff < 0].sum()) / total)


def kendall_tau(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    """Kendall's tau-b between two rankings/scores on pairs where both are finite.

    ``{"tau", "p_value", "n"}``; tau and p are None when undefined (n < 2, a constant side).
    """
    x, y = _finite_pairs(x, y)
    out: dict[str, Any] = {"tau": None, "p_value": None, "n": int(x.size)}
    if x.size < 2:
        return out
    res = sps.kendalltau(x, y)
    out["tau"], out["p_value"] = _float(res.statistic), _float(res.pvalue)
    return out


def _finite_pairs(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(x, dtype=np.float64).ravel()
    y = np.asarray(y, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"paired arrays differ in length: {x.size} vs {y.size}")
    keep = np.isfinite(x) & np.isfinite(y)
    return x[keep], y[keep]
