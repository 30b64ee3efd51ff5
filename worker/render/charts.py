"""The report page's SVG charts, drawn as markup strings: the distribution plot of one metric,
the trajectory plot of one method x metric, and the heat colour legend.

Each returns :class:`markupsafe.Markup` so the templates insert it as it is: every piece of text
a chart embeds (labels, titles, numbers) is escaped here first.
"""

from __future__ import annotations

import math

import numpy as np
from markupsafe import Markup

from worker.render.formatting import (
    MetricInfo,
    esc,
    fmt,
    method_label,
    metric_info,
    num,
    tick_label,
)
from worker.render.overlay import HEAT_ANCHORS
from worker.results.report_schema import Stats, TrajectorySeries

MAX_DOTS = 400  # per method and metric in a distribution plot (quantile-thinned beyond)
TRAJ_WIDTH, TRAJ_HEIGHT = 616, 236
TRAJ_LEFT, TRAJ_RIGHT, TRAJ_TOP, TRAJ_BOTTOM = 52, 16, 14, 58


def _nice_step(span: float) -> float:
    raw = span / 4 if span > 0 else 0.25
    power = 10 ** math.floor(math.log10(raw))
    return next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)


def axis_range(info: MetricInfo, values: list[float]) -> tuple[float, float, float]:
    """(lo, hi, tick step) of a metric's axis: the data, the 'unchanged' value, natural bounds."""
    points = [*values, info.same]
    if info.sense == "zero":
        half = max(abs(p) for p in points) or 0.05
        lo, hi = -half, half
    else:
        lo, hi = min(points), max(points)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.05, hi + 0.05
    step = _nice_step(hi - lo)
    lo = max(info.bounds[0], math.floor(lo / step + 1e-9) * step)
    hi = min(info.bounds[1], math.ceil(hi / step - 1e-9) * step)
    if hi <= lo:
        lo, hi = info.bounds
    return lo, hi, step


def _ticks(lo: float, hi: float, step: float) -> list[float]:
    ticks, tick = [], math.ceil(lo / step - 1e-9) * step
    while tick <= hi + 1e-9:
        ticks.append(tick)
        tick += step
    return ticks


def thin(values: list[float], limit: int = MAX_DOTS) -> list[float]:
    """At most ``limit`` values, quantile-spaced, so a large sample stays a light plot."""
    if len(values) <= limit:
        return values
    ordered = np.sort(np.asarray(values))
    picks = np.linspace(0, ordered.size - 1, limit).round().astype(int)
    return [float(v) for v in ordered[picks]]


# --------------------------------------------------------------------------- distribution


