"""The drift report as ONE self-contained HTML page: the page a reviewer reads.

Torch-free. Everything is inline: the CSS (``report.css``), SVG charts (:mod:`.charts`),
overlays as base64 PNG data URIs, and a few lines of script that only check the images loaded
(``body[data-images-ok]``). No external resource, so the page can be mailed, attached to a CI
run or opened offline.

Sections (each with an ``id``): ``verdict``, ``performance``, ``subsets``, ``distributions``,
``per-class``, ``floor`` and ``trajectory`` (when measured), ``samples``, ``settings``. This
module reads the report into plain values for ``templates/report.html.j2`` (one block per
section); Jinja2 escapes every string, numbers are formatted by :mod:`.formatting`.

``render_html`` takes the report, its per-sample rows and a callback that returns the overlay
PNG of (row index, method) or None; ``write_local_html`` wires it to a local run's files (the
rows JSON lines and maps folder next to the report, images under the dataset folder). The API
wires the same renderer to SQL rows and the artifact store.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterable
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
    fmt,
    fmt_delta,
    method_colours,
    method_label,
    methods,
    metric_info,
    metrics,
    num,
    role_title,
    row_value,
    stats,
)
from worker.render.overlay import OverlayUnavailable, overlay_for_sample
from worker.render.templating import html_environment, stylesheet

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

SECTIONS = (
    ("verdict", "Verdict"),
    ("performance", "Performance"),
    ("subsets", "Samples evaluated"),
    ("distributions", "Distributions"),
    ("per-class", "Per class"),
    ("floor", "Noise floor"),
    ("trajectory", "Trajectory"),
    ("samples", "Most drifted"),
    ("settings", "Settings"),
)
OPTIONAL = ("floor", "trajectory")  # on the page only when the audit measured them

VERDICT_TEXT = {
    "pass": ("PASS", "The candidate passes the policy."),
    "fail": ("FAIL", "The candidate fails the policy."),
    "inconclusive": ("INCONCLUSIVE", "Too little evidence for a decision."),
}
OP_SYMBOLS = {">=": "≥", "<=": "≤", "!=": "≠", "==": "="}
ROLE_COLOURS = {"baseline": "#8c959f", "candidate": "#0969da"}
RANKINGS = (("iou_top20", False), ("displacement", True), ("iou_t50", False), ("pearson", False))
FLOORS = (("noise_floor", "perturbed baseline"), ("replica_floor", "baseline replica (other seed)"))


# --------------------------------------------------------------------------- verdict


def _verdict(report: dict[str, Any]) -> dict[str, Any]:
    verdict = as_dict(report.get("verdict"))
    state = str(verdict.get("verdict") or "").lower()
    if state not in VERDICT_TEXT:
        return {"state": None}
    badge, sentence = VERDICT_TEXT[state]
    rules = [as_dict(r) for r in as_list(verdict.get("rules"))]
    reasons = [verdict.get(k) for k in ("reason", "message", "summary")]
    reasons += as_list(verdict.get("reasons"))
    reasons = [str(r) for r in reasons if isinstance(r, str) and r]
    if reasons:
        lines = [r[:1].upper() + r[1:] for r in reasons]
    elif rules:
        passed = sum(1 for r in rules if r.get("passed") is True)
        lines = [f"{passed} of {len(rules)} checks passed."]
    else:
        lines = []
    extra = []
    if verdict.get("n_included") is not None:
        extra.append(f"{verdict['n_included']} samples included")
    if verdict.get("min_samples") is not None:
        extra.append(f"min_samples {verdict['min_samples']}")
    policy = verdict.get("policy")
    policy_text = json.dumps(policy, indent=2, sort_keys=True) if isinstance(policy, dict) else None
    return {
        "state": state,
        "badge": badge,
        "sentence": sentence,
        "lines": lines,
        "extra": extra,
        "rules": [_rule(r) for r in rules],
        "policy": policy_text,
    }


def _rule(rule: dict[str, Any]) -> dict[str, Any]:
    metric, stat = str(rule.get("metric") or "?"), str(rule.get("stat") or "mean")
    parts = [method_label(str(rule.get("method") or "*")), metric_info(metric).label, stat]
    klass = rule.get("class")
    if klass not in (None, "", "overall"):
        parts.append(f"class {klass}")
    name = rule.get("name")
    auto = isinstance(name, str) and all(t in name for t in (metric, stat))
    value, observed = rule.get("value"), rule.get("observed")
    op = str(rule.get("op") or "")
    return {
        "title": " · ".join(parts),
        "name": name if name and not auto else None,
        "observed": fmt(observed) if num(observed) is not None or observed is None else observed,
        "n": rule.get("n"),
        "op": OP_SYMBOLS.get(op, op),
        "required": fmt(value) if num(value) is not None else ("–" if value is None else value),
        "passed": rule.get("passed"),
        "reason": rule.get("reason"),
    }


# --------------------------------------------------------------------------- performance


def headline(report: dict[str, Any]) -> str:
    """One plain-text sentence: what happened to accuracy and to the evidence."""
    perf = as_dict(report.get("performance"))
    before = num(as_dict(perf.get("baseline")).get("accuracy"))
    after = num(as_dict(perf.get("candidate")).get("accuracy"))
    if before is None or after is None:
        first = "Accuracy not available"
    else:
        delta = after - before
        word = "held" if abs(delta) <= 0.02 else "improved" if delta > 0 else "dropped"
        first = f"Accuracy {word} ({before:.3f} → {after:.3f})"
    names, measured = methods(report), metrics(report)
    preferred = ["iou_top20", "displacement", "pearson", "iou_t50", "spearman"]
    metric = next((m for m in preferred if m in measured), measured[0] if measured else None)
    summary = stats(report, names[0], metric) if names and metric else {}
    mean = num(summary.get("mean"))
    if mean is None:
        return f"{first}; no drift measured (no included samples)."
    info = metric_info(metric)
    ci = ""
    low, high = num(summary.get("ci95_low")), num(summary.get("ci95_high"))
    if low is not None and high is not None:
        ci = f", 95% CI {low:.2f}–{high:.2f}"
    evidence = f"evidence {info.judge(mean)}"
    return f"{first}, {evidence} ({method_label(names[0])} {info.label} mean {mean:.2f}{ci})."


def _performance(report: dict[str, Any]) -> dict[str, Any]:
    perf = as_dict(report.get("performance"))
    models = as_dict(report.get("models"))
    baseline = as_dict(perf.get("baseline"))
    cards = []
    for role in ROLES:
        p, m = as_dict(perf.get(role)), as_dict(models.get(role))
        kpis = []
        for key, label in (("accuracy", "accuracy"), ("macro_auc", "macro AUC")):
            delta = fmt_delta(baseline.get(key), p.get(key)) if role == "candidate" else None
            sign = ""
            if delta is not None:
                sign = "up" if delta.startswith("+") else "down" if delta.startswith("-") else ""
            kpis.append({"label": label, "value": p.get(key), "delta": delta, "sign": sign})
        cards.append(
            {
                "role": role,
                "title": role_title(report, role),
                "arch": m.get("arch", "?"),
                "sha": m.get("sha256"),
                "kpis": kpis,
                "n": p.get("n", "–"),
            }
        )
    names = class_names(report)
    classes = [
        {
            "name": name,
            "pairs": [
                [as_dict(as_dict(perf.get(role)).get(key)).get(name) for role in ROLES]
                for key in ("recall_per_class", "auc_per_class")
            ],
        }
        for name in names
    ]
    titles = [role_title(report, role) for role in ROLES]
    head = ["class", *(f"recall · {t}" for t in titles), "Δ", *(f"AUC · {t}" for t in titles), "Δ"]
    return {
        "headline": headline(report),
        "cards": cards,
        "classes": classes,
        "head": head,
        "colours": [ROLE_COLOURS[r] for r in ROLES],
        "confusion": _confusion(report, names),
    }


def _confusion(report: dict[str, Any], names: list[str]) -> list[dict[str, Any]]:
    perf = as_dict(report.get("performance"))
    blocks = []
    for role in ROLES:
        matrix = as_list(as_dict(perf.get(role)).get("confusion_matrix"))
        if not matrix or not names:
            continue
        peak = max((max((int(c) for c in row), default=0) for row in matrix), default=0) or 1
        rows = []
        for i, row in enumerate(matrix):
            cells = []
            for j, count in enumerate(row):
                tone = "46,160,67" if i == j else "207,34,46"
                alpha = 0.08 + 0.5 * int(count) / peak
                cells.append((int(count), f"background:rgba({tone},{alpha:.2f})"))
            rows.append({"label": names[i] if i < len(names) else str(i), "cells": cells})
        blocks.append({"title": role_title(report, role), "names": names, "rows": rows})
    return blocks


# --------------------------------------------------------------------------- subsets


def _subsets(report: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    subsets = as_dict(report.get("subsets"))
    config = as_dict(report.get("config"))
    kept = f"kept by filter “{config.get('sample_filter', '?')}”"
    tiles = [
        ("evaluated", subsets.get("evaluated"), "samples both models saw"),
        ("included", subsets.get("included"), kept),
        ("true positive", subsets.get("true_positive"), "label = both predictions"),
        ("disagreement", subsets.get("disagreement"), "the models' predictions differ"),
        ("baseline correct", subsets.get("baseline_correct"), ""),
        ("candidate correct", subsets.get("candidate_correct"), ""),
    ]
    per_class = as_dict(subsets.get("per_class"))
    counted: dict[int, list[int]] = {}
    for row in rows:
        label, pa, pb = row.get("label"), row.get("pred_baseline"), row.get("pred_candidate")
        tp_dis = counted.setdefault(label, [0, 0]) if isinstance(label, int) else [0, 0]
        tp_dis[0] += int(label == pa == pb)
        tp_dis[1] += int(pa != pb)
    classes = []
    for k, name in enumerate(class_names(report)):
        pc = as_dict(per_class.get(name))
        tp, dis = counted.get(k, [None, None]) if rows else (None, None)
        classes.append({"name": name, "counts": [pc.get("evaluated"), pc.get("included"), tp, dis]})
    degenerate = [
        f"{method_label(m)}: {as_dict(c).get('baseline', 0)} baseline, "
        f"{as_dict(c).get('candidate', 0)} candidate"
        for m, c in as_dict(report.get("degenerate")).items()
    ]
    return {
        "tiles": [{"key": k, "value": v, "note": note} for k, v, note in tiles],
        "classes": classes,
        "degenerate": degenerate,
    }


# --------------------------------------------------------------------------- distributions


def _distributions(report: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
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
            "metric": str(c.get("metric")),
            "method_a": str(c.get("method_a")),
            "method_b": str(c.get("method_b")),
            "n": c.get("n", "–"),
            "p_value": c.get("p_value"),
            "effect_size": c.get("effect_size"),
        }
        for c in map(as_dict, as_list(report.get("method_comparisons")))
    ]
    return {"legend": list(colours.items()), "charts": charts, "comparisons": comparisons}


# --------------------------------------------------------------------------- per class


def _tint(info: MetricInfo, value: float | None) -> str:
    if value is None:
        return ""
    hue = 8 + 124 * info.stability(value)  # red .. green
    return f"background:hsl({hue:.0f},62%,90%)"


def _per_class(report: dict[str, Any]) -> dict[str, Any]:
    measured = metrics(report)
    groups = ["overall", *class_names(report)]
    blocks = []
    for method in methods(report):
        table = []
        for group in groups:
            first = stats(report, method, measured[0], group) if measured else {}
            cells = []
            for metric in measured:
                summary = stats(report, method, metric, group)
                mean = num(summary.get("mean"))
                low, high = fmt(summary.get("ci95_low")), fmt(summary.get("ci95_high"))
                cells.append(
                    {
                        "mean": mean,
                        "tint": _tint(metric_info(metric), mean),
                        "tip": f"95% CI [{low}, {high}]",
                    }
                )
            table.append({"group": group, "n": first.get("n", "–"), "cells": cells})
        blocks.append({"method": method, "rows": table})
    return {"metrics": measured, "blocks": blocks}


def _floor(report: dict[str, Any]) -> list[dict[str, Any]]:
    """Drift next to its floor(s): the share of samples beyond the floor's 95% tail."""
    blocks = []
    for key, label in FLOORS:
        floor = report.get(key)
        if not isinstance(floor, dict) or not floor:
            continue
        table = []
        for method in methods(report):
            for metric in metrics(report):
                entry = as_dict(as_dict(floor.get(method)).get(metric))
                if entry:
                    table.append(
                        {
                            "method": method,
                            "metric": metric,
                            "median": as_dict(entry.get("floor")).get("median"),
                            "threshold": entry.get("threshold"),
                            "beyond": entry.get("beyond_floor"),
                        }
                    )
        blocks.append({"label": label, "rows": table})
    return blocks


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
    report: dict[str, Any], rows: list[dict[str, Any]], overlay_png: OverlaySource, top_k: int
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


