"""The drift report: one versioned JSON document built from per-sample rows alone.

Rows are the unit everything agrees on: a local run and a sharded service job produce the
same rows, so they produce the same report. Torch-free, so the service can rebuild it too.
"""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from typing import Any

import numpy as np

import training
from training.evaluation import classification_metrics
from worker.catalog import metric_info
from worker.results.stats import paired_test, summarize, summarize_groups
from worker.results.trajectory import trajectory_section

SCHEMA_VERSION = "1.0"
REPORT_KIND = "camdrift.drift-report"


def build_report(
    rows: list[dict[str, Any]],
    *,
    models: dict[str, dict[str, Any]],
    dataset: dict[str, Any],
    config: dict[str, Any],
    samples_location: str | None,
    trajectory: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assemble the report from ``rows`` (any order) and the audit's description.

    ``trajectory``: descriptions of the checkpoints between baseline and candidate, in order,
    when the audit followed a sequence (their drift is in the rows).
    """
    rows = sorted(rows, key=lambda r: r["index"])
    class_names = list(dataset["class_names"])
    methods, metrics = list(config["methods"]), list(config["metrics"])
    seed, n_boot = int(config.get("seed", 0)), int(config.get("n_boot", 2000))
    included = [r for r in rows if r["included"]]
    groups = np.asarray([r["label"] for r in included], dtype=np.int64)
    summaries: dict[str, dict[str, Any]] = {}
    for method in methods:
        summaries[method] = {
            metric: summarize_groups(
                _column(included, method, metric), groups, class_names, n_boot=n_boot, seed=seed
            )
            for metric in metrics
        }
    return {
        "schema_version": SCHEMA_VERSION,
        "kind": REPORT_KIND,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "camdrift_version": training.__version__,
        "models": models,
        "dataset": dataset,
        "config": config,
        "subsets": subset_counts(rows, class_names),
        "performance": {
            role: _performance(rows, role, class_names) for role in ("baseline", "candidate")
        },
        "summaries": summaries,
        "method_comparisons": _comparisons(included, methods, metrics),
        "degenerate": _degenerate_counts(included, methods),
        "samples": {"location": samples_location, "count": len(rows), "included": len(included)},
        "noise_floor": noise_floor(
            included, methods, metrics, class_names, n_boot=n_boot, seed=seed
        ),
        "replica_floor": noise_floor(
            included,
            methods,
            metrics,
            class_names,
            n_boot=n_boot,
            seed=seed,
            key="replica_floor",
        ),
        "trajectory": trajectory_section(
            rows,
            methods,
            metrics,
            class_names,
            [models.get("baseline", {}), *(trajectory or []), models.get("candidate", {})],
            n_boot=n_boot,
            seed=seed,
        ),
        "verdict": None,
    }


def noise_floor(
    rows: list[dict[str, Any]],
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
    floored = [r for r in rows if r.get(key)]
    if not floored:
        return None
    labels = np.asarray([r["label"] for r in floored], dtype=np.int64)
    out: dict[str, Any] = {}
    for method in methods:
        out[method] = {}
        for metric in metrics:
            floor = _column(floored, method, metric, key=key)
            drift = _column(floored, method, metric)
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
                "floor": summarize(floor, n_boot=n_boot, seed=seed),
            }
    return out


def _share(hit: np.ndarray, valid: np.ndarray) -> float | None:
    return float(hit[valid].mean()) if valid.any() else None


def _column(
    rows: list[dict[str, Any]], method: str, metric: str, key: str = "metrics"
) -> np.ndarray:
    values = [(r.get(key) or {}).get(method, {}).get(metric) for r in rows]
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def subset_counts(rows: list[dict[str, Any]], class_names: list[str]) -> dict[str, Any]:
    label = np.asarray([r["label"] for r in rows], dtype=np.int64)
    pa = np.asarray([r["pred_baseline"] for r in rows], dtype=np.int64)
    pb = np.asarray([r["pred_candidate"] for r in rows], dtype=np.int64)
    inc = np.asarray([r["included"] for r in rows], dtype=bool)
    per_class = {
        name: {"evaluated": int((label == k).sum()), "included": int(((label == k) & inc).sum())}
        for k, name in enumerate(class_names)
    }
    return {
        "evaluated": len(rows),
        "included": int(inc.sum()),
        "true_positive": int(((label == pa) & (label == pb)).sum()),
        "baseline_correct": int((label == pa).sum()),
        "candidate_correct": int((label == pb).sum()),
        "disagreement": int((pa != pb).sum()),
        "per_class": per_class,
    }


def _performance(rows: list[dict[str, Any]], role: str, class_names: list[str]) -> dict:
    if not rows:
        return classification_metrics(
            np.zeros(0, np.int64), np.zeros((0, len(class_names))), class_names
        )
    labels = np.asarray([r["label"] for r in rows], dtype=np.int64)
    probs = np.asarray([r[f"probs_{role}"] for r in rows], dtype=np.float64)
    return classification_metrics(labels, probs, class_names)


def _comparisons(rows: list[dict[str, Any]], methods: list[str], metrics: list[str]) -> list:
    """Wilcoxon signed-rank between every pair of methods, per metric, on the same samples."""
    out = []
    for metric in metrics:
        for first, second in itertools.combinations(methods, 2):
            test = paired_test(_column(rows, first, metric), _column(rows, second, metric))
            out.append({"metric": metric, "method_a": first, "method_b": second, **test})
    return out


def _degenerate_counts(rows: list[dict[str, Any]], methods: list[str]) -> dict[str, Any]:
    counts = {}
    for m in methods:
        flags = np.asarray([r["degenerate"].get(m, [False, False]) for r in rows], dtype=bool)
        flags = flags.reshape(-1, 2)
        counts[m] = {"baseline": int(flags[:, 0].sum()), "candidate": int(flags[:, 1].sum())}
    return counts
