"""Recording a checkpoint file in the store and the ``checkpoints`` table, once per sha256.

The API registers uploaded camdrift checkpoints here and a worker the ones it converted from
an import (``worker.runtime.imports``): one place decides the name, the stored path and what a
concurrent twin resolves to.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from worker.store.artifacts import ArtifactStore
from worker.store.models import Checkpoint

MAX_NAME = 255


def checkpoint_by_sha(session: Session, sha256: str) -> Checkpoint | None:
    return session.scalars(select(Checkpoint).where(Checkpoint.sha256 == sha256)).one_or_none()


def register_checkpoint(
    session: Session,
    store: ArtifactStore,
    path: Path,
    *,
    sha256: str,
    size: int,
    meta: dict[str, Any],
    name: str,
) -> tuple[Checkpoint, bool]:
    """Move the validated file ``path`` into the store and add its row; (record, created).
    The same bytes again, or a twin committed meanwhile, give the existing record."""
    existing = checkpoint_by_sha(session, sha256)
    if existing is not None:
        return existing, False
    dest = store.checkpoint_path(sha256)
    if not dest.exists():
        store.move_into(path, dest)
    record = Checkpoint(
        sha256=sha256,
        name=name[:MAX_NAME],
        arch=str(meta["arch"]),
        num_classes=int(meta["num_classes"]),
        class_names=list(meta["class_names"]),
        phase=meta.get("phase"),
        input_size=list(meta["input_size"]),
        meta=meta,
        size_bytes=size,
        storage_path=store.relative(dest),
    )
    session.add(record)
    try:
        session.commit()
    except IntegrityError:
        session.rollback()
        existing = checkpoint_by_sha(session, sha256)
        if existing is None:
            raise
        return existing, False
    return record, True