def distribution_svg(
    metric: str, series: list[tuple[str, list[float], Stats]], colours: dict[str, str]
) -> Markup:
    """A horizontal box plot per method on one axis: samples as dots, box q25–q75, whiskers
    q05–q95, median line, and the mean as a diamond on its 95% CI bar."""
    info = metric_info(metric)
    left, right, row_h, top, axis_h = 108, 182, 40, 10, 26
    width = 616
    plot_w = width - left - right
    height = top + row_h * max(1, len(series)) + axis_h
    everything = [v for _, vals, _ in series for v in vals]
    for _, _, stats in series:
        everything += [
            v
            for k in ("q05", "q95", "ci95_low", "ci95_high", "mean")
            if (v := num(getattr(stats, k))) is not None
        ]
    lo, hi, step = axis_range(info, everything)

    def x(v: float) -> float:
        return left + (min(max(v, lo), hi) - lo) / (hi - lo) * plot_w

    parts = [
        f'<svg class="dist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{esc(info.label)} per method">'
    ]
    base_y = top + row_h * max(1, len(series))
    for tick in _ticks(lo, hi, step):
        tx = x(tick)
        parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top}" y2="{base_y}" class="grid"/>')
        parts.append(
            f'<text x="{tx:.1f}" y="{base_y + 16}" text-anchor="middle" class="tick">'
            f"{tick_label(tick, step)}</text>"
        )
    if lo <= info.same <= hi:
        sx = x(info.same)
        parts.append(f'<line x1="{sx:.1f}" x2="{sx:.1f}" y1="{top}" y2="{base_y}" class="same"/>')
    for i, (method, values, stats) in enumerate(series):
        colour = esc(colours.get(method, "#57606a"))
        cy = top + row_h * i + row_h / 2
        parts.append(
            f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end" class="rowlabel">'
            f"{esc(method_label(method))}</text>"
        )
        for j, v in enumerate(thin(values)):
            jitter = ((j * 0.6180339887) % 1.0 - 0.5) * (row_h - 14)
            parts.append(
                f'<circle cx="{x(v):.1f}" cy="{cy + jitter:.1f}" r="2.1" fill="{colour}" '
                'fill-opacity="0.28"/>'
            )
        q = {k: num(getattr(stats, k)) for k in ("q05", "q25", "median", "q75", "q95")}
        if q["q05"] is not None and q["q95"] is not None:
            parts.append(
                f'<line x1="{x(q["q05"]):.1f}" x2="{x(q["q95"]):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" '
                f'stroke="{colour}" stroke-width="1.5"/>'
            )
        if q["q25"] is not None and q["q75"] is not None:
            bx = x(q["q25"])
            bw = max(1.0, x(q["q75"]) - bx)
            parts.append(
                f'<rect x="{bx:.1f}" y="{cy - 9:.1f}" width="{bw:.1f}" height="18" rx="2" '
                f'fill="{colour}" fill-opacity="0.16" stroke="{colour}" stroke-width="1.5"/>'
            )
        if q["median"] is not None:
            mx = x(q["median"])
            parts.append(
                f'<line x1="{mx:.1f}" x2="{mx:.1f}" y1="{cy - 9:.1f}" y2="{cy + 9:.1f}" '
                f'stroke="{colour}" stroke-width="2.5"/>'
            )
        mean, low, high = num(stats.mean), num(stats.ci95_low), num(stats.ci95_high)
        if low is not None and high is not None:
            parts.append(
                f'<line x1="{x(low):.1f}" x2="{x(high):.1f}" y1="{cy:.1f}" y2="{cy:.1f}" '
                'class="ci"/>'
            )
        if mean is not None:
            mx = x(mean)
            parts.append(
                f'<path d="M{mx:.1f} {cy - 6:.1f} L{mx + 6:.1f} {cy:.1f} L{mx:.1f} {cy + 6:.1f} '
                f'L{mx - 6:.1f} {cy:.1f} Z" class="mean"/>'
            )
        label = f"mean {fmt(mean)}"
        if low is not None and high is not None:
            label += f" [{fmt(low)}, {fmt(high)}]"
        n = len(values) if stats.n is None else stats.n
        parts.append(
            f'<text x="{width - right + 10}" y="{cy - 1:.1f}" class="stat">{esc(label)}</text>'
            f'<text x="{width - right + 10}" y="{cy + 12:.1f}" class="stat muted">'
            f"n = {esc(n)}, median {fmt(q['median'])}</text>"
        )
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------- trajectory


def _points(stats: list[Stats], key: str) -> list[tuple[int, float]]:
    """(x position = step 1..n, value) of the steps where ``key`` is defined."""
    return [(k, v) for k, s in enumerate(stats, start=1) if (v := num(getattr(s, key))) is not None]


