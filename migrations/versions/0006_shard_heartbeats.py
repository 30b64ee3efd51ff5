"""job_shards.heartbeat_at: a running shard's heartbeat, so a lost one is re-sent in seconds

Before, a shard whose message or worker was lost waited for the sweeper's stale window (the
broker's visibility timeout, an hour by default). A worker now renews ``heartbeat_at`` while it
runs a shard; the sweeper re-sends a pending shard whose heartbeat stopped, and never one that
still beats.

Revision ID: 0006_shard_heartbeats
Revises: 0005_sample_values
Create Date: 2026-12-02 19:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006_shard_heartbeats"
down_revision: str | Sequence[str] | None = "0005_sample_values"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job_shards") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job_shards") as batch:
        batch.drop_column("heartbeat_at")
