"""checkpoint_imports: weights files trained elsewhere, converted by a worker

``POST /checkpoints`` with a plain ``torch.save`` / Lightning / safetensors file and its form
fields (arch, class_names, ...) stores the file and one row here; a worker fits the weights to
the arch, writes a camdrift checkpoint and links it (``checkpoint_id``), or records why not.

Revision ID: 0007_checkpoint_imports
Revises: 0006_shard_heartbeats
Create Date: 2026-12-04 19:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007_checkpoint_imports"
down_revision: str | Sequence[str] | None = "0006_shard_heartbeats"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "checkpoint_imports",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("request_key", sa.String(64), nullable=False),
        sa.Column("source_sha256", sa.String(64), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("name", sa.String(255), nullable=True),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("checkpoint_id", sa.String(32), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("storage_path", sa.String(1024), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["checkpoint_id"],
            ["checkpoints.id"],
            name="fk_checkpoint_imports_checkpoint_id_checkpoints",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoint_imports"),
        sa.UniqueConstraint("request_key", name="uq_checkpoint_imports_request_key"),
    )


def downgrade() -> None:
    op.drop_table("checkpoint_imports")
