"""datasets: the content digest of uploads, so clients look a dataset up instead of re-sending

Revision ID: 0004_dataset_content
Revises: 0003_trajectories
Create Date: 2026-11-26 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004_dataset_content"
down_revision: str | Sequence[str] | None = "0003_trajectories"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.add_column(sa.Column("content_sha256", sa.String(64), nullable=True))
        batch.create_index("ix_datasets_content_sha256", ["content_sha256"])


def downgrade() -> None:
    with op.batch_alter_table("datasets") as batch:
        batch.drop_index("ix_datasets_content_sha256")
        batch.drop_column("content_sha256")
