"""Hostile-input handling for uploads: size limits, streaming multipart, safe unzip, image checks.

Everything here fails with :class:`ProblemError` (413) or :class:`Rejected` (a reason a
router turns into a 422 naming the field), and leaves nothing behind on failure.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import stat
import zipfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO, Any

from fastapi import Request
from python_multipart.exceptions import MultipartParseError
from python_multipart.multipart import MultipartParser, parse_options_header
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.problems import ProblemError, problem_response
from training.datasets import MANIFEST_NAME
from training.imageio import (
    DICOM_SUFFIXES,
    PIL_FORMATS,
    PIL_SUFFIXES,
    ImageReadError,
    read_image,
)
from worker.store.settings import Settings

JSON_BODY_LIMIT = 1 << 20  # every non-upload body
MULTIPART_OVERHEAD = 1 << 20  # headers and boundaries around the file part
TEXT_FIELD_LIMIT = 4096
COPY_CHUNK = 1 << 20
DECODE_THREADS = 4  # images decoded at once while a dataset is checked
_DRIVE = re.compile(r"^[A-Za-z]:")
_IGNORED_TOP = "__MACOSX"


class Rejected(ValueError):
    """An upload that cannot be used; ``field`` names the request part at fault."""

    def __init__(self, message: str, field: str = "file") -> None:
        super().__init__(message)
        self.field = field


def too_large(what: str, limit: int, field: str = "file") -> ProblemError:
    return ProblemError(
        413,
        f"{what} exceeds the limit of {limit} bytes",
        slug="too-large",
        title="Content Too Large",
        errors=[(field, f"larger than {limit} bytes")],
    )


# --------------------------------------------------------------------------- request size


class BodyLimitMiddleware:
    """413 for bodies over the limit: by Content-Length up front, else while reading.

    Upload routes get ``max_upload_bytes`` plus multipart overhead (their handlers enforce the
    exact file limit); every other route gets 1 MiB.
    """

    def __init__(self, app: ASGIApp, upload_limit: int, upload_paths: frozenset[str]) -> None:
        self.app = app
        self.upload_limit = upload_limit + MULTIPART_OVERHEAD
        self.upload_paths = upload_paths

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.upload_limit if scope["path"] in self.upload_paths else JSON_BODY_LIMIT
        declared = _content_length(scope)
        if declared is not None and declared > limit:
            await problem_response(too_large("request body", limit, "body").problem())(
                scope, receive, send
            )
            return
        seen = 0

        async def counting_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise too_large("request body", limit, "body")
            return message

        await self.app(scope, counting_receive, send)


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None


async def read_json_body(request: Request, limit: int = JSON_BODY_LIMIT) -> bytes:
    """The raw body of a JSON request, refusing more than ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large("request body", limit, "body")
        chunks.append(chunk)
    return b"".join(chunks)


# --------------------------------------------------------------------------- multipart


@dataclass
class Upload:
    """A received multipart form: the file (staged in the store) and the text fields."""

    path: Path
    filename: str | None = None
    size: int = 0
    sha256: str = ""
    fields: dict[str, str] = field(default_factory=dict)


