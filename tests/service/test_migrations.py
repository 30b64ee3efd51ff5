"""Alembic is the only schema path: up/down/up is clean and matches the ORM models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from service import migrate
from tests.service.conftest import fresh_postgres_database
from worker.results.rows import SAMPLE_FIELDS
from worker.store.db import make_engine, session_factory
from worker.store.models import Base
from worker.store.settings import Settings

REPO = Path(__file__).resolve().parents[2]
HEAD = "0009_sample_series"  # the newest revision
TABLES = {
    "checkpoints",
    "checkpoint_imports",
    "datasets",
    "jobs",
    "job_shards",
    "job_samples",
    "sample_metrics",
    "sample_series",
    "reports",
    "studies",
    "alembic_version",
}


def schema_diff(url: str) -> list:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()


def table_names(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def check_round_trip(settings: Settings) -> None:
    migrate.upgrade(settings)
    assert table_names(settings.database_url) == TABLES
    assert schema_diff(settings.database_url) == []
    assert migrate.current(settings) == HEAD
    migrate.downgrade(settings, "base")
    assert table_names(settings.database_url) <= {"alembic_version"}
    assert migrate.current(settings) is None
    migrate.upgrade(settings, "head")
    assert schema_diff(settings.database_url) == []


def test_sqlite_upgrade_downgrade_upgrade(tmp_path) -> None:
    check_round_trip(Settings(database_url=f"sqlite:///{tmp_path}/m.db"))


def test_alembic_command_line_reads_the_environment(tmp_path) -> None:
    """``alembic upgrade head`` from the repo root takes CAMDRIFT_DATABASE_URL."""
    url = f"sqlite:///{tmp_path}/cli.db"
    env = {**os.environ, "CAMDRIFT_DATABASE_URL": url}
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert schema_diff(url) == []


def test_migrate_works_from_any_directory(tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    settings = Settings(database_url="sqlite:///./relative.db")
    migrate.upgrade(settings)
    assert (tmp_path / "relative.db").is_file()
    assert migrate.current(settings) == HEAD


# --------------------------------------------------------------------------- 0005: data moves


def _migration(stem: str):
    """A migration module by file name (the versions folder is not a package)."""
    import importlib.util

    path = Path(__file__).resolve().parents[2] / "migrations" / "versions" / f"{stem}.py"
    spec = importlib.util.spec_from_file_location(f"camdrift_migration_{stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


OLD_COLUMNS = _migration("0005_sample_values").COLUMNS  # sample_metrics' metric columns at 0004
OLD_FLOOR_KEYS = {"__floor__": "floor", "__replica__": "replica_floor"}
JOB_METHODS = ["layercam", "gradcam++"]
JOB_METRICS = ["iou_top20", "pearson", "iou_top10", "displacement"]  # iou_top10: in ``extra``
CLASS_NAMES = ["normal", "pneumonia", "covid"]


def _value(rng: Any, k: int) -> float | None:
    return None if k % 7 == 3 else round(float(rng.uniform(-1, 1)), 6)


def audit_rows(count: int = 24, seed: int = 0) -> list[dict[str, Any]]:
    """Audit rows as a trajectory job with both floors computes them: an iou_topQ metric,
    undefined values, excluded samples, degenerate maps."""
    rng = np.random.default_rng(seed)
    rows = []
    k = 0

    def named() -> dict[str, float | None]:
        nonlocal k
        out = {}
        for name in JOB_METRICS:
            k += 1
            out[name] = _value(rng, k)
        return out

    for i in range(count):
        label = i % 3
        included = i % 5 != 4
        probs = [round(float(p), 6) for p in rng.dirichlet(np.ones(3))]
        row: dict[str, Any] = {
            "index": i,
            "path": f"{CLASS_NAMES[label]}/img{i}.png",
            "label": label,
            "pred_baseline": label,
            "pred_candidate": label if included else (label + 1) % 3,
            "probs_baseline": probs,
            "probs_candidate": probs[::-1],
            "target_baseline": label,
            "target_candidate": label,
            "included": included,
            "metrics": {},
            "degenerate": {},
            "probs_trajectory": [probs],
        }
        if included:
            row["metrics"] = {m: named() for m in JOB_METHODS}
            row["degenerate"] = {
                m: [i % 6 == 0, m == "gradcam++" and i % 4 == 1] for m in JOB_METHODS
            }
            row["floor"] = {m: named() for m in JOB_METHODS}
            row["replica_floor"] = {m: named() for m in JOB_METHODS}
            row["trajectory"] = {
                m: {kind: [named(), named()] for kind in ("from_first", "consecutive")}
                for m in JOB_METHODS
            }
        rows.append(row)
    return rows


def _tables(conn: Any) -> Any:
    from sqlalchemy import MetaData

    meta = MetaData()
    meta.reflect(conn)
    return meta.tables


def write_old_schema(url: str, rows: list[dict[str, Any]]) -> str:
    """A job, its inputs and ``rows`` stored as revision 0004 stored them; returns its id."""
    from datetime import UTC, datetime

    from sqlalchemy import insert

    now = datetime.now(UTC)
    job_id, ckpt, data = "a" * 32, ["b" * 32, "c" * 32], "d" * 32
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            t = _tables(conn)
            for n, ident in enumerate(ckpt):
                conn.execute(
                    insert(t["checkpoints"]).values(
                        id=ident,
                        sha256=str(n) * 64,
                        name=f"m{n}",
                        arch="tinycnn",
                        num_classes=3,
                        class_names=CLASS_NAMES,
                        phase=None,
                        input_size=[32, 32],
                        meta={},
                        size_bytes=1,
                        storage_path=f"checkpoints/{n}",
                        created_at=now,
                    )
                )
            conn.execute(
                insert(t["datasets"]).values(
                    id=data,
                    name="d",
                    source="path",
                    root_path="/data",
                    num_samples=len(rows),
                    class_names=CLASS_NAMES,
                    class_counts={},
                    fingerprint="f" * 64,
                    content_sha256=None,
                    skipped=[],
                    created_at=now,
                )
            )
            conn.execute(
                insert(t["jobs"]).values(
                    id=job_id,
                    status="succeeded",
                    baseline_id=ckpt[0],
                    candidate_id=ckpt[1],
                    dataset_id=data,
                    config={"methods": JOB_METHODS, "metrics": JOB_METRICS},
                    progress_done=len(rows),
                    progress_total=len(rows),
                    shards_total=1,
                    shards_done=1,
                    verdict=None,
                    error=None,
                    idempotency_key=None,
                    request_hash="0" * 64,
                    cancel_requested=False,
                    attempts=1,
                    created_at=now,
                    started_at=now,
                    finished_at=now,
                    updated_at=now,
                )
            )
            samples, metrics = [], []
            for row in rows:  # what records_from_row wrote until 0005
                samples.append(
                    {
                        "job_id": job_id,
                        **{
                            k: row[k]
                            for k in (
                                "index",
                                "path",
                                "label",
                                "pred_baseline",
                                "pred_candidate",
                                "target_baseline",
                                "target_candidate",
                                "included",
                                "probs_baseline",
                                "probs_candidate",
                                "probs_trajectory",
                            )
                        },
                    }
                )
                for method, values in row["metrics"].items():
                    extra = {k: v for k, v in values.items() if k not in OLD_COLUMNS}
                    for key, row_key in OLD_FLOOR_KEYS.items():
                        if method in row.get(row_key, {}):
                            extra[key] = row[row_key][method]
                    if method in row.get("trajectory", {}):
                        extra["__trajectory__"] = row["trajectory"][method]
                    flags = row["degenerate"][method]
                    metrics.append(
                        {
                            "job_id": job_id,
                            "index": row["index"],
                            "method": method,
                            **{c: values.get(c) for c in OLD_COLUMNS},
                            "extra": extra,
                            "degenerate_baseline": flags[0],
                            "degenerate_candidate": flags[1],
                        }
                    )
            conn.execute(insert(t["job_samples"]), samples)
            conn.execute(insert(t["sample_metrics"]), metrics)
    finally:
        engine.dispose()
    return job_id


def read_old_schema(url: str, job_id: str, names: list[str]) -> list[dict[str, Any]]:
    """The rows as revision 0004's row_from_records read them back (the metrics ``names``)."""
    from sqlalchemy import select

    def pick(values: dict[str, Any]) -> dict[str, Any]:
        return {name: values.get(name) for name in names}

    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            t = _tables(conn)
            samples, sm = t["job_samples"], t["sample_metrics"]
            by_index: dict[int, list[Any]] = {}
            for rec in conn.execute(select(sm).where(sm.c.job_id == job_id)):
                by_index.setdefault(rec.index, []).append(rec)
            rows = []
            for s in conn.execute(
                select(samples).where(samples.c.job_id == job_id).order_by(samples.c.index)
            ):
                row: dict[str, Any] = {
                    **{k: s._mapping[k] for k in SAMPLE_FIELDS},
                    "metrics": {},
                    "degenerate": {},
                }
                if s.probs_trajectory is not None:
                    row["probs_trajectory"] = s.probs_trajectory
                for rec in by_index.get(s.index, []):
                    extra = rec.extra or {}
                    values = {c: rec._mapping[c] for c in OLD_COLUMNS}
                    values.update({k: v for k, v in extra.items() if not k.startswith("__")})
                    row["metrics"][rec.method] = pick(values)
                    for key, row_key in OLD_FLOOR_KEYS.items():
                        if key in extra:
                            row.setdefault(row_key, {})[rec.method] = pick(extra[key])
                    if "__trajectory__" in extra:
                        row.setdefault("trajectory", {})[rec.method] = {
                            kind: [pick(step) for step in series]
                            for kind, series in extra["__trajectory__"].items()
                        }
                    row["degenerate"][rec.method] = [
                        rec.degenerate_baseline,
                        rec.degenerate_candidate,
                    ]
                rows.append(row)
            return rows
    finally:
        engine.dispose()


