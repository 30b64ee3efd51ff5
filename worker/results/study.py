"""Studies: several model pairs (drift jobs) on one dataset, ranked by how stable their maps are.

A study compares *entries* -- each a finished drift report with its per-sample rows, e.g. one
baseline -> fine-tune pair per architecture. All entries must share the dataset fingerprint and
the evaluated sample set. For each method x metric present in every entry:

* **ranking** of the entries by their mean over the *common* samples: those included by every
  entry's sample filter and whose metric value is finite for every entry (so the comparison is
  paired). Direction of "more stable" per metric:

  - similarities (``iou_*``, ``pearson``, ``spearman``): higher mean = more stable;
  - distances (``displacement``, ``peak_displacement``): lower mean = more stable;
  - signed changes (``concentration_change``, ``entropy_change`` and any other metric): lower
    mean *absolute* change = more stable (``means`` then holds the mean absolute change).

  Rank 1 is the most stable entry; ties share the average rank.
* **Kendall tau** (``scipy.stats.kendalltau``, tau-b) between every pair of methods' rankings
  of the entries, per metric (on the entries' means, which is the same as on their ranks).
* **order probabilities**: a seeded paired bootstrap over the common samples -- each replicate
  resamples sample indices once and the same resample serves every entry, method and metric --
  gives P(entry i more stable than entry j) per method x metric (ties count one half).
* **ranking reversals**: a pair of entries whose (point-estimate) order differs between two
  methods for the same metric, reported with both orders' bootstrap probabilities; its
  confidence is the smaller of the two (high only when both methods' orders hold under
  resampling). ``confident`` marks reversals with confidence >= ``REVERSAL_CONFIDENCE``.
* **replicates** (when several entries are replicate trainings of one model family: the same
  ``group``, by default the candidate's architecture): the same rankings, order probabilities and
  reversals between the *groups*, a group's score being the mean of its replicates' means. Its
  bootstrap is two-stage -- each replicate redraws the group's members with replacement
  (training-seed variation) and the samples as above (paired) -- so a reversal between two
  architectures must hold across seeds, not only across images: the stronger test.

Each entry's report is read once as its model (``report_schema.report_view``). Torch-free
(numpy + scipy), so the API process can build it from stored rows.
"""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats as sps

from worker.catalog import metric_info
from worker.results.report_schema import REPORT_KIND, DriftReport, ModelInfo, report_view
from worker.results.rows import RowTable

STUDY_SCHEMA_VERSION = "1.0"
STUDY_KIND = "camdrift.study-report"
REVERSAL_CONFIDENCE = 0.95
_CHUNK = 256  # bootstrap replicates handled at once


def stability_direction(metric: str) -> str:
    """``higher`` (similarity), ``lower`` (distance) or ``abs`` (lower |change|) = more stable."""
    return metric_info(metric).worse.stable()


