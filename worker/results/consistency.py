"""Map consistency across images: the reference-free shortcut signal (issue 13, item 3a).

A model that answers a class from a shortcut (a corner marker, a text token, a border) puts
that class's evidence on one fixed place whatever the image shows; its maps of *different*
images then look alike. That is the Clever-Hans signature SpRAy (Lapuschkin et al., Nat.
Commun. 2019) finds by clustering relevance maps. Per sample and model this module measures
how much its map resembles the maps of the *other* included samples of the same class, and the
TL -> FT change of that: ``consistency_change`` > 0 = the candidate's maps of the class
collapsed onto a common place; a fine-tune that refines image-dependent evidence keeps it near 0.

**Similarity.** Pearson r of the flattened maps, i.e. the cosine of the mean-centred maps (the
same number). It is invariant to each map's offset and scale, so the stored max-scaled raw maps
give what min-max-scaled or upsampled-then-scaled ones would (upsampling aside), and it reads
on the scale of the per-sample ``pearson`` drift metric (1 = the same pattern). The uncentred
cosine is not used: two non-negative maps always score >= 0 and two diffuse maps score high,
which confuses "spread out" with "in the same place".

**Leave-one-out mean, exactly and in linear time.** With z_i the centred, unit-norm map of
sample i and s = Σ_j z_j over the class's valid maps, the row sum of the correlation matrix
C = Z Zᵀ is Z s, so sample i's mean correlation with the *other* n - 1 maps is
(z_i · s - z_i · z_i) / (n - 1): one matrix-vector product per class, no n x n matrix, so no
class is too large and no reference subsample (hence no seed) is needed. The mean of these
per-sample values over a class is the class's mean pairwise correlation.

**Which maps.** The raw maps every audit stores for its included samples
(``worker.engine.audit._save_raw_maps``: ``rows-XXXXXX-YYYYYY.npz`` with ``rows`` and
``baseline__<method>`` / ``candidate__<method>``, feature resolution, float16, max-scaled), read
in one pass over the files. The class of a sample is its label: under the ``true_positive`` and
``all`` filters (the job's and the gate's defaults) both maps explain the label; under
``predicted`` / ``disagreement`` each map explains its own model's prediction, and the grouping
by label then mixes explained classes. NaN where a value is undefined: the sample's map is
constant (zero included) or non-finite, its class has fewer than two valid maps of that model,
or no stored map was found for it.

**Determinism and memory.** Values depend on the set of (row, map) pairs only: maps are placed
by row index and every sum runs in row-index order, so shard layout, file order and row order
inside a file do not matter. A row stored twice (a redelivered shard with other batch
boundaries) is taken from the first file by name; two copies that disagree (correlation < 0.99)
are an error, as they mean stale maps from another run share the folder. Memory: one float32
vector per included sample x model x method; a map larger than ``max_side`` on a side
(Integrated Gradients' input-resolution maps) is first area-averaged onto a grid of at most
``max_side`` x ``max_side`` (32: every CAM's feature grid, 7 x 7 .. 28 x 28, is kept as it is).

Torch-free. Rows stay the unit of the report: :func:`with_consistency` writes the three values
into each included row's ``metrics`` and :func:`consistency_section` rebuilds the summary from
rows alone (docs/architecture.md, "Samples and statistics").
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from worker.results.rows import DRIFT, RowTable

ROLES = ("baseline", "candidate")  # TL, FT: the key prefixes of the stored maps
CONSISTENCY_TL = "consistency_tl"
CONSISTENCY_FT = "consistency_ft"
CONSISTENCY_CHANGE = "consistency_change"
NAMES = (CONSISTENCY_TL, CONSISTENCY_FT, CONSISTENCY_CHANGE)
MAX_SIDE = 32
MAPS_GLOB = "rows-*.npz"  # the audit's temporary files start with "." and never match
SAME_MAP = 0.99  # two stored copies of one row's map below this correlation conflict


@dataclass(frozen=True, eq=False)
class SampleConsistency:
    """Per included sample (ascending ``index``): each method's ``consistency_tl``,
    ``consistency_ft`` and ``consistency_change`` (float64, NaN = undefined)."""

    index: np.ndarray
    label: np.ndarray
    values: dict[str, dict[str, np.ndarray]]  # method -> name -> [n]
    missing: int  # included samples with no stored maps
    duplicates: int  # rows stored more than once (identical copies; the first file's used)

    def per_row(self) -> dict[int, dict[str, dict[str, float | None]]]:
        """``{index: {method: {name: value | None}}}``, the rows' ``metrics`` layout."""
        return {
            int(row): {
                method: {name: _finite(column[i]) for name, column in named.items()}
                for method, named in self.values.items()
            }
            for i, row in enumerate(self.index)
        }


