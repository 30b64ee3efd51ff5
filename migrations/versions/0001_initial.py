"""initial schema: checkpoints, datasets, jobs, shards, per-sample rows, reports

Revision ID: 0001_initial
Revises:
Create Date: 2026-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001_initial"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("arch", sa.String(100), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("phase", sa.String(50), nullable=True),
        sa.Column("input_size", sa.JSON(), nullable=False),
        sa.Column("meta", sa.JSON(), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("storage_path", sa.String(1024), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
        sa.UniqueConstraint("sha256", name="uq_checkpoints_sha256"),
    )
    op.create_table(
        "datasets",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("root_path", sa.String(4096), nullable=False),
        sa.Column("num_samples", sa.Integer(), nullable=False),
        sa.Column("class_names", sa.JSON(), nullable=False),
        sa.Column("class_counts", sa.JSON(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("skipped", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_datasets"),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("baseline_id", sa.String(32), nullable=False),
        sa.Column("candidate_id", sa.String(32), nullable=False),
        sa.Column("dataset_id", sa.String(32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("progress_done", sa.Integer(), nullable=False),
        sa.Column("progress_total", sa.Integer(), nullable=True),
        sa.Column("shards_total", sa.Integer(), nullable=True),
        sa.Column("shards_done", sa.Integer(), nullable=False),
        sa.Column("verdict", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("started_at", TS, nullable=True),
        sa.Column("finished_at", TS, nullable=True),
        sa.Column("updated_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["baseline_id"], ["checkpoints.id"], name="fk_jobs_baseline_id_checkpoints"
        ),
        sa.ForeignKeyConstraint(
            ["candidate_id"], ["checkpoints.id"], name="fk_jobs_candidate_id_checkpoints"
        ),
        sa.ForeignKeyConstraint(
            ["dataset_id"], ["datasets.id"], name="fk_jobs_dataset_id_datasets"
        ),
        sa.PrimaryKeyConstraint("id", name="pk_jobs"),
        sa.UniqueConstraint("idempotency_key", name="uq_jobs_idempotency_key"),
    )
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_index("ix_jobs_created_at", "jobs", ["created_at"])
    op.create_table(
        "job_shards",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("shard_no", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("stop", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("finished_at", TS, nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_shards_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "shard_no", name="pk_job_shards"),
    )
    op.create_table(
        "job_samples",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("path", sa.String(4096), nullable=False),
        sa.Column("label", sa.Integer(), nullable=False),
        sa.Column("pred_baseline", sa.Integer(), nullable=False),
        sa.Column("pred_candidate", sa.Integer(), nullable=False),
        sa.Column("target_baseline", sa.Integer(), nullable=False),
        sa.Column("target_candidate", sa.Integer(), nullable=False),
        sa.Column("included", sa.Boolean(), nullable=False),
        sa.Column("probs_baseline", sa.JSON(), nullable=False),
        sa.Column("probs_candidate", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_job_samples_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "index", name="pk_job_samples"),
    )
    op.create_table(
        "sample_metrics",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("index", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("method", sa.String(32), nullable=False),
        sa.Column("displacement", sa.Float(), nullable=True),
        sa.Column("peak_displacement", sa.Float(), nullable=True),
        sa.Column("iou_top20", sa.Float(), nullable=True),
        sa.Column("iou_t50", sa.Float(), nullable=True),
        sa.Column("pearson", sa.Float(), nullable=True),
        sa.Column("spearman", sa.Float(), nullable=True),
        sa.Column("concentration_change", sa.Float(), nullable=True),
        sa.Column("entropy_change", sa.Float(), nullable=True),
        sa.Column("extra", sa.JSON(), nullable=False),
        sa.Column("degenerate_baseline", sa.Boolean(), nullable=False),
        sa.Column("degenerate_candidate", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id", "index"],
            ["job_samples.job_id", "job_samples.index"],
            name="fk_sample_metrics_job_id_job_samples",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_id", "index", "method", name="pk_sample_metrics"),
    )
    op.create_index("ix_sample_metrics_job_id_method", "sample_metrics", ["job_id", "method"])
    op.create_table(
        "reports",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("document", sa.JSON(), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["jobs.id"], name="fk_reports_job_id_jobs", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_reports"),
    )


def downgrade() -> None:
    op.drop_table("reports")
    op.drop_index("ix_sample_metrics_job_id_method", table_name="sample_metrics")
    op.drop_table("sample_metrics")
    op.drop_table("job_samples")
    op.drop_table("job_shards")
    op.drop_index("ix_jobs_created_at", table_name="jobs")
    op.drop_index("ix_jobs_status", table_name="jobs")
    op.drop_table("jobs")
    op.drop_table("datasets")
    op.drop_table("checkpoints")
