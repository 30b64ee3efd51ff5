"""The names a drift job may ask for, torch-free, so the API validates with the engine's lists.

The engine (``worker.attribution``, ``worker.metrics``, ``worker.selection``) keeps its own
copies today; a test pins them equal, and they may import from here later.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

METHODS: tuple[str, ...] = (
    "gradcam",
    "gradcam++",
    "layercam",
    "xgradcam",
    "hirescam",
    # expensive, extra passes each (worker.perturbation): one masked forward per feature channel
    # per sample, and 32 path forwards + backwards per sample
    "scorecam",
    "ig",
)
DEFAULT_METHODS: tuple[str, ...] = ("layercam", "gradcam++")
METRICS: tuple[str, ...] = (
    "displacement",
    "peak_displacement",
    "iou_top20",
    "iou_t50",
    "pearson",
    "spearman",
    "concentration_change",
    "entropy_change",
)
SAMPLE_FILTERS: tuple[str, ...] = ("true_positive", "all", "predicted", "disagreement")
SPLITS: tuple[str, ...] = ("auto", "train", "val", "test")
JOB_STATUSES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED_STATUSES: tuple[str, ...] = ("succeeded", "failed", "cancelled")
GATE_STATS: tuple[str, ...] = (
    "mean",
    "median",
    "q05",
    "q95",
    "ci95_low",
    "ci95_high",
    "beyond_floor",
)
GATE_OPS: tuple[str, ...] = (">=", ">", "<=", "<", "==", "!=")

SIMILARITIES: tuple[str, ...] = ("iou_t50", "pearson", "spearman")  # + iou_topQ: 1 = unchanged
DISTANCES: tuple[str, ...] = ("displacement", "peak_displacement")  # 0 = unchanged


def drift_direction(metric: str) -> str:
    """Which way a metric shows more drift: ``lower`` (a similarity), ``higher`` (a distance)
    or ``abs`` (a signed change: larger magnitude)."""
    if metric in SIMILARITIES or metric.startswith("iou_"):
        return "lower"
    return "higher" if metric in DISTANCES else "abs"


_TOPQ = re.compile(r"iou_top([1-9][0-9]?)")


def is_metric(name: object) -> bool:
    """A known metric, or ``iou_topQ`` for an integer Q in 1..99 without leading zeros."""
    return isinstance(name, str) and (name in METRICS or _TOPQ.fullmatch(name) is not None)


def check_method(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return name


def check_metric(name: str) -> str:
    if not is_metric(name):
        raise ValueError(
            f"unknown metric {name!r}; choose from {', '.join(METRICS)} or iou_topQ with Q in 1..99"
        )
    return name


def check_sample_filter(name: str) -> str:
    if name not in SAMPLE_FILTERS:
        raise ValueError(f"unknown sample_filter {name!r}; choose from {', '.join(SAMPLE_FILTERS)}")
    return name


def unique(names: Sequence[str]) -> list[str]:
    """De-duplicated, in the caller's order (so each name is computed once)."""
    return list(dict.fromkeys(names))
