"""Per-sample audit rows, typed (:class:`SampleRow`) and as columns (:class:`RowTable`).

On the wire (the ``*.samples.jsonl`` file, the SQL loader, the API) a row stays a plain dict::

    {"index", "path", "label", "pred_baseline", "pred_candidate", "probs_baseline",
     "probs_candidate", "target_baseline", "target_candidate", "included",
     "metrics": {method: {metric: float | None}}, "degenerate": {method: [bool, bool]},
     optional "probs_trajectory": [[p, ...] per intermediate checkpoint],
     optional "floor" / "replica_floor" / "ceiling": {method: {metric: float | None}},
     optional "trajectory": {method: {"from_first": [{metric: v} per step], "consecutive": ...}}}

:class:`SampleRow` is that dict as a frozen dataclass (``from_dict`` / ``to_dict`` round-trip it
exactly, key order included). :class:`RowTable` holds many rows as numpy columns, built in one
pass, so the report reads each method x metric as an array instead of walking dicts per value.
Torch-free.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

Values = dict[str, dict[str, Any]]  # method -> metric -> float | None

# a sample's own fields (what ``job_samples`` stores besides the optional trajectory probs)
SAMPLE_FIELDS: tuple[str, ...] = (
    "index",
    "path",
    "label",
    "pred_baseline",
    "pred_candidate",
    "probs_baseline",
    "probs_candidate",
    "target_baseline",
    "target_candidate",
    "included",
)
REQUIRED = (*SAMPLE_FIELDS, "metrics", "degenerate")
# the optional keys, in the order an audit writes them
OPTIONAL = ("probs_trajectory", "replica_floor", "trajectory", "floor", "ceiling")
FLOOR_SERIES = ("floor", "replica_floor")
# baseline vs another model, one value per sample and method: the floors, and the ceiling
# (baseline vs a copy with re-initialised top layers)
REFERENCE_SERIES = (*FLOOR_SERIES, "ceiling")
TRAJECTORY_KINDS = ("from_first", "consecutive")
DRIFT = "drift"  # the series name of the ``metrics`` key
SERIES = (DRIFT, *REFERENCE_SERIES, *TRAJECTORY_KINDS)


def _values(named: Mapping[str, Mapping[str, Any]]) -> Values:
    return {method: dict(metrics) for method, metrics in named.items()}


@dataclass(frozen=True)
class SampleRow:
    """One evaluated sample of an audit: predictions, probabilities and, when the sample filter
    kept it, every method's drift metrics (and floors / trajectory drift, when measured)."""

    index: int
    path: str
    label: int
    pred_baseline: int
    pred_candidate: int
    probs_baseline: tuple[float, ...]
    probs_candidate: tuple[float, ...]
    target_baseline: int
    target_candidate: int
    included: bool
    metrics: Values = field(default_factory=dict)
    degenerate: dict[str, tuple[bool, bool]] = field(default_factory=dict)
    probs_trajectory: tuple[tuple[float, ...], ...] | None = None
    replica_floor: Values | None = None
    trajectory: dict[str, dict[str, tuple[dict[str, Any], ...]]] | None = None
    floor: Values | None = None
    ceiling: Values | None = None
    # the optional keys present, in the order ``to_dict`` writes them (``from_dict`` keeps the
    # order it read); None = the audit's order
    key_order: tuple[str, ...] | None = field(default=None, compare=False, repr=False)

    @classmethod
    def from_dict(cls, row: Mapping[str, Any]) -> SampleRow:
        missing = [k for k in REQUIRED if k not in row]
        unknown = [k for k in row if k not in REQUIRED and k not in OPTIONAL]
        if missing or unknown:
            raise ValueError(f"not a sample row: missing {missing}, unknown {unknown}")
        trajectory = row.get("trajectory")
        probs_trajectory = row.get("probs_trajectory")
        return cls(
            index=row["index"],
            path=row["path"],
            label=row["label"],
            pred_baseline=row["pred_baseline"],
            pred_candidate=row["pred_candidate"],
            probs_baseline=tuple(row["probs_baseline"]),
            probs_candidate=tuple(row["probs_candidate"]),
            target_baseline=row["target_baseline"],
            target_candidate=row["target_candidate"],
            included=row["included"],
            metrics=_values(row["metrics"]),
            degenerate={m: tuple(flags) for m, flags in row["degenerate"].items()},
            probs_trajectory=None
            if probs_trajectory is None
            else tuple(tuple(p) for p in probs_trajectory),
            replica_floor=None
            if row.get("replica_floor") is None
            else _values(row["replica_floor"]),
            trajectory=None
            if trajectory is None
            else {
                method: {kind: tuple(dict(s) for s in seq) for kind, seq in kinds.items()}
                for method, kinds in trajectory.items()
            },
            floor=None if row.get("floor") is None else _values(row["floor"]),
            ceiling=None if row.get("ceiling") is None else _values(row["ceiling"]),
            key_order=tuple(k for k in row if k in OPTIONAL),
        )

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "index": self.index,
            "path": self.path,
            "label": self.label,
            "pred_baseline": self.pred_baseline,
            "pred_candidate": self.pred_candidate,
            "probs_baseline": list(self.probs_baseline),
            "probs_candidate": list(self.probs_candidate),
            "target_baseline": self.target_baseline,
            "target_candidate": self.target_candidate,
            "included": self.included,
            "metrics": _values(self.metrics),
            "degenerate": {m: list(flags) for m, flags in self.degenerate.items()},
        }
        order = self.key_order if self.key_order is not None else OPTIONAL
        for key in (*order, *(k for k in OPTIONAL if k not in order)):
            value = getattr(self, key)
            if value is None:
                continue
            if key == "probs_trajectory":
                out[key] = [list(p) for p in value]
            elif key == "trajectory":
                out[key] = {
                    method: {kind: [dict(s) for s in seq] for kind, seq in kinds.items()}
                    for method, kinds in value.items()
                }
            else:
                out[key] = _values(value)
        return out