class _FormReader:
    """python-multipart callbacks writing the ``file`` part to disk, hashing as it goes."""

    def __init__(self, dest: Path, max_bytes: int, text_fields: tuple[str, ...]) -> None:
        self.dest = dest
        self.max_bytes = max_bytes
        self.text_fields = text_fields
        self.upload = Upload(path=dest)
        self._digest = hashlib.sha256()
        self._headers: dict[bytes, bytes] = {}
        self._name = b""
        self._value = b""
        self._part: str | None = None
        self._fh: IO[bytes] | None = None
        self._text = bytearray()
        self._seen_file = False

    def callbacks(self) -> dict[str, Any]:
        return {
            "on_part_begin": self._begin,
            "on_header_field": lambda d, s, e: self._add("_name", d[s:e]),
            "on_header_value": lambda d, s, e: self._add("_value", d[s:e]),
            "on_header_end": self._header_end,
            "on_headers_finished": self._headers_done,
            "on_part_data": self._data,
            "on_part_end": self._end,
        }

    def _add(self, attr: str, data: bytes) -> None:
        setattr(self, attr, getattr(self, attr) + data)

    def _begin(self) -> None:
        self._headers, self._part, self._text = {}, None, bytearray()

    def _header_end(self) -> None:
        self._headers[self._name.strip().lower()] = self._value.strip()
        self._name, self._value = b"", b""

    def _headers_done(self) -> None:
        disposition, params = parse_options_header(self._headers.get(b"content-disposition", b""))
        if disposition != b"form-data" or b"name" not in params:
            raise Rejected(
                "a multipart part lacks Content-Disposition: form-data; name=...", "body"
            )
        name = params[b"name"].decode("utf-8", "replace")
        if name == "file":
            if self._seen_file:
                raise Rejected("send exactly one file", "file")
            self._seen_file = True
            raw = params.get(b"filename")
            self.upload.filename = raw.decode("utf-8", "replace") if raw else None
            self._fh = open(self.dest, "wb")  # noqa: SIM115 - closed in _end / close()
        elif name in self.text_fields:
            if name in self.upload.fields:
                raise Rejected("given more than once", name)
        else:
            raise Rejected("unknown form field", name)
        self._part = name

    def _data(self, data: bytes, start: int, end: int) -> None:
        chunk = data[start:end]
        if self._part == "file" and self._fh is not None:
            self.upload.size += len(chunk)
            if self.upload.size > self.max_bytes:
                raise too_large("the uploaded file", self.max_bytes)
            self._digest.update(chunk)
            self._fh.write(chunk)
        elif self._part is not None:
            self._text += chunk
            if len(self._text) > TEXT_FIELD_LIMIT:
                raise Rejected(f"longer than {TEXT_FIELD_LIMIT} bytes", self._part)

    def _end(self) -> None:
        if self._part == "file":
            self.close()
        elif self._part is not None:
            try:
                self.upload.fields[self._part] = self._text.decode("utf-8")
            except UnicodeDecodeError:
                raise Rejected("not UTF-8 text", self._part) from None
        self._part = None

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None

    def finish(self) -> Upload:
        if not self._seen_file:
            raise Rejected("Field required", "file")
        self.upload.sha256 = self._digest.hexdigest()
        return self.upload


async def receive_upload(
    request: Request, dest: Path, max_bytes: int, text_fields: tuple[str, ...] = ("name",)
) -> Upload:
    """Stream a multipart/form-data body to ``dest`` (one ``file`` part) within ``max_bytes``.

    The caller owns ``dest`` and deletes it; on any error here it is already deleted.
    """
    content_type, params = parse_options_header(request.headers.get("content-type", ""))
    if content_type != b"multipart/form-data" or not params.get(b"boundary"):
        raise ProblemError(
            415, "send multipart/form-data with a boundary", slug="unsupported-media-type"
        )
    reader = _FormReader(dest, max_bytes, text_fields)
    parser = MultipartParser(params[b"boundary"], reader.callbacks())
    try:
        async for chunk in request.stream():
            parser.write(chunk)
        parser.finalize()
        return reader.finish()
    except MultipartParseError as exc:
        dest.unlink(missing_ok=True)
        raise ProblemError(
            400,
            f"malformed multipart body ({exc})",
            slug="malformed-body",
            errors=[("body", str(exc))],
        ) from None
    except BaseException:
        dest.unlink(missing_ok=True)
        raise
    finally:
        reader.close()


# --------------------------------------------------------------------------- zip


_ZIP_UTF8 = 0x800  # general purpose flag bit 11: the name is UTF-8


