"""``/checkpoints``: upload (validated from the safetensors header, no torch), list, get;
``/checkpoint-imports``: weights files trained elsewhere, converted by a worker.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from service import dispatch
from service.api.deps import (
    SessionDep,
    page_of,
    record_or_404,
    sessions_of,
    settings_of,
    store_of,
)
from service.problems import ProblemError, invalid, problem_responses
from service.schemas import (
    MAX_INT,
    CheckpointImportOut,
    CheckpointImportPage,
    CheckpointOut,
    CheckpointPage,
    Links,
)
from service.staging import staging_of
from service.uploads import Upload, clean_name, receive_upload, upload_body
from training.checkpoint_format import (
    META_KEY,
    CheckpointError,
    metadata_from_header,
    read_header,
)
from training.import_request import (
    IMPORT_FIELDS,
    ImportFieldError,
    ImportRequest,
    request_from_form,
    weights_suffix,
)
from worker.catalog import JobStatus
from worker.store import Settings
from worker.store.artifacts import ArtifactStore
from worker.store.checkpoints import register_checkpoint
from worker.store.models import Checkpoint, CheckpointImport

router = APIRouter(tags=["checkpoints"])
log = logging.getLogger("camdrift.api")

IMPORT_FIELD_HELP = {
    "arch": "import: timm/<name>, torchvision/<name> or a zoo name",
    "class_names": "import: class names in logit order, comma-separated or a JSON array",
    "input_size": "import: input side in pixels, or H,W (default: the arch's)",
    "in_chans": "import: input channels, 1-4 (default: read from the stem's weights)",
    "mean": "import: normalisation mean, one value or one per channel",
    "std": "import: normalisation std, one value or one per channel",
    "phase": "import: tl, ft or other",
    "multi_label": "import: true for a sigmoid (multi-label) head",
    "resize": "import: how images met its input in training: stretch, letterbox or crop",
    "window": "import: its fixed intensity window low,high (fractions of the range, 0..1)",
}
assert tuple(IMPORT_FIELD_HELP) == IMPORT_FIELDS
UPLOAD_BODY = upload_body(
    "a camdrift .safetensors checkpoint; or a weights file trained elsewhere (.pt, .pth, "
    ".bin, .ckpt, .safetensors: a plain state dict, Lightning, DataParallel) with the form "
    "fields arch and class_names (and optionally input_size, in_chans, mean, std, phase): "
    "a worker imports it (202, poll the import)",
    extra_fields=IMPORT_FIELD_HELP,
)
NOT_OURS = (
    "not a camdrift checkpoint ({reason}); a weights file trained elsewhere is imported "
    "when arch and class_names come with it"
)


@router.post(
    "/checkpoints",
    status_code=201,
    response_model=CheckpointOut | CheckpointImportOut,
    summary="Upload a checkpoint (same bytes again: the existing record, 200), or a weights "
    "file to import (202 + Location of the import)",
    responses={
        200: {"model": CheckpointOut, "description": "already stored (same sha256)"},
        202: {"model": CheckpointImportOut, "description": "import queued: poll links.self"},
        **problem_responses(400, 413, 415, 422, 503),
    },
    openapi_extra=UPLOAD_BODY,
)
async def upload_checkpoint(
    request: Request, response: Response
) -> CheckpointOut | CheckpointImportOut:
    settings, store = settings_of(request), store_of(request)
    staged = store.temp_path(staging_of(request).suffix(".upload"))
    try:
        upload = await receive_upload(
            request, staged, settings.max_upload_bytes, text_fields=("name", *IMPORT_FIELDS)
        )
        try:
            wanted = request_from_form(upload.fields)
        except ImportFieldError as exc:
            raise invalid(exc.field, exc.reason) from None
        if wanted is not None:
            row, created = await run_in_threadpool(
                _queue_import, upload, wanted, store, sessions_of(request), settings
            )
            response.status_code = 202 if created else 200
            response.headers["Location"] = f"/checkpoint-imports/{row.id}"
            return import_out(row)
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
    except CheckpointError as exc:
        raise invalid("file", NOT_OURS.format(reason=exc)) from None
    if META_KEY not in header["__metadata__"]:
        raise invalid(
            "file", NOT_OURS.format(reason="a safetensors file without camdrift metadata")
        )
    try:
        meta = metadata_from_header(header, "file")
    except CheckpointError as exc:
        raise invalid("file", str(exc).removeprefix("file: ")) from None
    name = clean_name(upload.fields.get("name")) or _default_name(upload, meta)
    with sessions() as session:
        return register_checkpoint(
            session,
            store,
            upload.path,
            sha256=upload.sha256,
            size=upload.size,
            meta=meta,
            name=name,
        )


def _default_name(upload: Upload, meta: dict) -> str:
    if upload.filename:
        return clean_name(Path(upload.filename.replace("\\", "/")).stem) or meta["arch"]
    return f"{meta['arch']}-{meta.get('phase') or 'checkpoint'}"


# --------------------------------------------------------------------------- imports


def import_out(row: CheckpointImport) -> CheckpointImportOut:
    return CheckpointImportOut.model_validate(
        {
            **{c: getattr(row, c) for c in CheckpointImportOut.model_fields if c != "links"},
            "links": Links(
                self=f"/checkpoint-imports/{row.id}",
                **_checkpoint_link(row),
            ),
        }
    )


def _checkpoint_link(row: CheckpointImport) -> dict[str, str]:
    return {"checkpoint": f"/checkpoints/{row.checkpoint_id}"} if row.checkpoint_id else {}


def _queue_import(
    upload: Upload,
    wanted: ImportRequest,
    store: ArtifactStore,
    sessions: sessionmaker[Session],
    settings: Settings,
) -> tuple[CheckpointImport, bool]:
    """Keep the file and one import row per (bytes, fields), and hand it to a worker; the
    same upload again answers the existing import (a failed one is tried again)."""
    try:
        suffix = weights_suffix(upload.path, upload.filename)
    except ImportFieldError as exc:
        raise invalid(exc.field, exc.reason) from None
    fields = wanted.to_fields()
    key = hashlib.sha256(
        f"{upload.sha256}\n{json.dumps(fields, sort_keys=True)}".encode()
    ).hexdigest()
    sent = Path((upload.filename or "").replace("\\", "/")).name
    filename = clean_name(sent) or f"upload{suffix}"
    with sessions() as session:
        row = session.scalars(
            select(CheckpointImport).where(CheckpointImport.request_key == key)
        ).one_or_none()
        if row is not None and row.status != JobStatus.FAILED:
            return row, False
        dest = store.import_path(key, suffix)
        store.move_into(upload.path, dest)
        if row is None:
            row = CheckpointImport(
                request_key=key,
                source_sha256=upload.sha256,
                filename=filename,
                name=clean_name(upload.fields.get("name")) or None,
                fields=fields,
                size_bytes=upload.size,
            )
            session.add(row)
        row.status, row.error, row.finished_at = JobStatus.QUEUED, None, None
        row.storage_path = store.relative(dest)
        try:
            session.commit()
        except IntegrityError:  # a twin upload committed first: answer it
            session.rollback()
            return session.scalars(
                select(CheckpointImport).where(CheckpointImport.request_key == key)
            ).one(), False
        session.refresh(row)
        try:
            dispatch.submit_import(settings, row.id)
        except Exception as exc:
            log.error("import_submit_failed import=%s error=%s", row.id, type(exc).__name__)
            dest.unlink(missing_ok=True)
            row.status, row.error, row.storage_path = JobStatus.FAILED, "broker unavailable", None
            session.commit()
            raise ProblemError(
                503,
                "the import could not be queued (broker unavailable); upload it again later",
                slug="broker-unavailable",
                title="Service Unavailable",
                headers={"Retry-After": "30"},
            ) from None
        return row, True


@router.get(
    "/checkpoint-imports",
    response_model=CheckpointImportPage,
    summary="List checkpoint imports, newest first",
    responses=problem_responses(422),
)
def list_imports(
    session: SessionDep,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> CheckpointImportPage:
    return page_of(session, CheckpointImport, import_out, CheckpointImportPage, None, limit, offset)


@router.get(
    "/checkpoint-imports/{import_id}",
    response_model=CheckpointImportOut,
    summary="One checkpoint import: its status, then its checkpoint or its error",
    responses=problem_responses(404),
)
def get_import(import_id: str, session: SessionDep) -> CheckpointImportOut:
    return import_out(record_or_404(session, CheckpointImport, import_id, "checkpoint import"))


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
