"""``/datasets``: a zip upload (extracted safely into the store) or a server path; list, get.

Either way the dataset is indexed with the same ``discover`` the workers use and every image
header is checked, so a job never starts on a dataset that cannot be read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
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
from service.problems import ProblemError, invalid, problem_responses
from service.schemas import MAX_INT, DatasetOut, DatasetPage, DatasetPathIn
from service.staging import staging_of
from service.uploads import (
    Upload,
    ZipLimits,
    check_images,
    clean_name,
    extract_zip,
    find_dataset_root,
    read_json_body,
    receive_upload,
    remove_tree,
    upload_body,
)
from training.datasets import DatasetError, DatasetIndex, content_digest, discover
from worker.store.artifacts import ArtifactStore
from worker.store.models import Dataset, new_id
from worker.store.settings import Settings

router = APIRouter(tags=["datasets"])

CREATE_BODY = upload_body(
    "zip of an ImageFolder tree or images + manifest.csv (path,label); one wrapping folder is fine",
    json_schema="DatasetPathIn",
)


@router.post(
    "/datasets",
    status_code=201,
    response_model=DatasetOut,
    summary="Register a dataset: zip upload (multipart) or server path (JSON)",
    responses=problem_responses(400, 403, 413, 415, 422),
    openapi_extra=CREATE_BODY,
)
async def create_dataset(request: Request, response: Response) -> DatasetOut:
    settings, store, sessions = settings_of(request), store_of(request), sessions_of(request)
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "application/json":
        body = _parse_path_body(await read_json_body(request))
        record = await run_in_threadpool(_from_path, body, settings, sessions)
    elif content_type == "multipart/form-data":
        owner = staging_of(request)
        staged = store.temp_path(owner.suffix(".zip"))
        try:
            upload = await receive_upload(request, staged, settings.max_upload_bytes)
            record = await run_in_threadpool(
                _from_upload, upload, settings, store, sessions, owner.prefix("dataset-")
            )
        finally:
            staged.unlink(missing_ok=True)
    else:
        raise ProblemError(
            415,
            "send multipart/form-data (a zip in 'file') or application/json ({\"path\": ...})",
            slug="unsupported-media-type",
        )
    response.headers["Location"] = f"/datasets/{record.id}"
    return DatasetOut.model_validate(record)


def _parse_path_body(raw: bytes) -> DatasetPathIn:
    try:
        return DatasetPathIn.model_validate_json(raw)
    except ValidationError as exc:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in exc.errors()]
        raise RequestValidationError(errors) from None


# --------------------------------------------------------------------------- upload


def _from_upload(
    upload: Upload,
    settings: Settings,
    store: ArtifactStore,
    sessions: sessionmaker[Session],
    stage_prefix: str = "dataset-",
) -> Dataset:
    """Extract into a staging folder, index and check it, then rename it into place."""
    dataset_id = new_id()
    with store.staging_dir(stage_prefix) as stage:
        data = stage / "data"
        data.mkdir()
        extract_zip(upload.path, data, ZipLimits.of(settings))
        root = find_dataset_root(data)
        index = _index(root, "file", hide=data)
        _check_images(index, settings, "file")
        summary = _summary(index)  # reads file sizes: before the files move
        summary["content_sha256"] = content_digest(root)
        final = store.dataset_dir(dataset_id)
        store.move_into(data, final)
    root_in_store = final.joinpath(root.relative_to(data))
    name = clean_name(upload.fields.get("name"))
    if not name and upload.filename:
        name = clean_name(Path(upload.filename.replace("\\", "/")).stem)
    try:
        return _insert(
            sessions,
            dataset_id,
            name or dataset_id,
            "upload",
            store.relative(root_in_store),
            summary,
        )
    except BaseException:
        remove_tree(final)
        raise


# --------------------------------------------------------------------------- server path


def _from_path(body: DatasetPathIn, settings: Settings, sessions: sessionmaker[Session]) -> Dataset:
    root = _allowed_path(body.path, settings.data_roots)
    index = _index(root, "body.path")
    _check_images(index, settings, "body.path")
    name = body.name or root.name or "dataset"
    return _insert(sessions, new_id(), name, "path", str(root), _summary(index))


def _allowed_path(text: str, roots: list[str]) -> Path:
    """The path with symlinks and '..' resolved, if it lies under an allowed root."""
    if not roots:
        raise ProblemError(
            403,
            "server paths are disabled (no data roots configured)",
            slug="forbidden-path",
            errors=[("body.path", "server paths disabled")],
        )
    path = Path(text)
    if not path.is_absolute():
        raise invalid("body.path", "must be an absolute path")
    try:
        resolved = path.resolve(strict=False)
    except (OSError, RuntimeError, ValueError) as exc:
        raise invalid("body.path", f"cannot be resolved ({exc})") from None
    allowed = [Path(r).expanduser().resolve() for r in roots]
    if not any(resolved == r or resolved.is_relative_to(r) for r in allowed):
        raise ProblemError(
            403,
            "the path is outside the allowed data roots",
            slug="forbidden-path",
            errors=[("body.path", "outside the allowed data roots")],
        )
    if not resolved.is_dir():
        raise invalid("body.path", "is not a directory")
    return resolved


# --------------------------------------------------------------------------- shared


def _index(root: Path, field: str, hide: Path | None = None) -> DatasetIndex:
    try:
        return discover(root, on_error="raise")
    except (DatasetError, ValueError, OSError) as exc:
        message = str(exc)
        if hide is not None:  # staging paths mean nothing to the client
            message = message.replace(f"{root}/", "").replace(str(root), "<zip root>")
            message = message.replace(f"{hide}/", "").replace(str(hide), "<zip root>")
        raise invalid(field, message) from None


def _check_images(index: DatasetIndex, settings: Settings, field: str) -> None:
    bad = check_images([s.path for s in index.samples], index.root, settings.max_image_pixels)
    if bad:
        raise ProblemError(
            422,
            f"{len(bad)}{'+' if len(bad) >= 10 else ''} unusable image(s); first: "
            f"{bad[0][0]}: {bad[0][1]}",
            slug="validation",
            title="Invalid request",
            errors=[(field, f"{path}: {reason}") for path, reason in bad],
        )


def _summary(index: DatasetIndex) -> dict[str, Any]:
    """The record's description of an index (Dataset columns)."""
    return {
        "num_samples": len(index.samples),
        "class_names": list(index.class_names),
        "class_counts": index.counts(),
        "fingerprint": index.fingerprint(),
        "skipped": [{"path": p, "reason": r} for p, r in index.skipped],
    }


