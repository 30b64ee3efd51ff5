"""Summary statistics and tests for per-sample drift values
(docs/architecture.md, "Samples and statistics").

Every function returns plain Python numbers (JSON-serialisable); a value that cannot be
computed is ``None``, never NaN. Non-finite inputs (NaN from degenerate maps, inf) are counted
in ``n_nan`` and otherwise ignored, so a sample is never silently dropped.
"""

from __future__ import annotations

import math
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
    if not 0.0 < ci < 1.0:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    flat = np.asarray(values, dtype=np.float64).ravel()
    finite = flat[np.isfinite(flat)]
    out: dict[str, Any] = dict.fromkeys(SUMMARY_KEYS)
    out["n"], out["n_nan"] = int(finite.size), int(flat.size - finite.size)
    if finite.size == 0:
        return out
    out["mean"] = _float(finite.mean())
    quantiles = np.quantile(finite, list(_QUANTILES.values()))
    out.update({key: _float(q) for key, q in zip(_QUANTILES, quantiles, strict=True)})
    if finite.size >= 2:
        out["std"] = _float(finite.std(ddof=1))
        low, high = bootstrap_mean_ci(finite, n_boot=n_boot, seed=seed, ci=ci)
        out["ci95_low"], out["ci95_high"] = low, high
    return out


def bootstrap_mean_ci(
    values: np.ndarray, *, n_boot: int = 2000, seed: int = 0, ci: float = 0.95
) -> tuple[float | None, float | None]:
    """Percentile bootstrap CI of the mean of finite ``values``; vectorised in blocks.

    Deterministic for a given (values, n_boot, seed): the block size depends only on n.
    """
    n = values.size
    if n == 0:
        return None, None
    rng = np.random.default_rng(seed)
    block = max(1, _BOOT_BLOCK // n)
    means = np.concatenate(
        [
            values[rng.integers(0, n, size=(min(block, n_boot - done), n))].mean(axis=1)
            for done in range(0, n_boot, block)
        ]
    )
    alpha = (1.0 - ci) / 2.0
    low, high = np.quantile(means, [alpha, 1.0 - alpha])
    return _float(low), _float(high)


def summarize_groups(
    values: np.ndarray, groups: np.ndarray, group_names: list[str], **kw: Any
) -> dict[str, dict[str, Any]]:
    """``"overall"`` plus one :func:`summarize` per group name (empty groups included).

    ``groups`` holds, per value, either an integer code indexing ``group_names`` or the
    group's name itself. ``kw`` is passed to :func:`summarize`.
    """
    values = np.asarray(values).ravel()
    groups = np.asarray(groups).ravel()
    if values.shape != groups.shape:
        raise ValueError(f"values and groups differ in length: {values.size} vs {groups.size}")
    if "overall" in group_names:
        raise ValueError("'overall' is reserved and cannot be a group name")
    out = {"overall": summarize(values, **kw)}
    by_code = np.issubdtype(groups.dtype, np.number)
    for code, name in enumerate(group_names):
        mask = groups == (code if by_code else name)
        out[name] = summarize(values[mask], **kw)
    return out


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