def report_of(rows: list[dict[str, Any]]) -> dict[str, Any]:
    from worker.results.report import build_report

    report = build_report(
        rows,
        models={"baseline": {"name": "tl"}, "candidate": {"name": "ft"}},
        dataset={"class_names": CLASS_NAMES},
        config={"methods": JOB_METHODS, "metrics": JOB_METRICS, "n_boot": 50, "seed": 0},
        samples_location=None,
        trajectory=[{"name": "mid"}],
    )
    report.pop("created_at")
    return report


def check_data_moves(settings: Settings) -> None:
    """Rows stored at 0004 read back equal after 0005 (and after its downgrade): the same
    rows, the same report, sorting in SQL by any of the job's metrics."""
    from worker.store import rows as stored_rows

    url = settings.database_url
    migrate.upgrade(settings, "0004_dataset_content")
    original = audit_rows()
    job_id = write_old_schema(url, original)
    before = read_old_schema(url, job_id, JOB_METRICS)
    assert before == original, "the old layout reads back what was written"
    expected = report_of(before)

    migrate.upgrade(settings, "head")
    assert schema_diff(url) == []
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            moved = stored_rows.load_rows(session, job_id, JOB_METRICS)
            assert moved == before
            assert report_of(moved) == expected
            assert stored_rows.load_rows(session, job_id) == original, "unpicked: as computed"
            for metric in JOB_METRICS:
                for order in ("asc", "desc"):
                    got = stored_rows.sorted_indices(
                        session, job_id, "gradcam++", metric, order, limit=1000
                    )
                    assert got == expected_order(original, "gradcam++", metric, order)
    finally:
        engine.dispose()

    migrate.downgrade(settings, "0004_dataset_content")
    assert read_old_schema(url, job_id, JOB_METRICS) == before
    assert "sample_values" not in table_names(url) and "sample_series" not in table_names(url)
    migrate.upgrade(settings, "head")
    engine = make_engine(url)
    try:
        with session_factory(engine)() as session:
            assert stored_rows.load_rows(session, job_id, JOB_METRICS) == before
    finally:
        engine.dispose()