def sample_consistency(
    maps_dir: Path | str,
    rows: RowTable | Iterable[Mapping[str, Any]] | Mapping[int, int],
    methods: Sequence[str],
    *,
    max_side: int = MAX_SIDE,
) -> SampleConsistency:
    """Each included sample's leave-one-out mean Pearson r with the other included samples of
    its class, per model and method, from the raw maps stored in ``maps_dir``.

    ``rows``: the audit's rows (dicts or a :class:`RowTable`; included ones count) or a mapping
    ``{row index: class}`` of the samples to use."""
    methods = list(dict.fromkeys(methods))
    if not methods:
        raise ValueError("methods: name at least one attribution method")
    if max_side < 1:
        raise ValueError(f"max_side must be >= 1, got {max_side}")
    index, label = _samples(rows)
    maps = _read_maps(Path(maps_dir), index, methods, max_side)
    values: dict[str, dict[str, np.ndarray]] = {}
    for method in methods:
        tl = _leave_one_out(*maps.vectors[ROLES[0], method], label)
        ft = _leave_one_out(*maps.vectors[ROLES[1], method], label)
        values[method] = {CONSISTENCY_TL: tl, CONSISTENCY_FT: ft, CONSISTENCY_CHANGE: ft - tl}
    return SampleConsistency(
        index=index,
        label=label,
        values=values,
        missing=int((~maps.seen).sum()),
        duplicates=maps.duplicates,
    )


def with_consistency(
    rows: Iterable[Mapping[str, Any]],
    consistency: SampleConsistency,
    names: Sequence[str] = NAMES,
) -> list[dict[str, Any]]:
    """Copies of ``rows`` whose included samples carry the values ``names`` (default: all three)
    as metrics of each method (``None`` = undefined), so the report's summaries and the gate
    read them like any per-sample metric. Rows the computation did not cover are copied
    unchanged."""
    unknown = [name for name in names if name not in NAMES]
    if unknown:
        raise ValueError(f"names: {unknown} are not consistency values; choose from {NAMES}")
    per_row = consistency.per_row()
    out = []
    for row in rows:
        named = per_row.get(int(row["index"])) if row.get("included") else None
        if named is None:
            out.append(dict(row))
            continue
        metrics = {m: dict(v) for m, v in (row.get("metrics") or {}).items()}
        for method, values in named.items():
            metrics.setdefault(method, {}).update({name: values[name] for name in names})
        out.append({**row, "metrics": metrics})
    return out


def add_consistency(
    rows: list[dict[str, Any]], maps_dir: Path | str, methods: Sequence[str], metrics: Sequence[str]
) -> tuple[list[dict[str, Any]], SampleConsistency | None]:
    """The audit's finish, the same for ``camdrift drift`` and a job's finalisation: ``rows``
    with the consistency values among ``metrics`` (the job's resolved list) computed from the
    raw maps in ``maps_dir``, and the values (None, rows as they are, when it names none).
    Each row's metrics keep the order of ``metrics``, as a job's stored rows load."""
    names = [name for name in NAMES if name in metrics]
    if not names:
        return rows, None
    values = sample_consistency(maps_dir, rows, methods)
    rank = {name: i for i, name in enumerate(metrics)}
    out = []
    for row in with_consistency(rows, values, names):
        named = row.get("metrics") or {}
        ordered = {
            method: dict(sorted(v.items(), key=lambda kv: rank.get(kv[0], len(rank))))
            for method, v in named.items()
        }
        out.append({**row, "metrics": ordered})
    return out, values


