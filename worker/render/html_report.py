"""The drift report as ONE self-contained HTML page: the page a reviewer reads.

Torch-free. Everything is inline: the CSS (``report.css``), SVG charts (:mod:`.charts`),
overlays as base64 PNG data URIs, and a few lines of script that only check the images loaded
(``body[data-images-ok]``). No external resource, so the page can be mailed, attached to a CI
run or opened offline.

Sections (each with an ``id``): ``verdict``, ``performance``, ``subsets``, ``distributions``,
``per-class``, ``floor`` and ``trajectory`` (when measured), ``samples``, ``settings``. This
module parses the report once (:func:`worker.results.report_schema.report_view`) and reads it
into plain values for ``templates/report.html.j2`` (one block per section); Jinja2 escapes every
string, numbers are formatted by :mod:`.formatting`.

The page tells one story: the headline above the verdict IS the verdict when the report has one
(its state, reason and the failing checks, which the verdict's table lists first), and the floor
section says which of its shares the policy gates. Without a verdict the headline reads the drift
against the noise floor when the audit measured one, never against fixed cut-offs.

``render_html`` takes the report, its per-sample rows and a callback that returns the overlay
PNG of (row index, method) or None; ``write_local_html`` wires it to a local run's files (the
rows JSON lines and maps folder next to the report, images under the dataset folder). The API
wires the same renderer to SQL rows and the artifact store.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from worker.render import html_trajectory
from worker.render.charts import MAX_DOTS, axis_range, distribution_svg, heat_legend_svg
from worker.render.formatting import (
    METHOD_COLOURS,
    ROLES,
    MetricInfo,
    as_dict,
    as_list,
    class_names,
    esc,
    floor_entry,
    floor_tables,
    fmt,
    fmt_delta,
    method_colours,
    method_label,
    methods,
    metric_info,
    metrics,
    num,
    present,
    role_title,
    row_value,
    stats,
)
from worker.render.overlay import OverlayUnavailable, overlay_for_sample
from worker.render.templating import html_environment, stylesheet
from worker.results.report_schema import Check, DriftReport, Verdict, report_view

__all__ = [
    "MAX_DOTS",
    "METHOD_COLOURS",
    "ROLES",
    "SECTIONS",
    "MetricInfo",
    "OverlaySource",
    "axis_range",
    "distribution_svg",
    "esc",
    "fmt",
    "fmt_delta",
    "headline",
    "heat_legend_svg",
    "method_label",
    "metric_info",
    "most_drifted",
    "render_html",
    "write_local_html",
]

OverlaySource = Callable[[int, str], "bytes | None"]
Report = DriftReport | Mapping[str, Any]

SECTIONS = (
    ("verdict", "Verdict"),
    ("performance", "Performance"),
    ("subsets", "Samples evaluated"),
    ("distributions", "Distributions"),
    ("per-class", "Per class"),
    ("floor", "Noise floor"),
    ("ceiling", "Ceiling"),
    ("trajectory", "Trajectory"),
    ("samples", "Most drifted"),
    ("settings", "Settings"),
)
OPTIONAL = ("floor", "ceiling", "trajectory")  # on the page only when the audit measured them

VERDICT_TEXT = {
    "pass": ("PASS", "The candidate passes the policy."),
    "fail": ("FAIL", "The candidate fails the policy."),
    "inconclusive": ("INCONCLUSIVE", "Too little evidence for a decision."),
}
OP_SYMBOLS = {">=": "≥", "<=": "≤", "!=": "≠", "==": "="}
ROLE_COLOURS = {"baseline": "#8c959f", "candidate": "#0969da"}
RANKINGS = (("iou_top20", False), ("displacement", True), ("iou_t50", False), ("pearson", False))
# the metric the headline quotes when there is no verdict: the first of these the job measured
PREFERRED = ("iou_top20", "displacement", "pearson", "iou_t50", "spearman")
HEADLINE_CHECKS = 3  # failing checks named in the headline; the rest are counted
FLOOR_TAIL = 0.05  # the share of samples beyond a floor's 95% tail when drift is only noise


# --------------------------------------------------------------------------- verdict


def _state(report: DriftReport) -> str | None:
    """The verdict's state (``pass``, ``fail``, ``inconclusive``), None without one."""
    verdict = report.verdict
    state = str(verdict.verdict).lower() if verdict is not None and verdict.verdict else None
    return state if state in VERDICT_TEXT else None


