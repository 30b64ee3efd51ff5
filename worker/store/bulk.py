"""Bulk inserts: ``COPY ... FROM STDIN`` on PostgreSQL (psycopg2), chunked executemany
elsewhere (SQLite, other drivers).

A 20,000-image job stores ~20 value records per image and method; COPY streams them in one
statement per table inside the caller's transaction, where an INSERT pays per row
(``python -m bench.service_scale`` times a whole job both ways).
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import JSON, Boolean, insert
from sqlalchemy.orm import Session

INSERT_CHUNK = 5000  # records per executemany INSERT


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
