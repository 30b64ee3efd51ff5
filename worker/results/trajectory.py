"""The trajectory section of a drift report: how the evidence moved along a checkpoint sequence.

A trajectory job audits baseline -> intermediates (e.g. per-epoch checkpoints) -> candidate.
Per step k it has two drifts per sample: from the baseline (``from_first``: how far the
evidence has moved so far) and from the previous checkpoint (``consecutive``: where it moved).
Next to them, each checkpoint's classification performance: the paper's point is that AUC can
stay flat while the evidence moves, so the two belong on one axis. Torch-free, built from rows.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import PurePath
from typing import Any

from worker.catalog import Direction, metric_info
from worker.results.performance import performance
from worker.results.report_schema import ModelInfo, Stats, read_model
from worker.results.rows import RowTable
from worker.results.stats import summarize_many

KINDS = ("from_first", "consecutive")


def checkpoint_label(model: Mapping[str, Any] | ModelInfo, position: int) -> str:
    """A short x-axis label: the checkpoint's phase (``tl``, ``ft-epoch3``) or file stem."""
    info = read_model(ModelInfo, model)
    if info.phase:
        return str(info.phase)
    source = str(info.source or "")
    return PurePath(source).stem if source and ":" not in source else f"#{position}"


def trajectory_section(
    rows: list[dict[str, Any]] | RowTable,
    methods: list[str],
    metrics: list[str],
    class_names: list[str],
    checkpoints: list[dict[str, Any]],
    *,
    n_boot: int,
    seed: int,
    multi_label: bool = False,
) -> dict[str, Any] | None:
    """Per method x metric x step: the summary of both drifts over the included samples, the
    sharpest step, and per checkpoint accuracy and macro AUC. None for a two-checkpoint job.

    ``checkpoints``: descriptions of the whole sequence, baseline first, candidate last.
    """
    table = RowTable.from_rows(rows)
    traced = table.included & table.present["trajectory"]
    measured = set(table.trajectory_lengths[table.trajectory_lengths >= 0].tolist())
    if not measured:
        return None
    steps = len(checkpoints) - 1
    if measured != {steps - 1}:
        raise ValueError(
            f"the rows hold {sorted(measured)} intermediate checkpoints, "
            f"the description names {steps - 1}"
        )
    boot = {"n_boot": n_boot, "seed": seed}
    series: dict[str, dict[str, Any]] = {}
    cells = [
        table.values(method, metric, kind, k, traced)
        for method in methods
        for metric in metrics
        for kind in KINDS
        for k in range(steps)
    ]
    summaries = iter(summarize_many(cells, **boot))  # their bootstraps shared, in this order
    for method in methods:
        series[method] = {}
        for metric in metrics:
            entry: dict[str, Any] = {
                kind: [next(summaries) for _ in range(steps)] for kind in KINDS
            }
            entry["sharpest_step"] = sharpest_step(metric, entry["consecutive"])
            series[method][metric] = entry
    return {
        "checkpoints": [
            {**model, "label": checkpoint_label(model, i)} for i, model in enumerate(checkpoints)
        ],
        "steps": steps,
        "samples": int(traced.sum()),
        "performance": _performance(table, class_names, steps, multi_label),
        "series": series,
    }


def sharpest_step(metric: str, consecutive: Sequence[Mapping[str, Any] | Stats]) -> int | None:
    """The 1-based step whose consecutive drift is largest (lowest similarity, highest
    distance, largest absolute change): where along the sequence the evidence moved most."""
    means = [read_model(Stats, s).mean for s in consecutive]
    scored = [(k, m) for k, m in enumerate(means, start=1) if m is not None]
    if not scored:
        return None
    worse = metric_info(metric).worse
    key = {Direction.LOWER: lambda m: -m, Direction.HIGHER: lambda m: m}.get(worse, abs)
    return max(scored, key=lambda km: key(km[1]))[0]


def _performance(
    table: RowTable, class_names: list[str], steps: int, multi_label: bool = False
) -> list[dict[str, Any]]:
    """Accuracy and macro AUC of every checkpoint of the sequence on all evaluated samples."""
    if steps > 1 and table.probs_trajectory is None:
        raise ValueError("every row must hold the intermediate checkpoints' probabilities")
    out = []
    for k in range(steps + 1):
        if k == 0:
            probs = table.probs_baseline
        elif k == steps:
            probs = table.probs_candidate
        else:
            probs = table.probs_trajectory[k - 1]
        scores = performance(table, probs, class_names, multi_label)
        out.append({"accuracy": scores["accuracy"], "macro_auc": scores["macro_auc"]})
    return out
