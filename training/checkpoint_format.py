"""The checkpoint file format, readable without torch (the API process validates uploads here).

A camdrift checkpoint is a ``.safetensors`` file: an 8-byte little-endian header length, a
JSON header naming every tensor (dtype, shape, byte offsets) plus ``__metadata__``, then the
raw bytes; ``safetensors.safe_open`` reads and validates the header. Our metadata lives under
the ``camdrift`` key as a JSON string (docs/architecture.md, "Checkpoints").
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError, safe_open

META_KEY = "camdrift"
REQUIRED_META = ("arch", "num_classes", "class_names", "input_size")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason a person can act on."""


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file's bytes: how checkpoints (and dataset files) are addressed."""
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()


# safetensors' own words for a file that is not safetensors at all (anything else it refuses
# is a header that lies about its tensors: a forgery or a corrupt file)
_NOT_SAFETENSORS = ("header too small", "header too large", "invalid json", "invalid header")


def read_header(path: Path) -> dict[str, Any]:
    """The safetensors header's ``__metadata__``, after ``safetensors.safe_open`` validated it
    (header length, JSON, dtypes, shapes, every tensor's byte range inside the file, no overlap,
    the data covered exactly). No tensor is read, and no torch is needed."""
    try:
        with safe_open(str(path), framework="numpy") as fh:
            return {"__metadata__": fh.metadata() or {}}
    except SafetensorError as exc:
        reason = str(exc).removeprefix("Error while deserializing header: ")
        if any(words in reason.lower() for words in _NOT_SAFETENSORS):
            raise CheckpointError(f"not a safetensors file: {reason}") from None
        raise CheckpointError(f"forged safetensors header: {reason}") from None
    except OSError as exc:
        raise CheckpointError(f"not a readable file ({exc.strerror or exc})") from None


def read_metadata(path: Path) -> dict[str, Any]:
    """The camdrift metadata of a checkpoint file, validated; no tensor is read."""
    header = read_header(path)
    return metadata_from_header(header, str(path))


def metadata_from_header(header: dict[str, Any], where: str = "checkpoint") -> dict[str, Any]:
    raw = (header.get("__metadata__") or {}).get(META_KEY)
    if raw is None:
        raise CheckpointError(
            f"{where}: safetensors file without camdrift metadata; "
            "pass --arch and --classes, or write it with camdrift"
        )
    try:
        meta = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{where}: camdrift metadata is not JSON ({exc})") from None
    validate_metadata(meta, where)
    return meta


def validate_metadata(meta: Any, where: str = "checkpoint") -> None:
    if not isinstance(meta, dict):
        raise CheckpointError(f"{where}: camdrift metadata must be a JSON object")
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"{where}: camdrift metadata lacks {', '.join(missing)}")
    names = meta["class_names"]
    if not (isinstance(names, list) and all(isinstance(n, str) for n in names) and names):
        raise CheckpointError(f"{where}: class_names must be a non-empty list of strings")
    if meta["num_classes"] != len(names):
        raise CheckpointError(
            f"{where}: num_classes {meta['num_classes']} != {len(names)} class_names"
        )
    size = meta["input_size"]
    if not (isinstance(size, list) and len(size) == 2 and all(isinstance(v, int) for v in size)):
        raise CheckpointError(f"{where}: input_size must be [H, W]")