def expected_order(rows: list[dict[str, Any]], method: str, metric: str, order: str) -> list[int]:
    """Defined values by ``order``, ties by index; undefined and unmeasured ones last."""
    values = {r["index"]: (r["metrics"].get(method) or {}).get(metric) for r in rows}
    defined = [i for i, v in values.items() if v is not None]
    defined.sort(key=lambda i: (-values[i] if order == "desc" else values[i], i))
    return defined + sorted(i for i, v in values.items() if v is None)


def test_sqlite_0005_moves_every_value(tmp_path) -> None:
    check_data_moves(Settings(database_url=f"sqlite:///{tmp_path}/moves.db"))


def test_postgres_0005_moves_every_value() -> None:
    with fresh_postgres_database("camdrift_migrate") as (url, _name, _admin):
        check_data_moves(Settings(database_url=url))


# --------------------------------------------------------------------------- 0006: heartbeats


def check_heartbeat_column(settings: Settings) -> None:
    """0006 adds ``job_shards.heartbeat_at`` (NULL for shards stored before: not started as
    far as the sweeper knows) and drops it again, every shard kept."""
    from datetime import UTC, datetime

    from sqlalchemy import insert, select, update

    url = settings.database_url
    migrate.upgrade(settings, "0005_sample_values")
    now = datetime.now(UTC)
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            t = _tables(conn)
            for ident in ("b" * 32, "c" * 32):
                conn.execute(
                    insert(t["checkpoints"]).values(
                        id=ident,
                        sha256=ident * 2,
                        name="m",
                        arch="tinycnn",
                        num_classes=3,
                        class_names=CLASS_NAMES,
                        phase=None,
                        input_size=[32, 32],
                        meta={},
                        size_bytes=1,
                        storage_path="checkpoints/x",
                        created_at=now,
                    )
                )
            conn.execute(
                insert(t["datasets"]).values(
                    id="d" * 32,
                    name="d",
                    source="path",
                    root_path="/data",
                    num_samples=20,
                    class_names=CLASS_NAMES,
                    class_counts={},
                    fingerprint="f" * 64,
                    content_sha256=None,
                    skipped=[],
                    created_at=now,
                )
            )
            conn.execute(
                insert(t["jobs"]).values(
                    id="a" * 32,
                    status="running",
                    baseline_id="b" * 32,
                    candidate_id="c" * 32,
                    dataset_id="d" * 32,
                    config={},
                    progress_done=0,
                    progress_total=20,
                    shards_total=2,
                    shards_done=0,
                    request_hash="0" * 64,
                    cancel_requested=False,
                    attempts=1,
                    created_at=now,
                    updated_at=now,
                )
            )
            conn.execute(
                insert(t["job_shards"]),
                [
                    {"job_id": "a" * 32, "shard_no": n, "start": 10 * n, "stop": 10 * n + 10}
                    | {"status": "pending", "attempts": n}
                    for n in (0, 1)
                ],
            )
        migrate.upgrade(settings, "head")
        assert schema_diff(url) == []
        with engine.begin() as conn:
            shards = _tables(conn)["job_shards"]
            rows = conn.execute(
                select(shards.c.shard_no, shards.c.attempts, shards.c.heartbeat_at).order_by(
                    shards.c.shard_no
                )
            ).all()
            assert [tuple(r) for r in rows] == [(0, 0, None), (1, 1, None)]
            conn.execute(update(shards).values(heartbeat_at=now))
        migrate.downgrade(settings, "0005_sample_values")
        with engine.connect() as conn:
            shards = _tables(conn)["job_shards"]
            assert "heartbeat_at" not in shards.c
            assert conn.execute(select(shards.c.shard_no, shards.c.attempts)).all() == [
                (0, 0),
                (1, 1),
            ]
    finally:
        engine.dispose()


