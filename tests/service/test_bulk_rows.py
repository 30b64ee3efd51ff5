"""Bulk row writes: COPY on PostgreSQL and executemany give the same stored rows, read back
by the one loader; text that COPY must escape (tab, newline, backslash, quotes) and NULLs
survive."""

from __future__ import annotations

import random

import pytest
from sqlalchemy import select

from tests.service.conftest import fresh_postgres_database
from worker.store import bulk
from worker.store import rows as stored_rows
from worker.store.db import make_engine, session_factory
from worker.store.models import Base, Checkpoint, Dataset, Job, SampleSeries

METHODS = ("layercam", "gradcam++")
NAMES = ["displacement", "iou_top20", "spearman"]
AWKWARD = ["a\tb/c.png", "line\nbreak.png", "back\\slash.png", 'quote"s, comma.png', r"\N.png"]


def _rows(seed: int, n: int = 40) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        metrics = {m: {name: rng.random() for name in NAMES} for m in METHODS}
        metrics["layercam"]["spearman"] = None if i % 7 == 0 else metrics["layercam"]["spearman"]
        row = {
            "index": i,
            "path": AWKWARD[i % len(AWKWARD)] if i < 10 else f"class{i % 3}/img{i}.png",
            "label": i % 3,
            "pred_baseline": rng.randrange(3),
            "pred_candidate": rng.randrange(3),
            "target_baseline": i % 3,
            "target_candidate": i % 3,
            "included": i % 5 != 0,
            "probs_baseline": [rng.random() for _ in range(3)],
            "probs_candidate": [rng.random() for _ in range(3)],
            "probs_trajectory": [[0.5, 0.25, 0.25]] if i % 2 else None,
            "metrics": metrics,
            "degenerate": {m: [i % 11 == 0, i % 13 == 0] for m in METHODS},
            "floor": {m: {name: rng.random() for name in NAMES} for m in METHODS},
        }
        out.append(row)
    return out


def _parents(db, job_ids) -> None:
    for ident in ("tl", "ft"):
        db.add(
            Checkpoint(
                id=ident, sha256=ident * 32, name=ident, arch="tinycnn", num_classes=3,
                class_names=["a", "b", "c"], phase=ident, input_size=[8, 8], meta={},
                size_bytes=1, storage_path=ident,
            )
        )  # fmt: skip
    db.add(
        Dataset(
            id="d", name="d", source="path", root_path="d", num_samples=40,
            class_names=["a", "b", "c"], class_counts={}, fingerprint="f", skipped=[],
        )
    )  # fmt: skip
    for job_id in job_ids:
        db.add(
            Job(
                id=job_id, baseline_id="tl", candidate_id="ft", dataset_id="d",
                config={}, request_hash=job_id,
            )
        )  # fmt: skip
    db.flush()


def _round_trip(url: str) -> None:
    engine = make_engine(url)
    Base.metadata.create_all(engine)
    rows = _rows(0)
    try:
        with session_factory(engine)() as db:
            _parents(db, ["copied", "inserted"])
            assert stored_rows.write_rows(db, "copied", rows, copy=True) == len(rows)
            assert stored_rows.write_rows(db, "inserted", rows, copy=False) == len(rows)
            db.commit()
            copied = stored_rows.load_rows(db, "copied", NAMES)
            inserted = stored_rows.load_rows(db, "inserted", NAMES)
            nulls = [
                index
                for index, values in db.execute(
                    select(SampleSeries.index, SampleSeries.metric_values).where(
                        SampleSeries.job_id == "copied",
                        SampleSeries.method == "layercam",
                        SampleSeries.series == "drift",
                    )
                )
                if values["spearman"] is None
            ]
    finally:
        engine.dispose()
    assert copied == inserted
    assert [r["path"] for r in copied[:10]] == [AWKWARD[i % len(AWKWARD)] for i in range(10)]
    assert sorted(nulls) == [i for i in range(40) if i % 7 == 0]
    for got, want in zip(copied, rows, strict=True):
        assert got["metrics"]["gradcam++"] == pytest.approx(want["metrics"]["gradcam++"])
        assert got.get("probs_trajectory") == want["probs_trajectory"]
        assert got["included"] == want["included"]
        assert got["degenerate"] == {m: list(f) for m, f in want["degenerate"].items()}


def test_copy_equals_executemany_on_postgres() -> None:
    with fresh_postgres_database("camdrift_bulk") as (url, _name, _conn):
        _round_trip(url)


def test_copy_is_the_default_on_postgres_only(monkeypatch, tmp_path) -> None:
    used = []
    monkeypatch.setattr(bulk, "_copy", lambda *a: used.append(a[1].name))
    engine = make_engine(f"sqlite:///{tmp_path / 'x.db'}")
    Base.metadata.create_all(engine)
    with session_factory(engine)() as db:
        _parents(db, ["j"])
        stored_rows.write_rows(db, "j", _rows(1, 3))
        db.commit()
    engine.dispose()
    assert used == []  # SQLite: executemany
    with fresh_postgres_database("camdrift_bulk") as (url, _name, _conn):
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        with session_factory(engine)() as db:
            _parents(db, ["j"])
            stored_rows.write_rows(db, "j", _rows(1, 3))
        engine.dispose()
    assert used == ["job_samples", "sample_metrics", "sample_series"]


