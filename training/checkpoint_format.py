"""The checkpoint file format, readable without torch (the API process validates uploads here).

A camdrift checkpoint is a ``.safetensors`` file: an 8-byte little-endian header length, a
JSON header naming every tensor (dtype, shape, byte offsets) plus ``__metadata__``, then the
raw bytes; ``safetensors.safe_open`` reads and validates the header. Our metadata lives under
the ``camdrift`` key as a JSON string (docs/architecture.md, "Checkpoints").

Everything in a header is hostile until checked: its size is bounded before it is read, its
nesting depth before ``json.loads`` sees it (a document 100k levels deep must not recurse), and
every field the API stores or a worker uses is checked for type and range, so a bad file is a
:class:`CheckpointError` naming the field (the API's 422), never a crash later.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
from safetensors import SafetensorError, safe_open

from training.resize import RESIZE_POLICIES

META_KEY = "camdrift"
REQUIRED_META = ("arch", "num_classes", "class_names", "input_size")

MAX_HEADER_BYTES = 8 << 20  # the whole JSON header: tensor table + __metadata__
MAX_HEADER_DEPTH = 4  # {name: {"shape": [...]}} is 3 deep
MAX_METADATA_BYTES = 64 << 10  # __metadata__ as json.dumps writes it: every GET echoes it
MAX_META_DEPTH = 16  # inside the camdrift JSON (train_metrics, versions, ...)
MIN_INPUT_SIDE = 8  # pixels; each side of input_size [H, W]
MAX_INPUT_SIDE = 4096  # a job allocates batch x 3 x H x W floats per model
MAX_ARCH_CHARS = 100  # the checkpoints.arch column
MAX_PHASE_CHARS = 50  # the checkpoints.phase column
MAX_CLASSES = 1000
MAX_NAME_CHARS = 255  # a class name, a target layer path
MAX_TEXT_CHARS = 128  # parent_sha256, dataset_fingerprint, created_at
MAX_CHANNELS = 4  # in_chans
# optional string fields and their longest value
OPTIONAL_TEXT = {
    "phase": MAX_PHASE_CHARS,
    "target_layer": MAX_NAME_CHARS,
    "parent_sha256": MAX_TEXT_CHARS,
    "dataset_fingerprint": MAX_TEXT_CHARS,
    "created_at": MAX_TEXT_CHARS,
}
OPTIONAL_OBJECTS = ("train_metrics", "versions")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason a person can act on; ``field`` names
    the header or metadata entry at fault when there is one (``input_size``, ``__metadata__``)."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


def _bad(field: str, reason: str, where: str | None = None) -> CheckpointError:
    prefix = f"{where}: " if where else ""
    return CheckpointError(f"{prefix}{field}: {reason}", field)


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes: how checkpoints (and dataset files) are addressed."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# --------------------------------------------------------------------------- bounded JSON

_KEEP = b'[]{}"'
_DROP = bytes(b for b in range(256) if b not in _KEEP)
_NESTING = bytes.maketrans(b"[]{}", b"()()")
_STRING = re.compile(rb'"[^"]*"')


def json_depth(raw: bytes) -> int:
    """The deepest nesting of arrays and objects in a JSON text, found without parsing it.

    Linear and non-recursive, so it can run before ``json.loads`` on anything: escaped
    backslashes and quotes are removed, everything but brackets and quotes is dropped, the
    (now bracket-only) strings are cut out, and the brackets are counted. A text that is not
    JSON gets a number too; ``json.loads`` refuses it afterwards.
    """
    skeleton = raw.replace(b"\\\\", b"").replace(b'\\"', b"").translate(None, _DROP)
    brackets = _STRING.sub(b"", skeleton).partition(b'"')[0]  # an unclosed string: the rest
    if not brackets:
        return 0
    steps = np.frombuffer(brackets.translate(_NESTING), dtype=np.uint8)
    levels = np.cumsum(np.where(steps == ord("("), 1, -1), dtype=np.int64)
    return max(int(levels.max()), 0)


def _bounded_depth(raw: bytes, max_depth: int, field: str, where: str | None = None) -> None:
    """Refuse a JSON text nested deeper than ``max_depth`` before anything parses it."""
    depth = json_depth(raw)
    if depth > max_depth:
        raise _bad(field, f"JSON nested {depth} deep, more than {max_depth} levels", where)


# --------------------------------------------------------------------------- the header

# safetensors' own words for a file that is not safetensors at all (anything else it refuses
# is a header that lies about its tensors: a forgery or a corrupt file)
_NOT_SAFETENSORS = ("header too small", "header too large", "invalid json", "invalid header")


def read_header(path: Path) -> dict[str, Any]:
    """The safetensors header's ``__metadata__``, after it was bounded and checked here (size,
    depth, JSON, ``__metadata__`` a map of strings within ``MAX_METADATA_BYTES``, every tensor's
    dtype / shape / offsets) and validated by ``safetensors.safe_open`` (every tensor's byte
    range inside the file, no overlap, the data covered exactly). No tensor is read, and no
    torch is needed."""
    header = _parse_header(_header_bytes(Path(path)))
    try:
        with safe_open(str(path), framework="numpy") as fh:
            fh.metadata()
    except SafetensorError as exc:
        reason = str(exc).removeprefix("Error while deserializing header: ")
        if any(words in reason.lower() for words in _NOT_SAFETENSORS):
            raise CheckpointError(f"not a safetensors file: {reason}") from None
        raise CheckpointError(f"forged safetensors header: {reason}") from None
    except OSError as exc:
        raise CheckpointError(f"not a readable file ({exc.strerror or exc})") from None
    return {"__metadata__": header.get("__metadata__") or {}}


def _header_bytes(path: Path) -> bytes:
    """The JSON header's bytes, refused before reading when its declared length is absurd."""
    try:
        with open(path, "rb") as fh:
            size = os.fstat(fh.fileno()).st_size
            prefix = fh.read(8)
            if len(prefix) < 8:
                raise CheckpointError("not a safetensors file: header too small")
            (length,) = struct.unpack("<Q", prefix)
            if length > MAX_HEADER_BYTES:
                raise CheckpointError(
                    f"not a safetensors file: header too large ({length} bytes; "
                    f"the limit is {MAX_HEADER_BYTES})"
                )
            if 8 + length > size:
                raise CheckpointError(
                    f"not a safetensors file: header length {length} runs past the end of "
                    f"the {size}-byte file"
                )
            return fh.read(length)
    except OSError as exc:
        raise CheckpointError(f"not a readable file ({exc.strerror or exc})") from None


