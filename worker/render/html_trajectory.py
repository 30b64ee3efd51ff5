"""The HTML report's trajectory section: drift along the checkpoint sequence, drawn as SVG.

One chart per method x headline metric: the drift from the baseline (solid) and from the
previous checkpoint (dashed), each on its 95% bootstrap CI band, with the sharpest step shaded;
under the charts, each checkpoint's accuracy and macro AUC — flat AUC next to moving evidence
is the finding this section exists to show. Self-contained: no script, no external files.

This module reads the report's ``trajectory`` (:class:`TrajectorySection`) into plain values for
``templates/_trajectory.html.j2``; the page (:mod:`.html_report`) includes that partial, and
:func:`trajectory_section` renders it alone.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from markupsafe import Markup

from worker.render.charts import trajectory_svg
from worker.render.formatting import fmt, method_colours, method_label, metric_info
from worker.render.templating import html_environment
from worker.results.report_schema import (
    CheckpointScore,
    DriftReport,
    TrajectorySection,
    TrajectorySeries,
    read_model,
    report_view,
)

__all__ = [
    "HEADLINE",
    "headline_metrics",
    "trajectory_context",
    "trajectory_section",
    "trajectory_svg",
]

HEADLINE = ("iou_top20", "pearson", "displacement")  # the gate's metrics, when the job has them
Series = dict[str, dict[str, TrajectorySeries]]
NO_SCORE = read_model(CheckpointScore, {})


def headline_metrics(series: Series) -> list[str]:
    measured = list(next(iter(series.values()), {}))
    return [m for m in HEADLINE if m in measured] or measured[:3]


def trajectory_context(report: DriftReport | Mapping[str, Any]) -> dict[str, Any] | None:
    """The section's values, or None when the job audited two checkpoints only."""
    section = report_view(report).trajectory
    if section is None or not section.series:
        return None
    series = section.series
    labels = [str(i if c.label is None else c.label) for i, c in enumerate(section.checkpoints)]
    colours = method_colours(list(series))
    metrics = headline_metrics(series)
    empty = read_model(TrajectorySeries, {})
    charts = []
    for method in series:
        for metric in metrics:
            entry = series[method].get(metric) or empty
            title = f"{method_label(method)} · {metric_info(metric).label}"
            sharpest = entry.sharpest_step
            where = None
            if isinstance(sharpest, int) and 0 < sharpest < len(labels):
                where = (labels[sharpest - 1], labels[sharpest])
            charts.append(
                {
                    "title": title,
                    "sharpest": where,
                    "svg": trajectory_svg(metric, entry, labels, colours[method], title),
                }
            )
    head, rows = _performance_table(section, labels)
    return {
        "labels": labels,
        "samples": "?" if section.samples is None else section.samples,
        "charts": charts,
        "head": head,
        "rows": rows,
    }


def _performance_table(
    section: TrajectorySection, labels: list[str]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Per checkpoint: accuracy, macro AUC and each method's headline drift from the baseline."""
    series, scores = section.series, section.performance
    metrics = headline_metrics(series)
    head = ["checkpoint", "accuracy", "macro AUC"] + [
        f"{method_label(m)} {metric_info(k).label}" for m in series for k in metrics
    ]
    rows = []
    for i, label in enumerate(labels):
        score = scores[i] if i < len(scores) else NO_SCORE
        values = [fmt(score.accuracy), fmt(score.macro_auc)]
        for method in series:
            for metric in metrics:
                entry = series[method].get(metric)
                steps = entry.from_first if entry is not None else []
                values.append(
                    fmt(steps[i - 1].mean) if 0 < i <= len(steps) else fmt(metric_info(metric).same)
                )
        rows.append({"label": label, "cells": values})
    return head, rows


def trajectory_section(report: DriftReport | Mapping[str, Any]) -> str:
    """The whole section as HTML, or "" when the job audited two checkpoints only."""
    context = trajectory_context(report)
    if context is None:
        return ""
    template = html_environment().get_template("_trajectory.html.j2")
    return Markup(template.render(trajectory=context))
