"""The import task: an uploaded weights file becomes a camdrift checkpoint on a worker.

``POST /checkpoints`` with a plain file and its fields stores the file and a
``checkpoint_imports`` row (queued) and enqueues :data:`IMPORT`. Here the worker fits the
weights to the arch (``training.importing``: weights-only, prefixes found, mismatches named),
registers the result as a :class:`Checkpoint` and links it, or records why it could not. The
stored error names the upload by its file name, never by a server path. A redelivered message
finds the row finished and does nothing. Torch is imported only when the task runs.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import update

from worker.catalog import JobStatus
from worker.runtime import redact
from worker.store import session_scope
from worker.store.checkpoints import register_checkpoint
from worker.store.models import CheckpointImport, utcnow
from worker.store.state import MAX_ERROR_CHARS

log = logging.getLogger("camdrift.imports")
IMPORT = "camdrift.import_checkpoint"
ACTIVE = (JobStatus.QUEUED, JobStatus.RUNNING)


def import_checkpoint(ctx, import_id: str) -> None:
    """queued -> running -> succeeded (``checkpoint_id`` set) or failed (``error`` set)."""
    with session_scope(ctx.sessions) as s:
        row = s.get(CheckpointImport, import_id)
        if row is None or row.status not in ACTIVE or row.storage_path is None:
            log.info("import skipped import=%s (finished or unknown)", import_id)
            return
        s.execute(
            update(CheckpointImport)
            .where(CheckpointImport.id == import_id)
            .values(status=JobStatus.RUNNING)
        )
        staged = ctx.store.resolve(row.storage_path)
        fields, filename, name = dict(row.fields), row.filename, row.name
    log.info("import started import=%s file=%r arch=%s", import_id, filename, fields.get("arch"))
    with ctx.store.staging_dir("import-") as tmp:
        out = tmp / "checkpoint.safetensors"
        try:
            done = _convert(staged, out, fields, filename)
        except Exception as exc:  # the user's file or fields: recorded, the worker lives on
            if not isinstance(exc, ValueError):
                log.exception("import crashed import=%s", import_id)
            fail_import(ctx, import_id, _public(ctx, str(exc), staged, filename))
            return
        with session_scope(ctx.sessions) as s:
            record, _ = register_checkpoint(
                s,
                ctx.store,
                out,
                sha256=done.sha256,
                size=out.stat().st_size,
                meta=done.meta,
                name=name or Path(filename).stem or str(done.meta["arch"]),
            )
            _finish(s, import_id, status=JobStatus.SUCCEEDED, checkpoint_id=record.id)
    staged.unlink(missing_ok=True)
    log.info("import succeeded import=%s checkpoint=%s", import_id, record.id)


def fail_import(ctx, import_id: str, error: str) -> bool:
    """Mark an unfinished import failed with ``error``; its upload is removed."""
    with session_scope(ctx.sessions) as s:
        row = s.get(CheckpointImport, import_id)
        if row is None or row.status not in ACTIVE:
            return False
        if row.storage_path:
            ctx.store.resolve(row.storage_path).unlink(missing_ok=True)
        _finish(s, import_id, status=JobStatus.FAILED, error=error[:MAX_ERROR_CHARS])
    log.warning("import failed import=%s error=%r", import_id, error[:300])
    return True


def _convert(staged: Path, out: Path, fields: dict, filename: str):
    from training.import_request import ImportRequest
    from training.importing import import_checkpoint as run_import

    return run_import(staged, out, ImportRequest.from_fields(fields), source_name=filename)


def _finish(session, import_id: str, **values) -> None:
    session.execute(
        update(CheckpointImport)
        .where(CheckpointImport.id == import_id)
        .values(storage_path=None, finished_at=utcnow(), **values)
    )


def _public(ctx, message: str, staged: Path, filename: str) -> str:
    """The error as the uploader may read it: their file's name, no server paths."""
    roots = [(ctx.store.root, redact.STORE), *((r, redact.DATA) for r in ctx.settings.data_roots)]
    return redact.redact(message, redact.file_labels(staged, filename), roots)
