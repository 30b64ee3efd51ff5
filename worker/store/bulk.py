"""Bulk inserts: ``COPY ... FROM STDIN`` on PostgreSQL (psycopg2), chunked executemany
elsewhere (SQLite, other drivers).

A 20,000-image job stores ~20 value records per image and method; COPY streams them in one
statement per table inside the caller's transaction, where an INSERT pays per row
(``python -m bench.service_scale`` times a whole job both ways).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Boolean, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

INSERT_CHUNK = 5000  # records per executemany INSERT
log = logging.getLogger("camdrift.store")


def insert_records(
    session: Session, model: Any, records: Sequence[dict[str, Any]], copy: bool | None = None
) -> None:
    """Insert ``records`` (attribute name -> value dicts, all with the same keys) into
    ``model``'s table in the session's transaction. ``copy`` None: COPY where the connection
    supports it."""
    if not records:
        return
    connection = session.connection()
    if copy is None:
        copy = connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg2"
    if copy:
        _copy(connection, model.__table__, records)
        return
    for at in range(0, len(records), INSERT_CHUNK):
        session.execute(insert(model), records[at : at + INSERT_CHUNK])


SMALL_TABLE = 10_000  # rows the planner may still scan whole for each foreign-key check


def refresh_small_parents(session: Session, models: Sequence[Any]) -> None:
    """ANALYZE the parent tables of a bulk insert while PostgreSQL believes them small.

    Each inserted child row runs a foreign-key check against its parent through a plan the
    connection caches; planned while the parent looked small, it scans the whole parent, so
    a job's later shards slowed linearly (0.1 s -> 0.55 s per 250-image shard by the tenth).
    ANALYZE replans them (measured flat at 0.06 s). Once the statistics say a parent is large
    the plans use its index and this costs one catalogue read.
    """
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        return
    names = [model.__table__.name for model in models]
    estimates = connection.exec_driver_sql(
        "SELECT relname, reltuples FROM pg_class WHERE relname = ANY(%(names)s)",
        {"names": names},
    ).all()
    small = [name for name, tuples in estimates if tuples < SMALL_TABLE]
    if not small:
        return
    prepare = connection.dialect.identifier_preparer
    try:
        with session.begin_nested():  # a role that may not ANALYZE loses speed, not the shard
            connection.exec_driver_sql("ANALYZE " + ", ".join(prepare.quote(n) for n in small))
    except DBAPIError as exc:
        log.warning("could not refresh table statistics: %s", exc.orig)


def _copy(connection: Any, table: Any, records: Sequence[dict[str, Any]]) -> None:
    """COPY in PostgreSQL's text format: tab-separated, NULL as \\N, backslash escapes;
    JSON columns go as their JSON text."""
    keys = [column.key for column in table.columns if column.key in records[0]]
    columns = [table.columns[key] for key in keys]
    kinds = [
        "json" if isinstance(c.type, JSON) else "bool" if isinstance(c.type, Boolean) else "plain"
        for c in columns
    ]
    buffer = io.StringIO()
    for record in records:
        fields = (_field(record[k], kind) for k, kind in zip(keys, kinds, strict=True))
        buffer.write("\t".join(fields))
        buffer.write("\n")
    buffer.seek(0)
    prepare = connection.dialect.identifier_preparer
    names = ", ".join(prepare.quote(c.name) for c in columns)
    raw = connection.connection.dbapi_connection
    with raw.cursor() as cursor:
        cursor.copy_expert(f"COPY {prepare.format_table(table)} ({names}) FROM STDIN", buffer)


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _field(value: Any, kind: str) -> str:
    if value is None:
        return "\\N"
    if kind == "json":
        return json.dumps(value, allow_nan=False).translate(_ESCAPES)
    if kind == "bool":
        return "t" if value else "f"
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    return str(value).translate(_ESCAPES)
