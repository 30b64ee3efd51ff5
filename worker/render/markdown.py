"""A short markdown summary of a drift report and its gate verdict, for a pull-request comment.

Torch-free: the API serves it (``GET /drift-jobs/{id}/report?format=md``) and ``camdrift gate``
writes it (``--markdown``) from the same function. The text is ``templates/summary.md.j2``
(rendered without HTML escaping); this module reads the report into its values.
"""

from __future__ import annotations

from typing import Any

from worker.render.formatting import md_cell, plain_number
from worker.render.templating import markdown_environment
from worker.results.gate import required_text

SUBSET_KEYS = (
    "evaluated",
    "included",
    "true_positive",
    "baseline_correct",
    "candidate_correct",
    "disagreement",
)
CHECK_ORDER = {False: 0, None: 1, True: 2}  # failures first


def _template(name: str = "summary.md.j2"):
    return markdown_environment().get_template(name)


def _lines(text: str) -> list[str]:
    return text.removesuffix("\n").split("\n")


def _model(role: str, info: dict[str, Any]) -> dict[str, Any]:
    sha = (info.get("sha256") or "")[:12]
    return {
        "role": role,
        "arch": info.get("arch", "?"),
        "phase": info.get("phase") or "?",
        "sha": sha or "no sha",
    }


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
    subsets = report.get("subsets", {})
    summaries: dict[str, dict[str, Any]] = report.get("summaries", {})
    metrics = list(config.get("metrics") or next(iter(summaries.values()), {}).keys())
    drift = None
    if summaries and metrics:
        rows = []
        for method, per_metric in summaries.items():
            cells = []
            for metric in metrics:
                stats = (per_metric.get(metric) or {}).get("overall") or {}
                cells.append(
                    f"{plain_number(stats.get('mean'))} [{plain_number(stats.get('ci95_low'))}, "
                    f"{plain_number(stats.get('ci95_high'))}]"
                )
            rows.append((method, cells))
        drift = {"metrics": metrics, "rows": rows}
    gated = isinstance(verdict, dict) and verdict.get("verdict") is not None
    return _template().render(
        job_id=job_id,
        models=[_model(role, models[role]) for role in ("baseline", "candidate") if role in models],
        dataset={
            "fingerprint": (dataset.get("fingerprint") or "")[:12],
            "evaluated": dataset.get("num_evaluated", "?"),
            "sample_filter": config.get("sample_filter", "?"),
        },
        gate_verdict=_gate(verdict) if gated else None,
        performance=list(report.get("performance", {}).items()),
        subset_keys=SUBSET_KEYS,
        subset_values=[plain_number(subsets.get(k)) for k in SUBSET_KEYS],
        drift=drift,
        trajectory_table=_trajectory(report.get("trajectory")),
    )


def _trajectory(section: dict[str, Any] | None) -> dict[str, Any] | None:
    if not isinstance(section, dict) or not section.get("series"):
        return None
    series: dict[str, dict[str, Any]] = section["series"]
    metric = "pearson" if "pearson" in next(iter(series.values())) else None
    metric = metric or next(iter(next(iter(series.values()))))
    head = ["checkpoint", "accuracy", "macro AUC"]
    for method in series:
        head += [f"{method} {metric} from baseline", f"{method} {metric} from previous"]
    scores = section.get("performance") or []
    rows = []
    for i, checkpoint in enumerate(section.get("checkpoints") or []):
        score = scores[i] if i < len(scores) else {}
        cells = [md_cell(checkpoint.get("label")), plain_number(score.get("accuracy"))]
        cells.append(plain_number(score.get("macro_auc")))
        for entry in (per_metric[metric] for per_metric in series.values()):
            for kind in ("from_first", "consecutive"):
                mean = entry[kind][i - 1].get("mean") if i else None
                sharpest = kind == "consecutive" and entry.get("sharpest_step") == i
                cells.append(plain_number(mean) + (" (sharpest)" if sharpest else ""))
        rows.append(cells)
    return {"steps": section.get("steps", "?"), "head": head, "rows": rows}


def trajectory_lines(section: dict[str, Any] | None) -> list[str]:
    """Per checkpoint of a trajectory job: performance and each method's Pearson r from the
    baseline and from the previous checkpoint (the sharpest step marked)."""
    table = _trajectory(section)
    if table is None:
        return []
    return _lines(_template("_summary_parts.md.j2").module.trajectory(table))


def _gate(verdict: dict[str, Any]) -> dict[str, Any]:
    checks = list(verdict.get("rules") or [])
    checks.sort(key=lambda c: CHECK_ORDER.get(c.get("passed"), 1))  # stable: policy order within
    return {
        "status": str(verdict.get("verdict", "?")).upper(),
        "reason": verdict.get("reason") or "",
        "has_min_samples": "min_samples" in verdict,
        "min_samples": verdict.get("min_samples"),
        "n_included": verdict.get("n_included", "?"),
        "checks": [
            {
                "name": check.get("name"),
                "method": check.get("method"),
                "metric": check.get("metric"),
                "stat": check.get("stat"),
                "klass": check.get("class"),
                "observed": (
                    "–" if check.get("observed") is None else f"{float(check['observed']):.3f}"
                ),
                "required": required_text(check),
                "passed": check.get("passed"),
                "reason": check.get("reason"),
            }
            for check in checks
        ],
    }


def gate_section(verdict: dict[str, Any]) -> list[str]:
    """The gate's status line and one table row per expanded check (failures first)."""
    return _lines(_template("_summary_parts.md.j2").module.gate(_gate(verdict)))