def _int_column(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    return np.asarray([r.get(key, -1) for r in rows], dtype=np.int64).reshape(len(rows))


def _probs(rows: Sequence[Mapping[str, Any]], key: str) -> np.ndarray:
    probs = np.asarray([r.get(key, ()) for r in rows], dtype=np.float64)
    return probs.reshape(len(rows), -1) if rows else np.zeros((0, 0))


_EMPTY: Mapping[str, Any] = {}


class _Collector:
    """Value columns gathered in one pass over the rows: per (series, method, step) each row's
    ``{metric: value}`` dict, then one column per metric any row names (in first-seen order)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.groups: dict[tuple[str, str, int | None], list[Mapping[str, Any]]] = {}

    def add(self, series: str, method: str, step: int | None, i: int, metrics: Any) -> None:
        if not metrics:
            return
        group = self.groups.get((series, method, step))
        if group is None:
            group = self.groups[series, method, step] = [_EMPTY] * self.n
        group[i] = metrics

    def named(self, series: str, i: int, named: Any) -> None:
        for method, metrics in (named or _EMPTY).items():
            self.add(series, method, None, i, metrics)

    def columns(self) -> dict[tuple[str, str, str, int | None], np.ndarray]:
        out = {}
        for (series, method, step), group in self.groups.items():
            names = dict.fromkeys(name for metrics in group for name in metrics)
            for name in names:
                # float64 turns None (and a missing value) into NaN
                column = np.array([m.get(name) for m in group], dtype=np.float64)
                out[series, method, name, step] = column
        return out


def stack_trajectory_probs(
    per_row: Sequence[Sequence[Any] | None], lengths: np.ndarray
) -> np.ndarray | None:
    """[intermediates, n, classes] of each row's ``probs_trajectory`` when every row holds as
    many (``lengths``: each row's count, -1 for none), else None."""
    n = len(per_row)
    if not n or not (lengths >= 0).all() or len(set(lengths.tolist())) != 1:
        return None
    stacked = np.asarray(per_row, dtype=np.float64)
    classes = stacked.shape[2] if stacked.ndim == 3 else 0
    return stacked.reshape(n, int(lengths[0]), classes).transpose(1, 0, 2)


@dataclass(frozen=True, eq=False)
class RowTable:
    """Rows as columns, sorted by ``index``. Value columns are float64, NaN where a row has no
    (or a None) value; ``present[series]`` marks the rows that carry a series at all (a
    non-empty ``floor`` / ``replica_floor`` / ``ceiling`` / ``trajectory``)."""

    index: np.ndarray
    label: np.ndarray
    path: np.ndarray  # object: the image each row explains (several rows per multi-label image)
    pred_baseline: np.ndarray
    pred_candidate: np.ndarray
    target_baseline: np.ndarray
    target_candidate: np.ndarray
    included: np.ndarray
    probs_baseline: np.ndarray  # [n, classes]
    probs_candidate: np.ndarray  # [n, classes]
    # [intermediates, n, classes] when every row holds as many, else None
    probs_trajectory: np.ndarray | None
    # per row, how many intermediate checkpoints' probabilities it holds; -1 = none
    trajectory_lengths: np.ndarray
    present: dict[str, np.ndarray]
    columns: dict[tuple[str, str, str, int | None], np.ndarray]
    degenerate: dict[str, np.ndarray]  # method -> [n, 2]

    @classmethod
    def from_rows(
        cls, rows: Iterable[Mapping[str, Any]] | RowTable, series: Iterable[str] | None = None
    ) -> RowTable:
        """The table of ``rows`` (any order; a table is returned as it is). ``series``: only
        these value series (default: all of :data:`SERIES`; the ``present`` masks and the
        probabilities are always kept)."""
        if isinstance(rows, RowTable):
            return rows
        wanted = set(SERIES if series is None else series)
        unknown = wanted - set(SERIES)
        if unknown:
            raise ValueError(f"unknown series {sorted(unknown)}; expected some of {SERIES}")
        kinds_wanted = wanted & set(TRAJECTORY_KINDS)
        rows = sorted(rows, key=lambda r: r["index"])
        n = len(rows)
        values = _Collector(n)
        present = {key: np.zeros(n, dtype=bool) for key in (*REFERENCE_SERIES, "trajectory")}
        flags: dict[str, np.ndarray] = {}
        lengths = np.full(n, -1, dtype=np.int64)
        for i, r in enumerate(rows):
            if DRIFT in wanted:
                values.named(DRIFT, i, r.get("metrics"))
            for key in REFERENCE_SERIES:
                named = r.get(key)
                if named:
                    present[key][i] = True
                    if key in wanted:
                        values.named(key, i, named)
            trajectory = r.get("trajectory")
            if trajectory:
                present["trajectory"][i] = True
                for method, kinds in trajectory.items() if kinds_wanted else ():
                    for kind, seq in (kinds or _EMPTY).items():
                        if kind in kinds_wanted:
                            for step, metrics in enumerate(seq or ()):
                                values.add(kind, method, step, i, metrics)
            for method, pair in (r.get("degenerate") or {}).items():
                if method not in flags:
                    flags[method] = np.zeros((n, 2), dtype=bool)
                flags[method][i] = pair
            if "probs_trajectory" in r:
                lengths[i] = len(r["probs_trajectory"])
        probs_trajectory = stack_trajectory_probs(
            [r.get("probs_trajectory") for r in rows], lengths
        )
        return cls(
            index=_int_column(rows, "index"),
            label=_int_column(rows, "label"),
            path=np.asarray([str(r.get("path", "")) for r in rows], dtype=object).reshape(n),
            pred_baseline=_int_column(rows, "pred_baseline"),
            pred_candidate=_int_column(rows, "pred_candidate"),
            target_baseline=_int_column(rows, "target_baseline"),
            target_candidate=_int_column(rows, "target_candidate"),
            included=np.asarray([bool(r.get("included")) for r in rows], dtype=bool).reshape(n),
            probs_baseline=_probs(rows, "probs_baseline"),
            probs_candidate=_probs(rows, "probs_candidate"),
            probs_trajectory=probs_trajectory,
            trajectory_lengths=lengths,
            present=present,
            columns=values.columns(),
            degenerate=flags,
        )

    def __len__(self) -> int:
        return int(self.index.shape[0])

    @property
    def steps(self) -> int:
        """The longest trajectory series any row holds (0 without trajectories)."""
        return max((k[3] + 1 for k in self.columns if k[3] is not None), default=0)

    def has(self, series: str) -> bool:
        """Whether any row carries ``series`` (``drift``, ``floor``, ``replica_floor``,
        ``trajectory``, ``from_first``, ``consecutive``)."""
        if series in self.present:
            return bool(self.present[series].any())
        return any(k[0] == series for k in self.columns)

    def values(
        self,
        method: str,
        metric: str,
        series: str = DRIFT,
        step: int | None = None,
        mask: np.ndarray | None = None,
    ) -> np.ndarray:
        """One method x metric of ``series`` (a trajectory kind needs its 0-based ``step``) for
        every row (or those in ``mask``): float64, NaN where undefined. A fresh array."""
        if series in TRAJECTORY_KINDS and step is None:
            raise ValueError(f"series {series!r} needs a step")
        if series not in SERIES:
            raise ValueError(f"unknown series {series!r}; expected one of {SERIES}")
        column = self.columns.get((series, method, metric, step))
        if column is None:
            n = len(self) if mask is None else int(np.count_nonzero(mask))
            return np.full(n, np.nan)
        return column.copy() if mask is None else column[mask]

    def flags(self, method: str, mask: np.ndarray | None = None) -> np.ndarray:
        """[n, 2] degenerate flags (baseline, candidate) of ``method``; False where absent."""
        flags = self.degenerate.get(method)
        if flags is None:
            flags = np.zeros((len(self), 2), dtype=bool)
        return flags.copy() if mask is None else flags[mask]

    def take(self, mask: np.ndarray) -> RowTable:
        """The rows in boolean ``mask``, as a table of their own."""
        mask = np.asarray(mask, dtype=bool)
        return RowTable(
            index=self.index[mask],
            label=self.label[mask],
            path=self.path[mask],
            pred_baseline=self.pred_baseline[mask],
            pred_candidate=self.pred_candidate[mask],
            target_baseline=self.target_baseline[mask],
            target_candidate=self.target_candidate[mask],
            included=self.included[mask],
            probs_baseline=self.probs_baseline[mask],
            probs_candidate=self.probs_candidate[mask],
            probs_trajectory=None
            if self.probs_trajectory is None
            else self.probs_trajectory[:, mask],
            trajectory_lengths=self.trajectory_lengths[mask],
            present={k: v[mask] for k, v in self.present.items()},
            columns={k: v[mask] for k, v in self.columns.items()},
            degenerate={k: v[mask] for k, v in self.degenerate.items()},
        )