def _decoded_name(info: zipfile.ZipInfo) -> str:
    """The entry's name as its writer meant it. Without the UTF-8 flag Python decodes names
    as cp437, but ``zip -r`` on Linux and macOS writes UTF-8 without setting it: a name whose
    bytes are valid UTF-8 is read as UTF-8 (as unzip and 7-Zip do), so an uploaded
    ``Zürich.png`` keeps its name and the dataset's digest equals the local folder's."""
    if info.flag_bits & _ZIP_UTF8 or info.filename.isascii():
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename  # really cp437 (old DOS tools)


def _entry_name(info: zipfile.ZipInfo) -> PurePosixPath | None:
    """The entry's safe relative path; None for entries to skip; Rejected for unsafe ones."""
    raw = _decoded_name(info)
    name = raw.replace("\\", "/")
    if "\x00" in name:
        raise Rejected(f"zip entry {raw!r}: NUL in the name")
    if name.startswith("/") or _DRIVE.match(name):
        raise Rejected(f"zip entry {raw!r}: absolute path (zip slip)")
    path = PurePosixPath(name)
    if ".." in path.parts:
        raise Rejected(f"zip entry {raw!r}: '..' in the path (zip slip)")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise Rejected(f"zip entry {raw!r}: symbolic links are not allowed")
    if info.flag_bits & 0x1:
        raise Rejected(f"zip entry {raw!r}: encrypted entries are not supported")
    if not path.parts or path.parts[0] == _IGNORED_TOP:
        return None
    return path


@dataclass(frozen=True)
class ZipLimits:
    """What one dataset zip may extract to: entries, bytes (the smaller of ``max_bytes`` and
    ``max_ratio`` x the zip's size) and the free space the store keeps (``min_free_bytes``)."""

    max_entries: int
    max_bytes: int
    max_ratio: float | None = None
    min_free_bytes: int = 0

    @classmethod
    def of(cls, settings: Settings) -> ZipLimits:
        return cls(
            settings.max_zip_entries,
            settings.max_unzipped_bytes,
            settings.max_zip_ratio,
            settings.min_free_disk_bytes,
        )

    def bound(self, archive_bytes: int) -> tuple[int, str]:
        """(most bytes to extract, why: the words a refusal uses)."""
        cap = (self.max_bytes, f"the limit of {self.max_bytes} bytes")
        if self.max_ratio is None:
            return cap
        by_ratio = int(self.max_ratio * max(archive_bytes, 1))
        if by_ratio >= self.max_bytes:
            return cap
        return by_ratio, (
            f"a compression ratio over {self.max_ratio:g} for the {archive_bytes}-byte zip"
        )


def extract_zip(archive: Path, dest: Path, limits: ZipLimits) -> int:
    """Safely extract ``archive`` into the (existing, empty) folder ``dest``; returns bytes.

    Refuses zip slip (absolute, drive, '..'), symlinks, encrypted entries, more than
    ``max_entries`` entries, and more than the byte bound -- declared sizes are added up
    first, member by member, so a bomb is refused at the first member over the bound before a
    byte is written, and real bytes are counted while streaming (declared sizes can lie).
    Keeps ``min_free_bytes`` free on the store's disk (507). On any refusal, what was written
    is removed.
    """
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as exc:
        raise Rejected(f"not a zip archive ({exc})") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise Rejected(
                f"zip has {len(infos)} entries, more than the limit {limits.max_entries}"
            )
        bound, why = limits.bound(archive.stat().st_size)
        planned = _plan(infos, bound, why)
        declared = sum(info.file_size for info, _ in planned)
        _check_free(dest, declared, limits.min_free_bytes)
        try:
            return _extract(zf, planned, dest.resolve(), bound, why, limits.min_free_bytes)
        except BaseException:
            _empty(dest)
            raise