def _verdict(report: DriftReport) -> dict[str, Any]:
    state = _state(report)
    verdict = report.verdict
    if state is None or verdict is None:
        return {"state": None}
    badge, sentence = VERDICT_TEXT[state]
    rules = verdict.rules
    if verdict.reason:
        lines = [verdict.reason[:1].upper() + verdict.reason[1:]]
    elif rules:
        passed = sum(1 for r in rules if r.passed is True)
        lines = [f"{passed} of {len(rules)} checks passed."]
    else:
        lines = []
    extra = []
    if verdict.n_included is not None:
        extra.append(f"{verdict.n_included} samples included")
    if verdict.min_samples is not None:
        extra.append(f"min_samples {verdict.min_samples}")
    policy = verdict.policy
    policy_text = json.dumps(policy, indent=2, sort_keys=True) if policy is not None else None
    return {
        "state": state,
        "badge": badge,
        "sentence": sentence,
        "lines": lines,
        "extra": extra,
        "rules": [_rule(r) for r in verdict.ordered()],  # failed, not evaluable, passed
        "policy": policy_text,
    }


def check_title(check: Check) -> str:
    """``LayerCAM · IoU@20 · mean · class effusion``: what one check measured."""
    metric, stat = check.metric or "?", check.stat or "mean"
    parts = [method_label(check.method or "*"), metric_info(metric).label, stat]
    if check.class_ not in (None, "", "overall"):
        parts.append(f"class {check.class_}")
    return " · ".join(parts)


def _required(check: Check) -> str:
    op = check.op or ""
    return f"{OP_SYMBOLS.get(op, op)} {'–' if check.value is None else fmt(check.value)}"


def _rule(check: Check) -> dict[str, Any]:
    metric, stat = check.metric or "?", check.stat or "mean"
    name = check.name
    auto = isinstance(name, str) and all(t in name for t in (metric, stat))
    op = check.op or ""
    return {
        "title": check_title(check),
        "name": name if name and not auto else None,
        "observed": fmt(check.observed),
        "n": check.n,
        "op": OP_SYMBOLS.get(op, op),
        "required": "–" if check.value is None else fmt(check.value),
        "passed": check.passed,
        "reason": check.reason,
    }


# --------------------------------------------------------------------------- headline


def headline(report: Report) -> str:
    """The page's one story, in plain text. With a verdict it IS the verdict: its state, its
    reason and the checks that decided it (the failing ones; for an inconclusive verdict the
    ones that could not be evaluated), then what happened to accuracy. Without one: accuracy,
    and the drift read against the noise floor when the audit measured one (else the mean with
    its CI and the value that means "unchanged") -- never a judgement by fixed cut-offs."""
    view = report_view(report)
    accuracy = _accuracy(view)
    state = _state(view)
    if state is not None and view.verdict is not None:
        return f"{_verdict_story(state, view.verdict)} {accuracy}."
    return f"No policy was applied (no pass / fail). {accuracy}; {_evidence(view)}."


def _verdict_story(state: str, verdict: Verdict) -> str:
    badge = VERDICT_TEXT[state][0]
    reason = verdict.reason or {"pass": "every check passed"}.get(state, "")
    deciding: list[Check] = []
    if state == "fail":
        deciding = verdict.failed()
    elif state == "inconclusive" and not _too_few(verdict):
        deciding = verdict.unknown()
    story = f"{badge}: {reason}" if reason else badge
    if deciding:
        named = [_check_story(c) for c in deciding[:HEADLINE_CHECKS]]
        more = len(deciding) - len(named)
        story += " — " + "; ".join(named) + (f"; and {more} more" if more > 0 else "")
    return story + "."


def _too_few(verdict: Verdict) -> bool:
    """Inconclusive for the sample count itself (``min_samples``), not for a check."""
    n, needed = verdict.n_included, verdict.min_samples
    return n is not None and needed is not None and n < needed


def _check_story(check: Check) -> str:
    if check.passed is None:
        return f"{check_title(check)}: {check.reason or 'not evaluated'}"
    return f"{check_title(check)}: observed {fmt(check.observed)}, required {_required(check)}"


def _accuracy(report: DriftReport) -> str:
    baseline, candidate = (report.performance.get(role) for role in ROLES)
    before = num(baseline.accuracy) if baseline is not None else None
    after = num(candidate.accuracy) if candidate is not None else None
    if before is None or after is None:
        return "Accuracy not available"
    delta = after - before
    word = "held" if abs(delta) <= 0.02 else "improved" if delta > 0 else "dropped"
    return f"Accuracy {word} ({before:.3f} → {after:.3f})"


