"""What a caller says about a checkpoint trained elsewhere, torch-free.

``camdrift import`` builds an :class:`ImportRequest` from its options, ``POST /checkpoints``
from its form fields (:func:`request_from_form`), and the worker that converts an uploaded file
from the import's stored fields (:meth:`ImportRequest.from_fields`): one set of names and one
validation for all three. Whether the arch exists and the weights fit it needs torch; that is
checked where the conversion runs (``training.importing``).
"""

from __future__ import annotations

import json
import math
import re
import zipfile
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from training.checkpoint_format import META_KEY, CheckpointError, read_header
from training.resize import RESIZE_POLICIES

# the form fields of an import, in the order the docs list them
IMPORT_FIELDS = (
    "arch",
    "class_names",
    "input_size",
    "in_chans",
    "mean",
    "std",
    "phase",
    "multi_label",
    "resize",
    "window",
)
ARCH_PATTERN = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.\-/]{0,99}")
PHASES = ("tl", "ft", "other")
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MAX_CLASSES = 1000
MAX_NAME_CHARS = 255
MIN_SIDE, MAX_SIDE = 8, 4096
MAX_CHANNELS = 4


class ImportFieldError(ValueError):
    """A field of an import request that cannot be used; ``field`` names it."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.reason = message


@dataclass(frozen=True)
class ImportRequest:
    """What the caller says about the checkpoint (``None``: read it from the source)."""

    arch: str | None = None
    class_names: list[str] | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    in_chans: int | None = None
    phase: str = "other"
    multi_label: bool = False  # a sigmoid head: one independent score per finding
    resize: str = "stretch"  # how images met its input in training (training.resize)
    window: tuple[float, float] | None = None  # its fixed intensity window, if any

    def to_fields(self) -> dict[str, Any]:
        """JSON-ready (stored with an upload, handed to the worker)."""
        fields = asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in fields.items()}

    def to_form(self) -> dict[str, str]:
        """The form fields of ``POST /checkpoints`` that ask for this import (the inverse of
        :func:`request_from_form`); unset fields are left out."""
        form = {"arch": self.arch or "", "phase": self.phase}
        if self.multi_label:
            form["multi_label"] = "true"
        if self.resize != "stretch":
            form["resize"] = self.resize
        if self.window is not None:
            form["window"] = f"{self.window[0]!r},{self.window[1]!r}"
        if self.class_names:
            form["class_names"] = json.dumps(self.class_names)
        if self.input_size:
            form["input_size"] = f"{self.input_size[0]},{self.input_size[1]}"
        if self.in_chans:
            form["in_chans"] = str(self.in_chans)
        for key in ("mean", "std"):
            if (values := getattr(self, key)) is not None:
                form[key] = ",".join(repr(float(v)) for v in values)
        return form

    @classmethod
    def from_fields(cls, fields: Mapping[str, Any]) -> ImportRequest:
        """The inverse of :meth:`to_fields`."""

        def tup(value: Any) -> tuple | None:
            return None if value is None else tuple(value)

        size = tup(fields.get("input_size"))
        return cls(
            arch=fields.get("arch"),
            class_names=list(fields["class_names"]) if fields.get("class_names") else None,
            input_size=(int(size[0]), int(size[1])) if size else None,
            mean=tup(fields.get("mean")),
            std=tup(fields.get("std")),
            in_chans=fields.get("in_chans"),
            phase=fields.get("phase") or "other",
            multi_label=bool(fields.get("multi_label")),
            resize=fields.get("resize") or "stretch",
            window=tup(fields.get("window")),
        )


def request_from_form(form: Mapping[str, str | None]) -> ImportRequest | None:
    """The import an upload's form fields ask for; None when it names none of them.

    ``arch`` and ``class_names`` are required once any field is given (an uploaded file is a
    bare weights file: nothing else says what it is). Raises :class:`ImportFieldError`."""
    given = {k: v for k in IMPORT_FIELDS if (v := (form.get(k) or "").strip())}
    if not given:
        return None
    if "arch" not in given:
        raise ImportFieldError(
            "arch", "name the architecture, e.g. torchvision/densenet121 or timm/convnext_nano"
        )
    if "class_names" not in given:
        raise ImportFieldError("class_names", "name the classes in logit order, comma-separated")
    return ImportRequest(
        arch=check_arch(given["arch"]),
        class_names=class_names(given["class_names"]),
        input_size=input_size(given.get("input_size")),
        mean=channel_values(given.get("mean"), "mean"),
        std=channel_values(given.get("std"), "std", positive=True),
        in_chans=in_chans(given.get("in_chans")),
        phase=phase(given.get("phase")),
        multi_label=flag(given.get("multi_label"), "multi_label"),
        resize=resize_policy(given.get("resize")),
        window=intensity_window(given.get("window")),
    )


def check_arch(text: str) -> str:
    if not ARCH_PATTERN.fullmatch(text):
        raise ImportFieldError(
            "arch",
            f"{text[:60]!r} is not an arch name (timm/<name>, torchvision/<name> or a zoo name)",
        )
    return text


def class_names(text: str) -> list[str]:
    """``"a,b,c"`` or a JSON array of strings; unique, non-empty, in logit order."""
    if text.startswith("["):
        try:
            names = json.loads(text)
        except json.JSONDecodeError:
            raise ImportFieldError("class_names", "not a JSON array of strings") from None
        if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
            raise ImportFieldError("class_names", "not a JSON array of strings")
    else:
        names = text.split(",")
    names = [n.strip() for n in names]
    if any(not n for n in names):
        raise ImportFieldError("class_names", "an empty class name")
    if len(names) < 2 or len(names) > MAX_CLASSES:
        raise ImportFieldError("class_names", f"2 to {MAX_CLASSES} classes, got {len(names)}")
    if len(set(names)) != len(names):
        raise ImportFieldError("class_names", "a class name appears twice")
    if max(len(n) for n in names) > MAX_NAME_CHARS:
        raise ImportFieldError("class_names", f"a class name longer than {MAX_NAME_CHARS}")
    return names


def input_size(text: str | None) -> tuple[int, int] | None:
    """``"224"`` (square) or ``"256,192"`` (height, width)."""
    if text is None:
        return None
    try:
        sides = [int(v) for v in text.replace("x", ",").split(",")]
    except ValueError:
        reason = f"a side in pixels or H,W, not {text[:40]!r}"
        raise ImportFieldError("input_size", reason) from None
    if len(sides) not in (1, 2) or not all(MIN_SIDE <= s <= MAX_SIDE for s in sides):
        raise ImportFieldError(
            "input_size", f"one or two sides of {MIN_SIDE} to {MAX_SIDE} pixels, got {text[:40]!r}"
        )
    return (sides[0], sides[-1])


def channel_values(text: str | None, name: str, positive: bool = False) -> tuple[float, ...] | None:
    """``"0.5"`` or ``"0.485,0.456,0.406"``: one value or one per channel."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(","))
    except ValueError:
        raise ImportFieldError(name, f"comma-separated numbers, got {text[:40]!r}") from None
    if len(values) not in (1, 3) or not all(math.isfinite(v) for v in values):
        raise ImportFieldError(name, "one finite number, or three (one per RGB channel)")
    if positive and min(values) <= 0:
        raise ImportFieldError(name, "must be positive")
    return values


