"""Short markdown summaries, for a pull-request comment: a drift report with its gate verdict,
and a study report.

Torch-free: the API serves them (``GET /drift-jobs/{id}/report?format=md``,
``GET /drift-studies/{id}/report?format=md``) and ``camdrift gate`` writes the first
(``--markdown``) from the same function. The text is ``templates/summary.md.j2`` and
``templates/study.md.j2`` (rendered without HTML escaping); this module parses the drift report
once (:func:`worker.results.report_schema.report_view`) and reads it into their values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from worker.render.formatting import (
    NO_STATS,
    floor_tables,
    md_cell,
    metrics,
    plain_number,
    stats,
)
from worker.render.templating import markdown_environment
from worker.results.gate import required_text
from worker.results.report_schema import (
    Check,
    DriftReport,
    ModelInfo,
    TrajectorySection,
    Verdict,
    read_model,
    report_view,
)

SUBSET_KEYS = (
    "evaluated",
    "included",
    "true_positive",
    "baseline_correct",
    "candidate_correct",
    "disagreement",
)
ROLES = ("baseline", "candidate")
# a study ranking's direction (worker.results.study.stability_direction), read aloud
STABLE = {"higher": "higher mean", "lower": "lower mean", "abs": "lower mean absolute change"}


def _template(name: str = "summary.md.j2"):
    return markdown_environment().get_template(name)


def _lines(text: str) -> list[str]:
    return text.removesuffix("\n").split("\n")


def _model(role: str, info: ModelInfo) -> dict[str, Any]:
    sha = (info.sha256 or "")[:12]
    return {
        "role": role,
        "arch": info.arch or "?",
        "phase": info.phase or "?",
        "sha": sha or "no sha",
    }


def render_markdown(
    report: DriftReport | Mapping[str, Any],
    verdict: Verdict | Mapping[str, Any] | None = None,
    *,
    job_id: str | None = None,
) -> str:
    """Models, gate verdict (status line + rule table), performance, subset counts, each
    method x metric mean [95% CI], the noise floor(s) when measured and the trajectory.
    ``verdict`` defaults to the report's own."""
    view = report_view(report)
    gate = read_model(Verdict, verdict) if verdict is not None else view.verdict
    measured = metrics(view)
    drift = None
    if view.summaries and measured:
        rows = []
        for method in view.summaries:
            cells = []
            for metric in measured:
                s = stats(view, method, metric)
                cells.append(
                    f"{plain_number(s.mean)} [{plain_number(s.ci95_low)}, "
                    f"{plain_number(s.ci95_high)}]"
                )
            rows.append((method, cells))
        drift = {"metrics": measured, "rows": rows}
    dataset, config = view.dataset, view.config
    return _template().render(
        job_id=job_id,
        models=[_model(role, view.models[role]) for role in ROLES if role in view.models],
        dataset={
            "fingerprint": (dataset.fingerprint or "")[:12],
            "evaluated": "?" if dataset.num_evaluated is None else dataset.num_evaluated,
            "sample_filter": config.sample_filter or "?",
        },
        gate_verdict=_gate(gate) if gate is not None and gate.verdict is not None else None,
        performance=[
            (role, plain_number(p.n), plain_number(p.accuracy), plain_number(p.macro_auc))
            for role, p in view.performance.items()
        ],
        warnings=list(view.warnings),
        subset_keys=SUBSET_KEYS,
        subset_values=[plain_number(getattr(view.subsets, k)) for k in SUBSET_KEYS],
        drift=drift,
        floors=floor_tables(view),
        trajectory_table=_trajectory(view.trajectory),
    )


def _trajectory(section: TrajectorySection | None) -> dict[str, Any] | None:
    if section is None or not section.series:
        return None
    series = section.series
    first = next(iter(series.values()))
    metric = "pearson" if "pearson" in first else next(iter(first), None)
    if metric is None:
        return None
    head = ["checkpoint", "accuracy", "macro AUC"]
    for method in series:
        head += [f"{method} {metric} from baseline", f"{method} {metric} from previous"]
    scores = section.performance
    rows = []
    for i, checkpoint in enumerate(section.checkpoints):
        score = scores[i] if i < len(scores) else None
        cells = [md_cell(checkpoint.label)]
        cells.append(plain_number(score.accuracy if score is not None else None))
        cells.append(plain_number(score.macro_auc if score is not None else None))
        for entry in (per_metric.get(metric) for per_metric in series.values()):
            for kind in ("from_first", "consecutive"):
                steps = getattr(entry, kind) if entry is not None else []
                mean = (steps[i - 1] if 0 < i <= len(steps) else NO_STATS).mean
                sharpest = kind == "consecutive" and entry is not None and entry.sharpest_step == i
                cells.append(plain_number(mean) + (" (sharpest)" if sharpest else ""))
        rows.append(cells)
    return {"steps": "?" if section.steps is None else section.steps, "head": head, "rows": rows}