def _evidence(report: DriftReport) -> str:
    """What was measured of the drift, relative to the noise floor when there is one."""
    names, measured = methods(report), metrics(report)
    ordered = [m for m in PREFERRED if m in measured] + [m for m in measured if m not in PREFERRED]
    for metric in ordered:
        for method in names:
            entry = floor_entry(report.noise_floor, method, metric)
            share = num(entry.beyond_floor) if entry is not None else None
            if share is not None:
                return (
                    f"{share:.0%} of the included samples drift beyond the noise floor under "
                    f"{method_label(method)} {metric_info(metric).label} (noise alone puts "
                    f"about {FLOOR_TAIL:.0%} there)"
                )
    metric = ordered[0] if ordered else None
    summary = stats(report, names[0], metric) if names and metric else None
    mean = num(summary.mean) if summary is not None else None
    if metric is None or mean is None:
        return "no drift measured (no included samples)"
    info = metric_info(metric)
    low, high = num(summary.ci95_low), num(summary.ci95_high)
    ci = f", 95% CI {low:.2f}–{high:.2f}" if low is not None and high is not None else ""
    return (
        f"{method_label(names[0])} {info.label} mean {mean:.2f}{ci} ({info.same:g} = unchanged); "
        "no noise floor was measured to read it against"
    )


# --------------------------------------------------------------------------- performance


def _performance(report: DriftReport) -> dict[str, Any]:
    perf, models = report.performance, report.models
    baseline = perf.get("baseline")
    cards = []
    for role in ROLES:
        p, m = perf.get(role), models.get(role)
        kpis = []
        for key, label in (("accuracy", "accuracy"), ("macro_auc", "macro AUC")):
            value = getattr(p, key) if p is not None else None
            delta = sign = None
            if role == "candidate":
                delta = fmt_delta(getattr(baseline, key) if baseline is not None else None, value)
                sign = "up" if delta.startswith("+") else "down" if delta.startswith("-") else ""
            kpis.append({"label": label, "value": value, "delta": delta, "sign": sign or ""})
        cards.append(
            {
                "role": role,
                "title": role_title(report, role),
                "arch": (m.arch if m is not None else None) or "?",
                "sha": m.sha256 if m is not None else None,
                "kpis": kpis,
                "n": "–" if p is None or p.n is None else p.n,
            }
        )
    names = class_names(report)
    classes = [
        {
            "name": name,
            "pairs": [
                [_per_class_score(report, role, key, name) for role in ROLES]
                for key in ("recall_per_class", "auc_per_class")
            ],
        }
        for name in names
    ]
    titles = [role_title(report, role) for role in ROLES]
    head = ["class", *(f"recall · {t}" for t in titles), "Δ", *(f"AUC · {t}" for t in titles), "Δ"]
    return {
        "accuracy": _accuracy(report) + ".",
        "cards": cards,
        "classes": classes,
        "head": head,
        "colours": [ROLE_COLOURS[r] for r in ROLES],
        "confusion": _confusion(report, names),
    }


def _per_class_score(report: DriftReport, role: str, key: str, name: str) -> float | None:
    p = report.performance.get(role)
    return getattr(p, key).get(name) if p is not None else None


def input_frame(report: DriftReport) -> tuple[str, list[int]] | None:
    """(resize policy, analysis size) of the report: where its maps sit on the image."""
    model = report.models.get("baseline")
    size = list(report.dataset.analysis_size or (model.input_size if model else []))
    if model is None or len(size) != 2:
        return None
    return (getattr(model, "resize", None) or "stretch", size)


def _confusion(report: DriftReport, names: list[str]) -> list[dict[str, Any]]:
    blocks = []
    for role in ROLES:
        p = report.performance.get(role)
        matrix = p.confusion_matrix if p is not None else []
        if not matrix or not names:
            continue
        peak = max((max((int(c) for c in row), default=0) for row in matrix), default=0) or 1
        multi = bool(getattr(p, "multi_label", False))  # one [tn, fp, fn, tp] row per finding
        rows = []
        for i, row in enumerate(matrix):
            cells = []
            for j, count in enumerate(row):
                right = j in (0, 3) if multi else i == j
                tone = "46,160,67" if right else "207,34,46"
                alpha = 0.08 + 0.5 * int(count) / peak
                cells.append((int(count), f"background:rgba({tone},{alpha:.2f})"))
            rows.append({"label": names[i] if i < len(names) else str(i), "cells": cells})
        columns = ["tn", "fp", "fn", "tp"] if multi else names
        corner = "finding" if multi else "true \\ pred"
        blocks.append(
            {"title": role_title(report, role), "names": columns, "rows": rows, "corner": corner}
        )
    return blocks