def add_consistency_table(
    table: RowTable, maps_dir: Path | str, methods: Sequence[str], metrics: Sequence[str]
) -> tuple[RowTable, SampleConsistency | None]:
    """:func:`add_consistency` for a :class:`RowTable` (a job's finalisation reads its rows as
    columns): the table with the consistency values among ``metrics`` as drift columns of
    each method on its included rows, and the values (None, the table as it is, when
    ``metrics`` names none)."""
    names = [name for name in NAMES if name in metrics]
    if not names:
        return table, None
    values = sample_consistency(maps_dir, table, methods)
    rows_at = np.searchsorted(table.index, values.index)
    columns = dict(table.columns)
    for method, named in values.values.items():
        for name in names:
            key = (DRIFT, method, name, None)
            column = columns[key].copy() if key in columns else np.full(len(table), np.nan)
            column[rows_at] = named[name]
            columns[key] = column
    return replace(table, columns=columns), values


def consistency_section(
    source: SampleConsistency | RowTable | Iterable[Mapping[str, Any]],
    class_names: Sequence[str],
    methods: Sequence[str] | None = None,
) -> dict[str, dict[str, Any]]:
    """Per method: ``overall`` and per class, the TL mean, FT mean and their change over the
    samples where both values are defined (``n``), plus how many had each (``n_tl``,
    ``n_ft``). Built from rows alone (or straight from :func:`sample_consistency`); with no
    included sample every summary is empty (``n`` 0) rather than an error."""
    if isinstance(source, SampleConsistency):
        label, columns = source.label, source.values
    else:
        table = RowTable.from_rows(source, series=("drift",))
        table = table.take(table.included)
        have = [m for (series, m, name, _) in table.columns if name == CONSISTENCY_TL]
        label = table.label
        columns = {m: {name: table.values(m, name) for name in NAMES} for m in have}
    out: dict[str, dict[str, Any]] = {}
    for method in methods or list(columns):
        if method not in columns:
            if label.size:
                raise ValueError(f"no consistency values for method {method!r}")
            columns[method] = {name: np.full(0, np.nan) for name in NAMES}
        tl, ft = columns[method][CONSISTENCY_TL], columns[method][CONSISTENCY_FT]
        out[method] = {
            "overall": _summary(tl, ft),
            "classes": {
                name: _summary(tl[label == k], ft[label == k]) for k, name in enumerate(class_names)
            },
        }
    return out


# ----------------------------------------------------------------------------- internals


@dataclass
class _Maps:
    vectors: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]  # (z [n, d], valid [n])
    seen: np.ndarray  # [n] a stored map was found
    duplicates: int