def trajectory_svg(
    metric: str, entry: TrajectorySeries, labels: list[str], colour: str, title: str
) -> Markup:
    """Both drift series of one method x metric over the steps (x: checkpoints 0..n): from
    the baseline (solid) and from the previous checkpoint (dashed), each on its 95% CI band,
    with the sharpest step shaded."""
    info = metric_info(metric)
    width, height = TRAJ_WIDTH, TRAJ_HEIGHT
    left, right, top, bottom = TRAJ_LEFT, TRAJ_RIGHT, TRAJ_TOP, TRAJ_BOTTOM
    colour = esc(colour)
    kinds = (("from_first", ""), ("consecutive", "6 4"))
    points = [
        v
        for kind, _ in kinds
        for stats in getattr(entry, kind)
        for k in ("mean", "ci95_low", "ci95_high")
        if (v := num(getattr(stats, k))) is not None
    ]
    lo, hi, step = axis_range(info, points)
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(1, len(labels) - 1)

    def x(i: float) -> float:
        return left + i / n * plot_w

    def y(v: float) -> float:
        return top + (hi - min(max(v, lo), hi)) / (hi - lo) * plot_h

    parts = [
        f'<svg class="traj" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{esc(title)}">'
    ]
    sharpest = entry.sharpest_step
    if isinstance(sharpest, int) and 1 <= sharpest <= n:
        x0, x1 = x(sharpest - 1), x(sharpest)
        parts.append(
            f'<rect x="{x0:.1f}" y="{top}" width="{x1 - x0:.1f}" height="{plot_h}" '
            'class="sharpest"><title>sharpest step</title></rect>'
        )
    for tick in _ticks(lo, hi, step):
        ty = y(tick)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{ty + 4:.1f}" text-anchor="end" class="tick">'
            f"{tick_label(tick, step)}</text>"
        )
    if lo <= info.same <= hi:
        sy = y(info.same)
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{sy:.1f}" y2="{sy:.1f}" class="same"/>'
        )
    for i, label in enumerate(labels):
        parts.append(
            f'<text x="{x(i):.1f}" y="{height - bottom + 16}" text-anchor="end" class="tick" '
            f'transform="rotate(-30 {x(i):.1f} {height - bottom + 16})">{esc(label)}</text>'
        )
    for kind, dash in kinds:
        stats = getattr(entry, kind)
        band_hi = [(x(k), y(v)) for k, v in _points(stats, "ci95_high")]
        band_lo = [(x(k), y(v)) for k, v in _points(stats, "ci95_low")]
        if kind == "from_first":  # both start at the baseline itself: no drift at x = 0
            band_hi.insert(0, (x(0), y(info.same)))
            band_lo.insert(0, (x(0), y(info.same)))
        if band_hi and len(band_hi) == len(band_lo):
            outline = band_hi + band_lo[::-1]
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in outline)
            parts.append(f'<polygon points="{path}" fill="{colour}" fill-opacity="0.12"/>')
        line = [(x(k), y(v)) for k, v in _points(stats, "mean")]
        if kind == "from_first" and line:
            line.insert(0, (x(0), y(info.same)))
        if line:
            path = " ".join(f"{px:.1f},{py:.1f}" for px, py in line)
            parts.append(
                f'<polyline points="{path}" fill="none" stroke="{colour}" stroke-width="2" '
                f'stroke-dasharray="{dash}"/>'
            )
            parts += [
                f'<circle cx="{px:.1f}" cy="{py:.1f}" r="3" fill="{colour}"/>' for px, py in line
            ]
    parts.append("</svg>")
    return Markup("".join(parts))


# --------------------------------------------------------------------------- legend


def heat_legend_svg() -> Markup:
    """The overlays' colour scale, low to high (the stops of the overlay's heat map)."""
    stops = "".join(
        f'<stop offset="{v:.2f}" stop-color="rgb({r},{g},{b})"/>' for v, r, g, b in HEAT_ANCHORS
    )
    return Markup(
        '<svg class="legend" viewBox="0 0 250 22" width="250" height="22" role="img" '
        'aria-label="heat colour scale">'
        f'<defs><linearGradient id="heat">{stops}</linearGradient></defs>'
        '<text x="0" y="15" class="tick">low</text>'
        '<rect x="30" y="5" width="170" height="12" rx="2" fill="url(#heat)"/>'
        '<text x="206" y="15" class="tick">high</text></svg>'
    )
