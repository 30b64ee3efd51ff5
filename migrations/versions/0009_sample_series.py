"""sample values as one row per series: a JSON object of metric -> value

A 1,000-image shard stored ~34,000 ``sample_values`` rows (one per sample, method, series,
step and metric): their COPY, primary-key maintenance and read-back were most of a shard's
store time and of the finaliser's. ``sample_series(job_id, index, method, series, step,
stage)`` holds the same values as one JSON object per row, 17x fewer rows. ``stage`` is
``pair`` for what the engine measured per map pair (written by the shards) and ``audit`` for
the values measured across the audit's samples (``consistency_*``, written by the
finaliser), so neither writer rewrites the other's rows. A value that was NULL stays a JSON
null; a metric that was never stored stays absent. Downgrade moves every value back.

Revision ID: 0009_sample_series
Revises: 0008_sample_values_bulk
Create Date: 2026-12-07 15:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_sample_series"
down_revision: str | Sequence[str] | None = "0008_sample_values_bulk"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# the audit-stage metrics of 0001-0008 (frozen here: this file must not follow the catalog)
AUDIT_METRICS = ("consistency_tl", "consistency_ft", "consistency_change")
KEYS = '"job_id", "index", "method", "series", "step"'
CHUNK = 5000


def upgrade() -> None:
    op.create_table(
        "sample_series",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("series", sa.String(16), nullable=False),
        sa.Column("step", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("stage", sa.String(8), nullable=False),
        sa.Column("metric_values", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint(
            "job_id", "index", "method", "series", "step", "stage", name="pk_sample_series"
        ),
    )
    conn = op.get_bind()
    if conn.dialect.name == "postgresql":
        audit = ", ".join(f"'{name}'" for name in AUDIT_METRICS)
        stage = f"CASE WHEN metric IN ({audit}) THEN 'audit' ELSE 'pair' END"
        conn.exec_driver_sql("SET LOCAL extra_float_digits = 3")  # every float exactly
        conn.exec_driver_sql(
            f'INSERT INTO sample_series ({KEYS}, "stage", "metric_values") '
            f"SELECT {KEYS}, {stage}, json_object_agg(metric, value) FROM sample_values "
            f"GROUP BY {KEYS}, {stage}"
        )
    else:  # SQLite's json_group_object writes 15 digits: grouped here, exactly
        _group_in_python(conn)
    op.drop_table("sample_values")


def _group_in_python(conn: sa.Connection) -> None:
    old = sa.table(
        "sample_values",
        *(sa.column(c) for c in ("job_id", "index", "method", "series", "step", "metric")),
        sa.column("value", sa.Float),
    )
    new = sa.table(
        "sample_series",
        *(sa.column(c) for c in ("job_id", "index", "method", "series", "step", "stage")),
        sa.column("metric_values", sa.JSON),
    )
    key_columns = [old.c.job_id, old.c.index, old.c.method, old.c.series, old.c.step]
    grouped: dict[tuple, dict[str, float | None]] = {}

    def flush() -> None:
        if grouped:
            records = [
                dict(zip(("job_id", "index", "method", "series", "step", "stage"), k, strict=True))
                | {"metric_values": values}
                for k, values in grouped.items()
            ]
            conn.execute(new.insert(), records)
            grouped.clear()

    for (job_id,) in conn.execute(sa.select(old.c.job_id).distinct()).all():  # a job at a time
        rows = conn.execute(
            sa.select(*key_columns, old.c.metric, old.c.value)
            .where(old.c.job_id == job_id)
            .order_by(*key_columns)
        ).all()
        last = None
        for *key, metric, value in rows:
            if tuple(key) != last and len(grouped) >= CHUNK:  # whole groups only
                flush()
            last = tuple(key)
            group = (*key, "audit" if metric in AUDIT_METRICS else "pair")
            grouped.setdefault(group, {})[metric] = value
        flush()


def downgrade() -> None:
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
    if conn.dialect.name == "postgresql":
        entries = "json_each_text(s.metric_values) AS e"
        value = "CAST(e.value AS DOUBLE PRECISION)"
    else:
        entries = "json_each(s.metric_values) AS e"
        value = "e.value"
    keys = ", ".join(f"s.{key}" for key in KEYS.split(", "))
    conn.exec_driver_sql(
        f'INSERT INTO sample_values ({KEYS}, "metric", "value") '
        f"SELECT {keys}, e.key, {value} FROM sample_series AS s, {entries}"
    )
    op.drop_table("sample_series")