def _insert(
    sessions: sessionmaker[Session],
    dataset_id: str,
    name: str,
    source: str,
    root_path: str,
    summary: dict[str, Any],
) -> Dataset:
    record = Dataset(id=dataset_id, name=name[:255], source=source, root_path=root_path, **summary)
    with sessions() as session:
        session.add(record)
        session.commit()
    return record


@router.get(
    "/datasets",
    response_model=DatasetPage,
    summary="List datasets (?content_sha256= finds uploads by content)",
    responses=problem_responses(422),
)
def list_datasets(
    session: SessionDep,
    content_sha256: Annotated[
        str | None,
        Query(
            pattern=r"^[0-9a-fA-F]{64}$",
            description="only uploads with this content digest (sha256 over sorted relative "
            "path + file sha256, as training.datasets.content_digest): a client checks before "
            "uploading",
        ),
    ] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    offset: Annotated[int, Query(ge=0, le=MAX_INT)] = 0,
) -> DatasetPage:
    digest = content_sha256.lower() if content_sha256 is not None else None
    where = Dataset.content_sha256 == digest if digest is not None else None
    return page_of(session, Dataset, DatasetOut.model_validate, DatasetPage, where, limit, offset)


@router.get(
    "/datasets/{dataset_id}",
    response_model=DatasetOut,
    summary="One dataset",
    responses=problem_responses(404),
)
def get_dataset(dataset_id: str, session: SessionDep) -> DatasetOut:
    return DatasetOut.model_validate(record_or_404(session, Dataset, dataset_id, "dataset"))
