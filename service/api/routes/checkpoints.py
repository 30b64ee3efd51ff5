"""``/checkpoints``: upload (validated from the safetensors header, no torch), list, get."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service.api.deps import (
    SessionDep,
    page_of,
    record_or_404,
    sessions_of,
    settings_of,
    store_of,
)
from service.problems import invalid, problem_responses
from service.schemas import MAX_INT, CheckpointOut, CheckpointPage
from service.staging import staging_of
from service.uploads import Upload, clean_name, receive_upload, upload_body
from training.checkpoint_format import CheckpointError, metadata_from_header, read_header
from worker.store.artifacts import ArtifactStore
from worker.store.models import Checkpoint

router = APIRouter(tags=["checkpoints"])

UPLOAD_BODY = upload_body("a camdrift .safetensors checkpoint")


@router.post(
    "/checkpoints",
    status_code=201,
    response_model=CheckpointOut,
    summary="Upload a checkpoint (same bytes again: the existing record, 200)",
    responses={
        200: {"model": CheckpointOut, "description": "already stored (same sha256)"},
        **problem_responses(400, 413, 415, 422),
    },
    openapi_extra=UPLOAD_BODY,
)
async def upload_checkpoint(request: Request, response: Response) -> CheckpointOut:
    settings, store = settings_of(request), store_of(request)
    staged = store.temp_path(staging_of(request).suffix(".upload"))
    try:
        upload = await receive_upload(request, staged, settings.max_upload_bytes)
        record, created = await run_in_threadpool(_register, upload, store, sessions_of(request))
    finally:
        staged.unlink(missing_ok=True)
    response.status_code = 201 if created else 200
    return CheckpointOut.model_validate(record)


def _register(
    upload: Upload, store: ArtifactStore, sessions: sessionmaker[Session]
) -> tuple[Checkpoint, bool]:
    """Validate, then store once per sha256; a concurrent twin resolves to one record."""
    try:
        header = read_header(upload.path)
        meta = metadata_from_header(header, "file")
    except CheckpointError as exc:
        raise invalid("file", str(exc).removeprefix("file: ")) from None
    name = clean_name(upload.fields.get("name")) or _default_name(upload, meta)
    with sessions() as session:
        existing = _by_sha(session, upload.sha256)
        if existing is not None:
            return existing, False
        dest = store.checkpoint_path(upload.sha256)
        if not dest.exists():
            store.move_into(upload.path, dest)
        record = Checkpoint(
            sha256=upload.sha256,
            name=name[:255],
            arch=str(meta["arch"]),
            num_classes=int(meta["num_classes"]),
            class_names=list(meta["class_names"]),
            phase=meta.get("phase"),
            input_size=list(meta["input_size"]),
            meta=meta,
            size_bytes=upload.size,
            storage_path=store.relative(dest),
        )
        session.add(record)
        try:
            session.commit()
        except IntegrityError:
            session.rollback()
            existing = _by_sha(session, upload.sha256)
            if existing is None:
                raise
            return existing, False
        return record, True


def _default_name(upload: Upload, meta: dict) -> str:
    if upload.filename:
        return clean_name(Path(upload.filename.replace("\\", "/")).stem) or meta["arch"]
    return f"{meta['arch']}-{meta.get('phase') or 'checkpoint'}"


def _by_sha(session: Session, sha256: str) -> Checkpoint | None:
    return session.scalars(select(Checkpoint).where(Checkpoint.sha256 == sha256)).one_or_none()


@router.get(
    "/checkpoints",
    response_model=CheckpointPage,
    summary="List checkpoints (?sha256= finds one by content hash)",
    responses=problem_responses(422),
)
def list_checkpoints(
    session: SessionDep,
    sha256: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9a-fA-F]{64}$",
            description="only the checkpoint with this content hash (0 or 1 item): "
            "a client checks before uploading",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> CheckpointPage:
    where = Checkpoint.sha256 == sha256.lower() if sha256 is not None else None
    return page_of(
        session, Checkpoint, CheckpointOut.model_validate, CheckpointPage, where, limit, offset
    )


@router.get(
    "/checkpoints/{checkpoint_id}",
    response_model=CheckpointOut,
    summary="One checkpoint",
    responses=problem_responses(404),
)
def get_checkpoint(checkpoint_id: str, session: SessionDep) -> CheckpointOut:
    return CheckpointOut.model_validate(
        record_or_404(session, Checkpoint, checkpoint_id, "checkpoint")
    )