def trajectory_lines(section: TrajectorySection | Mapping[str, Any] | None) -> list[str]:
    """Per checkpoint of a trajectory job: performance and each method's Pearson r from the
    baseline and from the previous checkpoint (the sharpest step marked)."""
    table = _trajectory(None if section is None else read_model(TrajectorySection, section))
    if table is None:
        return []
    return _lines(_template("_summary_parts.md.j2").module.trajectory(table))


def _required(check: Check) -> str:
    if check.op is None or check.value is None:
        return "–"
    return required_text({"op": check.op, "value": check.value})


def _gate(verdict: Verdict) -> dict[str, Any]:
    return {
        "status": str(verdict.verdict or "?").upper(),
        "reason": verdict.reason,
        "has_min_samples": "min_samples" in verdict.model_fields_set,
        "min_samples": verdict.min_samples,
        "n_included": "?" if verdict.n_included is None else verdict.n_included,
        "checks": [
            {
                "name": check.name,
                "method": check.method,
                "metric": check.metric,
                "stat": check.stat,
                "klass": check.class_,
                "observed": "–" if check.observed is None else f"{check.observed:.3f}",
                "required": _required(check),
                "passed": check.passed,
                "reason": check.reason,
            }
            for check in verdict.ordered()  # failures first, policy order within
        ],
    }


def gate_section(verdict: Verdict | Mapping[str, Any]) -> list[str]:
    """The gate's status line and one table row per expanded check (failures first)."""
    return _lines(
        _template("_summary_parts.md.j2").module.gate(_gate(read_model(Verdict, verdict)))
    )


# --------------------------------------------------------------------------- studies


def render_study_markdown(document: Mapping[str, Any]) -> str:
    """A study report (``worker.results.study.study_report``) as markdown: the entries, per
    metric each method's ranking (most stable first, with the means), Kendall tau between the
    methods' rankings, and the ranking reversals with their bootstrap confidence; with
    replicate trainings, the same between the architectures over seeds and samples."""
    methods = list(document["methods"])
    table, taus, reversals = _study_tables(document, methods, document["metrics"])
    replicates = document.get("replicates")
    across = None
    if replicates:
        across = dict(
            zip(
                ("rankings", "taus", "reversals"),
                _study_tables(replicates, methods, document["metrics"], spread=True),
                strict=True,
            )
        )
        across["groups"] = [
            (md_cell(g), ", ".join(md_cell(n) for n in names))
            for g, names in replicates["groups"].items()
        ]
    return _template("study.md.j2").render(
        name=document.get("name"),
        study_id=document.get("study_id"),
        entries=document["entries"],
        n_common=document["n_common"],
        fingerprint=str(document["dataset"]["fingerprint"] or "")[:12],
        methods=methods,
        rankings=table,
        taus=taus,
        reversals=reversals,
        across=across,
        threshold=document["config"]["reversal_confidence"],
    )


def _study_tables(
    section: Mapping[str, Any], methods: list[str], metrics: list[str], *, spread: bool = False
) -> tuple[list, list, list]:
    """The ranking rows, Kendall tau rows and reversal rows of a study section (the entries',
    or the replicate groups'); ``spread`` adds each group's seed-to-seed SD to its mean."""
    rankings = section["rankings"]
    table = []
    for metric in metrics:
        cells = []
        for method in methods:
            ranked = rankings[method][metric]
            sd = ranked.get("seed_sd", {}) if spread else {}

            def shown(n: str, ranked: Mapping[str, Any] = ranked, sd: Mapping = sd) -> str:
                mean = plain_number(ranked["means"][n])
                extra = f" ± {plain_number(sd[n])}" if sd.get(n) is not None else ""
                return f"{md_cell(n)} ({mean}{extra})"

            cells.append(" > ".join(shown(n) for n in ranked["ranking"]) or "–")
        direction = rankings[methods[0]][metric]["direction"] if methods else None
        table.append((metric, STABLE.get(direction, "–"), cells))
    taus = [
        (
            metric,
            " vs ".join(item["methods"]),
            plain_number(item["tau"]),
            plain_number(item["p_value"]),
        )
        for metric, items in section["kendall_tau"].items()
        for item in items
    ]
    reversals = [
        {
            "metric": r["metric"],
            "pair": " / ".join(md_cell(n) for n in r["pair"]),
            "orders": "; ".join(
                f"{m}: {md_cell(o['more_stable'])} ({plain_number(o['probability'], 2)})"
                for m, o in r["orders"].items()
            ),
            "confidence": plain_number(r["confidence"], 2),
            "confident": r["confident"],
        }
        for r in section["reversals"]
    ]
    return table, taus, reversals