def _samples(
    rows: RowTable | Iterable[Mapping[str, Any]] | Mapping[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """(row index ascending, class) of the samples to use."""
    if isinstance(rows, Mapping):
        pairs = sorted((int(i), int(k)) for i, k in rows.items())
        index = np.asarray([i for i, _ in pairs], dtype=np.int64)
        label = np.asarray([k for _, k in pairs], dtype=np.int64)
    else:
        table = RowTable.from_rows(rows, series=())
        index, label = table.index[table.included], table.label[table.included]
    if index.size and (np.diff(index) == 0).any():
        raise ValueError("rows: a row index occurs twice")
    if (label < 0).any():
        raise ValueError("rows: every included sample needs a class label >= 0")
    return index, label


def _read_maps(maps_dir: Path, index: np.ndarray, methods: list[str], max_side: int) -> _Maps:
    """One pass over the stored map files, in name order: every wanted row's normalised maps."""
    n = index.size
    keys = [(role, m) for m in methods for role in ROLES]
    vectors: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    seen = np.zeros(n, dtype=bool)
    duplicates = 0
    files = sorted(maps_dir.glob(MAPS_GLOB)) if maps_dir.is_dir() else []
    for path in files if n else ():
        with np.load(path, allow_pickle=False) as data:
            if "rows" not in data.files:
                raise ValueError(f"{path}: not a maps file (no 'rows' array)")
            stored = np.asarray(data["rows"], dtype=np.int64).ravel()
            at = np.minimum(np.searchsorted(index, stored), max(n - 1, 0))
            hit = np.flatnonzero(index[at] == stored)
            if not hit.size:
                continue  # rows the table does not include (another run's leftovers)
            pos = at[hit]
            _, first = np.unique(pos, return_index=True)
            fresh = np.zeros(hit.size, dtype=bool)
            fresh[first] = True
            fresh &= ~seen[pos]
            for role, method in keys:
                name = f"{role}__{method}"
                z, valid = _normalise(_stored(path, data, name, stored.size)[hit], max_side)
                if (role, method) not in vectors:
                    vectors[role, method] = (
                        np.zeros((n, z.shape[1]), dtype=np.float32),
                        np.zeros(n, dtype=bool),
                    )
                into, ok = vectors[role, method]
                if into.shape[1] != z.shape[1]:
                    raise ValueError(
                        f"{path}: {name!r} maps hold {z.shape[1]} values, other files'"
                        f" {into.shape[1]}: maps of different models in one folder"
                    )
                into[pos[fresh]] = z[fresh]
                ok[pos[fresh]] = valid[fresh]
                again = ~fresh  # rows an earlier file (or this one) already held
                if again.any():
                    held = pos[again]
                    kept = (into[held], ok[held])
                    _check_copies(path, name, index[held], kept, (z[again], valid[again]))
            duplicates += int((~fresh).sum())
            seen[pos] = True
    for role, method in keys:
        if (role, method) not in vectors:  # no file held any wanted row
            vectors[role, method] = (np.zeros((n, 1), dtype=np.float32), np.zeros(n, bool))
    return _Maps(vectors, seen, duplicates)


def _stored(path: Path, data: Any, name: str, rows: int) -> np.ndarray:
    """The ``[rows, H, W]`` maps ``name`` of an open maps file."""
    if name not in data.files:
        have = sorted(f for f in data.files if f != "rows")
        raise ValueError(f"{path}: no maps {name!r} (it holds {have})")
    array = data[name]
    if array.ndim != 3 or array.shape[0] != rows:
        raise ValueError(
            f"{path}: {name!r} has shape {array.shape}, expected ({rows}, H, W) for its {rows} rows"
        )
    return array


def _check_copies(
    path: Path,
    name: str,
    rows: np.ndarray,
    kept: tuple[np.ndarray, np.ndarray],
    again: tuple[np.ndarray, np.ndarray],
) -> None:
    """Two stored copies of a row's map must be the same map (up to recomputation noise):
    ``kept`` and ``again`` are (normalised maps, valid) of the copy in use and the other."""
    (first, first_ok), (other, other_ok) = kept, again
    same = (first.astype(np.float64) * other).sum(1) >= SAME_MAP
    agree = np.where(first_ok & other_ok, same, first_ok == other_ok)
    if not agree.all():
        row = int(rows[np.flatnonzero(~agree)[0]])
        raise ValueError(
            f"{path}: {name!r} of row {row} differs from an earlier file's copy of that row;"
            " the maps folder mixes runs (clear it and re-run the audit)"
        )


def _normalise(maps: np.ndarray, max_side: int) -> tuple[np.ndarray, np.ndarray]:
    """Centred, unit-norm flattened maps (float32 [k, d]) and which are valid (not constant,
    all finite); invalid rows are zero."""
    m = np.asarray(maps, dtype=np.float64)
    height, width = m.shape[1:]
    if height > max_side or width > max_side:
        rows = _area_matrix(height, min(height, max_side))
        cols = _area_matrix(width, min(width, max_side))
        with np.errstate(invalid="ignore", over="ignore"):
            m = np.einsum("oh,khw,pw->kop", rows, m, cols)
    flat = m.reshape(m.shape[0], -1)
    finite = np.isfinite(flat).all(1)
    flat = np.where(finite[:, None], flat, 0.0)
    centred = flat - flat.mean(1, keepdims=True)
    norm = np.sqrt((centred * centred).sum(1))
    valid = finite & (np.ptp(flat, axis=1) > 0) & (norm > 0)
    z = centred / np.where(valid, norm, 1.0)[:, None]
    z[~valid] = 0.0
    return z.astype(np.float32), valid


def _area_matrix(length: int, out: int) -> np.ndarray:
    """[out, length] weights of area averaging ``length`` cells onto ``out`` equal bins."""
    edges = np.linspace(0.0, length, out + 1)
    cells = np.arange(length, dtype=np.float64)
    lo = np.maximum(edges[:-1, None], cells[None, :])
    hi = np.minimum(edges[1:, None], cells[None, :] + 1.0)
    weights = np.clip(hi - lo, 0.0, None)
    return weights / weights.sum(1, keepdims=True)


def _leave_one_out(z: np.ndarray, valid: np.ndarray, label: np.ndarray) -> np.ndarray:
    """Each valid map's mean correlation with the other valid maps of its class (NaN where the
    class has fewer than two): (z_i · s - z_i · z_i) / (n - 1), s = the class's sum of z."""
    out = np.full(label.shape, np.nan)
    for k in np.unique(label):
        members = np.flatnonzero((label == k) & valid)  # ascending row index
        if members.size < 2:
            continue
        zk = z[members].astype(np.float64)
        total = zk.sum(0)
        loo = (zk @ total - np.einsum("ij,ij->i", zk, zk)) / (members.size - 1)
        out[members] = np.clip(loo, -1.0, 1.0)
    return out


def _summary(tl: np.ndarray, ft: np.ndarray) -> dict[str, Any]:
    both = np.isfinite(tl) & np.isfinite(ft)
    n = int(both.sum())
    tl_mean = float(tl[both].mean()) if n else None
    ft_mean = float(ft[both].mean()) if n else None
    return {
        "tl": tl_mean,
        "ft": ft_mean,
        "change": None if not n else float((ft[both] - tl[both]).mean()),
        "n": n,
        "n_tl": int(np.isfinite(tl).sum()),
        "n_ft": int(np.isfinite(ft).sum()),
    }


def _finite(value: float) -> float | None:
    value = float(value)
    return None if np.isnan(value) else value


# ----------------------------------------------------------------------------- command line


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m worker.results.consistency REPORT.json``: the section of a ``camdrift
    drift`` run, from the rows file and the maps folder next to its report."""
    parser = argparse.ArgumentParser(prog="python -m worker.results.consistency")
    parser.add_argument("report", type=Path, help="a report written by `camdrift drift`")
    parser.add_argument("--maps", type=Path, help="maps folder (default: next to the rows)")
    parser.add_argument("--methods", nargs="+", help="default: the report's methods")
    args = parser.parse_args(argv)
    try:
        report = json.loads(args.report.read_text())
        rows_path = args.report.parent / str(report["samples"]["location"])
        class_names = list(report["dataset"]["class_names"])
        methods = args.methods or list(report["config"]["methods"])
        rows = [json.loads(line) for line in rows_path.read_text().splitlines() if line]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"report: cannot read {args.report} and its rows: {exc}", file=sys.stderr)
        return 2
    maps_dir = args.maps or rows_path.with_name(
        rows_path.name.removesuffix(".samples.jsonl") + ".maps"
    )
    if not maps_dir.is_dir():
        print(f"--maps: no maps folder at {maps_dir}", file=sys.stderr)
        return 2
    try:
        values = sample_consistency(maps_dir, rows, methods)
    except ValueError as exc:
        print(f"--maps: {exc}", file=sys.stderr)
        return 2
    section = consistency_section(with_consistency(rows, values), class_names, methods)
    print(json.dumps({"missing": values.missing, "methods": section}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
