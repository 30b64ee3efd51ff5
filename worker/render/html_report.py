"""The drift report as ONE self-contained HTML page: the page a reviewer reads.

Torch-free. Everything is inline: CSS, SVG charts drawn here, overlays as base64 PNG data URIs,
and a few lines of script that only check the images loaded (``body[data-images-ok]``). No
external resource, so the page can be mailed, attached to a CI run or opened offline.

Sections (each with an ``id``): ``verdict``, ``performance``, ``subsets``, ``distributions``,
``per-class``, ``samples``, ``settings``. Every string that comes from the report or the rows
is escaped; numbers are formatted here.

``render_html`` takes the report, its per-sample rows and a callback that returns the overlay
PNG of (row index, method) or None; ``write_local_html`` wires it to a local run's files (the
rows JSON lines and maps folder next to the report, images under the dataset folder). The API
wires the same renderer to SQL rows and the artifact store.
"""

from __future__ import annotations

import base64
import html
import json
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worker import catalog
from worker.render.overlay import HEAT_ANCHORS, OverlayUnavailable, overlay_for_sample

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
ROLES = ("baseline", "candidate")
MAX_DOTS = 400  # per method and metric in a distribution plot (quantile-thinned beyond)


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


def method_label(name: str) -> str:
    info = catalog.METHODS.get(name)
    return info.label if info else name


# --------------------------------------------------------------------------- small helpers


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _num(value: Any) -> float | None:
    """A finite float, or None (None, bools, strings, NaN, inf)."""
    if isinstance(value, bool) or not isinstance(value, int | float | np.number):
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def fmt(value: Any, digits: int = 3) -> str:
    v = _num(value)
    if v is None:
        return "–"
    text = f"{v:.{digits}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def fmt_delta(a: Any, b: Any, digits: int = 3) -> str:
    x, y = _num(a), _num(b)
    if x is None or y is None:
        return "–"
    d = y - x
    return "±0" if abs(d) < 0.5 * 10**-digits else f"{d:+.{digits}f}"


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _tag(name: str, body: str, **attrs: Any) -> str:
    attr = "".join(
        f' {k.rstrip("_").replace("_", "-")}="{esc(v)}"' for k, v in attrs.items() if v is not None
    )
    return f"<{name}{attr}>{body}</{name}>"