# --------------------------------------------------------------------------- subsets


def _subsets(report: DriftReport, rows: list[dict[str, Any]]) -> dict[str, Any]:
    subsets = report.subsets
    kept = f"kept by filter “{report.config.sample_filter or '?'}”"
    tiles = [
        ("evaluated", subsets.evaluated, "samples both models saw"),
        ("included", subsets.included, kept),
        ("true positive", subsets.true_positive, "label = both predictions"),
        ("disagreement", subsets.disagreement, "the models' predictions differ"),
        ("baseline correct", subsets.baseline_correct, ""),
        ("candidate correct", subsets.candidate_correct, ""),
    ]
    counted: dict[int, list[int]] = {}
    for row in rows:
        label, pa, pb = row.get("label"), row.get("pred_baseline"), row.get("pred_candidate")
        tp_dis = counted.setdefault(label, [0, 0]) if isinstance(label, int) else [0, 0]
        tp_dis[0] += int(label == pa == pb)
        tp_dis[1] += int(pa != pb)
    classes = []
    for k, name in enumerate(class_names(report)):
        count = subsets.per_class.get(name)
        tp, dis = counted.get(k, [None, None]) if rows else (None, None)
        evaluated, included = (count.evaluated, count.included) if count else (None, None)
        classes.append({"name": name, "counts": [evaluated, included, tp, dis]})
    degenerate = [
        f"{method_label(m)}: {c.get('baseline', 0)} baseline, {c.get('candidate', 0)} candidate"
        for m, c in report.degenerate.items()
    ]
    return {
        "tiles": [{"key": k, "value": v, "note": note} for k, v, note in tiles],
        "classes": classes,
        "degenerate": degenerate,
    }


# --------------------------------------------------------------------------- distributions


def _distributions(report: DriftReport, rows: list[dict[str, Any]]) -> dict[str, Any]:
    names = methods(report)
    colours = method_colours(names)
    included = [r for r in rows if r.get("included")]
    charts = []
    for metric in metrics(report):
        series = []
        for method in names:
            values = [v for r in included if (v := row_value(r, method, metric)) is not None]
            series.append((method, values, stats(report, method, metric)))
        charts.append(
            {
                "metric": metric,
                "text": metric_info(metric).text,
                "svg": distribution_svg(metric, series, colours),
            }
        )
    comparisons = [
        {
            "metric": str(c.metric),
            "method_a": str(c.method_a),
            "method_b": str(c.method_b),
            "n": "–" if c.n is None else c.n,
            "p_value": c.p_value,
            "effect_size": c.effect_size,
        }
        for c in report.method_comparisons
    ]
    return {"legend": list(colours.items()), "charts": charts, "comparisons": comparisons}


# --------------------------------------------------------------------------- per class


def _tint(info: MetricInfo, value: float | None) -> str:
    if value is None:
        return ""
    hue = 8 + 124 * info.stability(value)  # red .. green
    return f"background:hsl({hue:.0f},62%,90%)"


def _per_class(report: DriftReport) -> dict[str, Any]:
    measured = metrics(report)
    groups = ["overall", *class_names(report)]
    blocks = []
    for method in methods(report):
        table = []
        for group in groups:
            first = stats(report, method, measured[0], group) if measured else None
            cells = []
            for metric in measured:
                summary = stats(report, method, metric, group)
                mean = num(summary.mean)
                low, high = fmt(summary.ci95_low), fmt(summary.ci95_high)
                cells.append(
                    {
                        "mean": mean,
                        "tint": _tint(metric_info(metric), mean),
                        "tip": f"95% CI [{low}, {high}]",
                    }
                )
            n = first.n if first is not None else None
            table.append({"group": group, "n": "–" if n is None else n, "cells": cells})
        blocks.append({"method": method, "rows": table})
    return {"metrics": measured, "blocks": blocks}


