"""per-sample metric values in a long table: a new metric needs no migration

``sample_metrics`` had one float column per built-in metric and a JSON ``extra`` for the rest
(iou_topQ values, ``__floor__``, ``__replica__``, ``__trajectory__``). Every value moves to
``sample_values(job_id, index, method, series, step, metric, value)``; ``sample_metrics``
keeps one row per (job, index, method) with the degenerate-map flags. Downgrade moves them back.

Revision ID: 0005_sample_values
Revises: 0004_dataset_content
Create Date: 2026-12-02 16:00:00
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0005_sample_values"
down_revision: str | Sequence[str] | None = "0004_dataset_content"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# what 0001-0004 stored (frozen here: this file must not follow later model changes)
COLUMNS = (
    "displacement",
    "peak_displacement",
    "iou_top20",
    "iou_t50",
    "pearson",
    "spearman",
    "concentration_change",
    "entropy_change",
)
FLOOR_KEYS = {"__floor__": "floor", "__replica__": "replica_floor"}  # extra key -> series
TRAJECTORY_KEY = "__trajectory__"
TRAJECTORY_SERIES = ("from_first", "consecutive")
CHUNK = 5000
FK_NAME = "fk_sample_values_job_id_sample_metrics"

jobs = sa.table("jobs", sa.column("id", sa.String), sa.column("config", sa.JSON))
old_metrics = sa.table(
    "sample_metrics",
    sa.column("job_id", sa.String),
    sa.column("index", sa.Integer),
    sa.column("method", sa.String),
    *(sa.column(name, sa.Float) for name in COLUMNS),
    sa.column("extra", sa.JSON),
)
values = sa.table(
    "sample_values",
    sa.column("job_id", sa.String),
    sa.column("index", sa.Integer),
    sa.column("method", sa.String),
    sa.column("series", sa.String),
    sa.column("step", sa.Integer),
    sa.column("metric", sa.String),
    sa.column("value", sa.Float),
)


def _job_metrics(conn: sa.Connection) -> Iterator[tuple[str, list[str] | None]]:
    """(job id, its metric names, None when the config names none) of jobs with rows."""
    with_rows = sa.select(old_metrics.c.job_id).distinct()
    for job_id, config in conn.execute(
        sa.select(jobs.c.id, jobs.c.config).where(jobs.c.id.in_(with_rows)).order_by(jobs.c.id)
    ):
        names = (config or {}).get("metrics") if isinstance(config, dict) else None
        yield job_id, list(names) if names else None


def _insert(conn: sa.Connection, table: Any, records: list[dict[str, Any]]) -> None:
    for at in range(0, len(records), CHUNK):
        conn.execute(table.insert(), records[at : at + CHUNK])


def _entries(
    row: Any, job_metrics: list[str] | None
) -> Iterator[tuple[str, int, str, float | None]]:
    """(series, step, metric, value) of one old ``sample_metrics`` row. A column is kept when
    it holds a value or is one of the job's metrics (a NULL column of a metric the job never
    computed is no value; an undefined one of its metrics is kept as NULL)."""
    for name in COLUMNS:
        value = getattr(row, name)
        if value is not None or job_metrics is None or name in job_metrics:
            yield "drift", 0, name, value
    extra = row.extra or {}
    for key, value in extra.items():
        if key not in FLOOR_KEYS and key != TRAJECTORY_KEY:
            yield "drift", 0, key, value
    for key, series in FLOOR_KEYS.items():
        for metric, value in (extra.get(key) or {}).items():
            yield series, 0, metric, value
    kinds = extra.get(TRAJECTORY_KEY) or {}
    for series in TRAJECTORY_SERIES:
        for step, step_values in enumerate(kinds.get(series) or [], start=1):
            for metric, value in step_values.items():
                yield series, step, metric, value


def upgrade() -> None:
    # Without its foreign key first: on SQLite the batch rebuild of sample_metrics below drops
    # that table, which would cascade into a child table already pointing at it.
    op.create_table(
        "sample_values",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("series", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("metric", sa.String(64), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint(
            "job_id", "index", "method", "series", "step", "metric", name="pk_sample_values"
        ),
    )
    conn = op.get_bind()
    for job_id, job_metrics in list(_job_metrics(conn)):
        records = [
            {
                "job_id": job_id,
                "index": row.index,
                "method": row.method,
                "series": series,
                "step": step,
                "metric": metric,
                "value": value,
            }
            for row in conn.execute(
                sa.select(old_metrics).where(old_metrics.c.job_id == job_id)
            ).all()
            for series, step, metric, value in _entries(row, job_metrics)
        ]
        _insert(conn, values, records)
    with op.batch_alter_table("sample_metrics") as batch:
        for name in (*COLUMNS, "extra"):
            batch.drop_column(name)
    with op.batch_alter_table("sample_values") as batch:
        batch.create_foreign_key(
            FK_NAME,
            "sample_metrics",
            ["job_id", "index", "method"],
            ["job_id", "index", "method"],
            ondelete="CASCADE",
        )


def downgrade() -> None:
    with op.batch_alter_table("sample_metrics") as batch:
        for name in COLUMNS:
            batch.add_column(sa.Column(name, sa.Float(), nullable=True))
        batch.add_column(sa.Column("extra", sa.JSON(), nullable=True))
    conn = op.get_bind()
    job_ids = conn.execute(sa.select(values.c.job_id).distinct().order_by(values.c.job_id))
    update = (
        old_metrics.update()
        .where(
            old_metrics.c.job_id == sa.bindparam("b_job_id"),
            old_metrics.c.index == sa.bindparam("b_index"),
            old_metrics.c.method == sa.bindparam("b_method"),
        )
        .values(
            {
                **{name: sa.bindparam(f"b_{name}") for name in COLUMNS},
                "extra": sa.bindparam("b_extra", type_=sa.JSON()),
            }
        )
    )
    for (job_id,) in list(job_ids):
        rows: dict[tuple[int, str], dict[str, Any]] = {}
        query = (
            sa.select(values)
            .where(values.c.job_id == job_id)
            .order_by(values.c.index, values.c.method, values.c.series, values.c.step)
        )
        for v in conn.execute(query):
            record = rows.setdefault(
                (v.index, v.method),
                {
                    "b_job_id": job_id,
                    "b_index": v.index,
                    "b_method": v.method,
                    **{f"b_{name}": None for name in COLUMNS},
                    "b_extra": {},
                },
            )
            extra = record["b_extra"]
            if v.series == "drift":
                if v.metric in COLUMNS:
                    record[f"b_{v.metric}"] = v.value
                else:
                    extra[v.metric] = v.value
            elif v.series in TRAJECTORY_SERIES:
                steps = extra.setdefault(TRAJECTORY_KEY, {}).setdefault(v.series, [])
                while len(steps) < v.step:
                    steps.append({})
                steps[v.step - 1][v.metric] = v.value
            else:
                key = {series: key for key, series in FLOOR_KEYS.items()}.get(v.series)
                if key is not None:
                    extra.setdefault(key, {})[v.metric] = v.value
        records = list(rows.values())
        for at in range(0, len(records), CHUNK):
            conn.execute(update, records[at : at + CHUNK])
    op.drop_table("sample_values")
    conn.execute(
        old_metrics.update().where(old_metrics.c.extra.is_(None)).values(extra={}),
    )
    with op.batch_alter_table("sample_metrics") as batch:
        batch.alter_column("extra", existing_type=sa.JSON(), nullable=False)
