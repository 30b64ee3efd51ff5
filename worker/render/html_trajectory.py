"""The HTML report's trajectory section: drift along the checkpoint sequence, drawn as SVG.

One chart per method x headline metric: the drift from the baseline (solid) and from the
previous checkpoint (dashed), each on its 95% bootstrap CI band, with the sharpest step shaded;
under the charts, each checkpoint's accuracy and macro AUC — flat AUC next to moving evidence
is the finding this section exists to show. Self-contained: no script, no external files.
"""

from __future__ import annotations

import math
from typing import Any

from worker.render.html_report import (
    METHOD_COLOURS,
    _dict,
    _list,
    _num,
    _section,
    _table,
    _tick_label,
    axis_range,
    esc,
    fmt,
    method_label,
    metric_info,
)

HEADLINE = ("iou_top20", "pearson", "displacement")  # the gate's metrics, when the job has them
WIDTH, HEIGHT = 616, 236
LEFT, RIGHT, TOP, BOTTOM = 52, 16, 14, 58


def headline_metrics(series: dict[str, Any]) -> list[str]:
    measured = list(next(iter(series.values()), {}))
    return [m for m in HEADLINE if m in measured] or measured[:3]


def trajectory_svg(
    metric: str, entry: dict[str, Any], labels: list[str], colour: str, title: str
) -> str:
    """Both drift series of one method x metric over the steps (x: checkpoints 0..n)."""
    info = metric_info(metric)
    kinds = (("from_first", ""), ("consecutive", "6 4"))
    points = [
        v
        for kind, _ in kinds
        for stats in _list(entry.get(kind))
        for k in ("mean", "ci95_low", "ci95_high")
        if (v := _num(_dict(stats).get(k))) is not None
    ]
    lo, hi, step = axis_range(info, points)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    n = max(1, len(labels) - 1)

    def x(i: float) -> float:
        return LEFT + i / n * plot_w

    def y(v: float) -> float:
        return TOP + (hi - min(max(v, lo), hi)) / (hi - lo) * plot_h

    parts = [
        f'<svg class="traj" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" '
        f'role="img" aria-label="{esc(title)}">'
    ]
    sharpest = entry.get("sharpest_step")
    if isinstance(sharpest, int) and 1 <= sharpest <= n:
        x0, x1 = x(sharpest - 1), x(sharpest)
        parts.append(
            f'<rect x="{x0:.1f}" y="{TOP}" width="{x1 - x0:.1f}" height="{plot_h}" '
            'class="sharpest"><title>sharpest step</title></rect>'
        )
    tick = math.ceil(lo / step - 1e-9) * step
    while tick <= hi + 1e-9:
        ty = y(tick)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{ty:.1f}" y2="{ty:.1f}" class="grid"/>'
            f'<text x="{LEFT - 6}" y="{ty + 4:.1f}" text-anchor="end" class="tick">'
            f"{_tick_label(tick, step)}</text>"
        )
        tick += step
    if lo <= info.same <= hi:
        sy = y(info.same)
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{sy:.1f}" y2="{sy:.1f}" class="same"/>'
        )
    for i, label in enumerate(labels):
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="end" class="tick" '
            f'transform="rotate(-30 {x(i):.1f} {HEIGHT - BOTTOM + 16})">{esc(label)}</text>'
        )
    for kind, dash in kinds:
        stats = [_dict(s) for s in _list(entry.get(kind))]
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
    return "".join(parts)


def _points(stats: list[dict[str, Any]], key: str) -> list[tuple[int, float]]:
    """(x position = step 1..n, value) of the steps where ``key`` is defined."""
    return [(k, v) for k, s in enumerate(stats, start=1) if (v := _num(s.get(key))) is not None]


def trajectory_section(report: dict[str, Any]) -> str:
    """The whole section, or "" when the job audited two checkpoints only."""
    section = _dict(report.get("trajectory"))
    series = _dict(section.get("series"))
    if not series:
        return ""
    checkpoints = [_dict(c) for c in _list(section.get("checkpoints"))]
    labels = [str(c.get("label", i)) for i, c in enumerate(checkpoints)]
    methods = list(series)
    colours = {m: METHOD_COLOURS[i % len(METHOD_COLOURS)] for i, m in enumerate(methods)}
    cards = []
    for method in methods:
        for metric in headline_metrics(series):
            entry = _dict(_dict(series[method]).get(metric))
            title = f"{method_label(method)} · {metric_info(metric).label}"
            sharpest = entry.get("sharpest_step")
            where = (
                f"sharpest step: {esc(labels[sharpest - 1])} → {esc(labels[sharpest])}"
                if isinstance(sharpest, int) and 0 < sharpest < len(labels)
                else ""
            )
            cards.append(
                f'<div class="card chart"><div class="chart-title">{esc(title)}</div>'
                f'<div class="muted small">{where}</div>'
                f"{trajectory_svg(metric, entry, labels, colours[method], title)}</div>"
            )
    note = (
        f'<p class="muted">{len(labels)} checkpoints, {esc(section.get("samples", "?"))} '
        "included samples. Solid: drift from the baseline (how far the evidence has moved); "
        "dashed: drift from the previous checkpoint (where it moved); bands: 95% bootstrap "
        "CIs of the mean; shaded: the step with the largest change; grey dashed line: "
        "“unchanged”.</p>"
    )
    table = _performance_table(section, series, labels)
    return _section(
        "trajectory",
        "Trajectory: drift along the checkpoints",
        note + f'<div class="grid2">{"".join(cards)}</div>' + table,
    )


def _performance_table(section: dict[str, Any], series: dict[str, Any], labels: list[str]) -> str:
    """Per checkpoint: accuracy, macro AUC and each method's headline drift from the baseline."""
    scores = [_dict(s) for s in _list(section.get("performance"))]
    metrics = headline_metrics(series)
    head = ["checkpoint", "accuracy", "macro AUC"] + [
        f"{esc(method_label(m))} {esc(metric_info(k).label)}" for m in series for k in metrics
    ]
    rows = []
    for i, label in enumerate(labels):
        score = scores[i] if i < len(scores) else {}
        cells = [esc(label), fmt(score.get("accuracy")), fmt(score.get("macro_auc"))]
        for method in series:
            for metric in metrics:
                steps = _list(_dict(_dict(series[method]).get(metric)).get("from_first"))
                cells.append(
                    fmt(_dict(steps[i - 1]).get("mean"))
                    if 0 < i <= len(steps)
                    else fmt(metric_info(metric).same)
                )
        rows.append([f"<span class=num>{c}</span>" if j else c for j, c in enumerate(cells)])
    return "<h3>Per checkpoint (drift from the baseline, mean)</h3>" + _table(head, rows, "narrow")