def test_sqlite_0006_adds_shard_heartbeats(tmp_path) -> None:
    check_heartbeat_column(Settings(database_url=f"sqlite:///{tmp_path}/beats.db"))


def test_postgres_0006_adds_shard_heartbeats() -> None:
    with fresh_postgres_database("camdrift_migrate") as (url, _name, _admin):
        check_heartbeat_column(Settings(database_url=url))


# --------------------------------------------------------------------------- 0009: series rows


def long_values(many: int) -> set[tuple[Any, ...]]:
    """(index, method, series, step, metric, value) as 0005-0008 stored them: floats that
    only 17 digits carry, a NULL, an audit-stage metric beside pair ones, a floor and a
    trajectory step; ``many`` more samples with a value of each stage (so the grouping runs
    over more than one chunk)."""
    values = {
        (0, "layercam", "drift", 0, "pearson", 1 / 3),
        (0, "layercam", "drift", 0, "spearman", None),
        (0, "layercam", "drift", 0, "consistency_change", 0.1 + 0.2),
        (0, "layercam", "floor", 0, "pearson", -2.5e-300),
        (0, "gradcam++", "drift", 0, "pearson", 0.7),
        (1, "layercam", "drift", 0, "pearson", 7.0),
        (1, "layercam", "from_first", 2, "iou_top20", 0.12345678901234568),
    }
    for i in range(2, 2 + many):
        values |= {
            (i, "layercam", "drift", 0, "pearson", i / 7),
            (i, "layercam", "drift", 0, "spearman", i / 11),
            (i, "layercam", "drift", 0, "consistency_tl", -i / 9),
        }
    return values


