"""sample_values without a foreign key: shards bulk-load it, and the per-row check was the cost

Each value row's foreign-key check (a lookup and a KEY SHARE lock on its ``sample_metrics``
row) cost more than storing the row: a 1,000-image shard's ~34,000 values took 0.37 s to store
with it and 0.24 s without, and a 20,000-image job's consistency values 0.9 s of COPY. The
values of a job are written and deleted only by ``worker.store.rows`` (``write_rows`` inside
the transaction that writes their samples, ``delete_rows`` before the samples it replaces), so
the key adds no protection the one writer does not give.

Revision ID: 0008_sample_values_bulk
Revises: 0007_checkpoint_imports
Create Date: 2026-12-07 01:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0008_sample_values_bulk"
down_revision: str | Sequence[str] | None = "0007_checkpoint_imports"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

FK_NAME = "fk_sample_values_job_id_sample_metrics"


def upgrade() -> None:
    with op.batch_alter_table("sample_values") as batch:
        batch.drop_constraint(FK_NAME, type_="foreignkey")


def downgrade() -> None:
    with op.batch_alter_table("sample_values") as batch:
        batch.create_foreign_key(
            FK_NAME,
            "sample_metrics",
            ["job_id", "index", "method"],
            ["job_id", "index", "method"],
            ondelete="CASCADE",
        )
