"""The SQL schema (SQLAlchemy 2 typed ORM), portable across SQLite and Postgres.

Migrations in ``migrations/`` create exactly these tables; a test compares the two. Paths of
store-managed files (``storage_path``, uploaded datasets' ``root_path``) are relative to the
artifact store root, so API and workers may mount the store at different places.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
FLOOR_KEY = "__floor__"  # in ``sample_metrics.extra``: the sample's noise-floor metrics
REPLICA_KEY = "__replica__"  # ... and its baseline-vs-replica metrics
FLOOR_KEYS = {FLOOR_KEY: "floor", REPLICA_KEY: "replica_floor"}  # extra key -> row key
TRAJECTORY_KEY = "__trajectory__"  # ... and its drift along the job's checkpoint sequence
RESERVED_KEYS = {*FLOOR_KEYS, TRAJECTORY_KEY}  # keys of ``extra`` that are not metrics
METRIC_COLUMNS: tuple[str, ...] = (  # one nullable float column per metric of migration 0001
    "displacement",
    "peak_displacement",
    "iou_top20",
    "iou_t50",
    "pearson",
    "spearman",
    "concentration_change",
    "entropy_change",
)


ID_PATTERN = re.compile(r"[0-9a-f]{32}")


def new_id() -> str:
    return uuid.uuid4().hex


def is_id(value: object) -> bool:
    """A well-formed record id; anything else cannot exist (and is never sent to SQL)."""
    return isinstance(value, str) and ID_PATTERN.fullmatch(value) is not None


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both backends (SQLite forgets the zone)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map: ClassVar[dict[Any, Any]] = {
        datetime: UTCDateTime,
        dict[str, Any]: JSON,
        list[Any]: JSON,
    }


class Checkpoint(Base):
    """An uploaded checkpoint, addressed by the sha256 of its bytes."""

    __tablename__ = "checkpoints"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    sha256: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(255))
    arch: Mapped[str] = mapped_column(String(100))
    num_classes: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[Any]] = mapped_column(JSON)
    phase: Mapped[str | None] = mapped_column(String(50))
    input_size: Mapped[list[Any]] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column(JSON)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_path: Mapped[str] = mapped_column(String(1024))
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """An indexed dataset: an uploaded zip extracted into the store, or a server path."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    source: Mapped[str] = mapped_column(String(16))  # "upload" | "path"
    root_path: Mapped[str] = mapped_column(String(4096))
    num_samples: Mapped[int] = mapped_column(Integer)
    class_names: Mapped[list[Any]] = mapped_column(JSON)
    class_counts: Mapped[dict[str, Any]] = mapped_column(JSON)
    fingerprint: Mapped[str] = mapped_column(String(64))
    # uploads: training.datasets.content_digest of the stored files (a client's lookup key)
    content_sha256: Mapped[str | None] = mapped_column(String(64), index=True)
    skipped: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Job(Base):
    """A drift job; the row is the source of truth, workers move it with conditional UPDATEs."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_created_at", "created_at"),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    status: Mapped[str] = mapped_column(String(16), default="queued")
    baseline_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id"))
    candidate_id: Mapped[str] = mapped_column(ForeignKey("checkpoints.id"))
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"))
    config: Mapped[dict[str, Any]] = mapped_column(JSON)
    progress_done: Mapped[int] = mapped_column(Integer, default=0)
    progress_total: Mapped[int | None] = mapped_column(Integer)
    shards_total: Mapped[int | None] = mapped_column(Integer)
    shards_done: Mapped[int] = mapped_column(Integer, default=0)
    verdict: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    error: Mapped[str | None] = mapped_column(Text)
    idempotency_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    request_hash: Mapped[str] = mapped_column(String(64))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column()
    finished_at: Mapped[datetime | None] = mapped_column()
    updated_at: Mapped[datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class JobShard(Base):
    """One shard: evaluated rows [start, stop) of a job, one Celery task."""

    __tablename__ = "job_shards"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    shard_no: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    start: Mapped[int] = mapped_column(Integer)
    stop: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16), default="pending")  # pending | done
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column()


class JobSample(Base):
    """One evaluated sample of a job: predictions, targets, whether the filter kept it."""

    __tablename__ = "job_samples"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    index: Mapped[int] = mapped_column("index", Integer, primary_key=True, autoincrement=False)
    path: Mapped[str] = mapped_column(String(4096))
    label: Mapped[int] = mapped_column(Integer)
    pred_baseline: Mapped[int] = mapped_column(Integer)
    pred_candidate: Mapped[int] = mapped_column(Integer)
    target_baseline: Mapped[int] = mapped_column(Integer)
    target_candidate: Mapped[int] = mapped_column(Integer)
    included: Mapped[bool] = mapped_column(Boolean)
    probs_baseline: Mapped[list[Any]] = mapped_column(JSON)
    probs_candidate: Mapped[list[Any]] = mapped_column(JSON)
    # per intermediate checkpoint of a trajectory job: its class probabilities
    probs_trajectory: Mapped[list[Any] | None] = mapped_column(JSON)


class SampleMetric(Base):
    """Drift metrics of one included sample under one method (NULL = undefined, NaN)."""

    __tablename__ = "sample_metrics"
    __table_args__ = (
        ForeignKeyConstraint(
            ["job_id", "index"],
            ["job_samples.job_id", "job_samples.index"],
            ondelete="CASCADE",
        ),
        Index("ix_sample_metrics_job_id_method", "job_id", "method"),
    )

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    index: Mapped[int] = mapped_column("index", Integer, primary_key=True, autoincrement=False)
    method: Mapped[str] = mapped_column(String(32), primary_key=True)
    displacement: Mapped[float | None] = mapped_column(Float)
    peak_displacement: Mapped[float | None] = mapped_column(Float)
    iou_top20: Mapped[float | None] = mapped_column(Float)
    iou_t50: Mapped[float | None] = mapped_column(Float)
    pearson: Mapped[float | None] = mapped_column(Float)
    spearman: Mapped[float | None] = mapped_column(Float)
    concentration_change: Mapped[float | None] = mapped_column(Float)
    entropy_change: Mapped[float | None] = mapped_column(Float)
    extra: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    degenerate_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    degenerate_candidate: Mapped[bool] = mapped_column(Boolean, default=False)

    def values(self) -> dict[str, float | None]:
        """Every metric of the row, columns and ``extra`` together."""
        out: dict[str, float | None] = {name: getattr(self, name) for name in METRIC_COLUMNS}
        out.update({k: v for k, v in (self.extra or {}).items() if k not in RESERVED_KEYS})
        return out

    def floors(self) -> dict[str, dict[str, float | None]]:
        """The sample's floor metrics by row key (``floor``: vs a perturbed baseline,
        ``replica_floor``: vs a baseline replica), those that were measured."""
        extra = self.extra or {}
        return {row_key: extra[key] for key, row_key in FLOOR_KEYS.items() if key in extra}

    def trajectory(self) -> dict[str, list[dict[str, float | None]]] | None:
        """``from_first`` / ``consecutive``: the sample's drift per step of the sequence."""
        return (self.extra or {}).get(TRAJECTORY_KEY)


