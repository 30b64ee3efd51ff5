"""The column-wise loader (``load_table``) against the row loader: the finaliser reads a job's
rows as a RowTable straight from SQL, and it must hold exactly what
``RowTable.from_rows(load_rows(...))`` holds -- floors, a ceiling, trajectory steps, NULL
values, samples without metrics, names that were never stored -- on SQLite and PostgreSQL."""

from __future__ import annotations

import random

import numpy as np
import pytest

from tests.service.conftest import fresh_postgres_database
from tests.service.test_bulk_rows import _parents
from worker.results.rows import RowTable
from worker.store import rows as stored_rows
from worker.store.db import make_engine, session_factory
from worker.store.models import Base

METHODS = ("layercam", "gradcam++")
PAIR = ["displacement", "iou_top20", "spearman"]


def _metrics(rng: random.Random, names: list[str], none_every: int, i: int) -> dict:
    return {n: (None if (i + k) % none_every == 0 else rng.random()) for k, n in enumerate(names)}


def _rows(trajectory_everywhere: bool) -> list[dict]:
    rng = random.Random(3)
    out = []
    for i in range(30):
        included = i % 6 != 0
        row = {
            "index": 10 + 3 * i,  # sparse, not 0..n-1: rows are placed by their index
            "path": f"c{i % 3}/img{i}.png",
            "label": i % 3,
            "pred_baseline": rng.randrange(3),
            "pred_candidate": rng.randrange(3),
            "target_baseline": i % 3,
            "target_candidate": (i + 1) % 3,
            "included": included,
            "probs_baseline": [rng.random() for _ in range(3)],
            "probs_candidate": [rng.random() for _ in range(3)],
            "metrics": {},
            "degenerate": {},
        }
        if trajectory_everywhere or i % 4:
            row["probs_trajectory"] = [[0.2, 0.3, 0.5], [0.6, 0.2, 0.2]]
        if included:
            names = [*PAIR, "consistency_tl"]
            row["metrics"] = {m: _metrics(rng, names, 5, i) for m in METHODS}
            row["degenerate"] = {m: [i % 7 == 0, (i + j) % 5 == 0] for j, m in enumerate(METHODS)}
            if i % 3:
                row["floor"] = {m: _metrics(rng, PAIR, 4, i) for m in METHODS}
            if i % 5 == 1:
                row["ceiling"] = {"layercam": _metrics(rng, PAIR, 9, i)}
            if i % 2:
                row["trajectory"] = {
                    m: {
                        kind: [_metrics(rng, PAIR, 3, i + s) for s in range(2)]
                        for kind in ("from_first", "consecutive")
                    }
                    for m in METHODS
                }
        out.append(row)
    return out


def _same(got: RowTable, want: RowTable) -> None:
    for name in (
        "index", "label", "path", "pred_baseline", "pred_candidate", "target_baseline",
        "target_candidate", "included", "probs_baseline", "probs_candidate", "trajectory_lengths",
    ):  # fmt: skip
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    if want.probs_trajectory is None:
        assert got.probs_trajectory is None
    else:
        np.testing.assert_array_equal(got.probs_trajectory, want.probs_trajectory)
    assert set(got.present) == set(want.present)
    for key in want.present:
        np.testing.assert_array_equal(got.present[key], want.present[key], err_msg=key)
    assert sorted(got.columns, key=str) == sorted(want.columns, key=str)
    for key, column in want.columns.items():
        np.testing.assert_array_equal(got.columns[key], column, err_msg=str(key))
    assert set(got.degenerate) == set(want.degenerate)
    for method, flags in want.degenerate.items():
        np.testing.assert_array_equal(got.degenerate[method], flags, err_msg=method)


NAME_SETS = [
    None,  # every stored metric
    ["spearman", "displacement", "consistency_tl", "consistency_ft"],  # one never stored
    ["iou_top20", "pearson"],  # a pair metric no series stored
]


def _compare(url: str) -> None:
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    try:
        with session_factory(engine)() as db:
            _parents(db, ["full", "partial", "empty"])
            stored_rows.write_rows(db, "full", _rows(True))
            stored_rows.write_rows(db, "partial", _rows(False))
            db.commit()
            for job in ("full", "partial", "empty"):
                for names in NAME_SETS:
                    want = RowTable.from_rows(stored_rows.load_rows(db, job, names))
                    _same(stored_rows.load_table(db, job, names), want)
            # the fixture holds what the comparison is about
            table = stored_rows.load_table(db, "full", None)
            assert table.present["floor"].any() and not table.present["floor"].all()
            assert table.present["ceiling"].any() and table.present["trajectory"].any()
            assert table.steps == 2 and table.probs_trajectory is not None
            assert np.isnan(table.values("layercam", "spearman")).any()
            assert stored_rows.load_table(db, "partial", None).probs_trajectory is None
    finally:
        engine.dispose()


@pytest.mark.parametrize("chunk", [7, stored_rows.PARSE_CHUNK])
def test_load_table_equals_the_row_loader_on_sqlite(tmp_path, monkeypatch, chunk) -> None:
    """Also with the series' JSON parsed a few objects at a time (a large job's chunks)."""
    monkeypatch.setattr(stored_rows, "PARSE_CHUNK", chunk)
    _compare(f"sqlite:///{tmp_path / 'rows.db'}")


def test_load_table_equals_the_row_loader_on_postgres() -> None:
    with fresh_postgres_database("camdrift_table") as (url, _name, _conn):
        _compare(url)


@pytest.mark.parametrize("names", NAME_SETS[1:])
def test_named_metrics_never_stored_read_nan_for_every_method(tmp_path, names) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'rows.db'}")
    Base.metadata.create_all(engine)
    with session_factory(engine)() as db:
        _parents(db, ["j"])
        stored_rows.write_rows(db, "j", _rows(True))
        db.commit()
        table = stored_rows.load_table(db, "j", names)
    engine.dispose()
    for method in METHODS:
        for name in names:
            assert ("drift", method, name, None) in table.columns
    if "consistency_ft" in names:
        assert np.isnan(table.values("gradcam++", "consistency_ft")).all()