def _ceiling(report: DriftReport) -> list[dict[str, Any]] | None:
    """Per method x metric x class: the drift on the floor (0) -> random model (1) scale."""
    if not report.ceiling:
        return None
    rows = []
    for method, per_metric in report.ceiling.items():
        for metric, groups in per_metric.items():
            for klass, entry in groups.items():
                rows.append({"method": method, "metric": metric, "klass": klass, "e": entry})
    return rows


def _floor(report: DriftReport) -> dict[str, Any] | None:
    """Drift next to its floor(s): the share of samples beyond the floor's 95% tail, and the
    policy's ``beyond_floor`` checks of each row (the gate reads the noise floor only)."""
    blocks = floor_tables(report)
    if not blocks:
        return None
    verdict = report.verdict if _state(report) is not None else None
    gated: dict[tuple[str, str], list[dict[str, Any]]] = {}
    for check in verdict.ordered() if verdict is not None else []:
        if check.stat == "beyond_floor":
            gated.setdefault((str(check.method), str(check.metric)), []).append(
                {
                    "klass": check.class_ or "overall",
                    "required": _required(check),
                    "passed": check.passed,
                }
            )
    for block in blocks:
        block["gated"] = verdict is not None and block["key"] == "noise_floor"
        for row in block["rows"]:
            row["checks"] = gated.get((row["method"], row["metric"]), [])
    return {
        "blocks": blocks,
        "tail": FLOOR_TAIL,
        "policy": None if verdict is None else ("gated" if gated else "ungated"),
    }


# --------------------------------------------------------------------------- samples


def most_drifted(
    rows: list[dict[str, Any]], method: str, top_k: int
) -> tuple[str | None, list[dict[str, Any]]]:
    """(ranking metric, the ``top_k`` most drifted included rows under ``method``): lowest
    iou_top20, else highest displacement (then iou_t50, pearson); ties by index."""
    included = [r for r in rows if r.get("included")]
    for metric, descending in RANKINGS:
        scored = [(v, r) for r in included if (v := row_value(r, method, metric)) is not None]
        if scored:
            scored.sort(key=lambda p: ((-p[0] if descending else p[0]), p[1].get("index", 0)))
            return metric, [r for _, r in scored[:top_k]]
    return None, []


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def _samples(
    report: DriftReport, rows: list[dict[str, Any]], overlay_png: OverlaySource, top_k: int
) -> dict[str, Any]:
    measured = metrics(report)
    blocks = []
    for method in methods(report):
        ranking, picked = most_drifted(rows, method, top_k)
        block: dict[str, Any] = {"method": method, "ranking": ranking}
        if ranking is not None:
            block["order"] = "highest" if dict(RANKINGS)[ranking] else "lowest"
            block["cards"] = [_sample(r, method, ranking, measured, overlay_png) for r in picked]
        blocks.append(block)
    return {"legend": heat_legend_svg(), "blocks": blocks}


def _sample(
    row: dict[str, Any],
    method: str,
    ranking: str,
    measured: list[str],
    overlay_png: OverlaySource,
) -> dict[str, Any]:
    index = row.get("index")
    try:
        png = overlay_png(int(index), method) if isinstance(index, int) else None
    except OverlayUnavailable:
        png = None
    chips = []
    for metric in measured:
        value = row_value(row, method, metric)
        if value is not None or metric == ranking:
            chips.append({"metric": metric, "value": value, "key": metric == ranking})
    degenerate = as_list(as_dict(row.get("degenerate")).get(method))
    return {
        "index": index,
        "src": _data_uri(png) if png else None,
        "path": row.get("path", ""),
        "chips": chips,
        "degenerate": [r for r, d in zip(ROLES, degenerate, strict=False) if d],
    }


# --------------------------------------------------------------------------- settings


def _kv(pairs: Iterable[tuple[str, Any]]) -> list[dict[str, Any]]:
    """Key-value rows: JSON for dicts and lists, a dash for None, the value's text otherwise."""
    out = []
    for key, value in pairs:
        if isinstance(value, dict | list):
            out.append({"key": key, "kind": "json", "text": json.dumps(value, sort_keys=True)})
        elif value is None:
            out.append({"key": key, "kind": "none", "text": ""})
        else:
            out.append({"key": key, "kind": "text", "text": str(value)})
    return out


MODEL_KEYS = ("arch", "phase", "sha256", "parent_sha256", "source", "input_size", "class_names")