def _plan(
    infos: list[zipfile.ZipInfo], bound: int, why: str
) -> list[tuple[zipfile.ZipInfo, PurePosixPath]]:
    """The entries to extract, each checked, refusing at the first whose declared size takes
    the total over ``bound``."""
    planned: dict[str, tuple[zipfile.ZipInfo, PurePosixPath]] = {}
    declared = 0
    for info in infos:
        declared += info.file_size
        if declared > bound:
            raise Rejected(
                f"zip entry {info.filename!r}: the zip declares more than {bound} bytes "
                f"uncompressed ({why})"
            )
        path = _entry_name(info)
        if path is None:
            continue
        key = path.as_posix().rstrip("/")
        if key in planned and not info.is_dir():
            raise Rejected(f"zip entry {info.filename!r} appears twice")
        planned[key] = (info, path)
    return list(planned.values())


def _extract(
    zf: zipfile.ZipFile,
    planned: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    root: Path,
    bound: int,
    why: str,
    min_free: int,
) -> int:
    total = 0
    for info, path in planned:
        target = root.joinpath(*path.parts)
        if not target.resolve().is_relative_to(root):
            raise Rejected(f"zip entry {info.filename!r}: escapes the archive root")
        try:
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise Rejected(f"zip entry {info.filename!r}: conflicting paths ({exc})") from None
        total = _copy_entry(zf, info, target, total, bound, why, min_free)
    return total


def _copy_entry(
    zf: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    total: int,
    bound: int,
    why: str,
    min_free: int,
) -> int:
    written = 0
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while block := src.read(COPY_CHUNK):
                written += len(block)
                total += len(block)
                if written > info.file_size:
                    raise Rejected(f"zip entry {info.filename!r}: larger than it declares")
                if total > bound:
                    raise Rejected(
                        f"zip entry {info.filename!r}: the zip expands beyond {bound} bytes ({why})"
                    )
                _check_free(target.parent, len(block), min_free)
                out.write(block)
    except (
        zipfile.BadZipFile,
        zipfile.LargeZipFile,
        NotImplementedError,
        OSError,
        EOFError,
        RuntimeError,
        ValueError,
    ) as exc:
        if isinstance(exc, Rejected):
            raise
        raise Rejected(f"zip entry {info.filename!r}: cannot be extracted ({exc})") from None
    return total


def _check_free(folder: Path, more: int, min_free: int) -> None:
    """507 when writing ``more`` bytes under ``folder`` would leave less than ``min_free``."""
    if min_free <= 0:
        return
    free = shutil.disk_usage(folder).free
    if free - more < min_free:
        raise ProblemError(
            507,
            f"the server's store has {free} bytes free and keeps {min_free}: the upload "
            f"needs {more} more; retry later or ask the operator to free space",
            slug="insufficient-storage",
        )


def _empty(folder: Path) -> None:
    """Remove everything under ``folder`` (a refused extraction's partial output)."""
    for child in folder.iterdir() if folder.is_dir() else ():
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child, ignore_errors=True)
        else:
            child.unlink(missing_ok=True)


def find_dataset_root(folder: Path) -> Path:
    """The dataset root inside an extracted zip: itself, or one folder that wraps it all.

    A single top-level folder is a wrapper when it holds ``manifest.csv`` or holds
    sub-folders and no images of its own (a lone class folder holds images).
    """
    if (folder / MANIFEST_NAME).is_file():
        return folder
    visible = [e for e in folder.iterdir() if not e.name.startswith(".")]
    if len(visible) != 1 or not visible[0].is_dir() or visible[0].is_symlink():
        return folder
    inner = visible[0]
    if (inner / MANIFEST_NAME).is_file():
        return inner
    children = [e for e in inner.iterdir() if not e.name.startswith(".")]
    has_dirs = any(e.is_dir() for e in children)
    has_files = any(e.is_file() for e in children)
    return inner if has_dirs and not has_files else folder


def clean_name(value: str | None, limit: int = 255) -> str:
    """A display name from user text: control characters (NUL included) dropped, trimmed."""
    if not value:
        return ""
    return "".join(ch for ch in value if ch.isprintable()).strip()[:limit]


def remove_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


# --------------------------------------------------------------------------- images