def check_series_moves(settings: Settings) -> None:
    """0009 groups each (sample, method, series, step) into one JSON object per stage, every
    float exact, a NULL kept as null and a metric never stored kept absent; its downgrade
    gives the same long rows back."""
    from sqlalchemy import insert, select

    url = settings.database_url
    job = "a" * 32
    migrate.upgrade(settings, "0008_sample_values_bulk")
    original = long_values(2600)
    keys = ("index", "method", "series", "step", "metric", "value")
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(
                insert(_tables(conn)["sample_values"]),
                [{"job_id": job, **dict(zip(keys, v, strict=True))} for v in original],
            )
        migrate.upgrade(settings, "head")
        assert schema_diff(url) == []
        with engine.connect() as conn:
            t = _tables(conn)["sample_series"]
            stored = {
                (r.index, r.method, r.series, r.step, r.stage): r.metric_values
                for r in conn.execute(select(t).where(t.c.job_id == job))
            }
        assert stored[0, "layercam", "drift", 0, "pair"] == {"pearson": 1 / 3, "spearman": None}
        assert stored[0, "layercam", "drift", 0, "audit"] == {"consistency_change": 0.1 + 0.2}
        assert stored[0, "layercam", "floor", 0, "pair"] == {"pearson": -2.5e-300}
        assert stored[1, "layercam", "from_first", 2, "pair"] == {"iou_top20": 0.12345678901234568}
        assert (1, "layercam", "drift", 0, "audit") not in stored
        assert stored[2601, "layercam", "drift", 0, "audit"] == {"consistency_tl": -2601 / 9}
        regrown = {
            (*key[:4], metric, value)
            for key, values in stored.items()
            for metric, value in values.items()
        }
        assert regrown == original
        migrate.downgrade(settings, "0008_sample_values_bulk")
        with engine.connect() as conn:
            t = _tables(conn)["sample_values"]
            back = {tuple(r) for r in conn.execute(select(*(t.c[k] for k in keys)))}
        assert back == original
        assert "sample_series" not in table_names(url)
    finally:
        engine.dispose()


def test_sqlite_0009_groups_every_value(tmp_path) -> None:
    check_series_moves(Settings(database_url=f"sqlite:///{tmp_path}/series.db"))


def test_postgres_0009_groups_every_value() -> None:
    with fresh_postgres_database("camdrift_migrate") as (url, _name, _admin):
        check_series_moves(Settings(database_url=url))