def _parse_header(raw: bytes) -> dict[str, Any]:
    try:
        raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CheckpointError(f"not a safetensors file: the header is not UTF-8 ({exc})") from None
    _bounded_depth(raw, MAX_HEADER_DEPTH, "header")
    try:
        header = json.loads(raw)
    except ValueError as exc:  # bad JSON, or an integer too long to convert
        raise CheckpointError(f"not a safetensors file: the header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(
            f"not a safetensors file: the header is a JSON {_kind(header)}, not an object"
        )
    if "__metadata__" in header:
        _check_metadata_map(header["__metadata__"])
    for name, info in header.items():
        if name != "__metadata__":
            _check_tensor(name, info)
    return header


def _check_metadata_map(meta: Any) -> None:
    if not isinstance(meta, dict):
        raise _bad("__metadata__", f"must be a JSON object of strings, not a {_kind(meta)}")
    for key, value in meta.items():
        if not isinstance(value, str):
            raise _bad(f"__metadata__.{_shown(key)}", f"must be a string, not a {_kind(value)}")
    size = len(json.dumps(meta).encode())
    if size > MAX_METADATA_BYTES:
        raise _bad("__metadata__", f"{size} bytes of JSON, more than {MAX_METADATA_BYTES}")


def _check_tensor(name: str, info: Any) -> None:
    where = f"tensor {_shown(name)}"
    if not isinstance(info, dict):
        raise _bad(where, f"must be an object with dtype, shape, data_offsets, not a {_kind(info)}")
    if not isinstance(info.get("dtype"), str):
        raise _bad(f"{where} dtype", "must be a string")
    shape = info.get("shape")
    if not (isinstance(shape, list) and all(_is_int(v) and v >= 0 for v in shape)):
        raise _bad(
            f"{where} shape", f"must be a list of non-negative integers, got {_short(shape)}"
        )
    offsets = info.get("data_offsets")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(_is_int(v) and v >= 0 for v in offsets)
    ):
        raise _bad(
            f"{where} data_offsets", f"must be two non-negative integers, got {_short(offsets)}"
        )


