"""The drift report: one versioned JSON document built from per-sample rows alone.

Rows are the unit everything agrees on: a local run and a sharded service job produce the
same rows, so they produce the same report. Torch-free, so the service can rebuild it too.
"""

from __future__ import annotations

import itertools
import math
from datetime import UTC, datetime
from typing import Any

import numpy as np

import training
from worker.catalog import metric_info, pair_metrics
from worker.results.ceiling import ceiling_section
from worker.results.consistency import CONSISTENCY_FT, CONSISTENCY_TL, consistency_section
from worker.results.performance import performance
from worker.results.report_schema import REPORT_KIND
from worker.results.rows import RowTable
from worker.results.stats import paired_test, summarize_groups_many, summarize_many
from worker.results.trajectory import trajectory_section

SCHEMA_VERSION = "1.0"


def build_report(
    rows: list[dict[str, Any]] | RowTable,
    *,
    models: dict[str, dict[str, Any]],
    dataset: dict[str, Any],
    config: dict[str, Any],
    samples_location: str | None,
    trajectory: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble the report from ``rows`` (any order, or a :class:`RowTable`) and the audit's
    description.

    ``trajectory``: descriptions of the checkpoints between baseline and candidate, in order,
    when the audit followed a sequence (their drift is in the rows).
    """
    table = RowTable.from_rows(rows)
    class_names = list(dataset["class_names"])
    methods, metrics = list(config["methods"]), list(config["metrics"])
    paired = pair_metrics(metrics)  # what a floor or a trajectory step measures
    seed, n_boot = int(config.get("seed", 0)), int(config.get("n_boot", 2000))
    included = table.take(table.included)
    groups = included.label
    keys = [(method, metric) for method in methods for metric in metrics]
    summaries: dict[str, dict[str, Any]] = {method: {} for method in methods}
    for (method, metric), summary in zip(
        keys,
        summarize_groups_many(
            [included.values(method, metric) for method, metric in keys],
            groups,
            class_names,
            n_boot=n_boot,
            seed=seed,
        ),
        strict=True,
    ):
        summaries[method][metric] = summary
    multi = bool(dataset.get("multi_label"))
    performance = {
        role: _performance(table, role, class_names, multi) for role in ("baseline", "candidate")
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "camdrift_version": training.__version__,
        "models": models,
        "dataset": dataset,
        "config": config,
        "subsets": subset_counts(table, class_names),
        "performance": performance,
        "warnings": audit_warnings(performance, dataset, models),
        "summaries": summaries,
        "method_comparisons": _comparisons(included, methods, metrics),
        "degenerate": _degenerate_counts(included, methods),
        "samples": {"location": samples_location, "count": len(table), "included": len(included)},
        "consistency": _consistency(included, class_names, methods, metrics),
        "noise_floor": noise_floor(
            included, methods, paired, class_names, n_boot=n_boot, seed=seed
        ),
        "replica_floor": noise_floor(
            included,
            methods,
            paired,
            class_names,
            n_boot=n_boot,
            seed=seed,
            key="replica_floor",
        ),
        "ceiling": ceiling_section(included, methods, paired, class_names),
        "trajectory": trajectory_section(
            table,
            methods,
            paired,
            class_names,
            [models.get("baseline", {}), *(trajectory or []), models.get("candidate", {})],
            n_boot=n_boot,
            seed=seed,
            multi_label=multi,
        ),
        "verdict": None,
    }


def _consistency(
    included: RowTable, class_names: list[str], methods: list[str], metrics: list[str]
) -> dict[str, Any] | None:
    """Map consistency per method (overall and per class: TL, FT, change), when the audit
    computed both models' levels (``consistency_tl`` and ``consistency_ft`` among its metrics);
    None otherwise, and for rows that never went through the audit's consistency step (an
    engine's :meth:`~worker.engine.audit.Audit.compute` alone: its summaries then read n = 0).
    From the rows alone, like every other section."""
    if CONSISTENCY_TL not in metrics or CONSISTENCY_FT not in metrics:
        return None
    if len(included) and not any(name == CONSISTENCY_TL for (_, _, name, _) in included.columns):
        return None
    return consistency_section(included, class_names, methods)


def noise_floor(
    rows: list[dict[str, Any]] | RowTable,
    methods: list[str],
    metrics: list[str],
    class_names: list[str],
    *,
    n_boot: int,
    seed: int,
    key: str = "floor",
) -> dict[str, Any] | None:
    """Drift next to its floor: per method x metric, the floor's distribution (baseline vs a
    perturbed baseline), the threshold at the floor's 95% tail, and the share of samples whose
    drift lies beyond it. None when the audit measured no floor.

    ``key="floor"``: baseline vs a perturbed baseline; ``key="replica_floor"``: baseline vs a
    replica trained with another seed (the job's ``baseline_replica``)."""
    table = RowTable.from_rows(rows)
    if not table.has(key):
        return None
    floored = table.present[key]
    labels = table.label[floored]
    out: dict[str, Any] = {}
    floors: list[tuple[dict[str, Any], np.ndarray]] = []  # summarised together below
    for method in methods:
        out[method] = {}
        for metric in metrics:
            floor = table.values(method, metric, series=key, mask=floored)
            drift = table.values(method, metric, mask=floored)
            worse = metric_info(metric).worse
            finite = floor[np.isfinite(floor)]
            threshold = beyond = None
            per_class: dict[str, float | None] = dict.fromkeys(class_names)
            if finite.size:
                threshold = float(np.quantile(worse.magnitude(finite), worse.tail()))
                hit = worse.beyond(drift, threshold)
                valid = np.isfinite(drift)
                beyond = _share(hit, valid)
                per_class = {
                    name: _share(hit, valid & (labels == k)) for k, name in enumerate(class_names)
                }
            out[method][metric] = {
                "direction": worse.value,
                "threshold": threshold,
                "beyond_floor": beyond,
                "beyond_floor_per_class": per_class,
            }
            floors.append((out[method][metric], floor))
    summaries = summarize_many([floor for _, floor in floors], n_boot=n_boot, seed=seed)
    for (entry, _), summary in zip(floors, summaries, strict=True):
        entry["floor"] = summary
    return out


def _share(hit: np.ndarray, valid: np.ndarray) -> float | None:
    return float(hit[valid].mean()) if valid.any() else None


def subset_counts(rows: list[dict[str, Any]] | RowTable, class_names: list[str]) -> dict[str, Any]:
    table = RowTable.from_rows(rows)
    label, inc = table.label, table.included
    pa, pb = table.pred_baseline, table.pred_candidate
    per_class = {
        name: {"evaluated": int((label == k).sum()), "included": int(((label == k) & inc).sum())}
        for k, name in enumerate(class_names)
    }
    return {
        "evaluated": len(table),
        "included": int(inc.sum()),
        "true_positive": int(((label == pa) & (label == pb)).sum()),
        "baseline_correct": int((label == pa).sum()),
        "candidate_correct": int((label == pb).sum()),
        "disagreement": int((pa != pb).sum()),
        "per_class": per_class,
    }


CHANCE_MARGIN = 0.1  # a macro AUC within this of 0.5 is "near chance"


def audit_warnings(
    performance: dict[str, Any], dataset: dict[str, Any], models: dict[str, dict[str, Any]]
) -> list[str]:
    """What makes the drift figures mean less than they seem, said once in the report: a
    model near chance on the audited data (its maps carry little evidence to drift from), and
    images smaller than the analysis size (upsampled: the maps see interpolation)."""
    out = []
    for role in ("baseline", "candidate"):
        auc = (performance.get(role) or {}).get("macro_auc")
        if auc is not None and math.isfinite(auc) and auc < 0.5 + CHANCE_MARGIN:
            out.append(
                f"the {role} ({(models.get(role) or {}).get('phase') or '?'}) scores a macro AUC "
                f"of {auc:.2f} on the audited images, near chance: its maps carry little "
                "evidence, so drift to or from them means little"
            )
    seen, analysis = dataset.get("median_image_size"), dataset.get("analysis_size")
    if seen and analysis and min(seen) < min(analysis):
        out.append(
            f"the images (median {seen[0]}x{seen[1]} px) are upsampled to the analysis size "
            f"{analysis[0]}x{analysis[1]}: the maps resolve no finer detail than the images hold"
        )
    return out


def _performance(
    rows: list[dict[str, Any]] | RowTable, role: str, class_names: list[str], multi: bool = False
) -> dict:
    table = RowTable.from_rows(rows)
    return performance(table, getattr(table, f"probs_{role}"), class_names, multi)


def _comparisons(
    rows: list[dict[str, Any]] | RowTable, methods: list[str], metrics: list[str]
) -> list:
    """Wilcoxon signed-rank between every pair of methods, per metric, on the same samples."""
    table = RowTable.from_rows(rows)
    out = []
    for metric in metrics:
        for first, second in itertools.combinations(methods, 2):
            test = paired_test(table.values(first, metric), table.values(second, metric))
            out.append({"metric": metric, "method_a": first, "method_b": second, **test})
    return out


def _degenerate_counts(rows: list[dict[str, Any]] | RowTable, methods: list[str]) -> dict:
    table = RowTable.from_rows(rows)
    counts = {}
    for m in methods:
        flags = table.flags(m)
        counts[m] = {"baseline": int(flags[:, 0].sum()), "candidate": int(flags[:, 1].sum())}
    return counts