def _float(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _report_methods_metrics(report: DriftReport) -> tuple[list[str], list[str]]:
    methods = list(report.config.methods or report.summaries)
    metrics = list(report.config.metrics)
    if not metrics:
        for per_metric in report.summaries.values():
            metrics += [m for m in per_metric if m not in metrics]
    return methods, metrics


def _model_meta(model: ModelInfo | None) -> dict[str, Any]:
    if model is None:
        return dict.fromkeys(("arch", "phase", "sha256", "name"))
    name = (model.model_extra or {}).get("name")  # an extra key: kept when a report has it
    return {"arch": model.arch, "phase": model.phase, "sha256": model.sha256, "name": name}


def _entry_meta(entry: dict[str, Any], report: DriftReport) -> dict[str, Any]:
    roles = {role: _model_meta(report.models.get(role)) for role in ("baseline", "candidate")}
    return {
        "name": entry["name"],
        "job_id": entry.get("job_id"),
        "arch": roles["candidate"]["arch"] or roles["baseline"]["arch"],
        "models": roles,
    }


def check_entries(entries: list[dict[str, Any]]) -> None:
    """Refuse a study whose entries cannot be compared sample by sample (``ValueError``)."""
    if len(entries) < 2:
        raise ValueError("a study needs at least two reports")
    names = [str(e.get("name")) for e in entries]
    if len(set(names)) != len(names):
        raise ValueError(f"entry names must be unique, got {names}")
    first = entries[0]
    fingerprint = report_view(first["report"]).dataset.fingerprint
    indices = sorted(int(r["index"]) for r in first["rows"])
    for entry in entries[1:]:
        other = report_view(entry["report"]).dataset.fingerprint
        if other != fingerprint:
            raise ValueError(
                f"{entry['name']!r} was evaluated on another dataset (fingerprint "
                f"{str(other)[:12]}... vs {str(fingerprint)[:12]}... of {first['name']!r})"
            )
        if sorted(int(r["index"]) for r in entry["rows"]) != indices:
            raise ValueError(
                f"{entry['name']!r} evaluated another sample set than {first['name']!r} "
                "(same dataset, but other split, max_samples or seed)"
            )


def study_report(
    entries: list[dict[str, Any]], *, n_boot: int = 2000, seed: int = 0
) -> dict[str, Any]:
    """The study report of ``entries`` = ``[{"name", "job_id", "report", "rows"}, ...]``."""
    check_entries(entries)
    if n_boot < 1:
        raise ValueError("n_boot must be at least 1")
    names = [str(e["name"]) for e in entries]
    reports = [report_view(e["report"]) for e in entries]
    per_entry = [_report_methods_metrics(r) for r in reports]
    methods = [m for m in per_entry[0][0] if all(m in p[0] for p in per_entry)]
    metrics = [m for m in per_entry[0][1] if all(m in p[1] for p in per_entry)]
    # one row per index (the last one given, as a dict by index keeps it), sorted by index:
    # check_entries made every entry's index set the same, so the tables line up row by row
    tables = [
        RowTable.from_rows(list({int(r["index"]): r for r in e["rows"]}.values()), ["drift"])
        for e in entries
    ]
    groups = replicate_groups(entries, reports)
    common = np.logical_and.reduce([t.included for t in tables])
    n = int(common.sum())

    # stability scores (higher = more stable) per method x metric: entries x common samples
    scores: dict[tuple[str, str], np.ndarray] = {}
    values: dict[tuple[str, str], np.ndarray] = {}
    for method, metric in itertools.product(methods, metrics):
        raw = np.stack([t.values(method, metric, mask=common) for t in tables])
        raw[~np.isfinite(raw)] = np.nan
        direction = stability_direction(metric)
        shown = np.abs(raw) if direction == "abs" else raw
        values[method, metric] = shown
        scores[method, metric] = shown if direction == "higher" else -shown

    probabilities = _order_probabilities(scores, n, n_boot=n_boot, seed=seed)
    singletons = [[e] for e in range(len(names))]
    rankings, point = _rankings(names, singletons, scores, values, probabilities)
    taus, reversals = _agreement(names, methods, metrics, point, probabilities)
    replicates = None
    if groups is not None:
        labels, members = list(groups), list(groups.values())
        group_probabilities = _order_probabilities(
            scores, n, n_boot=n_boot, seed=seed, groups=members
        )
        group_rankings, group_point = _rankings(
            labels, members, scores, values, group_probabilities
        )
        group_taus, group_reversals = _agreement(
            labels, methods, metrics, group_point, group_probabilities
        )
        replicates = {
            "groups": {g: [names[e] for e in m] for g, m in groups.items()},
            "bootstrap": "two-stage: replicates within each group, then samples (paired)",
            "rankings": group_rankings,
            "kendall_tau": group_taus,
            "reversals": group_reversals,
        }

    return {
        "schema_version": STUDY_SCHEMA_VERSION,
        "kind": STUDY_KIND,
        "dataset": {
            "fingerprint": reports[0].dataset.fingerprint,
            "num_evaluated": len(tables[0]),
        },
        "entries": [_entry_meta(e, r) for e, r in zip(entries, reports, strict=True)],
        "methods": methods,
        "metrics": metrics,
        "n_common": n,
        "config": {"n_boot": n_boot, "seed": seed, "reversal_confidence": REVERSAL_CONFIDENCE},
        "rankings": rankings,
        "kendall_tau": taus,
        "reversals": reversals,
        "replicates": replicates,
    }


def replicate_groups(
    entries: list[dict[str, Any]], reports: list[DriftReport]
) -> dict[str, list[int]] | None:
    """Entries that are replicate trainings of one model family, by group label: an entry's
    ``group`` when given, else its candidate's architecture. None unless some group has two or
    more members and there are at least two groups (else there is nothing to rank)."""
    groups: dict[str, list[int]] = {}
    for e, (entry, report) in enumerate(zip(entries, reports, strict=True)):
        label = entry.get("group") or _entry_meta(entry, report)["arch"] or entry["name"]
        groups.setdefault(str(label), []).append(e)
    if len(groups) < 2 or max(len(m) for m in groups.values()) < 2:
        return None
    return groups


def _rankings(
    labels: list[str],
    members: list[list[int]],
    scores: dict[tuple[str, str], np.ndarray],
    values: dict[tuple[str, str], np.ndarray],
    probabilities: dict[tuple[str, str], np.ndarray],
) -> tuple[dict[str, dict[str, Any]], dict[tuple[str, str], np.ndarray]]:
    """Per method x metric: the ranking of ``labels`` (each the mean of its ``members``' means
    over the samples defined for every entry), ranks, order probabilities; and the point scores
    the reversals compare."""
    rankings: dict[str, dict[str, Any]] = {}
    point: dict[tuple[str, str], np.ndarray] = {}
    for (method, metric), score in scores.items():
        valid = np.isfinite(score).all(axis=0)
        n_valid = int(valid.sum())
        if n_valid:
            entry_score = score[:, valid].mean(axis=1)
            entry_means = values[method, metric][:, valid].mean(axis=1)
            mean_score = np.array([entry_score[m].mean() for m in members])
            means = np.array([entry_means[m].mean() for m in members])
            ranks = sps.rankdata(-mean_score, method="average")
            order = sorted(range(len(labels)), key=lambda e: (ranks[e], e))
        else:
            mean_score = np.full(len(labels), np.nan)
            means, ranks, order = mean_score, None, []
        point[method, metric] = mean_score
        prob = probabilities[method, metric]
        rankings.setdefault(method, {})[metric] = {
            "direction": stability_direction(metric),
            "n": n_valid,
            "means": {name: _float(means[e]) for e, name in enumerate(labels)},
            "ranking": [labels[e] for e in order],
            "ranks": {
                name: None if ranks is None else float(ranks[e]) for e, name in enumerate(labels)
            },
            "order_probability": {
                a: {b: _float(prob[i, j]) for j, b in enumerate(labels) if j != i}
                for i, a in enumerate(labels)
            },
        }
        if any(len(m) > 1 for m in members):
            spread = [np.std(entry_means[m], ddof=1) if len(m) > 1 else math.nan for m in members]
            rankings[method][metric]["replicates"] = {
                name: len(m) for name, m in zip(labels, members, strict=True)
            }
            rankings[method][metric]["seed_sd"] = {
                name: _float(spread[e]) for e, name in enumerate(labels)
            }
    return rankings, point


def _agreement(
    labels: list[str],
    methods: list[str],
    metrics: list[str],
    point: dict[tuple[str, str], np.ndarray],
    probabilities: dict[tuple[str, str], np.ndarray],
) -> tuple[dict[str, list[dict[str, Any]]], list[dict[str, Any]]]:
    """Kendall tau between every pair of methods' rankings per metric, and the ranking
    reversals (most confident first)."""
    taus: dict[str, list[dict[str, Any]]] = {}
    reversals: list[dict[str, Any]] = []
    for metric in metrics:
        taus[metric] = []
        for m1, m2 in itertools.combinations(methods, 2):
            x, y = point[m1, metric], point[m2, metric]
            ok = np.isfinite(x) & np.isfinite(y)
            tau = p_value = None
            if ok.sum() >= 2:
                result = sps.kendalltau(x[ok], y[ok])
                tau, p_value = _float(result.statistic), _float(result.pvalue)
            taus[metric].append({"methods": [m1, m2], "tau": tau, "p_value": p_value})
            p1, p2 = probabilities[m1, metric], probabilities[m2, metric]
            for i, j in itertools.combinations(range(len(labels)), 2):
                d1, d2 = x[i] - x[j], y[i] - y[j]
                if not (np.isfinite(d1) and np.isfinite(d2)) or d1 * d2 >= 0:
                    continue
                # under m1 the more stable is `a`, under m2 it is `b`
                a, b = (i, j) if d1 > 0 else (j, i)
                first, second = _float(p1[a, b]), _float(p2[b, a])
                confidence = None if first is None or second is None else min(first, second)
                reversals.append(
                    {
                        "metric": metric,
                        "methods": [m1, m2],
                        "pair": [labels[a], labels[b]],
                        "orders": {
                            m1: {"more_stable": labels[a], "probability": first},
                            m2: {"more_stable": labels[b], "probability": second},
                        },
                        "confidence": confidence,
                        "confident": confidence is not None and confidence >= REVERSAL_CONFIDENCE,
                    }
                )
    reversals.sort(key=lambda r: -(r["confidence"] or 0.0))
    return taus, reversals


def _order_probabilities(
    scores: dict[tuple[str, str], np.ndarray],
    n: int,
    *,
    n_boot: int,
    seed: int,
    groups: list[list[int]] | None = None,
) -> dict[tuple[str, str], np.ndarray]:
    """P(row i's mean score > row j's) over a paired bootstrap of the ``n`` common samples.

    One resample of sample indices per replicate, shared by every method x metric; samples whose
    value is undefined for some entry are left out of that method x metric's means (replicates
    without any defined sample do not count). Ties count one half.

    With ``groups`` (lists of row indices) the probabilities are between groups, and each
    replicate also redraws every group's members with replacement (its own seeded stream, so
    the sample draws are the same as without groups): the group's mean is the mean of the drawn
    members' resampled means.
    """
    out: dict[tuple[str, str], np.ndarray] = {}
    wins: dict[tuple[str, str], np.ndarray] = {}
    counted: dict[tuple[str, str], int] = {}
    prepared: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    size_out = None if groups is None else len(groups)
    for key, score in scores.items():
        valid = np.isfinite(score).all(axis=0)
        prepared[key] = (np.where(valid, score, 0.0), valid.astype(np.float64))
        e = size_out or score.shape[0]
        wins[key] = np.zeros((e, e))
        counted[key] = 0
    if n == 0:
        return {key: np.full_like(w, np.nan) for key, w in wins.items()}
    rng = np.random.default_rng(seed)
    pick_rng = np.random.default_rng([seed, 1])
    done = 0
    while done < n_boot:
        size = min(_CHUNK, n_boot - done)
        draws = rng.integers(0, n, size=(size, n))
        flat = (np.arange(size)[:, None] * n + draws).ravel()
        counts = np.bincount(flat, minlength=size * n).reshape(size, n).astype(np.float64)
        picks = None
        if groups is not None:  # the members each replicate draws, per group
            picks = [np.asarray(m)[pick_rng.integers(0, len(m), (size, len(m)))] for m in groups]
        done += size
        for key, (filled, valid) in prepared.items():
            weight = counts @ valid  # (size,)
            ok = weight > 0
            if not ok.any():
                continue
            means = (counts[ok] @ filled.T) / weight[ok, None]  # (replicates, entries)
            if picks is not None:
                means = np.stack(
                    [np.take_along_axis(means, p[ok], axis=1).mean(axis=1) for p in picks],
                    axis=1,
                )
            diff = means[:, :, None] - means[:, None, :]
            wins[key] += (diff > 0).sum(axis=0) + 0.5 * (diff == 0).sum(axis=0)
            counted[key] += int(ok.sum())
    for key, w in wins.items():
        out[key] = w / counted[key] if counted[key] else np.full_like(w, np.nan)
    return out


def load_local_entry(report_path: Path, name: str | None = None) -> dict[str, Any]:
    """A study entry from a local ``camdrift drift`` report and its ``.samples.jsonl``.

    The rows file is the one ``worker.runtime.local_run.artifact_paths`` names
    (``R.samples.jsonl`` next to ``R.json``), else the report's ``samples.location`` beside it.
    """
    report_path = Path(report_path)
    if not report_path.is_file():
        raise FileNotFoundError(f"no report at {report_path}")
    try:
        report = json.loads(report_path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{report_path} is not a JSON report: {exc}") from None
    if not isinstance(report, dict) or report.get("kind") not in (None, REPORT_KIND):
        raise ValueError(f"{report_path} is not a camdrift drift report")
    stem = report_path.with_suffix("")
    rows_path = stem.with_name(stem.name + ".samples.jsonl")
    location = report_view(report).samples.location
    if not rows_path.is_file() and location:
        rows_path = report_path.parent / str(location)
    if not rows_path.is_file():
        raise FileNotFoundError(f"no per-sample rows for {report_path} (looked for {rows_path})")
    rows = []
    with open(rows_path) as fh:
        for n, line in enumerate(fh, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{rows_path}:{n}: not a JSON row: {exc}") from None
    if not rows or not all(isinstance(r, dict) and "index" in r for r in rows):
        raise ValueError(f"{rows_path} holds no per-sample rows")
    return {"name": name or report_path.stem, "job_id": None, "report": report, "rows": rows}