# --------------------------------------------------------------------------- camdrift metadata


def read_metadata(path: Path) -> dict[str, Any]:
    """The camdrift metadata of a checkpoint file, validated; no tensor is read."""
    header = read_header(path)
    return metadata_from_header(header, str(path))


def metadata_from_header(header: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    meta_map = header.get("__metadata__") or {}
    if not isinstance(meta_map, dict):
        raise _bad(
            "__metadata__", f"must be a JSON object of strings, not a {_kind(meta_map)}", where
        )
    raw = meta_map.get(META_KEY)
    if raw is None:
        raise CheckpointError(
            f"{where}: safetensors file without camdrift metadata; "
            "pass --arch and --classes, or write it with camdrift"
        )
    if not isinstance(raw, str):
        raise _bad(f"__metadata__.{META_KEY}", f"must be a JSON string, not a {_kind(raw)}", where)
    encoded = raw.encode()
    if len(encoded) > MAX_METADATA_BYTES:
        raise _bad("__metadata__", f"{len(encoded)} bytes, more than {MAX_METADATA_BYTES}", where)
    _bounded_depth(encoded, MAX_META_DEPTH, META_KEY, where)
    try:
        meta = json.loads(encoded)
    except ValueError as exc:
        raise CheckpointError(f"{where}: camdrift metadata is not JSON ({exc})", META_KEY) from None
    validate_metadata(meta, where)
    return meta


def validate_metadata(meta: Any, where: str = "checkpoint") -> None:
    """Types and bounds of every field the API stores or a worker uses; strings without NUL
    (Postgres refuses them), numbers finite (JSON columns refuse NaN)."""
    if not isinstance(meta, dict):
        raise CheckpointError(
            f"{where}: camdrift metadata must be a JSON object, not a {_kind(meta)}", META_KEY
        )
    _check_values(meta, where)
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{where}: camdrift metadata lacks {', '.join(missing)}", missing[0])
    _check_text(meta, "arch", MAX_ARCH_CHARS, where, required=True)
    names = meta["class_names"]
    if not (
        isinstance(names, list)
        and names
        and all(isinstance(n, str) and 0 < len(n) <= MAX_NAME_CHARS for n in names)
    ):
        raise _bad(
            "class_names",
            f"must be a non-empty list of names of 1..{MAX_NAME_CHARS} characters",
            where,
        )
    if len(names) > MAX_CLASSES:
        raise _bad("class_names", f"{len(names)} classes, more than {MAX_CLASSES}", where)
    if len(set(names)) != len(names):
        raise _bad("class_names", "names must be distinct", where)
    count = meta["num_classes"]
    if not _is_int(count):
        raise _bad("num_classes", f"must be an integer, not {_short(count)}", where)
    if count != len(names):
        raise CheckpointError(
            f"{where}: num_classes {count} != {len(names)} class_names", "num_classes"
        )
    size = meta["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(_is_int(v) for v in size)):
        raise _bad("input_size", f"must be [H, W] (two integers), got {_short(size)}", where)
    if not all(MIN_INPUT_SIDE <= v <= MAX_INPUT_SIDE for v in size):
        raise _bad(
            "input_size",
            f"each side must be {MIN_INPUT_SIDE}..{MAX_INPUT_SIDE} pixels, got {size}",
            where,
        )
    for key, limit in OPTIONAL_TEXT.items():
        _check_text(meta, key, limit, where)
    _check_channels(meta, where)
    resize = meta.get("resize")
    if resize is not None and resize not in RESIZE_POLICIES:
        raise _bad(
            "resize", f"must be one of {', '.join(RESIZE_POLICIES)}, got {_short(resize)}", where
        )
    window = meta.get("window")
    if window is not None and not (
        isinstance(window, list)
        and len(window) == 2
        and all(isinstance(v, int | float) and not isinstance(v, bool) for v in window)
        and 0 <= window[0] < window[1] <= 1
    ):
        raise _bad(
            "window", f"must be [low, high] with 0 <= low < high <= 1, got {_short(window)}", where
        )
    depth = meta.get("bit_depth")
    if depth is not None and not (_is_int(depth) and 1 <= depth <= 16):
        raise _bad("bit_depth", f"must be an integer in 1..16, got {_short(depth)}", where)
    if meta.get("multi_label") is not None and not isinstance(meta["multi_label"], bool):
        raise _bad(
            "multi_label", f"must be true or false, got {_short(meta['multi_label'])}", where
        )
    for key in OPTIONAL_OBJECTS:
        if meta.get(key) is not None and not isinstance(meta[key], dict):
            raise _bad(key, f"must be an object or null, not a {_kind(meta[key])}", where)


def _check_text(
    meta: dict[str, Any], key: str, limit: int, where: str, required: bool = False
) -> None:
    value = meta.get(key)
    if value is None and not required:
        return
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        got = f"{len(value)} characters" if isinstance(value, str) else f"a {_kind(value)}"
        raise _bad(key, f"must be a string of 1..{limit} characters, got {got}", where)


def _check_channels(meta: dict[str, Any], where: str) -> None:
    chans = meta.get("in_chans")
    if chans is not None and not (_is_int(chans) and 1 <= chans <= MAX_CHANNELS):
        raise _bad(
            "in_chans", f"must be an integer in 1..{MAX_CHANNELS}, got {_short(chans)}", where
        )
    for key in ("mean", "std"):
        values = meta.get(key)
        if values is None:
            continue
        if not (
            isinstance(values, list)
            and len(values) in (1, 3)
            and all(isinstance(v, int | float) and not isinstance(v, bool) for v in values)
        ):
            raise _bad(
                key, f"must be a list of 1 or 3 numbers (per channel), got {_short(values)}", where
            )
        if key == "std" and not all(v > 0 for v in values):
            raise _bad(key, f"must be positive, got {values}", where)


def _check_values(meta: dict[str, Any], where: str) -> None:
    """No NUL in any string or key and no NaN / infinity anywhere, named by their path."""
    stack: list[tuple[str, Any]] = [(k, v) for k, v in meta.items()]
    for key in meta:
        if "\x00" in key:
            raise _bad(META_KEY, "a key contains a NUL character", where)
    while stack:
        path, value = stack.pop()
        if isinstance(value, str):
            if "\x00" in value:
                raise _bad(path, "contains a NUL character", where)
        elif isinstance(value, float):
            if not math.isfinite(value):
                raise _bad(path, f"{value} is not a finite number", where)
        elif isinstance(value, list):
            stack.extend((f"{path}[{i}]", v) for i, v in enumerate(value))
        elif isinstance(value, dict):
            for key, item in value.items():
                if "\x00" in key:
                    raise _bad(path, "a key contains a NUL character", where)
                stack.append((f"{path}.{key}", item))


# --------------------------------------------------------------------------- wording


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _kind(value: Any) -> str:
    return {
        dict: "object",
        list: "list",
        str: "string",
        bool: "boolean",
        int: "integer",
        float: "number",
        type(None): "null",
    }.get(type(value), type(value).__name__)


def _short(value: Any, limit: int = 60) -> str:
    text = json.dumps(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _shown(name: Any, limit: int = 60) -> str:
    text = json.dumps(str(name))[1:-1]
    return text if len(text) <= limit else text[: limit - 3] + "..."
