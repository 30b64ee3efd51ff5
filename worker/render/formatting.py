"""Formatting shared by the HTML page, its trajectory section and the markdown summary.

Torch-free and free of markup: numbers and labels as plain text (the templates escape them),
plus the few readers of a report's loosely typed JSON (``as_dict``, ``methods`` ...) that every
renderer needs. Nothing here imports another render module.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from markupsafe import escape

from worker import catalog

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
        """0 (moved) .. 1 (unchanged), for tinting cells; on the same scale as :meth:`judge`
        (a similarity of 0.5 or a distance of 0.15 is one third of the way from red)."""
        if self.sense == "high":
            return float(np.clip((value - 0.3) / 0.6, 0.0, 1.0))
        return float(np.clip(1.0 - abs(value) / 0.3, 0.0, 1.0))

    def judge(self, value: float) -> str:
        """'held' | 'shifted partly' | 'moved' for a mean value of this metric."""
        if self.sense == "high":
            return "held" if value >= 0.7 else "moved" if value < 0.5 else "shifted partly"
        size = abs(value)
        return "held" if size <= 0.05 else "moved" if size > 0.15 else "shifted partly"


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


def as_dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def class_names(report: dict[str, Any]) -> list[str]:
    dataset = as_dict(report.get("dataset"))
    names = dataset.get("class_names") or as_dict(
        as_dict(report.get("models")).get("baseline")
    ).get("class_names")
    return [str(n) for n in as_list(names)]


def methods(report: dict[str, Any]) -> list[str]:
    listed = as_list(as_dict(report.get("config")).get("methods"))
    summaries = as_dict(report.get("summaries"))
    return [str(m) for m in listed] or [str(m) for m in summaries]


def metrics(report: dict[str, Any]) -> list[str]:
    listed = as_list(as_dict(report.get("config")).get("metrics"))
    if listed:
        return [str(m) for m in listed]
    seen: dict[str, None] = {}
    for per_metric in as_dict(report.get("summaries")).values():
        seen.update(dict.fromkeys(as_dict(per_metric)))
    return list(seen)


def stats(report: dict[str, Any], method: str, metric: str, group: str = "overall") -> dict:
    summaries = as_dict(report.get("summaries"))
    return as_dict(as_dict(as_dict(summaries.get(method)).get(metric)).get(group))


def role_title(report: dict[str, Any], role: str) -> str:
    phase = as_dict(as_dict(report.get("models")).get(role)).get("phase")
    return f"{role} ({str(phase).upper()})" if phase else role


def row_value(row: dict[str, Any], method: str, metric: str) -> float | None:
    return num(as_dict(as_dict(row.get("metrics")).get(method)).get(metric))


def method_colours(names: list[str]) -> dict[str, str]:
    return {m: METHOD_COLOURS[i % len(METHOD_COLOURS)] for i, m in enumerate(names)}


def percent_width(value: Any) -> float:
    """A 0..1 value as a bar width in percent (clipped; 0 when not a number)."""
    v = num(value)
    return 0.0 if v is None else max(0.0, min(1.0, v)) * 100