def test_small_parent_tables_get_fresh_statistics_before_a_bulk_insert() -> None:
    """The foreign-key checks of a shard's COPY are planned from the parents' statistics: a
    parent the planner believes small is analysed first (else the cached checks scan it
    whole and every later shard stores slower than the one before)."""
    with fresh_postgres_database("camdrift_bulk") as (url, _name, _conn):
        engine = make_engine(url)
        Base.metadata.create_all(engine)

        def estimates() -> dict[str, float]:
            with engine.connect() as c:
                found = c.exec_driver_sql(
                    "SELECT relname, reltuples FROM pg_class"
                    " WHERE relname IN ('job_samples', 'sample_metrics')"
                ).all()
            return dict(found)

        rows = _rows(2, 30)
        with session_factory(engine)() as db:
            _parents(db, ["j"])
            db.commit()
            stored_rows.write_rows(db, "j", rows[:10])
            db.commit()
            assert estimates() == {"job_samples": 0, "sample_metrics": 0}  # analysed, empty
            stored_rows.write_rows(db, "j", rows[10:])
            db.commit()
        assert estimates() == {"job_samples": 10, "sample_metrics": 20}
        engine.dispose()


def test_refreshed_statistics_count_a_bulk_loaded_job() -> None:
    """The finaliser refreshes the statistics before it reads a job whose rows were just
    bulk-loaded (autovacuum has not seen them): afterwards they count every value."""
    with fresh_postgres_database("camdrift_bulk") as (url, _name, _conn):
        engine = make_engine(url)
        Base.metadata.create_all(engine)

        def estimate() -> float:
            with engine.connect() as c:
                return c.exec_driver_sql(
                    "SELECT reltuples FROM pg_class WHERE relname = 'sample_series'"
                ).scalar_one()

        with session_factory(engine)() as db:
            _parents(db, ["j"])
            stored_rows.write_rows(db, "j", _rows(3, 30))
            db.commit()
            assert estimate() < 30  # never analysed: -1 (or 0)
            bulk.refresh_statistics(db, [SampleSeries])
            db.commit()
            assert estimate() == 30 * len(METHODS) * 2  # a drift and a floor series each
        engine.dispose()


def test_a_table_another_session_analyses_is_skipped_not_waited_for(caplog) -> None:
    """Two finalisers at once: the second's ANALYZE skips the table the first one holds
    (SKIP_LOCKED) instead of queueing behind it; queueing would hit this lock_timeout."""
    with fresh_postgres_database("camdrift_bulk") as (url, _name, _conn):
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        holder = engine.connect()
        try:
            holder.exec_driver_sql("BEGIN")
            holder.exec_driver_sql("ANALYZE sample_series")  # its lock lasts to the end
            with session_factory(engine)() as db:
                db.connection().exec_driver_sql("SET lock_timeout = '1s'")
                with caplog.at_level("WARNING", logger="camdrift.store"):
                    bulk.refresh_statistics(db, [SampleSeries])
                db.rollback()
        finally:
            holder.exec_driver_sql("ROLLBACK")
            holder.close()
            engine.dispose()
    assert "could not refresh" not in caplog.text


def test_json_objects_equal_the_encoders_text_of_the_same_dicts() -> None:
    """The pre-encoded objects are, character for character, what the shared encoder writes
    for a dict of the same keys and values (oracle: ``json.dumps``), nulls for None and for
    every non-finite float; keys that JSON or %-formatting must escape included."""
    import json
    import math

    rng = random.Random(3)
    keys = ["consistency_tl", 'q"uote', "per%cent %s", "ü"]
    specials = [None, math.nan, math.inf, -math.inf, 0.0, -0.0, 1e-300, 1e300, 5e-324, 1 / 3]
    columns = [
        [rng.choice(specials) if rng.random() < 0.4 else rng.uniform(-9, 9) for _ in range(200)]
        for _ in keys
    ]
    texts = bulk.json_objects(keys, columns)
    assert len(texts) == 200
    for k, text in enumerate(texts):
        values = [None if v is None or not math.isfinite(v) else v for v in (c[k] for c in columns)]
        assert text == json.dumps(
            dict(zip(keys, values, strict=True)), separators=(",", ":"), allow_nan=False
        )
    assert bulk.json_objects([], []) == []


def test_json_text_survives_copy_as_executemany_stores_it() -> None:
    """A JSON column's text goes through COPY with only its backslashes doubled (JSON has
    escaped tab, newline and CR already): keys and strings that need escaping, non-ASCII
    text, nulls and full-precision floats read back as executemany stored them."""
    awkward = {"a\tb": 1 / 3, "back\\slash": None, "new\nline": 0.5, 'ü "q"': [1e-300, "x\\y"]}
    keys = ("job_id", "index", "method", "series", "step", "stage", "metric_values")
    with fresh_postgres_database("camdrift_bulk") as (url, _name, _conn):
        engine = make_engine(url)
        Base.metadata.create_all(engine)
        with session_factory(engine)() as db:
            _parents(db, ["copied", "inserted"])
            for job, copy in (("copied", True), ("inserted", False)):
                record = (job, 0, "layercam", "drift", 0, "pair", awkward)
                encoded = bulk.json_objects(["a\tb", "ü"], [[1 / 3], [None]])[0]
                pre = (job, 1, "layercam", "drift", 0, "audit", encoded)
                bulk.insert_records(db, SampleSeries, keys, [record, pre], copy=copy)
            db.commit()
            stored = {
                (job, i): values
                for job, i, values in db.execute(
                    select(SampleSeries.job_id, SampleSeries.index, SampleSeries.metric_values)
                ).all()
            }
        engine.dispose()
    # a pre-encoded object is stored as the object it spells, not as a JSON string
    pre_value = {"a\tb": 1 / 3, "ü": None}
    assert stored == {
        ("copied", 0): awkward,
        ("inserted", 0): awkward,
        ("copied", 1): pre_value,
        ("inserted", 1): pre_value,
    }