class Report(Base):
    """The finished report document of a job, written once by finalisation."""

    __tablename__ = "reports"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    document: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class Study(Base):
    """A study: several finished jobs on one dataset, compared by ``worker.results.study``."""

    __tablename__ = "studies"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255))
    job_ids: Mapped[list[Any]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


def records_from_row(job_id: str, row: dict[str, Any]) -> list[Base]:
    """The SQL records of one audit row (an audit row dict): a sample + its metrics."""
    sample = JobSample(
        job_id=job_id,
        index=int(row["index"]),
        path=str(row["path"]),
        label=int(row["label"]),
        pred_baseline=int(row["pred_baseline"]),
        pred_candidate=int(row["pred_candidate"]),
        target_baseline=int(row["target_baseline"]),
        target_candidate=int(row["target_candidate"]),
        included=bool(row["included"]),
        probs_baseline=list(row["probs_baseline"]),
        probs_candidate=list(row["probs_candidate"]),
        probs_trajectory=row.get("probs_trajectory"),
    )
    records: list[Base] = [sample]
    for method, values in (row.get("metrics") or {}).items():
        flags = (row.get("degenerate") or {}).get(method, [False, False])
        columns = {k: v for k, v in values.items() if k in METRIC_COLUMNS}
        extra = {k: v for k, v in values.items() if k not in METRIC_COLUMNS}
        for key, row_key in FLOOR_KEYS.items():
            floor = (row.get(row_key) or {}).get(method)
            if floor is not None:
                extra[key] = floor
        steps = (row.get("trajectory") or {}).get(method)
        if steps is not None:
            extra[TRAJECTORY_KEY] = steps
        records.append(
            SampleMetric(
                job_id=job_id,
                index=sample.index,
                method=method,
                extra=extra,
                degenerate_baseline=bool(flags[0]),
                degenerate_candidate=bool(flags[1]),
                **columns,
            )
        )
    return records


def row_from_records(
    sample: JobSample, metrics: list[SampleMetric], names: list[str] | None = None
) -> dict[str, Any]:
    """The inverse of :func:`records_from_row`: the audit row dict the report is built from.

    ``names`` (the job's metric names) keeps only those metrics, in that order.
    """
    row: dict[str, Any] = {
        "index": sample.index,
        "path": sample.path,
        "label": sample.label,
        "pred_baseline": sample.pred_baseline,
        "pred_candidate": sample.pred_candidate,
        "probs_baseline": list(sample.probs_baseline),
        "probs_candidate": list(sample.probs_candidate),
        "target_baseline": sample.target_baseline,
        "target_candidate": sample.target_candidate,
        "included": sample.included,
        "metrics": {},
        "degenerate": {},
    }
    if sample.probs_trajectory is not None:
        row["probs_trajectory"] = list(sample.probs_trajectory)
    for record in metrics:
        row["metrics"][record.method] = _pick(record.values(), names)
        for row_key, floor in record.floors().items():
            row.setdefault(row_key, {})[record.method] = _pick(floor, names)
        steps = record.trajectory()
        if steps is not None:
            row.setdefault("trajectory", {})[record.method] = {
                kind: [_pick(step, names) for step in series] for kind, series in steps.items()
            }
        row["degenerate"][record.method] = [
            record.degenerate_baseline,
            record.degenerate_candidate,
        ]
    return row


def _pick(values: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    return values if names is None else {name: values.get(name) for name in names}