def _settings(report: DriftReport) -> dict[str, Any]:
    blocks = []
    for role in ROLES:
        held = present(report.models.get(role))
        pairs = [(k, held.get(k)) for k in MODEL_KEYS]
        pairs += [(k, v) for k, v in held.items() if k not in MODEL_KEYS]
        blocks.append({"title": role_title(report, role), "pairs": _kv(pairs)})
    about = [
        ("camdrift version", report.camdrift_version),
        ("created at", report.created_at),
        ("schema version", report.schema_version),
        ("samples", report.samples.location),
    ]
    return {
        "models": blocks,
        "dataset": _kv(present(report.dataset).items()),
        "config": _kv(present(report.config).items()),
        "report": _kv(about),
    }


# --------------------------------------------------------------------------- page


def _page(report: DriftReport, shown: set[str]) -> dict[str, Any]:
    """The header, navigation and footer."""
    state = _state(report)
    verdict = state or "no policy"
    candidate = report.models.get("candidate")

    def who(role: str) -> dict[str, Any]:
        model = report.models.get(role)
        return {"arch": (model.arch if model else None) or "?", "title": role_title(report, role)}

    return {
        "title": f"camdrift · {verdict} · {(candidate.arch if candidate else None) or ''}",
        "verdict": verdict,
        "state": state or "none",
        "headline": headline(report),
        "baseline": who("baseline"),
        "candidate": who("candidate"),
        "evaluated": _or(report.dataset.num_evaluated, "?"),
        "sample_filter": report.config.sample_filter or "?",
        "created_at": report.created_at,
        "nav": [(sid, title) for sid, title in SECTIONS if sid not in OPTIONAL or sid in shown],
        "version": report.camdrift_version or "",
        "schema": report.schema_version or "",
    }


def _or(value: Any, missing: Any) -> Any:
    return missing if value is None else value


def render_html(
    report: Report,
    rows: list[dict[str, Any]],
    overlay_png: OverlaySource,
    *,
    top_k: int = 6,
) -> str:
    """The whole report page. ``overlay_png(index, method)`` gives the PNG of one sample's
    overlay or None (or raises :class:`OverlayUnavailable`); it is called for the
    ``top_k`` most drifted samples of each method only. ``report``: the JSON document or
    its :class:`DriftReport`, read once (:func:`report_view`)."""
    view = report_view(report)
    floor = _floor(view)
    ceiling = _ceiling(view)
    trajectory = html_trajectory.trajectory_context(view)
    held = (("floor", floor), ("ceiling", ceiling), ("trajectory", trajectory))
    shown = {sid for sid, section in held if section}
    template = html_environment().get_template("report.html.j2")
    return template.render(
        css=stylesheet(),
        page=_page(view, shown),
        verdict=_verdict(view),
        warnings=list(view.warnings),
        performance=_performance(view),
        subsets=_subsets(view, rows),
        distributions=_distributions(view, rows),
        per_class=_per_class(view),
        floor=floor,
        ceiling=ceiling,
        trajectory=trajectory,
        samples=_samples(view, rows, overlay_png, top_k),
        settings=_settings(view),
    )


# --------------------------------------------------------------------------- local files


def _load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _dataset_root(report: DriftReport, report_path: Path) -> Path | None:
    source = report.dataset.source
    if not source:
        return None
    root = Path(str(source))
    if not root.is_absolute() and not root.is_dir():
        root = report_path.parent / root
    return root if root.is_dir() else None


def write_local_html(report_path: Path, out: Path, *, top_k: int = 6) -> None:
    """Write the HTML page of a local ``camdrift drift`` report: rows and maps are read from
    the files next to it, images from the dataset folder the report names."""
    from worker.runtime.local_run import artifact_paths  # the audit's module imports torch: lazily

    report_path = Path(report_path)
    report = report_view(json.loads(report_path.read_text()))
    rows_path, maps_dir = artifact_paths(report_path)
    location = report.samples.location
    if not rows_path.is_file() and location:
        rows_path = report_path.parent / str(location)
    rows = _load_rows(rows_path)
    by_index = {r.get("index"): r for r in rows}
    root = _dataset_root(report, report_path)
    names = class_names(report)
    phases = tuple(m.phase if (m := report.models.get(r)) else None for r in ROLES)

    def overlay(index: int, method: str) -> bytes | None:
        row = by_index.get(index)
        if row is None or root is None:
            return None
        return overlay_for_sample(
            row,
            method,
            maps_dir=maps_dir,
            image_root=root,
            class_names=names,
            phases=phases,
            frame=input_frame(report),
        )

    page = render_html(report, rows, overlay, top_k=top_k)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
