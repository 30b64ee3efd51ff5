"""Formatting shared by the HTML page, its trajectory section and the markdown summary.

Torch-free and free of markup: numbers and labels as plain text (the templates escape them),
plus the few readers every renderer needs of a report parsed as its model
(:func:`worker.results.report_schema.report_view`): methods, metrics, one summary cell, the floor
tables. Nothing here imports another render module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from markupsafe import escape
from pydantic import BaseModel

from worker import catalog
from worker.results.report_schema import DriftReport, FloorEntry, Stats, read_model

Floors = dict[str, dict[str, FloorEntry]]
FLOORS = (("noise_floor", "perturbed baseline"), ("replica_floor", "baseline replica (other seed)"))

ROLES = ("baseline", "candidate")
METHOD_COLOURS = ("#6f42c1", "#d4631b", "#1a7f37", "#bf3989", "#0a7ea4", "#7d6608")


@dataclass(frozen=True)
class MetricInfo:
    """How to read one drift metric: its label, natural range, the value that means
    "unchanged", which way is better (``high``, ``low``, or ``zero`` for signed changes) and a
    one-line explanation."""

    label: str
    bounds: tuple[float, float]
    same: float
    sense: str
    text: str

    def stability(self, value: float) -> float:
        """0 (far from "unchanged") .. 1 (unchanged), for tinting cells on a fixed colour scale
        (similarities 0.3 .. 0.9, distances and changes 0.3 .. 0): a colour, not a verdict."""
        if self.sense == "high":
            return float(np.clip((value - 0.3) / 0.6, 0.0, 1.0))
        return float(np.clip(1.0 - abs(value) / 0.3, 0.0, 1.0))


def metric_info(name: str) -> MetricInfo:
    """The catalog's entry, read for the page: which way is better, and how to say it."""
    try:
        info = catalog.metric_info(name)
    except ValueError:
        return MetricInfo(name, (-1, 1), 0, "zero", name)
    sense = {"lower": "high", "higher": "low", "abs": "zero"}[info.worse.value]
    return MetricInfo(info.label, info.bounds, info.unchanged, sense, info.text)


def metric_label(name: Any) -> str:
    return metric_info(str(name)).label


def method_label(name: str) -> str:
    info = catalog.METHODS.get(name)
    return info.label if info else name


# --------------------------------------------------------------------------- numbers


def esc(value: Any) -> str:
    """HTML-escaped text (as the templates escape it), for the markup built in Python: the
    SVG charts."""
    return str(escape(str(value)))


def num(value: Any) -> float | None:
    """A finite float, or None (None, bools, strings, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt(value: Any, digits: int = 3) -> str:
    """A number with ``digits`` decimals ("-0.000" shown as "0.000"), "–" when not one."""
    v = num(value)
    if v is None:
        return "–"
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def fmt_delta(a: Any, b: Any, digits: int = 3) -> str:
    """``b - a`` signed ("+0.012", "-0.100", "±0"), "–" when either is not a number."""
    x, y = num(a), num(b)
    if x is None or y is None:
        return "–"
    d = y - x
    return "±0" if abs(d) < 0.5 * 10**-digits else f"{d:+.{digits}f}"


def fmt_p(value: Any) -> str:
    """A p-value: three decimals, "< 0.001" below that."""
    v = num(value)
    if v is None:
        return "–"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def fmt_share(value: Any) -> str:
    v = num(value)
    return "–" if v is None else f"{v:.0%}"


def tick_label(value: float, step: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def dash(value: Any) -> Any:
    """The value, or "–" for None."""
    return "–" if value is None else value


def short(sha: Any, n: int = 12) -> str:
    return str(sha)[:n] if sha else "–"


def plain_number(value: Any, digits: int = 3) -> str:
    """The markdown summary's numbers: floats with ``digits`` decimals, others as they are."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def md_cell(text: Any) -> str:
    """Text safe inside a markdown table cell: no pipes or line breaks."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


# --------------------------------------------------------------------------- report readers


NO_STATS: Stats = read_model(Stats, {})  # every statistic None: what an unmeasured cell shows


def present(model: BaseModel | None) -> dict[str, Any]:
    """The keys a section holds, as JSON (declared fields the document gave, then extras)."""
    if model is None:
        return {}
    return model.model_dump(mode="json", by_alias=True, exclude_unset=True)


def class_names(report: DriftReport) -> list[str]:
    baseline = report.models.get("baseline")
    names = report.dataset.class_names or (baseline.class_names if baseline else None) or []
    return [str(n) for n in names]


def methods(report: DriftReport) -> list[str]:
    return [str(m) for m in report.config.methods or report.summaries]


def metrics(report: DriftReport) -> list[str]:
    if report.config.metrics:
        return [str(m) for m in report.config.metrics]
    return list(dict.fromkeys(m for per in report.summaries.values() for m in per))


def stats(report: DriftReport, method: str, metric: str, group: str = "overall") -> Stats:
    """One summary cell; :data:`NO_STATS` where the report has none."""
    return report.summaries.get(method, {}).get(metric, {}).get(group) or NO_STATS


def floor_entry(floor: Floors | None, method: str, metric: str) -> FloorEntry | None:
    return (floor or {}).get(method, {}).get(metric)


def role_title(report: DriftReport, role: str) -> str:
    model = report.models.get(role)
    phase = model.phase if model is not None else None
    return f"{role} ({str(phase).upper()})" if phase else role


def floor_tables(report: DriftReport) -> list[dict[str, Any]]:
    """Per measured floor (perturbed baseline, replica), one row per method x metric: the
    floor's median, its 95% tail (the threshold) and the share of samples beyond it."""
    blocks = []
    for key, label in FLOORS:
        floor = getattr(report, key)
        if not floor:
            continue
        table = []
        for method in methods(report):
            for metric in metrics(report):
                entry = floor_entry(floor, method, metric)
                if entry is not None:
                    table.append(
                        {
                            "method": method,
                            "metric": metric,
                            "median": entry.floor.median,
                            "threshold": entry.threshold,
                            "beyond": entry.beyond_floor,
                        }
                    )
        blocks.append({"key": key, "label": label, "rows": table})
    return blocks


# --------------------------------------------------------------------------- rows


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def row_value(row: dict[str, Any], method: str, metric: str) -> float | None:
    return num(as_dict(as_dict(row.get("metrics")).get(method)).get(metric))


def method_colours(names: list[str]) -> dict[str, str]:
    return {m: METHOD_COLOURS[i % len(METHOD_COLOURS)] for i, m in enumerate(names)}


def percent_width(value: Any) -> float:
    """A 0..1 value as a bar width in percent (clipped; 0 when not a number)."""
    v = num(value)
    return 0.0 if v is None else max(0.0, min(1.0, v)) * 100