def _table(head: Sequence[str], rows: Iterable[Sequence[str]], cls: str = "") -> str:
    """A table from already-escaped cell HTML."""
    thead = "".join(f"<th>{h}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f'<table class="{esc(cls)}"><thead><tr>{thead}</tr></thead><tbody>{body}</tbody></table>'


def _short(sha: Any, n: int = 12) -> str:
    return esc(str(sha)[:n]) if sha else "–"


def _class_names(report: dict[str, Any]) -> list[str]:
    dataset = _dict(report.get("dataset"))
    names = dataset.get("class_names") or _dict(_dict(report.get("models")).get("baseline")).get(
        "class_names"
    )
    return [str(n) for n in _list(names)]


def _methods(report: dict[str, Any]) -> list[str]:
    methods = _list(_dict(report.get("config")).get("methods"))
    summaries = _dict(report.get("summaries"))
    return [str(m) for m in methods] or [str(m) for m in summaries]


def _metrics(report: dict[str, Any]) -> list[str]:
    metrics = _list(_dict(report.get("config")).get("metrics"))
    if metrics:
        return [str(m) for m in metrics]
    seen: dict[str, None] = {}
    for per_metric in _dict(report.get("summaries")).values():
        seen.update(dict.fromkeys(_dict(per_metric)))
    return list(seen)


def _stats(report: dict[str, Any], method: str, metric: str, group: str = "overall") -> dict:
    return _dict(_dict(_dict(_dict(report.get("summaries")).get(method)).get(metric)).get(group))


def _role_title(report: dict[str, Any], role: str) -> str:
    phase = _dict(_dict(report.get("models")).get(role)).get("phase")
    return f"{role} ({str(phase).upper()})" if phase else role


def _value(row: dict[str, Any], method: str, metric: str) -> float | None:
    return _num(_dict(_dict(row.get("metrics")).get(method)).get(metric))


# --------------------------------------------------------------------------- verdict


VERDICT_TEXT = {
    "pass": ("PASS", "The candidate passes the policy."),
    "fail": ("FAIL", "The candidate fails the policy."),
    "inconclusive": ("INCONCLUSIVE", "Too little evidence for a decision."),
}


def _section(sid: str, title: str, body: str, cls: str = "") -> str:
    return f'<section id="{sid}" class="{cls}"><h2>{esc(title)}</h2>{body}</section>'


def _verdict_section(report: dict[str, Any]) -> str:
    verdict = _dict(report.get("verdict"))
    state = str(verdict.get("verdict") or "").lower()
    if state not in VERDICT_TEXT:
        banner = (
            '<div class="banner v-none"><div class="badge">NO POLICY</div><div>'
            "<strong>No gate was applied to this audit.</strong> The numbers below describe "
            "the drift; give the job a policy (or run <code>camdrift gate</code>) for a "
            "pass / fail verdict.</div></div>"
        )
        return _section("verdict", "Verdict", banner)
    badge, sentence = VERDICT_TEXT[state]
    rules = [_dict(r) for r in _list(verdict.get("rules"))]
    lines = [f"<strong>{esc(sentence)}</strong>"]
    reasons = [verdict.get(k) for k in ("reason", "message", "summary")]
    reasons += _list(verdict.get("reasons"))
    reasons = [str(r) for r in reasons if isinstance(r, str) and r]
    if reasons:
        lines += [esc(r[:1].upper() + r[1:]) for r in reasons]
    elif rules:
        passed = sum(1 for r in rules if r.get("passed") is True)
        lines.append(f"{passed} of {len(rules)} checks passed.")
    extra = []
    if verdict.get("n_included") is not None:
        extra.append(f"{esc(verdict['n_included'])} samples included")
    if verdict.get("min_samples") is not None:
        extra.append(f"min_samples {esc(verdict['min_samples'])}")
    if extra:
        lines.append(f'<span class="muted">{" · ".join(extra)}</span>')
    body = f'<div class="banner v-{state}"><div class="badge">{badge}</div><div>'
    body += "<br>".join(lines) + "</div></div>"
    if rules:
        body += _table(
            ["rule", "observed", "required", "result"], [_rule_row(r) for r in rules], "rules"
        )
    if isinstance(verdict.get("policy"), dict):
        policy = esc(json.dumps(verdict["policy"], indent=2, sort_keys=True))
        body += f'<details><summary>policy</summary><pre class="mono">{policy}</pre></details>'
    return _section("verdict", "Verdict", body)


OP_SYMBOLS = {">=": "≥", "<=": "≤", "!=": "≠", "==": "="}


def _rule_row(rule: dict[str, Any]) -> list[str]:
    metric, stat = str(rule.get("metric") or "?"), str(rule.get("stat") or "mean")
    parts = [method_label(str(rule.get("method") or "*")), metric_info(metric).label, stat]
    klass = rule.get("class")
    if klass not in (None, "", "overall"):
        parts.append(f"class {klass}")
    cell = f"<strong>{esc(' · '.join(parts))}</strong>"
    name = rule.get("name")
    auto = isinstance(name, str) and all(t in name for t in (metric, stat))
    if name and not auto:
        cell += f'<br><span class="muted small">{esc(name)}</span>'
    value = rule.get("value")
    shown = fmt(value) if _num(value) is not None else ("–" if value is None else str(value))
    op = str(rule.get("op") or "")
    required = f"{esc(OP_SYMBOLS.get(op, op))} {esc(shown)}"
    observed = rule.get("observed")
    observed_html = esc(
        fmt(observed) if _num(observed) is not None or observed is None else observed
    )
    if rule.get("n") is not None:
        observed_html += f' <span class="muted small">n = {esc(rule["n"])}</span>'
    passed = rule.get("passed")
    if passed is True:
        result = '<span class="pill ok">pass</span>'
    elif passed is False:
        result = '<span class="pill bad">fail</span>'
    else:
        result = '<span class="pill na">n/a</span>'
        if rule.get("reason"):
            result += f' <span class="muted">{esc(rule["reason"])}</span>'
    return [
        cell,
        f"<span class=num>{observed_html}</span>",
        f"<span class=num>{required}</span>",
        result,
    ]


# --------------------------------------------------------------------------- performance


def headline(report: dict[str, Any]) -> str:
    """One plain-text sentence: what happened to accuracy and to the evidence."""
    perf = _dict(report.get("performance"))
    before = _num(_dict(perf.get("baseline")).get("accuracy"))
    after = _num(_dict(perf.get("candidate")).get("accuracy"))
    if before is None or after is None:
        first = "Accuracy not available"
    else:
        delta = after - before
        word = "held" if abs(delta) <= 0.02 else "improved" if delta > 0 else "dropped"
        first = f"Accuracy {word} ({before:.3f} → {after:.3f})"
    metrics = _metrics(report)
    methods = _methods(report)
    preferred = ["iou_top20", "displacement", "pearson", "iou_t50", "spearman"]
    metric = next((m for m in preferred if m in metrics), metrics[0] if metrics else None)
    stats = _stats(report, methods[0], metric) if methods and metric else {}
    mean = _num(stats.get("mean"))
    if mean is None:
        return f"{first}; no drift measured (no included samples)."
    info = metric_info(metric)
    ci = ""
    low, high = _num(stats.get("ci95_low")), _num(stats.get("ci95_high"))
    if low is not None and high is not None:
        ci = f", 95% CI {low:.2f}–{high:.2f}"
    evidence = f"evidence {info.judge(mean)}"
    return f"{first}, {evidence} ({method_label(methods[0])} {info.label} mean {mean:.2f}{ci})."


def _bar(value: Any, colour: str) -> str:
    v = _num(value)
    width = 0.0 if v is None else max(0.0, min(1.0, v)) * 100
    return (
        f'<span class="bar"><span style="width:{width:.1f}%;background:{colour}"></span></span>'
        f"<span class=num>{fmt(value)}</span>"
    )


ROLE_COLOURS = {"baseline": "#8c959f", "candidate": "#0969da"}


def _performance_section(report: dict[str, Any]) -> str:
    perf = _dict(report.get("performance"))
    models = _dict(report.get("models"))
    cards = []
    for role in ROLES:
        p, m = _dict(perf.get(role)), _dict(models.get(role))
        other = _dict(perf.get("baseline"))
        kpis = []
        for key, label in (("accuracy", "accuracy"), ("macro_auc", "macro AUC")):
            delta = ""
            if role == "candidate":
                d = fmt_delta(other.get(key), p.get(key))
                sign = "up" if d.startswith("+") else "down" if d.startswith("-") else ""
                delta = f'<span class="delta {sign}">{esc(d)}</span>'
            kpis.append(
                f'<div class="kpi"><div class="k">{label}</div>'
                f'<div class="v">{fmt(p.get(key))}{delta}</div></div>'
            )
        kpis.append(
            f'<div class="kpi"><div class="k">n</div>'
            f'<div class="v">{esc(p.get("n", "–"))}</div></div>'
        )
        cards.append(
            f'<div class="card model {role}"><div class="role">{esc(_role_title(report, role))}'
            f'</div><div class="arch">{esc(m.get("arch", "?"))} <span class="muted mono">'
            f'{_short(m.get("sha256"))}</span></div><div class="kpis">{"".join(kpis)}</div></div>'
        )
    names = _class_names(report)
    rows = []
    for name in names:
        cells = [esc(name)]
        for key in ("recall_per_class", "auc_per_class"):
            values = [_dict(_dict(perf.get(role)).get(key)).get(name) for role in ROLES]
            cells += [_bar(v, ROLE_COLOURS[r]) for v, r in zip(values, ROLES, strict=True)]
            cells.append(f"<span class=num>{esc(fmt_delta(*values))}</span>")
        rows.append(cells)
    head = [
        "class",
        f"recall · {esc(_role_title(report, 'baseline'))}",
        f"recall · {esc(_role_title(report, 'candidate'))}",
        "Δ",
        f"AUC · {esc(_role_title(report, 'baseline'))}",
        f"AUC · {esc(_role_title(report, 'candidate'))}",
        "Δ",
    ]
    body = f'<p class="headline">{esc(headline(report))}</p>'
    body += (
        '<p class="muted small">“Held” and “moved” read the first method\'s mean against fixed '
        "cut-offs (similarities ≥ 0.7 held, &lt; 0.5 moved; distances and changes ≤ 0.05 held, "
        "&gt; 0.15 moved); the verdict is the policy's decision.</p>"
    )
    body += f'<div class="grid2">{"".join(cards)}</div>'
    if rows:
        body += _table(head, rows, "perf")
    body += _confusion(report, names)
    return _section("performance", "Performance on the evaluated samples", body)


def _confusion(report: dict[str, Any], names: list[str]) -> str:
    perf = _dict(report.get("performance"))
    blocks = []
    for role in ROLES:
        matrix = _list(_dict(perf.get(role)).get("confusion_matrix"))
        if not matrix or not names:
            continue
        peak = max((max((int(c) for c in row), default=0) for row in matrix), default=0) or 1
        head = "<tr><th>true \\ pred</th>" + "".join(f"<th>{esc(n)}</th>" for n in names) + "</tr>"
        body = ""
        for i, row in enumerate(matrix):
            label = esc(names[i]) if i < len(names) else str(i)
            cells = ""
            for j, count in enumerate(row):
                share = int(count) / peak
                tone = "46,160,67" if i == j else "207,34,46"
                style = f"background:rgba({tone},{0.08 + 0.5 * share:.2f})"
                cells += f'<td class=num style="{style}">{int(count)}</td>'
            body += f"<tr><th>{label}</th>{cells}</tr>"
        blocks.append(
            f'<div><div class="role">{esc(_role_title(report, role))}</div>'
            f'<table class="cm"><thead>{head}</thead><tbody>{body}</tbody></table></div>'
        )
    if not blocks:
        return ""
    grid = f'<div class="grid2">{"".join(blocks)}</div>'
    return f"<details><summary>confusion matrices</summary>{grid}</details>"


# --------------------------------------------------------------------------- subsets


def _subsets_section(report: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    subsets = _dict(report.get("subsets"))
    config = _dict(report.get("config"))
    tiles = [
        ("evaluated", subsets.get("evaluated"), "samples both models saw"),
        (
            "included",
            subsets.get("included"),
            f"kept by filter “{config.get('sample_filter', '?')}”",
        ),
        ("true positive", subsets.get("true_positive"), "label = both predictions"),
        ("disagreement", subsets.get("disagreement"), "the models' predictions differ"),
        ("baseline correct", subsets.get("baseline_correct"), ""),
        ("candidate correct", subsets.get("candidate_correct"), ""),
    ]
    body = (
        '<div class="tiles">'
        + "".join(
            f'<div class="tile"><div class="v">{esc(v if v is not None else "–")}</div>'
            f'<div class="k">{esc(k)}</div><div class="muted small">{esc(note)}</div></div>'
            for k, v, note in tiles
        )
        + "</div>"
    )
    names = _class_names(report)
    per_class = _dict(subsets.get("per_class"))
    counted: dict[int, list[int]] = {}
    for row in rows:
        label, pa, pb = row.get("label"), row.get("pred_baseline"), row.get("pred_candidate")
        tp_dis = counted.setdefault(label, [0, 0]) if isinstance(label, int) else [0, 0]
        tp_dis[0] += int(label == pa == pb)
        tp_dis[1] += int(pa != pb)
    table_rows = []
    for k, name in enumerate(names):
        pc = _dict(per_class.get(name))
        tp, dis = counted.get(k, [None, None]) if rows else (None, None)
        table_rows.append(
            [esc(name)]
            + [
                f"<span class=num>{esc('–' if v is None else v)}</span>"
                for v in (pc.get("evaluated"), pc.get("included"), tp, dis)
            ]
        )
    if table_rows:
        body += _table(
            ["class", "evaluated", "included", "true positive", "disagreement"],
            table_rows,
            "narrow",
        )
    degenerate = _dict(report.get("degenerate"))
    flagged = [
        f"{method_label(m)}: {esc(_dict(c).get('baseline', 0))} baseline, "
        f"{esc(_dict(c).get('candidate', 0))} candidate"
        for m, c in degenerate.items()
    ]
    if flagged:
        body += (
            '<p class="muted">Degenerate (all-zero) maps among the included samples — their '
            f"undefined metrics are counted, not dropped: {'; '.join(esc(f) for f in flagged)}.</p>"
        )
    return _section("subsets", "Samples evaluated and included", body)


# --------------------------------------------------------------------------- distributions


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


def _thin(values: list[float], limit: int = MAX_DOTS) -> list[float]:
    if len(values) <= limit:
        return values
    ordered = np.sort(np.asarray(values))
    picks = np.linspace(0, ordered.size - 1, limit).round().astype(int)
    return [float(v) for v in ordered[picks]]


def distribution_svg(
    metric: str, series: list[tuple[str, list[float], dict[str, Any]]], colours: dict[str, str]
) -> str:
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
            if (v := _num(stats.get(k))) is not None
        ]
    lo, hi, step = axis_range(info, everything)

    def x(v: float) -> float:
        return left + (min(max(v, lo), hi) - lo) / (hi - lo) * plot_w

    parts = [
        f'<svg class="dist" viewBox="0 0 {width} {height}" width="{width}" height="{height}" '
        f'role="img" aria-label="{esc(info.label)} per method">'
    ]
    base_y = top + row_h * max(1, len(series))
    tick = math.ceil(lo / step - 1e-9) * step
    while tick <= hi + 1e-9:
        tx = x(tick)
        parts.append(f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{top}" y2="{base_y}" class="grid"/>')
        parts.append(
            f'<text x="{tx:.1f}" y="{base_y + 16}" text-anchor="middle" class="tick">'
            f"{_tick_label(tick, step)}</text>"
        )
        tick += step
    if lo <= info.same <= hi:
        sx = x(info.same)
        parts.append(f'<line x1="{sx:.1f}" x2="{sx:.1f}" y1="{top}" y2="{base_y}" class="same"/>')
    for i, (method, values, stats) in enumerate(series):
        colour = colours.get(method, "#57606a")
        cy = top + row_h * i + row_h / 2
        parts.append(
            f'<text x="{left - 8}" y="{cy + 4:.1f}" text-anchor="end" class="rowlabel">'
            f"{esc(method_label(method))}</text>"
        )
        for j, v in enumerate(_thin(values)):
            jitter = ((j * 0.6180339887) % 1.0 - 0.5) * (row_h - 14)
            parts.append(
                f'<circle cx="{x(v):.1f}" cy="{cy + jitter:.1f}" r="2.1" fill="{colour}" '
                'fill-opacity="0.28"/>'
            )
        q = {k: _num(stats.get(k)) for k in ("q05", "q25", "median", "q75", "q95")}
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
        mean, low, high = (_num(stats.get(k)) for k in ("mean", "ci95_low", "ci95_high"))
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
        n = stats.get("n", len(values))
        parts.append(
            f'<text x="{width - right + 10}" y="{cy - 1:.1f}" class="stat">{esc(label)}</text>'
            f'<text x="{width - right + 10}" y="{cy + 12:.1f}" class="stat muted">'
            f"n = {esc(n)}, median {fmt(q['median'])}</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _tick_label(value: float, step: float) -> str:
    text = f"{value:.4f}".rstrip("0").rstrip(".")
    return "0" if text in ("-0", "") else text


def _distributions_section(report: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    methods, metrics = _methods(report), _metrics(report)
    colours = {m: METHOD_COLOURS[i % len(METHOD_COLOURS)] for i, m in enumerate(methods)}
    included = [r for r in rows if r.get("included")]
    legend = " ".join(
        f'<span class="key"><span class="swatch" style="background:{colours[m]}"></span>'
        f"{esc(method_label(m))}</span>"
        for m in methods
    )
    body = (
        f'<p class="muted">Per-sample drift between the baseline and candidate maps of each '
        f"included sample. Box: q25–q75, whiskers: q05–q95, bar: median, diamond: mean on its "
        f"95% bootstrap CI, dashed: “unchanged”. {legend}</p>"
    )
    cards = []
    for metric in metrics:
        info = metric_info(metric)
        series = []
        for method in methods:
            values = [v for r in included if (v := _value(r, method, metric)) is not None]
            series.append((method, values, _stats(report, method, metric)))
        cards.append(
            f'<div class="card chart"><div class="chart-title">{_metric_head(metric, " ")}</div>'
            f'<div class="muted small">{esc(info.text)}</div>'
            f"{distribution_svg(metric, series, colours)}</div>"
        )
    body += f'<div class="grid2">{"".join(cards)}</div>'
    comparisons = [_dict(c) for c in _list(report.get("method_comparisons"))]
    if comparisons:
        crow = [
            [
                esc(metric_info(str(c.get("metric"))).label),
                f"{esc(method_label(str(c.get('method_a'))))} vs "
                f"{esc(method_label(str(c.get('method_b'))))}",
                f"<span class=num>{esc(c.get('n', '–'))}</span>",
                f"<span class=num>{_p_value(c.get('p_value'))}</span>",
                f"<span class=num>{fmt(c.get('effect_size'), 2)}</span>",
            ]
            for c in comparisons
        ]
        body += (
            "<details><summary>between methods on the same samples (Wilcoxon signed-rank)"
            "</summary>"
            + _table(["metric", "methods", "n", "p", "effect size (rank-biserial)"], crow, "narrow")
            + "</details>"
        )
    return _section("distributions", "Drift per method and metric", body)


def _p_value(value: Any) -> str:
    v = _num(value)
    if v is None:
        return "–"
    return "&lt; 0.001" if v < 0.001 else f"{v:.3f}"


# --------------------------------------------------------------------------- per class


def _tint(info: MetricInfo, value: float | None) -> str:
    if value is None:
        return ""
    s = info.stability(value)
    hue = 8 + 124 * s  # red .. green
    return f"background:hsl({hue:.0f},62%,90%)"


def _metric_head(metric: str, sep: str = "<br>") -> str:
    """The metric's readable label, with its report key under it when they differ."""
    label = metric_info(metric).label
    if label == metric:
        return esc(label)
    return f'{esc(label)}{sep}<span class="muted small">{esc(metric)}</span>'


def _per_class_section(report: dict[str, Any]) -> str:
    methods, metrics = _methods(report), _metrics(report)
    groups = ["overall", *_class_names(report)]
    blocks = []
    for method in methods:
        head = ["class", "n"] + [_metric_head(m) for m in metrics]
        table_rows = []
        for group in groups:
            first = _stats(report, method, metrics[0], group) if metrics else {}
            cells = [
                f"<strong>{esc(group)}</strong>" if group == "overall" else esc(group),
                f"<span class=num>{esc(first.get('n', '–'))}</span>",
            ]
            for metric in metrics:
                stats = _stats(report, method, metric, group)
                mean = _num(stats.get("mean"))
                tip = f"95% CI [{fmt(stats.get('ci95_low'))}, {fmt(stats.get('ci95_high'))}]"
                cells.append(
                    f'<span class="num cell" style="{_tint(metric_info(metric), mean)}" '
                    f'title="{esc(tip)}">{fmt(mean)}</span>'
                )
            table_rows.append(cells)
        blocks.append(f"<h3>{esc(method_label(method))}</h3>" + _table(head, table_rows, "pc"))
    note = (
        '<p class="muted">Mean per class of the included samples (hover a cell for its 95% '
        "CI). Tint: green = close to “unchanged”, red = far from it.</p>"
    )
    return _section("per-class", "Per class: mean drift", note + "".join(blocks))


def _floor_section(report: dict[str, Any]) -> str:
    """Drift next to its floor(s): the share of samples beyond the floor's 95% tail."""
    floors = [
        (key, label)
        for key, label in (
            ("noise_floor", "perturbed baseline"),
            ("replica_floor", "baseline replica (other seed)"),
        )
        if isinstance(report.get(key), dict) and report[key]
    ]
    if not floors:
        return ""
    blocks = []
    for key, label in floors:
        floor = report[key]
        head = ["method", "metric", "floor median", "floor 95% tail", "beyond the floor"]
        table_rows = []
        for method in _methods(report):
            for metric in _metrics(report):
                entry = _dict(_dict(floor.get(method)).get(metric))
                if not entry:
                    continue
                beyond = _num(entry.get("beyond_floor"))
                share = "–" if beyond is None else f"{beyond:.0%}"
                table_rows.append(
                    [
                        esc(method_label(method)),
                        esc(metric),
                        f"<span class=num>{fmt(_dict(entry.get('floor')).get('median'))}</span>",
                        f"<span class=num>{fmt(entry.get('threshold'))}</span>",
                        f"<span class=num><strong>{esc(share)}</strong></span>",
                    ]
                )
        blocks.append(f"<h3>vs {esc(label)}</h3>" + _table(head, table_rows, "floor"))
    note = (
        '<p class="muted">The floor is the drift that noise alone causes: the same metrics '
        "between the baseline's maps and those of a slightly perturbed input (brightness "
        "and noise, no geometry) or of a replica trained with another seed. “Beyond the "
        "floor” is the share of included samples whose drift lies past the floor's 95% tail "
        "(about 5% when the candidate drifts no more than noise).</p>"
    )
    return _section("floor", "Drift next to its noise floor", note + "".join(blocks))


# --------------------------------------------------------------------------- samples


RANKINGS = (("iou_top20", False), ("displacement", True), ("iou_t50", False), ("pearson", False))


def most_drifted(
    rows: list[dict[str, Any]], method: str, top_k: int
) -> tuple[str | None, list[dict[str, Any]]]:
    """(ranking metric, the ``top_k`` most drifted included rows under ``method``): lowest
    iou_top20, else highest displacement (then iou_t50, pearson); ties by index."""
    included = [r for r in rows if r.get("included")]
    for metric, descending in RANKINGS:
        scored = [(v, r) for r in included if (v := _value(r, method, metric)) is not None]
        if scored:
            scored.sort(key=lambda p: ((-p[0] if descending else p[0]), p[1].get("index", 0)))
            return metric, [r for _, r in scored[:top_k]]
    return None, []


def _data_uri(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def heat_legend_svg() -> str:
    stops = "".join(
        f'<stop offset="{v:.2f}" stop-color="rgb({r},{g},{b})"/>' for v, r, g, b in HEAT_ANCHORS
    )
    return (
        '<svg class="legend" viewBox="0 0 250 22" width="250" height="22" role="img" '
        'aria-label="heat colour scale">'
        f'<defs><linearGradient id="heat">{stops}</linearGradient></defs>'
        '<text x="0" y="15" class="tick">low</text>'
        '<rect x="30" y="5" width="170" height="12" rx="2" fill="url(#heat)"/>'
        '<text x="206" y="15" class="tick">high</text></svg>'
    )


def _samples_section(
    report: dict[str, Any], rows: list[dict[str, Any]], overlay_png: OverlaySource, top_k: int
) -> str:
    metrics = _metrics(report)
    body = (
        '<p class="muted">Each overlay shows the input in grayscale under each model\'s map '
        "(per-map min–max, drawn transparent where cold). Captions: each model's prediction "
        f"and its probability; the true label. {heat_legend_svg()}</p>"
    )
    for method in _methods(report):
        ranking, picked = most_drifted(rows, method, top_k)
        if ranking is None:
            body += (
                f"<h3>{esc(method_label(method))}</h3>"
                '<p class="muted">No included sample has a drift value for this method.</p>'
            )
            continue
        info = metric_info(ranking)
        order = "highest" if dict(RANKINGS)[ranking] else "lowest"
        body += (
            f"<h3>{esc(method_label(method))} — {len(picked)} most drifted "
            f'<span class="muted small">({order} {esc(info.label)})</span></h3>'
            '<div class="samples">'
        )
        for row in picked:
            body += _sample_card(row, method, ranking, metrics, overlay_png)
        body += "</div>"
    return _section("samples", "The most drifted samples", body)


def _sample_card(
    row: dict[str, Any],
    method: str,
    ranking: str,
    metrics: list[str],
    overlay_png: OverlaySource,
) -> str:
    index = row.get("index")
    try:
        png = overlay_png(int(index), method) if isinstance(index, int) else None
    except OverlayUnavailable:
        png = None
    if png:
        figure = (
            f'<img src="{_data_uri(png)}" alt="{esc(f"overlay of sample {index}, {method}")}" '
            'loading="eager">'
        )
    else:
        figure = '<div class="noimg">overlay unavailable (maps or image missing)</div>'
    chips = []
    for metric in metrics:
        value = _value(row, method, metric)
        if value is None and metric != ranking:
            continue
        cls = "chip key" if metric == ranking else "chip"
        chips.append(
            f'<span class="{cls}" title="{esc(metric)}">{esc(metric_info(metric).label)} '
            f"<b>{fmt(value)}</b></span>"
        )
    degenerate = _list(_dict(row.get("degenerate")).get(method))
    flags = [r for r, d in zip(ROLES, degenerate, strict=False) if d]
    if flags:
        chips.append(f'<span class="chip warn">degenerate: {esc(", ".join(flags))}</span>')
    return (
        f'<figure class="card sample">{figure}<figcaption><div><b>#{esc(index)}</b> '
        f'<span class="mono small">{esc(row.get("path", ""))}</span></div>'
        f'<div class="chips">{"".join(chips)}</div></figcaption></figure>'
    )


# --------------------------------------------------------------------------- settings


def _kv(pairs: Iterable[tuple[str, Any]]) -> str:
    rows = []
    for key, value in pairs:
        if isinstance(value, dict | list):
            shown = f'<code class="json">{esc(json.dumps(value, sort_keys=True))}</code>'
        elif value is None:
            shown = '<span class="muted">–</span>'
        else:
            shown = f'<span class="mono">{esc(value)}</span>'
        rows.append(f"<tr><th>{esc(key)}</th><td>{shown}</td></tr>")
    return f'<table class="kv"><tbody>{"".join(rows)}</tbody></table>'


def _settings_section(report: dict[str, Any]) -> str:
    models = _dict(report.get("models"))
    dataset = _dict(report.get("dataset"))
    config = _dict(report.get("config"))
    blocks = []
    for role in ROLES:
        m = _dict(models.get(role))
        keys = ("arch", "phase", "sha256", "parent_sha256", "source", "input_size", "class_names")
        pairs = [(k, m.get(k)) for k in keys]
        pairs += [(k, v) for k, v in m.items() if k not in keys]
        blocks.append(f"<div><h3>{esc(_role_title(report, role))}</h3>{_kv(pairs)}</div>")
    body = f'<div class="grid2">{"".join(blocks)}</div>'
    body += f'<div class="grid2"><div><h3>dataset</h3>{_kv(dataset.items())}</div>'
    body += f"<div><h3>audit configuration</h3>{_kv(config.items())}</div></div>"
    body += "<h3>this report</h3>" + _kv(
        [
            ("camdrift version", report.get("camdrift_version")),
            ("created at", report.get("created_at")),
            ("schema version", report.get("schema_version")),
            ("samples", _dict(report.get("samples")).get("location")),
        ]
    )
    return _section("settings", "Settings used", body)


# --------------------------------------------------------------------------- page


CSS = """
:root{--ink:#1f2328;--muted:#59636e;--line:#d1d9e0;--soft:#f6f8fa;--accent:#0969da}
*{box-sizing:border-box}
body{margin:0;font:14px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,
sans-serif;color:var(--ink);background:#eef1f4}
main{max-width:1200px;margin:0 auto;padding:0 20px 40px}
header.top{background:#0d1117;color:#e6edf3;padding:22px 0 18px}
header.top .in{max-width:1200px;margin:0 auto;padding:0 20px}
header.top h1{margin:0;font-size:24px;font-weight:650;letter-spacing:-.01em}
header.top .brand{font:600 12px/1 ui-monospace,SFMono-Regular,Menlo,monospace;color:#7ee787;
letter-spacing:.12em;text-transform:uppercase;margin-bottom:6px}
header.top .sub{color:#9198a1;margin:6px 0 0}
header.top .sub b{color:#e6edf3;font-weight:600}
nav{position:sticky;top:0;z-index:5;background:rgba(255,255,255,.94);border-bottom:1px solid
var(--line);backdrop-filter:blur(4px)}
nav .in{max-width:1200px;margin:0 auto;padding:8px 20px;display:flex;gap:18px;flex-wrap:wrap}
nav a{color:var(--muted);text-decoration:none;font-weight:500}
nav a:hover{color:var(--accent)}
section{background:#fff;border:1px solid var(--line);border-radius:10px;padding:18px 22px;
margin:18px 0}
h2{font-size:18px;margin:0 0 12px}
h3{font-size:15px;margin:18px 0 8px}
.muted{color:var(--muted)}.small{font-size:12px}
.mono,code{font-family:ui-monospace,SFMono-Regular,Menlo,Consolas,monospace;font-size:12px}
code.json{white-space:pre-wrap;word-break:break-all}
.num{font-variant-numeric:tabular-nums}
table{border-collapse:collapse;width:100%;margin:10px 0}
table.narrow{width:auto;min-width:50%}
th,td{text-align:left;padding:6px 10px;border-bottom:1px solid #eaeef2;vertical-align:top}
thead th{font-size:12px;color:var(--muted);font-weight:600;border-bottom:1px solid var(--line)}
table.kv th{width:150px;color:var(--muted);font-weight:500}
table.kv td{overflow-wrap:anywhere;word-break:break-all}
.grid2>*{min-width:0}
.banner{display:flex;gap:16px;align-items:center;border-radius:8px;padding:14px 16px;
border:1px solid}
.banner .badge{font:700 18px/1 system-ui,sans-serif;letter-spacing:.06em;padding:10px 14px;
border-radius:6px;color:#fff;white-space:nowrap}
.v-pass{background:#dafbe1;border-color:#4ac26b}.v-pass .badge{background:#1a7f37}
.v-fail{background:#ffebe9;border-color:#ff8182}.v-fail .badge{background:#cf222e}
.v-inconclusive{background:#fff8c5;border-color:#d4a72c}.v-inconclusive .badge{background:#9a6700}
.v-none{background:var(--soft);border-color:var(--line)}.v-none .badge{background:#6e7781}
.hv{font-size:13px;vertical-align:middle;margin-left:10px;padding:3px 10px;border-radius:12px;
text-transform:uppercase;letter-spacing:.06em;text-decoration:none;color:#fff;border:0}
.hv.v-pass{background:#1a7f37}.hv.v-fail{background:#cf222e}.hv.v-inconclusive{background:#9a6700}
.hv.v-none{background:#6e7781}
pre{background:var(--soft);padding:10px;border-radius:6px;overflow:auto}
.pill{display:inline-block;padding:1px 8px;border-radius:10px;font-size:12px;font-weight:600}
.pill.ok{background:#dafbe1;color:#116329}.pill.bad{background:#ffebe9;color:#a40e26}
.pill.na{background:var(--soft);color:var(--muted)}
.headline{font-size:17px;font-weight:600;margin:0 0 4px;padding:10px 14px;
border-left:4px solid var(--accent);background:#f0f6ff;border-radius:4px}
.grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(460px,1fr));gap:14px}
.card{border:1px solid var(--line);border-radius:8px;padding:12px 14px;background:#fff}
.card.model .role{font-size:12px;text-transform:uppercase;letter-spacing:.06em;color:var(--muted)}
.card.model.baseline{border-top:4px solid #8c959f}
.card.model.candidate{border-top:4px solid #0969da}
.card.model .arch{font-size:16px;font-weight:600;margin:2px 0 8px}
.kpis{display:flex;gap:28px}.kpi .k{font-size:12px;color:var(--muted)}
.kpi .v{font-size:26px;font-weight:650;font-variant-numeric:tabular-nums}
.delta{font-size:13px;margin-left:6px;font-weight:600;color:var(--muted)}
.delta.up{color:#1a7f37}.delta.down{color:#cf222e}
.bar{display:inline-block;width:70px;height:8px;background:#eaeef2;border-radius:4px;
margin-right:8px;vertical-align:middle;overflow:hidden}.bar>span{display:block;height:100%}
table.cm{width:auto}table.cm td,table.cm th{text-align:center;padding:4px 8px}
.tiles{display:grid;grid-template-columns:repeat(auto-fit,minmax(150px,1fr));gap:10px;
margin-bottom:8px}
.tile{background:var(--soft);border-radius:8px;padding:10px 12px}
.tile .v{font-size:24px;font-weight:650;font-variant-numeric:tabular-nums}
.tile .k{font-weight:600}
.key{display:inline-flex;align-items:center;gap:5px;margin-left:10px;color:var(--ink)}
.swatch{width:12px;height:12px;border-radius:3px;display:inline-block}
.chart-title{font-weight:600;font-size:15px}
svg.dist{display:block;max-width:100%;height:auto;margin-top:6px}
svg .grid{stroke:#eaeef2}svg .same{stroke:#8c959f;stroke-dasharray:4 3}
svg .tick{font-size:11px;fill:#59636e}svg .rowlabel{font-size:12px;font-weight:600;fill:#1f2328}
svg .stat{font-size:11px;fill:#1f2328}svg .stat.muted{fill:#59636e}
svg .ci{stroke:#1f2328;stroke-width:3;stroke-linecap:round}
svg .mean{fill:#fff;stroke:#1f2328;stroke-width:1.6}
svg.legend{vertical-align:middle;margin-left:8px}
svg.traj{display:block;max-width:100%;height:auto;margin-top:6px}svg .sharpest{fill:#fff8c5}
table.pc td{padding:4px 6px}.cell{display:block;padding:2px 6px;border-radius:4px;text-align:right}
.samples{display:grid;grid-template-columns:repeat(auto-fill,minmax(520px,1fr));gap:14px}
figure.sample{margin:0;padding:8px}
figure.sample img{display:block;max-width:100%;height:auto;margin:0 auto;image-rendering:auto}
figcaption{padding:6px 4px 0}
.chips{display:flex;flex-wrap:wrap;gap:6px;margin-top:4px}
.chip{font-size:12px;background:var(--soft);border:1px solid #eaeef2;border-radius:10px;
padding:0 8px}
.chip.key{background:#fff1e5;border-color:#ffb77c}.chip.warn{background:#fff8c5}
.noimg{height:120px;display:flex;align-items:center;justify-content:center;color:var(--muted);
background:var(--soft);border-radius:6px}
details{margin-top:10px}summary{cursor:pointer;color:var(--accent)}
footer{color:var(--muted);text-align:center;font-size:12px;padding:10px}
@media print{nav{display:none}body{background:#fff}section{break-inside:avoid}}
"""

# Marks the body with data-images-ok="true" once every <img> decoded (headless checks read it).
CHECK_IMAGES = """
(function(){
  function check(){
    var imgs=Array.prototype.slice.call(document.images);
    var ok=imgs.every(function(i){return i.complete&&i.naturalWidth>0;});
    document.body.dataset.imagesOk=ok?"true":"false";
    document.body.dataset.images=String(imgs.length);
  }
  if(document.readyState==="complete"){check();}else{window.addEventListener("load",check);}
})();
"""


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
    models = _dict(report.get("models"))
    dataset = _dict(report.get("dataset"))
    config = _dict(report.get("config"))
    verdict = str(_dict(report.get("verdict")).get("verdict") or "no policy").lower()
    state = verdict if verdict in VERDICT_TEXT else "none"

    def who(role: str) -> str:
        m = _dict(models.get(role))
        return f"<b>{esc(m.get('arch', '?'))}</b> {esc(_role_title(report, role))}"

    subtitle = (
        f"{who('baseline')} → {who('candidate')} · {esc(dataset.get('num_evaluated', '?'))} "
        f"samples evaluated, filter <b>{esc(config.get('sample_filter', '?'))}</b>"
    )
    if report.get("created_at"):
        subtitle += f" · {esc(report['created_at'])}"
    from worker.render.html_trajectory import (
        trajectory_section,  # it draws with this module's parts
    )

    sections = {
        "verdict": _verdict_section(report),
        "performance": _performance_section(report),
        "subsets": _subsets_section(report, rows),
        "distributions": _distributions_section(report, rows),
        "per-class": _per_class_section(report),
        "floor": _floor_section(report),
        "trajectory": trajectory_section(report),
        "samples": _samples_section(report, rows, overlay_png, top_k),
        "settings": _settings_section(report),
    }
    nav = "".join(f'<a href="#{sid}">{esc(title)}</a>' for sid, title in SECTIONS if sections[sid])
    title = f"camdrift · {verdict} · {_dict(models.get('candidate')).get('arch', '')}"
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head>"
        '<body data-images-ok="pending">'
        f'<header class="top"><div class="in"><div class="brand">camdrift</div>'
        f'<h1>Attribution drift report <a class="hv v-{state}" href="#verdict">'
        f"{esc(verdict)}</a></h1><p class=sub>{subtitle}</p></div></header>"
        f'<nav><div class="in">{nav}</div></nav><main>{"".join(sections.values())}</main>'
        f"<footer>camdrift {esc(report.get('camdrift_version', ''))} · self-contained report "
        f"· schema {esc(report.get('schema_version', ''))}</footer>"
        f"<script>{CHECK_IMAGES}</script></body></html>\n"
    )


# --------------------------------------------------------------------------- local files


def _load_rows(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def _dataset_root(report: dict[str, Any], report_path: Path) -> Path | None:
    source = _dict(report.get("dataset")).get("source")
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
    location = _dict(report.get("samples")).get("location")
    if not rows_path.is_file() and location:
        rows_path = report_path.parent / str(location)
    rows = _load_rows(rows_path)
    by_index = {r.get("index"): r for r in rows}
    root = _dataset_root(report, report_path)
    names = _class_names(report)
    phases = tuple(_dict(_dict(report.get("models")).get(r)).get("phase") for r in ROLES)

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
