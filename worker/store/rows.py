"""A job's audit rows in SQL: the one writer and its readers (torch-free).

An audit row (the dict ``worker.engine`` computes per sample, and the report is built from) is
stored as one ``job_samples`` record, one ``sample_metrics`` record per method (the degenerate
flags) and one ``sample_series`` record per method, series, step and stage, its values a JSON
object of metric -> value (null: undefined)::

    row["metrics"][method]                  series drift          step 0       stage pair
    row["metrics"][method] (consistency_*)  series drift          step 0       stage audit
    row["floor"][method]                    series floor          step 0       stage pair
    row["replica_floor"][method]            series replica_floor  step 0       stage pair
    row["ceiling"][method]                  series ceiling        step 0       stage pair
    row["trajectory"][method][kind][k - 1]  series kind           step k (1..) stage pair

so a metric added to ``worker.catalog`` is stored, loaded and sorted on without a migration.
The audit stage (``worker.catalog`` ``stage="audit"``) has rows of its own: the finaliser
replaces them (:func:`replace_values`) without rewriting what the shards stored.
Two readers, one query per table each, whatever the number of samples: :func:`load_rows` gives
row dicts (a page of samples, any subset), :func:`load_table` the whole job as columns (the
finaliser's report; tested equal to ``RowTable.from_rows(load_rows(...))``).
"""

from __future__ import annotations

import itertools
import json
import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from sqlalchemy import Text, and_, case, cast, delete, func, select
from sqlalchemy.orm import Session

from worker.catalog import (
    AUDIT_STAGE,
    METRICS,
    PAIR_STAGE,
    metric_stage,
    pair_metrics,
    topq,
)
from worker.results.rows import (
    DRIFT,
    SAMPLE_FIELDS,
    TRAJECTORY_KINDS,
    RowTable,
    stack_trajectory_probs,
)
from worker.store.bulk import insert_records, json_objects, refresh_small_parents
from worker.store.models import (
    REFERENCE_SERIES,
    TRAJECTORY_SERIES,
    JobSample,
    SampleMetric,
    SampleSeries,
    Series,
)

SAMPLE_COLUMNS: tuple[str, ...] = (*SAMPLE_FIELDS, "probs_trajectory")
SAMPLE_SORTS: tuple[str, ...] = ("index", "label")  # sample columns the samples page sorts by
_CATALOG_ORDER = {name: i for i, name in enumerate(METRICS)}

Entry = tuple[str, str, int, str, float | None]  # (method, series, step, metric, value)


# --------------------------------------------------------------------------- row <-> records


def sample_fields(row: dict[str, Any]) -> dict[str, Any]:
    """The ``job_samples`` columns of an audit row."""
    trajectory = row.get("probs_trajectory")
    return {
        "index": int(row["index"]),
        "path": str(row["path"]),
        "label": int(row["label"]),
        "pred_baseline": int(row["pred_baseline"]),
        "pred_candidate": int(row["pred_candidate"]),
        "target_baseline": int(row["target_baseline"]),
        "target_candidate": int(row["target_candidate"]),
        "included": bool(row["included"]),
        "probs_baseline": list(row["probs_baseline"]),
        "probs_candidate": list(row["probs_candidate"]),
        "probs_trajectory": list(trajectory) if trajectory is not None else None,
    }


def method_flags(row: dict[str, Any]) -> dict[str, tuple[bool, bool]]:
    """Per method of the row's metrics: (degenerate baseline map, degenerate candidate map)."""
    degenerate = row.get("degenerate") or {}
    out: dict[str, tuple[bool, bool]] = {}
    for method in row.get("metrics") or {}:
        flags = degenerate.get(method, [False, False])
        out[method] = (bool(flags[0]), bool(flags[1]))
    return out


_DRIFT = Series.DRIFT.value
_REFERENCES = tuple(series.value for series in REFERENCE_SERIES)
_STEPS = tuple(series.value for series in TRAJECTORY_SERIES)


