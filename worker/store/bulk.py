"""Bulk inserts: ``COPY ... FROM STDIN`` on PostgreSQL (psycopg2), chunked executemany
elsewhere (SQLite, other drivers).

A 20,000-image job stores ~3 records per image and method (its sample, flags and series
rows); COPY streams them in one statement per table inside the caller's transaction, where an
INSERT pays per row (``python -m bench.service_scale`` times a whole job).
"""

from __future__ import annotations

import io
import json
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import JSON, Boolean, Float, Integer, insert
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

INSERT_CHUNK = 5000  # records per executemany INSERT
log = logging.getLogger("camdrift.store")


def insert_records(
    session: Session,
    model: Any,
    keys: Sequence[str],
    rows: Sequence[Sequence[Any]],
    copy: bool | None = None,
) -> None:
    """Insert ``rows`` (each a tuple of values in ``keys`` order: attribute names of
    ``model``) into ``model``'s table in the session's transaction. ``copy`` None: COPY where
    the connection supports it. Tuples, not one dict per record: building a dict for each
    cost as much as the COPY itself."""
    if not rows:
        return
    connection = session.connection()
    if copy is None:
        copy = connection.dialect.name == "postgresql" and connection.dialect.driver == "psycopg2"
    if copy:
        _copy(connection, model.__table__, keys, rows)
        return
    encoded = [
        k for k, key in enumerate(keys) if isinstance(model.__table__.columns[key].type, JSON)
    ]
    for at in range(0, len(rows), INSERT_CHUNK):
        chunk = rows[at : at + INSERT_CHUNK]
        if encoded:  # the driver's JSON type encodes values itself: hand it the value
            chunk = [_decoded(row, encoded) for row in chunk]
        session.execute(insert(model), [dict(zip(keys, row, strict=True)) for row in chunk])


class JSONText(str):
    """A JSON document already encoded the way COPY sends one (compact, no NaN): a caller
    with many alike objects (:func:`json_objects`) spares the encoder a call per record."""


def json_objects(keys: Sequence[str], columns: Sequence[Sequence[float | None]]) -> list[JSONText]:
    """One JSON object per row of the aligned ``columns`` (one per key; None and non-finite
    floats -> null), as text equal to the shared encoder's, without a dict per row: 40,000
    audit rows of a finalisation spent ~0.3 s (profiled) in dicts and the encoder."""
    if not keys:
        return []
    template = "{" + ",".join(json.dumps(k).replace("%", "%%") + ":%s" for k in keys) + "}"
    texts = [[_json_number(v) for v in column] for column in columns]
    return [JSONText(template % values) for values in zip(*texts, strict=True)]


def _json_number(value: float | None) -> str:
    if value is None:
        return "null"
    value = float(value)
    return repr(value) if math.isfinite(value) else "null"  # json's own float text is repr


def _decoded(row: Sequence[Any], at: Sequence[int]) -> tuple[Any, ...]:
    out = list(row)
    for k in at:
        if isinstance(out[k], JSONText):
            out[k] = json.loads(out[k])
    return tuple(out)


SMALL_TABLE = 10_000  # rows the planner may still scan whole for each foreign-key check


def refresh_small_parents(session: Session, models: Sequence[Any]) -> None:
    """ANALYZE the parent tables of a bulk insert while PostgreSQL believes them small.

    Each inserted child row runs a foreign-key check against its parent through a plan the
    connection caches; planned while the parent looked small, it scans the whole parent, so
    a job's later shards slowed linearly (0.1 s -> 0.55 s per 250-image shard by the tenth).
    ANALYZE replans them (measured flat at 0.06 s). Once the statistics say a parent is large
    the plans use its index and this costs one catalogue read.
    """
    _analyze_below(session, {model: SMALL_TABLE for model in models})