def check_image(path: Path, max_pixels: int) -> str | None:
    """Why ``path`` is not a usable image (not an image, corrupt header, too large, pixels
    that do not decode), or None.

    The header is checked first (PNG chunk CRCs, the pixel count against ``max_pixels``), so a
    bomb is refused before a pixel is decoded; then the image is decoded in full by the reader
    the workers use, so a valid header over corrupt pixels fails here, not in a job.
    """
    reason = _check_header(path, max_pixels)
    if reason is not None:
        return reason
    try:
        read_image(path)
    except ImageReadError as exc:
        return f"corrupt image: {exc.reason}"
    except MemoryError:
        return "image too large to decode"
    return None


def _check_header(path: Path, max_pixels: int) -> str | None:
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            dicom = fh.read(4) == b"DICM"
    except OSError as exc:
        return f"cannot open file ({exc})"
    suffix = path.suffix.lower()
    if dicom or suffix in DICOM_SUFFIXES:
        return _check_dicom(path, max_pixels, force=not dicom)
    if suffix in PIL_SUFFIXES:
        return _check_pil(path, max_pixels)
    return f"not an image (unsupported suffix {suffix!r})"


def _check_pil(path: Path, max_pixels: int) -> str | None:
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path, formats=PIL_FORMATS) as img:
                width, height = img.size
                if width * height > max_pixels:
                    return _bomb(width, height, max_pixels)
                img.verify()
    except Image.DecompressionBombError as exc:
        return f"image too large, possible decompression bomb ({exc})"
    except Image.UnidentifiedImageError:
        return "not an image (no PNG/JPEG/TIFF data)"
    except Exception as exc:
        return f"corrupt image ({exc})"
    return None


def _check_dicom(path: Path, max_pixels: int, *, force: bool) -> str | None:
    try:
        import pydicom

        ds = pydicom.dcmread(path, defer_size=1024, force=force)
    except Exception as exc:
        return f"not a readable DICOM file ({exc})"
    if not any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
        return "DICOM file without pixel data"
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return "DICOM file without valid Rows/Columns"
    if rows * cols * frames > max_pixels:
        return _bomb(cols, rows * frames, max_pixels)
    return None


def _bomb(width: int, height: int, limit: int) -> str:
    return (
        f"image too large ({width}x{height} = {width * height} pixels > {limit}; "
        "possible decompression bomb)"
    )


def check_images(
    paths: list[Path], root: Path, max_pixels: int, threads: int = DECODE_THREADS, report: int = 10
) -> list[tuple[str, str]]:
    """(relative path, reason) for the first ``report`` bad images, in path order.

    ``threads`` images are decoded at once (Pillow and pydicom release the GIL), which also
    bounds the memory: at most ``threads`` decoded images of ``max_pixels`` each.
    """
    with ThreadPoolExecutor(max_workers=threads) as pool:
        reasons = list(pool.map(lambda p: check_image(p, max_pixels), paths))
    bad = []
    for path, reason in zip(paths, reasons, strict=True):
        if reason is not None:
            try:
                rel = path.relative_to(root).as_posix()
            except ValueError:
                rel = path.name
            bad.append((rel, reason))
            if len(bad) >= report:
                break
    return bad


def upload_body(
    description: str,
    json_schema: str | None = None,
    extra_fields: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The OpenAPI request body of an upload route: multipart ``file`` (+ optional ``name``
    and ``extra_fields``: name -> description), and, for routes that also take JSON, that
    schema (a component name)."""
    content: dict[str, Any] = {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {"type": "string", "format": "binary", "description": description},
                    "name": {"type": "string", "maxLength": 255},
                    **{
                        f: {"type": "string", "description": d}
                        for f, d in (extra_fields or {}).items()
                    },
                },
            }
        }
    }
    if json_schema is not None:
        content["application/json"] = {"schema": {"$ref": f"#/components/schemas/{json_schema}"}}
    return {"requestBody": {"required": True, "content": content}}
