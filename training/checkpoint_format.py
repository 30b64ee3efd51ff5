"""The checkpoint file format, readable without torch (the API process validates uploads here).

A camdrift checkpoint is a ``.safetensors`` file: an 8-byte little-endian header length, a
JSON header naming every tensor (dtype, shape, byte offsets) plus ``__metadata__``, then the
raw bytes. Our metadata lives under the ``camdrift`` key as a JSON string (DESIGN §2).
"""

from __future__ import annotations

import hashlib
import json
import struct
from pathlib import Path
from typing import Any, BinaryIO

META_KEY = "camdrift"
MAX_HEADER_BYTES = 100 * 1024 * 1024
DTYPE_BYTES = {
    "F64": 8,
    "F32": 4,
    "F16": 2,
    "BF16": 2,
    "I64": 8,
    "I32": 4,
    "I16": 2,
    "I8": 1,
    "U8": 1,
    "BOOL": 1,
    "U16": 2,
    "U32": 4,
    "U64": 8,
    "F8_E4M3": 1,
    "F8_E5M2": 1,
}
REQUIRED_META = ("arch", "num_classes", "class_names", "input_size")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used, with the reason a person can act on."""


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def read_header(source: Path | BinaryIO, file_size: int | None = None) -> dict[str, Any]:
    """Parse and validate a safetensors header; every tensor must lie inside the file."""
    if isinstance(source, Path):
        with open(source, "rb") as fh:
            return read_header(fh, source.stat().st_size)
    fh = source
    if file_size is None:
        here = fh.tell()
        fh.seek(0, 2)
        file_size = fh.tell()
        fh.seek(here)
    raw_len = fh.read(8)
    if len(raw_len) != 8:
        raise CheckpointError("not a safetensors file: shorter than its 8-byte header length")
    (header_len,) = struct.unpack("<Q", raw_len)
    if header_len == 0 or header_len > MAX_HEADER_BYTES or 8 + header_len > file_size:
        raise CheckpointError(f"not a safetensors file: header length {header_len} is impossible")
    try:
        header = json.loads(fh.read(header_len))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"not a safetensors file: header is not JSON ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError("not a safetensors file: header is not a JSON object")
    data_len = file_size - 8 - header_len
    spans: list[tuple[int, int]] = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        _check_tensor_entry(name, info, data_len)
        spans.append(tuple(info["data_offsets"]))
    spans.sort()
    end = 0
    for start, stop in spans:
        if start != end:
            raise CheckpointError("forged safetensors header: tensor byte ranges overlap or gap")
        end = stop
    if end != data_len:
        raise CheckpointError("forged safetensors header: tensors do not cover the data exactly")
    return header


def _check_tensor_entry(name: str, info: Any, data_len: int) -> None:
    if not isinstance(info, dict) or set(info) < {"dtype", "shape", "data_offsets"}:
        raise CheckpointError(f"forged safetensors header: entry {name!r} is malformed")
    dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
    if dtype not in DTYPE_BYTES:
        raise CheckpointError(f"forged safetensors header: {name!r} has unknown dtype {dtype!r}")
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
        raise CheckpointError(f"forged safetensors header: {name!r} has a bad shape")
    if not (
        isinstance(offsets, list)
        and len(offsets) == 2
        and all(isinstance(o, int) for o in offsets)
        and 0 <= offsets[0] <= offsets[1] <= data_len
    ):
        raise CheckpointError(f"forged safetensors header: {name!r} points outside the file")
    count = 1
    for d in shape:
        count *= d
    if count * DTYPE_BYTES[dtype] != offsets[1] - offsets[0]:
        raise CheckpointError(f"forged safetensors header: {name!r} size does not match its shape")


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
