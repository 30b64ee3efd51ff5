"""A short markdown summary of a drift report, sized for a pull-request comment."""

from __future__ import annotations

from typing import Any


def _num(value: Any, digits: int = 3) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def _model_line(role: str, info: dict[str, Any]) -> str:
    sha = (info.get("sha256") or "")[:12]
    phase = info.get("phase") or "?"
    return f"- **{role}**: `{info.get('arch', '?')}` ({phase}) `{sha or 'no sha'}`"


def report_markdown(report: dict[str, Any], job_id: str) -> str:
    """Models, verdict, performance, subset counts, and method x metric mean [95% CI]."""
    models = report.get("models", {})
    dataset = report.get("dataset", {})
    config = report.get("config", {})
    lines = [f"## camdrift drift report — job `{job_id}`", ""]
    for role in ("baseline", "candidate"):
        if role in models:
            lines.append(_model_line(role, models[role]))
    lines.append(
        f"- **dataset**: fingerprint `{(dataset.get('fingerprint') or '')[:12]}`, "
        f"{dataset.get('num_evaluated', '?')} evaluated, filter "
        f"`{config.get('sample_filter', '?')}`"
    )
    verdict = report.get("verdict")
    if isinstance(verdict, dict) and verdict.get("verdict") is not None:
        lines.append(f"- **verdict**: **{str(verdict['verdict']).upper()}**")
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
    return "\n".join(lines) + "\n"