def method_series(
    row: dict[str, Any], method: str
) -> Iterator[tuple[str, int, str, dict[str, float | None]]]:
    """(series, step, stage, {metric: value}) of every non-empty series the row holds for
    ``method``: the stored ``sample_series`` records of one sample and method."""
    drift = ((row.get("metrics") or {}).get(method)) or {}
    by_stage: dict[str, dict[str, float | None]] = {PAIR_STAGE: {}, AUDIT_STAGE: {}}
    for m, v in drift.items():
        by_stage[metric_stage(m)][m] = _value(v)
    for stage, values in by_stage.items():
        if values:
            yield _DRIFT, 0, stage, values
    for series in _REFERENCES:
        values = (row.get(series) or {}).get(method) or {}
        if values:
            yield series, 0, PAIR_STAGE, {m: _value(v) for m, v in values.items()}
    kinds = (row.get("trajectory") or {}).get(method) or {}
    for series in _STEPS:
        for step, values in enumerate(kinds.get(series) or [], start=1):
            if values:
                yield series, step, PAIR_STAGE, {m: _value(v) for m, v in values.items()}


def assemble(
    sample: dict[str, Any],
    flags: dict[str, Sequence[bool]],
    entries: Iterable[Entry],
    names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """The audit row of one sample from its stored parts (the inverse of the three above).

    ``names`` (the job's metric names) keeps only those metrics, in that order (a missing one
    reads None); without it every stored metric is kept, in catalog order. Floors and
    trajectory steps keep only the pair metrics of ``names``: an audit-stage metric
    (``consistency_*``) is measured across the audit's samples, never against a floor or a
    step, so a local run's rows carry none there either.
    """
    pair_names = pair_metrics(names) if names is not None else None
    row: dict[str, Any] = {
        "index": sample["index"],
        "path": sample["path"],
        "label": sample["label"],
        "pred_baseline": sample["pred_baseline"],
        "pred_candidate": sample["pred_candidate"],
        "probs_baseline": list(sample["probs_baseline"]),
        "probs_candidate": list(sample["probs_candidate"]),
        "target_baseline": sample["target_baseline"],
        "target_candidate": sample["target_candidate"],
        "included": sample["included"],
        "metrics": {},
        "degenerate": {},
    }
    if sample.get("probs_trajectory") is not None:
        row["probs_trajectory"] = list(sample["probs_trajectory"])
    drift: dict[str, dict[str, Any]] = {method: {} for method in flags}
    floors: dict[str, dict[str, dict[str, Any]]] = {}
    steps: dict[str, dict[str, dict[int, dict[str, Any]]]] = {}
    for method, series, step, metric, value in entries:
        if method not in drift:
            continue
        if series == Series.DRIFT:
            drift[method][metric] = value
        elif series in TRAJECTORY_SERIES:
            kinds = steps.setdefault(method, {})
            kinds.setdefault(series, {}).setdefault(step, {})[metric] = value
        else:
            floors.setdefault(series, {}).setdefault(method, {})[metric] = value
    for method, values in drift.items():
        row["metrics"][method] = _pick(values, names)
        row["degenerate"][method] = [bool(flags[method][0]), bool(flags[method][1])]
    for series in REFERENCE_SERIES:
        for method, values in floors.get(series.value, {}).items():
            row.setdefault(series.value, {})[method] = _pick(values, pair_names)
    for method, kinds in steps.items():
        row.setdefault("trajectory", {})[method] = {
            kind.value: [
                _pick(by_step.get(k, {}), pair_names) for k in range(1, max(by_step, default=0) + 1)
            ]
            for kind in TRAJECTORY_SERIES
            if (by_step := kinds.get(kind.value)) is not None
        }
    return row


def _value(value: Any) -> float | None:
    """A stored value: a float, or None for an undefined one (None, NaN, or not finite: JSON
    has no infinity, and no metric of the catalog reaches one)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _catalog_key(name: str) -> tuple[int, int, str]:
    if name in _CATALOG_ORDER:
        return 0, _CATALOG_ORDER[name], name
    return 1, topq(name) or 0, name


def _pick(values: dict[str, Any], names: Sequence[str] | None) -> dict[str, Any]:
    if names is None:
        return {name: values[name] for name in sorted(values, key=_catalog_key)}
    return {name: values.get(name) for name in names}


# --------------------------------------------------------------------------- writing


SAMPLE_KEYS: tuple[str, ...] = ("job_id", *SAMPLE_COLUMNS)
METHOD_KEYS = ("job_id", "index", "method", "degenerate_baseline", "degenerate_candidate")
SERIES_KEYS = ("job_id", "index", "method", "series", "step", "stage", "metric_values")


def write_rows(
    session: Session, job_id: str, rows: Iterable[dict[str, Any]], copy: bool | None = None
) -> int:
    """Insert the audit rows of job ``job_id`` in bulk (``worker.store.bulk``: COPY on
    PostgreSQL unless ``copy`` is False); returns how many."""
    samples: list[tuple[Any, ...]] = []
    methods: list[tuple[Any, ...]] = []
    series: list[tuple[Any, ...]] = []
    for row in rows:
        sample = sample_fields(row)
        samples.append((job_id, *(sample[c] for c in SAMPLE_COLUMNS)))
        index = sample["index"]
        for method, (base, cand) in method_flags(row).items():
            methods.append((job_id, index, method, base, cand))
            series.extend(
                (job_id, index, method, kind, step, stage, values)
                for kind, step, stage, values in method_series(row, method)
            )
    refresh_small_parents(session, (JobSample, SampleMetric))
    for model, keys, records in (
        (JobSample, SAMPLE_KEYS, samples),
        (SampleMetric, METHOD_KEYS, methods),
        (SampleSeries, SERIES_KEYS, series),
    ):
        insert_records(session, model, keys, records, copy=copy)
    return len(samples)


def replace_values(
    session: Session,
    job_id: str,
    index: Sequence[int] | np.ndarray,
    values: Mapping[str, Mapping[str, np.ndarray]],
    metrics: Sequence[str],
    series: Series = Series.DRIFT,
) -> int:
    """Replace the job's stored audit-stage values of ``series`` (step 0), the values
    computed after the shards (``consistency_*`` at finalisation): the old ones all go;
    ``values[method][metric]`` (aligned with the samples ``index``; NaN stores null) comes in
    for each of ``metrics`` it holds. Idempotent, so finalising twice stores the same values
    once. Returns how many values it wrote."""
    metrics = list(dict.fromkeys(metrics))
    if not metrics:
        return 0
    if pair := pair_metrics(metrics):
        raise ValueError(f"the shards store {pair}; only audit-stage metrics are replaced")
    session.execute(
        delete(SampleSeries).where(
            SampleSeries.job_id == job_id,
            SampleSeries.series == series.value,
            SampleSeries.step == 0,
            SampleSeries.stage == AUDIT_STAGE,
        )
    )
    at = [int(i) for i in index]
    records: list[tuple[Any, ...]] = []
    written = 0
    for method, named in values.items():
        kept = [m for m in metrics if m in named]
        if not kept:
            continue
        texts = json_objects(kept, [named[m].tolist() for m in kept])
        records.extend(
            (job_id, i, method, series.value, 0, AUDIT_STAGE, text)
            for i, text in zip(at, texts, strict=True)
        )
        written += len(at) * len(kept)
    insert_records(session, SampleSeries, SERIES_KEYS, records)
    return written


def delete_rows(session: Session, job_id: str, start: int | None = None, stop: int | None = None):
    """Delete the job's rows with ``start <= index < stop`` (all of them without bounds)."""
    for model in (SampleSeries, SampleMetric, JobSample):
        where = [model.job_id == job_id]
        if start is not None and stop is not None:
            where.append(model.index.between(start, stop - 1))
        session.execute(delete(model).where(*where))


def replace_rows(
    session: Session, job_id: str, start: int, stop: int, rows: Iterable[dict[str, Any]]
) -> int:
    """Replace the rows of one shard (indices ``start <= index < stop``): idempotent, so a
    redelivered shard writes the same rows again instead of adding them."""
    delete_rows(session, job_id, start, stop)
    return write_rows(session, job_id, rows)


# --------------------------------------------------------------------------- loading


def load_rows(
    session: Session,
    job_id: str,
    names: Sequence[str] | None = None,
    *,
    indices: Sequence[int] | None = None,
    methods: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """The audit rows of job ``job_id`` by index, as :func:`assemble` builds them: one query
    per table. ``names`` picks metrics (see :func:`assemble`); ``indices`` only those samples
    (in that order); ``methods`` only those methods."""
    names = list(names) if names is not None else None
    if indices is not None and not indices:
        return []

    def scoped(model: Any) -> list[Any]:
        where = [model.job_id == job_id]
        if indices is not None:
            where.append(model.index.in_(list(indices)))
        if methods is not None and model is not JobSample:
            where.append(model.method.in_(list(methods)))
        return where

    samples = session.execute(
        select(*(getattr(JobSample, c) for c in SAMPLE_COLUMNS))
        .where(*scoped(JobSample))
        .order_by(JobSample.index)
    ).all()
    flags: dict[int, dict[str, tuple[bool, bool]]] = {}
    entries: dict[int, list[Entry]] = {}
    if methods is not None and not methods:  # the samples alone
        return [assemble(r._asdict(), {}, (), names) for r in _ordered(samples, indices)]
    for index, method, base, cand in session.execute(
        select(
            SampleMetric.index,
            SampleMetric.method,
            SampleMetric.degenerate_baseline,
            SampleMetric.degenerate_candidate,
        )
        .where(*scoped(SampleMetric))
        .order_by(SampleMetric.index, SampleMetric.method)
    ):
        flags.setdefault(index, {})[method] = (base, cand)
    wanted = set(names) if names is not None else None
    for index, method, series, step, values in session.execute(
        select(
            SampleSeries.index,
            SampleSeries.method,
            SampleSeries.series,
            SampleSeries.step,
            SampleSeries.metric_values,
        ).where(*scoped(SampleSeries))
    ):
        entries.setdefault(index, []).extend(
            (method, series, step, metric, value)
            for metric, value in (values or {}).items()
            if wanted is None or metric in wanted
        )
    rows = []
    for record in _ordered(samples, indices):
        sample = record._asdict()
        index = sample["index"]
        rows.append(assemble(sample, flags.get(index, {}), entries.get(index, ()), names))
    return rows


JSON_COLUMNS = ("probs_baseline", "probs_candidate", "probs_trajectory")
SeriesKey = tuple[str, str, int, str]  # (method, series, step, metric) as stored


def load_table(session: Session, job_id: str, names: Sequence[str] | None = None) -> RowTable:
    """The job's rows as a :class:`~worker.results.rows.RowTable`, read column-wise: what
    ``RowTable.from_rows(load_rows(session, job_id, names))`` holds, without a dict per row
    or per value (the finaliser of a 20,000-image job spent 3 s building those). ``names``
    as for :func:`assemble`: those drift metrics for every method (NaN where not stored),
    their pair metrics for floors and trajectory steps. On PostgreSQL its reads are planned
    from the statistics: a caller about to read a fresh job refreshes them first
    (:func:`worker.store.bulk.refresh_statistics`)."""
    names = list(names) if names is not None else None
    pair_names = pair_metrics(names) if names is not None else None
    connection = session.connection()  # Core rows: no ORM loading per value
    fields = _sample_columns(connection, job_id)
    index = np.asarray(fields["index"], dtype=np.int64)
    n = len(index)
    degenerate = _flag_columns(connection, job_id, index)
    present = {key: np.zeros(n, dtype=bool) for key in (*REFERENCE_SERIES, "trajectory")}
    columns: dict[tuple[str, str, str, int | None], np.ndarray] = {}
    if names is not None:  # every named drift metric of every method, stored or not
        for method in degenerate:
            for name in names:
                columns[DRIFT, method, name, None] = np.full(n, np.nan)
    for (method, kind, step, metric), at, values in _value_series(connection, job_id, names):
        rows_at = np.searchsorted(index, at)
        column = np.full(n, np.nan)
        column[rows_at] = values
        if kind == Series.DRIFT:
            columns[DRIFT, method, metric, None] = column
            continue
        present["trajectory" if kind in TRAJECTORY_KINDS else kind][rows_at] = True
        if pair_names is None or metric in pair_names:
            columns[kind, method, metric, step - 1 if kind in TRAJECTORY_KINDS else None] = column
    if pair_names is not None:  # a series' full grid: every pair metric at every step
        spans: dict[tuple[str, str], int] = {}
        for kind, method, _, step in columns:
            if kind != DRIFT:
                spans[kind, method] = max(spans.get((kind, method), 0), (step or 0) + 1)
        for (kind, method), count in spans.items():
            for step in range(count) if kind in TRAJECTORY_KINDS else (None,):
                for name in pair_names:
                    columns.setdefault((kind, method, name, step), np.full(n, np.nan))
    trajectory_probs = fields["probs_trajectory"]
    lengths = np.asarray([-1 if p is None else len(p) for p in trajectory_probs], dtype=np.int64)

    def ints(key: str) -> np.ndarray:
        return np.asarray(fields[key], dtype=np.int64).reshape(n)

    def probs(key: str) -> np.ndarray:
        return np.asarray(fields[key], dtype=np.float64).reshape(n, -1) if n else np.zeros((0, 0))

    return RowTable(
        index=index,
        label=ints("label"),
        path=np.asarray([str(p) for p in fields["path"]], dtype=object).reshape(n),
        pred_baseline=ints("pred_baseline"),
        pred_candidate=ints("pred_candidate"),
        target_baseline=ints("target_baseline"),
        target_candidate=ints("target_candidate"),
        included=np.asarray(fields["included"], dtype=bool).reshape(n),
        probs_baseline=probs("probs_baseline"),
        probs_candidate=probs("probs_candidate"),
        probs_trajectory=stack_trajectory_probs(trajectory_probs, lengths),
        trajectory_lengths=lengths,
        present=present,
        columns=columns,
        degenerate=degenerate,
    )


def _sample_columns(connection: Any, job_id: str) -> dict[str, list[Any]]:
    """The job's ``job_samples`` columns by index. JSON columns come as text and are parsed
    in one ``json.loads`` per column, not one per value."""
    selected = [
        cast(getattr(JobSample, c), Text) if c in JSON_COLUMNS else getattr(JobSample, c)
        for c in SAMPLE_COLUMNS
    ]
    records = connection.execute(
        select(*selected).where(JobSample.job_id == job_id).order_by(JobSample.index)
    ).all()
    if not records:
        return {c: [] for c in SAMPLE_COLUMNS}
    fields = {c: list(v) for c, v in zip(SAMPLE_COLUMNS, zip(*records, strict=True), strict=True)}
    for c in JSON_COLUMNS:
        fields[c] = json.loads("[" + ",".join(t or "null" for t in fields[c]) + "]")
    return fields


def _flag_columns(connection: Any, job_id: str, index: np.ndarray) -> dict[str, np.ndarray]:
    """method -> [n, 2] degenerate flags of the samples at ``index`` (rows without: False)."""
    records = connection.execute(
        select(
            SampleMetric.method,
            SampleMetric.index,
            SampleMetric.degenerate_baseline,
            SampleMetric.degenerate_candidate,
        )
        .where(SampleMetric.job_id == job_id)
        .order_by(SampleMetric.method)
    ).all()
    out: dict[str, np.ndarray] = {}
    for method, group in itertools.groupby(records, key=lambda r: r[0]):
        _, at, base, cand = zip(*group, strict=True)
        flags = out[method] = np.zeros((len(index), 2), dtype=bool)
        rows_at = np.searchsorted(index, np.asarray(at, dtype=np.int64))
        flags[rows_at, 0], flags[rows_at, 1] = base, cand
    return out


PARSE_CHUNK = 4096  # JSON objects parsed at once: memory stays flat however large the job


def _value_series(
    connection: Any, job_id: str, names: Sequence[str] | None
) -> list[tuple[SeriesKey, np.ndarray, np.ndarray]]:
    """Each stored (method, series, step, metric) of the job (of ``names`` only, if given)
    with its samples' indices and values (null -> NaN). The JSON objects come as text, one
    series at a time, parsed by one ``json.loads`` per chunk of :data:`PARSE_CHUNK`."""
    key = (SampleSeries.method, SampleSeries.series, SampleSeries.step)
    records = connection.execute(
        select(*key, SampleSeries.index, cast(SampleSeries.metric_values, Text))
        .where(SampleSeries.job_id == job_id)
        .order_by(*key),
        execution_options={"stream_results": True, "yield_per": PARSE_CHUNK},
    )  # streamed (a server-side cursor on PostgreSQL): the texts never all sit in memory
    wanted = set(names) if names is not None else None
    out: list[tuple[SeriesKey, np.ndarray, np.ndarray]] = []
    for (m, s, st), group in itertools.groupby(records, key=lambda r: (r[0], r[1], r[2])):
        parts: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {}
        for chunk in iter(lambda g=group: list(itertools.islice(g, PARSE_CHUNK)), []):
            index = np.asarray([r[3] for r in chunk], dtype=np.int64)
            objects = json.loads("[" + ",".join(r[4] or "{}" for r in chunk) + "]")
            for metric, at, values in _metric_columns(index, objects):
                if wanted is None or metric in wanted:
                    got = parts.setdefault(metric, ([], []))
                    got[0].append(at)
                    got[1].append(values)
        for metric in sorted(parts):
            ats, values = parts[metric]
            out.append(((m, s, st, metric), np.concatenate(ats), np.concatenate(values)))
    return out


def _metric_columns(
    index: np.ndarray, objects: list[dict[str, Any]]
) -> Iterator[tuple[str, np.ndarray, np.ndarray]]:
    """(metric, indices holding it, values; null -> NaN) from JSON objects of one series.
    Objects come in few key layouts (one writer), so each layout is converted to one 2-D
    array at once instead of one pass per metric."""
    layouts: dict[tuple[str, ...], list[int]] = {}
    for k, o in enumerate(objects):
        layouts.setdefault(tuple(o), []).append(k)
    for keys, members in layouts.items():
        if not keys:
            continue
        grid = np.array([tuple(objects[k].values()) for k in members], dtype=np.float64)
        at = index[members] if len(members) != len(objects) else index
        for j, metric in enumerate(keys):
            yield metric, at, grid[:, j]


def _ordered(samples: Sequence[Any], indices: Sequence[int] | None) -> list[Any]:
    """The sample records in ``indices`` order (as they are, by index, without)."""
    if indices is None:
        return list(samples)
    by_index = {record._mapping["index"]: record for record in samples}
    return [by_index[i] for i in indices if i in by_index]


def sample_indices(session: Session, job_id: str) -> list[int]:
    """The evaluated sample indices of a job, ascending."""
    return list(
        session.scalars(
            select(JobSample.index).where(JobSample.job_id == job_id).order_by(JobSample.index)
        )
    )


def count_samples(session: Session, job_id: str, included: bool | None = None) -> int:
    where = [JobSample.job_id == job_id]
    if included is not None:
        where.append(JobSample.included == included)
    return session.scalar(select(func.count()).select_from(JobSample).where(*where)) or 0


def sorted_indices(
    session: Session,
    job_id: str,
    method: str,
    sort: str,
    order: Literal["asc", "desc"] = "asc",
    *,
    included: bool | None = None,
    limit: int = 100,
    offset: int = 0,
) -> list[int]:
    """One page of the job's sample indices sorted in SQL by ``sort`` (a sample column of
    :data:`SAMPLE_SORTS` or any metric name, under ``method``), NULLs (undefined, or not
    measured) last in either order, ties by index."""
    query = select(JobSample.index).where(JobSample.job_id == job_id)
    if included is not None:
        query = query.where(JobSample.included == included)
    if sort in SAMPLE_SORTS:
        column: Any = getattr(JobSample, sort)
    else:
        query = query.outerjoin(
            SampleSeries,
            and_(
                SampleSeries.job_id == JobSample.job_id,
                SampleSeries.index == JobSample.index,
                SampleSeries.method == method,
                SampleSeries.series == Series.DRIFT.value,
                SampleSeries.step == 0,
                SampleSeries.stage == metric_stage(sort),
            ),
        )
        column = SampleSeries.metric_values[sort].as_float()
    direction = column.desc() if order == "desc" else column.asc()
    query = (
        query.order_by(case((column.is_(None), 1), else_=0), direction, JobSample.index)
        .limit(limit)
        .offset(offset)
    )
    return list(session.scalars(query))


def records_from_row(job_id: str, row: dict[str, Any]) -> list[JobSample | SampleMetric]:
    """The SQL records of one audit row (an audit row dict): a sample + its methods, each
    method with its values (``entries``). :func:`write_rows` writes the same rows in bulk."""
    sample = JobSample(job_id=job_id, **sample_fields(row))
    records: list[JobSample | SampleMetric] = [sample]
    for method, flags in method_flags(row).items():
        records.append(
            SampleMetric(
                job_id=job_id,
                index=sample.index,
                method=method,
                degenerate_baseline=flags[0],
                degenerate_candidate=flags[1],
                entries=[
                    SampleSeries(
                        job_id=job_id,
                        index=sample.index,
                        method=method,
                        series=series,
                        step=step,
                        stage=stage,
                        metric_values=values,
                    )
                    for series, step, stage, values in method_series(row, method)
                ],
            )
        )
    return records


def row_from_records(
    sample: JobSample, metrics: list[SampleMetric], names: list[str] | None = None
) -> dict[str, Any]:
    """The inverse of :func:`records_from_row`: the audit row dict the report is built from.

    ``names`` (the job's metric names) keeps only those metrics, in that order.
    """
    return assemble(
        {c: getattr(sample, c) for c in SAMPLE_COLUMNS},
        {m.method: [m.degenerate_baseline, m.degenerate_candidate] for m in metrics},
        [
            (m.method, v.series, v.step, metric, value)
            for m in metrics
            for v in m.entries
            for metric, value in (v.metric_values or {}).items()
        ],
        names,
    )