def _settings(report: dict[str, Any]) -> dict[str, Any]:
    models = as_dict(report.get("models"))
    blocks = []
    for role in ROLES:
        m = as_dict(models.get(role))
        pairs = [(k, m.get(k)) for k in MODEL_KEYS]
        pairs += [(k, v) for k, v in m.items() if k not in MODEL_KEYS]
        blocks.append({"title": role_title(report, role), "pairs": _kv(pairs)})
    about = [
        ("camdrift version", report.get("camdrift_version")),
        ("created at", report.get("created_at")),
        ("schema version", report.get("schema_version")),
        ("samples", as_dict(report.get("samples")).get("location")),
    ]
    return {
        "models": blocks,
        "dataset": _kv(as_dict(report.get("dataset")).items()),
        "config": _kv(as_dict(report.get("config")).items()),
        "report": _kv(about),
    }


# --------------------------------------------------------------------------- page


def _page(report: dict[str, Any], shown: set[str]) -> dict[str, Any]:
    """The header, navigation and footer."""
    models = as_dict(report.get("models"))
    dataset = as_dict(report.get("dataset"))
    config = as_dict(report.get("config"))
    verdict = str(as_dict(report.get("verdict")).get("verdict") or "no policy").lower()

    def who(role: str) -> dict[str, Any]:
        arch = as_dict(models.get(role)).get("arch", "?")
        return {"arch": arch, "title": role_title(report, role)}

    return {
        "title": f"camdrift · {verdict} · {as_dict(models.get('candidate')).get('arch', '')}",
        "verdict": verdict,
        "state": verdict if verdict in VERDICT_TEXT else "none",
        "baseline": who("baseline"),
        "candidate": who("candidate"),
        "evaluated": dataset.get("num_evaluated", "?"),
        "sample_filter": config.get("sample_filter", "?"),
        "created_at": report.get("created_at"),
        "nav": [(sid, title) for sid, title in SECTIONS if sid not in OPTIONAL or sid in shown],
        "version": report.get("camdrift_version", ""),
        "schema": report.get("schema_version", ""),
    }


