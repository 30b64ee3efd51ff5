"""trajectories: each intermediate checkpoint's class probabilities per sample

Revision ID: 0003_trajectories
Revises: 0002_studies
Create Date: 2026-11-26 16:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003_trajectories"
down_revision: str | Sequence[str] | None = "0002_studies"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_samples") as batch:
        batch.add_column(sa.Column("probs_trajectory", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_samples") as batch:
        batch.drop_column("probs_trajectory")
