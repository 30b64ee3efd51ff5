"""The SQL schema (SQLAlchemy 2 typed ORM), portable across SQLite and Postgres.

Migrations in ``migrations/`` create exactly these tables; a test compares the two. Paths of
store-managed files (``storage_path``, uploaded datasets' ``root_path``) are relative to the
artifact store root, so API and workers may mount the store at different places.
"""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, ClassVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from worker.catalog import JobStatus, ShardStatus

NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Series(StrEnum):
    """What a ``sample_series`` row measures (``step`` is 0 but for the trajectory series)."""

    DRIFT = "drift"  # baseline vs candidate: the row's ``metrics``
    FLOOR = "floor"  # baseline vs a perturbed baseline: the row's ``floor``
    REPLICA_FLOOR = "replica_floor"  # baseline vs a baseline replica: ``replica_floor``
    CEILING = "ceiling"  # baseline vs its randomised-top-layers copy: ``ceiling``
    FROM_FIRST = "from_first"  # trajectory step k vs the baseline (k = 1, 2, ...)
    CONSECUTIVE = "consecutive"  # trajectory step k vs step k - 1


FLOOR_SERIES: tuple[Series, ...] = (Series.FLOOR, Series.REPLICA_FLOOR)  # = their row keys
# baseline vs another model (the floors and the ceiling): one value per sample, row key = name
REFERENCE_SERIES: tuple[Series, ...] = (*FLOOR_SERIES, Series.CEILING)
TRAJECTORY_SERIES: tuple[Series, ...] = (Series.FROM_FIRST, Series.CONSECUTIVE)  # = kinds

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


class CheckpointImport(Base):
    """A weights file trained elsewhere, uploaded with what it is (arch, class names, ...):
    a worker converts it into a :class:`Checkpoint` (torch is needed to fit the weights to
    the arch, and the API process has none). One row per (file bytes, fields)."""

    __tablename__ = "checkpoint_imports"

    id: Mapped[str] = mapped_column(String(32), primary_key=True, default=new_id)
    request_key: Mapped[str] = mapped_column(String(64), unique=True)  # sha256(file, fields)
    source_sha256: Mapped[str] = mapped_column(String(64))
    filename: Mapped[str] = mapped_column(String(255))
    name: Mapped[str | None] = mapped_column(String(255))  # the checkpoint's name, if given
    fields: Mapped[dict[str, Any]] = mapped_column(JSON)  # ImportRequest.to_fields()
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
    error: Mapped[str | None] = mapped_column(Text)
    checkpoint_id: Mapped[str | None] = mapped_column(ForeignKey("checkpoints.id"))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    storage_path: Mapped[str | None] = mapped_column(String(1024))  # the upload, until converted
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column()


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
    status: Mapped[str] = mapped_column(String(16), default=JobStatus.QUEUED.value)
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
    status: Mapped[str] = mapped_column(String(16), default=ShardStatus.PENDING.value)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    finished_at: Mapped[datetime | None] = mapped_column()
    # set when a worker starts the shard and renewed while it runs; None: not started (or
    # re-sent by the sweeper after its worker went silent)
    heartbeat_at: Mapped[datetime | None] = mapped_column()


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
    """One included sample under one method: its degenerate-map flags; its metric values are
    :class:`SampleSeries` rows (one per series, step and stage), so a new metric needs no
    migration."""

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
    degenerate_baseline: Mapped[bool] = mapped_column(Boolean, default=False)
    degenerate_candidate: Mapped[bool] = mapped_column(Boolean, default=False)
    entries: Mapped[list[SampleSeries]] = relationship(
        primaryjoin="and_(SampleMetric.job_id == foreign(SampleSeries.job_id), "
        "SampleMetric.index == foreign(SampleSeries.index), "
        "SampleMetric.method == foreign(SampleSeries.method))",
        cascade="all, delete-orphan",
    )


class SampleSeries(Base):
    """The metric values of one sample under one method in one series (:class:`Series`;
    ``step`` numbers trajectory steps from 1, else 0) and stage: ``metric_values`` maps each
    metric name to its value (null = undefined). The shards store the ``pair`` stage; the
    finaliser stores the ``audit`` stage (``consistency_*``) in rows of its own, so neither
    rewrites the other's. A row per series, not per value: 17x fewer rows to COPY, index and
    read back (migration 0009)."""

    __tablename__ = "sample_series"
    # No foreign key to sample_metrics: shards bulk-load this table, and the per-row check cost
    # more than the row (migration 0008). worker.store.rows is its one writer and deleter.

    job_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    index: Mapped[int] = mapped_column("index", Integer, primary_key=True, autoincrement=False)
    method: Mapped[str] = mapped_column(String(32), primary_key=True)
    series: Mapped[str] = mapped_column(String(16), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    stage: Mapped[str] = mapped_column(String(8), primary_key=True)
    metric_values: Mapped[dict[str, Any]] = mapped_column(JSON)


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
