"""The randomisation ceiling: every drift figure on one scale, floor (0) -> random model (1).

MPRT-style (Adebayo et al. 2018): when an audit also compares the baseline with a copy of
itself whose top layers are re-initialised (the job's ``ceiling``, e.g. ``head``), each class
mean of a drift metric can be read as ``(drift - floor) / (ceiling - floor)``. The floor is the
noise floor's class mean when the audit measured one, else the metric's value for identical
maps (``unchanged`` in the catalog). Signed changes are read as magnitudes.

Binder et al. 2023's caveats hold: the ceiling depends on which layers are randomised and on
how maps are normalised, and a position says how close to *random* the evidence moved, not
whether it moved to the right place. Where the random model drifts no further than the floor
(``separable`` False) there is no scale, and no position.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from worker.catalog import Direction, is_audit_metric, metric_info
from worker.results.rows import RowTable

CEILING = "ceiling"  # the row series


def scale_position(
    metric: str, value: float | None, floor: float, ceiling: float | None
) -> tuple[float | None, bool]:
    """(position of ``value`` on the floor (0) -> ceiling (1) scale, separable), on the
    metric's magnitude axis. Not separable: the ceiling is not beyond the floor in the drift
    direction (then no position)."""
    worse = metric_info(metric).worse
    floor = float(worse.magnitude(floor))
    if ceiling is None:
        return None, False
    span = float(worse.magnitude(ceiling)) - floor
    separable = (span < 0 if worse is Direction.LOWER else span > 0) and abs(span) > 1e-12
    if not separable or value is None:
        return None, separable
    return (float(worse.magnitude(value)) - floor) / span, True


def ceiling_section(
    table: RowTable, methods: Sequence[str], metrics: Sequence[str], class_names: Sequence[str]
) -> dict[str, Any] | None:
    """Per method x drift metric, overall and per class: n, the drift's class mean, the floor,
    the ceiling and the drift's position on that scale. None when no row measured a ceiling."""
    if not table.has(CEILING):
        return None
    rows = table.take(table.included & table.present[CEILING])
    with_floor = rows.has("floor")
    groups = [("overall", np.ones(len(rows), dtype=bool))] + [
        (name, rows.label == k) for k, name in enumerate(class_names)
    ]
    out: dict[str, Any] = {}
    for method in methods:
        out[method] = {}
        for metric in metrics:
            info = metric_info(metric)
            if info.model is not None or is_audit_metric(metric):
                continue  # a level of one model, or measured across samples: no pair drift
            drift = rows.values(method, metric)
            top = rows.values(method, metric, series=CEILING)
            floor_values = rows.values(method, metric, series="floor") if with_floor else None
            entry: dict[str, Any] = {}
            for name, mask in groups:
                ok = mask & np.isfinite(drift) & np.isfinite(top)
                n = int(ok.sum())
                if not n:
                    entry[name] = {"n": 0, "drift": None, "floor": None, "ceiling": None}
                    entry[name].update(position=None, separable=False, floor_source=None)
                    continue
                floor, source = float(info.unchanged), "identical maps"
                if floor_values is not None and np.isfinite(floor_values[ok]).any():
                    floor = float(np.nanmean(floor_values[ok]))
                    source = "noise floor"
                mean, ceiling = float(drift[ok].mean()), float(top[ok].mean())
                position, separable = scale_position(metric, mean, floor, ceiling)
                entry[name] = {
                    "n": n,
                    "drift": mean,
                    "floor": floor,
                    "floor_source": source,
                    "ceiling": ceiling,
                    "position": position,
                    "separable": separable,
                }
            if entry:
                out[method][metric] = entry
    return out