def render_html(
    report: dict[str, Any],
    rows: list[dict[str, Any]],
    overlay_png: OverlaySource,
    *,
    top_k: int = 6,
) -> str:
    """The whole report page. ``overlay_png(index, method)`` gives the PNG of one sample's
    overlay or None (or raises :class:`OverlayUnavailable`); it is called for the
    ``top_k`` most drifted samples of each method only."""
    floor = _floor(report)
    trajectory = html_trajectory.trajectory_context(report)
    shown = {sid for sid, present in (("floor", floor), ("trajectory", trajectory)) if present}
    template = html_environment().get_template("report.html.j2")
    return template.render(
        css=stylesheet(),
        page=_page(report, shown),
        verdict=_verdict(report),
        performance=_performance(report),
        subsets=_subsets(report, rows),
        distributions=_distributions(report, rows),
        per_class=_per_class(report),
        floor=floor,
        trajectory=trajectory,
        samples=_samples(report, rows, overlay_png, top_k),
        settings=_settings(report),
    )


# --------------------------------------------------------------------------- local files


def _load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _dataset_root(report: dict[str, Any], report_path: Path) -> Path | None:
    source = as_dict(report.get("dataset")).get("source")
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
    report = json.loads(report_path.read_text())
    rows_path, maps_dir = artifact_paths(report_path)
    location = as_dict(report.get("samples")).get("location")
    if not rows_path.is_file() and location:
        rows_path = report_path.parent / str(location)
    rows = _load_rows(rows_path)
    by_index = {r.get("index"): r for r in rows}
    root = _dataset_root(report, report_path)
    names = class_names(report)
    phases = tuple(as_dict(as_dict(report.get("models")).get(r)).get("phase") for r in ROLES)

    def overlay(index: int, method: str) -> bytes | None:
        row = by_index.get(index)
        if row is None or root is None:
            return None
        return overlay_for_sample(
            row, method, maps_dir=maps_dir, image_root=root, class_names=names, phases=phases
        )

    page = render_html(report, rows, overlay, top_k=top_k)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