def in_chans(text: str | None) -> int | None:
    if text is None:
        return None
    if not text.isdigit() or not 1 <= int(text) <= MAX_CHANNELS:
        raise ImportFieldError("in_chans", f"1 to {MAX_CHANNELS} channels, got {text[:20]!r}")
    return int(text)


def flag(text: str | None, name: str) -> bool:
    if text is None:
        return False
    if text.lower() not in ("true", "false", "1", "0"):
        raise ImportFieldError(name, f"true or false, got {text[:20]!r}")
    return text.lower() in ("true", "1")


def intensity_window(text: str | None) -> tuple[float, float] | None:
    """``"0.1,0.9"``: the low and high ends, fractions of the read intensity range."""
    if text is None:
        return None
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise ImportFieldError("window", f"two numbers low,high, not {text[:40]!r}") from None
    if not 0.0 <= low < high <= 1.0:
        raise ImportFieldError("window", f"0 <= low < high <= 1, got {text[:40]!r}")
    return (low, high)


def resize_policy(text: str | None) -> str:
    if text is None:
        return "stretch"
    if text not in RESIZE_POLICIES:
        raise ImportFieldError("resize", f"one of {', '.join(RESIZE_POLICIES)}, got {text[:20]!r}")
    return text


def phase(text: str | None) -> str:
    if text is None:
        return "other"
    if text not in PHASES:
        raise ImportFieldError("phase", f"one of {', '.join(PHASES)}, got {text[:20]!r}")
    return text


def weights_suffix(path: Path, filename: str | None) -> str:
    """The kind of an uploaded weights file, by its name and checked on its first bytes:
    a safetensors file without camdrift metadata, or what ``torch.save`` writes (a zip
    archive; a pickle before torch 1.6). Nothing is unpickled here."""
    suffix = PurePosixPath((filename or "").replace("\\", "/")).suffix.lower()
    if suffix not in WEIGHT_SUFFIXES:
        raise ImportFieldError(
            "file", f"name the file {', '.join(WEIGHT_SUFFIXES)} (got {suffix or 'no extension'})"
        )
    if suffix == ".safetensors":
        try:
            header = read_header(path)
        except CheckpointError as exc:
            raise ImportFieldError("file", str(exc)) from None
        if META_KEY in header["__metadata__"]:
            raise ImportFieldError(
                "arch", "the file is a camdrift checkpoint already: upload it without import fields"
            )
        return suffix
    with open(path, "rb") as fh:
        first = fh.read(1)
    if not (first == b"\x80" or zipfile.is_zipfile(path)):
        raise ImportFieldError(
            "file", f"not a torch.save file ({suffix}: neither a zip archive nor a pickle)"
        )
    return suffix