def refresh_statistics(session: Session, models: Sequence[Any]) -> None:
    """ANALYZE the tables of ``models`` (PostgreSQL) before a read that scans a whole job.

    A job's rows are bulk-loaded faster than autovacuum analyses them, and statistics taken
    before they came know nothing of its ``job_id``: the finaliser's GROUP BY over a 20,000-
    image job's 680,000 values, planned for a few rows, sorted them on disk (0.67 s) instead
    of hashing them in memory (0.18 s). ANALYZE samples a bounded number of rows, so this
    costs ~0.05 s however large the tables grow."""
    _analyze_below(session, {model: math.inf for model in models})


def _analyze_below(session: Session, wanted: dict[Any, float]) -> None:
    """ANALYZE each model's table whose statistics count fewer rows than its limit."""
    connection = session.connection()
    if connection.dialect.name != "postgresql" or not wanted:
        return
    limits = {model.__table__.name: rows for model, rows in wanted.items()}
    estimates = connection.exec_driver_sql(
        "SELECT relname, reltuples FROM pg_class WHERE relname = ANY(%(names)s)",
        {"names": list(limits)},
    ).all()
    stale = [name for name, tuples in estimates if tuples < limits[name]]
    if not stale:
        return
    prepare = connection.dialect.identifier_preparer
    # a table another session is analysing is skipped, not waited for: that one refreshes it
    skip = "(SKIP_LOCKED) " if (connection.dialect.server_version_info or (0,)) >= (12,) else ""
    try:
        with session.begin_nested():  # a role that may not ANALYZE loses speed, not the job
            names = ", ".join(prepare.quote(n) for n in stale)
            connection.exec_driver_sql(f"ANALYZE {skip}{names}")
    except DBAPIError as exc:
        log.warning("could not refresh table statistics: %s", exc.orig)


def _copy(connection: Any, table: Any, keys: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """COPY in PostgreSQL's text format: tab-separated, NULL as \\N, backslash escapes;
    JSON columns go as their JSON text."""
    columns = [table.columns[key] for key in keys]
    formats = [_formatter(column) for column in columns]
    buffer = io.StringIO()
    write = buffer.write
    for row in rows:
        write("\t".join([f(value) for f, value in zip(formats, row, strict=True)]))
        write("\n")
    buffer.seek(0)
    _copy_text(connection, table, keys, buffer)


def _copy_text(connection: Any, table: Any, keys: Sequence[str], text: io.StringIO) -> None:
    """``COPY table (keys) FROM STDIN`` of ``text`` on the connection's DBAPI cursor."""
    prepare = connection.dialect.identifier_preparer
    names = ", ".join(prepare.quote(table.columns[key].name) for key in keys)
    raw = connection.connection.dbapi_connection
    with raw.cursor() as cursor:
        cursor.copy_expert(f"COPY {prepare.format_table(table)} ({names}) FROM STDIN", text)


_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})
NULL = "\\N"


def _formatter(column: Any) -> Callable[[Any], str]:
    """The COPY text of one column's values. Text repeats (a job id, a method, a metric name
    on every value row), so each distinct text is escaped once per COPY."""
    if isinstance(column.type, JSON):
        return _json_field
    if isinstance(column.type, Boolean):
        return _bool_field
    if isinstance(column.type, Float):
        return _float_field
    if isinstance(column.type, Integer):
        return _int_field
    seen: dict[Any, str] = {}

    def text(value: Any) -> str:
        out = seen.get(value)
        if out is None:
            out = seen[value] = NULL if value is None else str(value).translate(_ESCAPES)
        return out

    return text


_JSON = json.JSONEncoder(allow_nan=False, separators=(",", ":"))  # one encoder, not one a call


def _json_field(value: Any) -> str:
    if value is None:
        return NULL
    text = value if isinstance(value, JSONText) else _JSON.encode(value)
    # JSON escapes tab, newline and CR itself: only \ is left
    return text.replace("\\", "\\\\") if "\\" in text else text


def _bool_field(value: Any) -> str:
    return NULL if value is None else ("t" if value else "f")


def _int_field(value: Any) -> str:
    return NULL if value is None else str(int(value))


def _float_field(value: Any) -> str:
    if value is None:
        return NULL
    value = float(value)
    if math.isfinite(value):
        return repr(value)
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
