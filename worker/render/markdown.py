"""A short markdown summary of a drift report and its gate verdict, for a pull-request comment.

Torch-free: the API serves it (``GET /drift-jobs/{id}/report?format=md``) and ``camdrift gate``
writes it (``--markdown``) from the same function.
"""

from __future__ import annotations

from typing import Any

from worker.results.gate import required_text


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _cell(text: Any) -> str:
    """Text safe inside a table cell: no pipes or line breaks."""
    return str(text).replace("|", "\\|").replace("\r", " ").replace("\n", " ")


def _model_line(role: str, info: dict[str, Any]) -> str:
    sha = (info.get("sha256") or "")[:12]
    phase = info.get("phase") or "?"
    return f"- **{role}**: `{info.get('arch', '?')}` ({phase}) `{sha or 'no sha'}`"


def render_markdown(
    report: dict[str, Any], verdict: dict[str, Any] | None = None, *, job_id: str | None = None
) -> str:
    """Models, gate verdict (status line + rule table), performance, subset counts, and each
    method x metric mean [95% CI]. ``verdict`` defaults to the report's own."""
    if verdict is None and isinstance(report.get("verdict"), dict):
        verdict = report["verdict"]
    models = report.get("models", {})
    dataset = report.get("dataset", {})
    config = report.get("config", {})
    title = "## camdrift drift report" + (f" — job `{job_id}`" if job_id else "")
    lines = [title, ""]
    for role in ("baseline", "candidate"):
        if role in models:
            lines.append(_model_line(role, models[role]))
    lines.append(
        f"- **dataset**: fingerprint `{(dataset.get('fingerprint') or '')[:12]}`, "
        f"{dataset.get('num_evaluated', '?')} evaluated, filter "
        f"`{config.get('sample_filter', '?')}`"
    )
    if isinstance(verdict, dict) and verdict.get("verdict") is not None:
        lines.append(f"- **verdict**: **{str(verdict['verdict']).upper()}**")
        lines += gate_section(verdict)
    lines += [
        "",
        "### Performance",
        "",
        "| model | n | accuracy | macro AUC |",
        "|---|---|---|---|",
    ]
    for role, perf in report.get("performance", {}).items():
        lines.append(
            f"| {role} | {perf.get('n', '–')} | {_num(perf.get('accuracy'))} | "
            f"{_num(perf.get('macro_auc'))} |"
        )
    subsets = report.get("subsets", {})
    keys = (
        "evaluated",
        "included",
        "true_positive",
        "baseline_correct",
        "candidate_correct",
        "disagreement",
    )
    lines += [
        "",
        "### Samples",
        "",
        "| " + " | ".join(keys) + " |",
        "|" + "---|" * len(keys),
        "| " + " | ".join(_num(subsets.get(k)) for k in keys) + " |",
    ]
    summaries: dict[str, dict[str, Any]] = report.get("summaries", {})
    metrics = list(config.get("metrics") or next(iter(summaries.values()), {}).keys())
    if summaries and metrics:
        lines += [
            "",
            "### Drift (mean [95% CI], included samples)",
            "",
            "| method | " + " | ".join(metrics) + " |",
            "|---|" + "---|" * len(metrics),
        ]
        for method, per_metric in summaries.items():
            cells = []
            for metric in metrics:
                stats = (per_metric.get(metric) or {}).get("overall") or {}
                cells.append(
                    f"{_num(stats.get('mean'))} [{_num(stats.get('ci95_low'))}, "
                    f"{_num(stats.get('ci95_high'))}]"
                )
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
    lines += trajectory_lines(report.get("trajectory"))
    return "\n".join(lines) + "\n"


def trajectory_lines(section: dict[str, Any] | None) -> list[str]:
    """Per checkpoint of a trajectory job: performance and each method's Pearson r from the
    baseline and from the previous checkpoint (the sharpest step marked)."""
    if not isinstance(section, dict) or not section.get("series"):
        return []
    series: dict[str, dict[str, Any]] = section["series"]
    metric = "pearson" if "pearson" in next(iter(series.values())) else None
    metric = metric or next(iter(next(iter(series.values()))))
    head = ["checkpoint", "accuracy", "macro AUC"]
    for method in series:
        head += [f"{method} {metric} from baseline", f"{method} {metric} from previous"]
    lines = [
        "",
        f"### Trajectory ({section.get('steps', '?')} steps)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    scores = section.get("performance") or []
    for i, checkpoint in enumerate(section.get("checkpoints") or []):
        score = scores[i] if i < len(scores) else {}
        cells = [_cell(checkpoint.get("label")), _num(score.get("accuracy"))]
        cells.append(_num(score.get("macro_auc")))
        for entry in (per_metric[metric] for per_metric in series.values()):
            for kind in ("from_first", "consecutive"):
                mean = entry[kind][i - 1].get("mean") if i else None
                sharpest = kind == "consecutive" and entry.get("sharpest_step") == i
                cells.append(_num(mean) + (" (sharpest)" if sharpest else ""))
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def gate_section(verdict: dict[str, Any]) -> list[str]:
    """The gate's status line and one table row per expanded check (failures first)."""
    status = str(verdict.get("verdict", "?")).upper()
    lines = ["", "### Gate", "", f"**Gate: {status}** — {_cell(verdict.get('reason') or '')}"]
    if "min_samples" in verdict:
        lines.append(
            f"({verdict.get('n_included', '?')} included samples, "
            f"min_samples {verdict['min_samples']})"
        )
    checks = list(verdict.get("rules") or [])
    if not checks:
        return lines
    order = {False: 0, None: 1, True: 2}
    checks.sort(key=lambda c: order.get(c.get("passed"), 1))  # stable: policy order within
    lines += ["", "| rule | observed | required | result |", "|---|---|---|---|"]
    for check in checks:
        rule = (
            f"{_cell(check.get('name'))}<br>`{_cell(check.get('method'))}` "
            f"{_cell(check.get('metric'))} {_cell(check.get('stat'))}, "
            f"class {_cell(check.get('class'))}"
        )
        passed = check.get("passed")
        result = (
            "pass"
            if passed is True
            else "**FAIL**"
            if passed is False
            else f"n/a: {_cell(check.get('reason'))}"
        )
        observed = check.get("observed")
        shown = "–" if observed is None else f"{float(observed):.3f}"
        lines.append(f"| {rule} | {shown} | {_cell(required_text(check))} | {result} |")
    return lines
