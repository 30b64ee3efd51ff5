"""Dataset discovery and splits, torch-free (the pixels: :mod:`training.image_dataset`).

A dataset is a directory: either images listed in ``manifest.csv`` (``path,label`` plus
optional ``split``, ``mask``, ``lung_mask``, ``shortcut_mask``, ``bbox``, ``marker``,
``group``; multi-label: ``path,labels`` with ``|``-separated findings, or one 0/1 column per
finding) or an ImageFolder tree ``root/<class>/**/<image>`` (masks under ``masks/``,
``lung_masks/``, ``shortcut_masks/`` at the image's relative path).
:func:`discover` turns it into a :class:`DatasetIndex` (no pixels read) whose
:meth:`~DatasetIndex.fingerprint` identifies the data in checkpoints and job records.

Torch-free, so the API process can discover and fingerprint uploads.
"""

from __future__ import annotations

import csv
import errno
import hashlib
import json
import math
import os
import random
import re
import stat
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from training.checkpoint_format import sha256_file
from training.imageio import ImageReadError, image_size, is_image_file

MANIFEST_NAME = "manifest.csv"
MASKS_DIR = "masks"
# the reference regions a sample can bring (worker.catalog.REGIONS names the same three): the
# manifest column of its mask PNG and, in an ImageFolder tree, the folder mirroring the images
REGION_COLUMNS = {"lesion": "mask", "lung": "lung_mask", "shortcut": "shortcut_mask"}
GROUP_COLUMN = "group"  # the patient (or study) an image belongs to: splits never divide one
# NIH ChestX-ray14 file names: <8-digit patient>_<3-digit follow-up>.png; where every image is
# so named and a patient recurs, the patient is the image's group (no group column needed)
NIH_NAME = re.compile(r"(\d{8})_\d{3}\.(?:png|jpe?g)", re.IGNORECASE)
LABELS_COLUMN = "labels"  # multi-label: the image's findings, "|"-separated ("" = none)
FINDING_SEPARATOR = "|"
POSITIVE = ("1", "1.0", "true", "yes")  # a finding column's positive values
NEGATIVE = ("", "0", "0.0", "-1", "-1.0", "false", "no")  # incl. uncertain (-1) as negative
REGION_DIRS = {"lesion": MASKS_DIR, "lung": "lung_masks", "shortcut": "shortcut_masks"}
BBOX_COLUMN = "bbox"  # lesion boxes "x0 y0 x1 y1" in image pixels; several joined by ";"
Box = tuple[float, float, float, float]
SPLITS = ("train", "val", "test")
ON_ERROR = ("raise", "skip")
_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "test": "test",
    "testing": "test",
}
_FINGERPRINT_VERSION = 1


class DatasetError(ValueError):
    """The dataset on disk is unusable; the message names the file (and manifest line)."""


@dataclass(frozen=True)
class Sample:
    """One image: absolute path, class index, and optional manifest metadata.

    ``mask`` is the lesion mask; ``bbox`` the lesion boxes (x0, y0, x1, y1) in the image's
    pixels, edges included at x0/y0 and excluded at x1/y1, used where there is no mask.
    """

    path: Path
    label: int
    split: str | None = None
    mask: Path | None = None
    marker: int | None = None
    lung_mask: Path | None = None
    shortcut_mask: Path | None = None
    bbox: tuple[Box, ...] | None = None
    group: str | None = None  # patient / study (manifest ``group``): one split for all its images
    # multi-label: every finding present in the image (class indices); ``label`` is the one
    # this sample explains -- an image with k findings is k samples
    findings: tuple[int, ...] | None = None

    @property
    def regions(self) -> tuple[str, ...]:
        """The reference regions this sample brings, in :data:`REGION_COLUMNS` order."""
        have = {
            "lesion": self.mask is not None or bool(self.bbox),
            "lung": self.lung_mask is not None,
            "shortcut": self.shortcut_mask is not None,
        }
        return tuple(kind for kind in REGION_COLUMNS if have[kind])

    def region_mask(self, kind: str) -> Path | None:
        """The mask file of region ``kind`` (None: none, or the lesion is given by boxes)."""
        return {"lesion": self.mask, "lung": self.lung_mask, "shortcut": self.shortcut_mask}[kind]


@dataclass
class DatasetIndex:
    """What :func:`discover` found: samples plus the files it left out and why."""

    root: Path
    class_names: list[str]
    samples: list[Sample]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (path, reason)
    # multi-label (a manifest of findings): each sample is one (image, present finding) pair;
    # ``background`` holds the listed images with no finding present (label -1, findings ()):
    # nothing to explain, so not audited, but negatives for training and split with the rest
    multi_label: bool = False
    background: list[Sample] = field(default_factory=list)
    # where the samples' groups come from: "manifest" (its group column), "file names"
    # (NIH-style patient prefixes), or None (no groups: every image its own)
    groups_from: str | None = None

    @property
    def unlabelled(self) -> int:
        return len(self.background)

    def relative(self, sample: Sample) -> str:
        """The sample's path relative to the root, POSIX style (stable across machines)."""
        return _relative(self.root, sample.path)

    def fingerprint(self) -> str:
        """sha256 over the class names and sorted (relative path, label, file size) rows.

        Content is not hashed (too slow for large sets); size catches most replacements.
        Splits, masks and markers are not part of it: re-splitting keeps the identity.
        """
        digest = hashlib.sha256()
        header = {"v": _FINGERPRINT_VERSION, "class_names": list(self.class_names)}
        if self.multi_label:
            header["multi_label"] = True
        digest.update(json.dumps(header, sort_keys=True).encode())
        # a sample's group counts where there is one (it decides the split); without groups the
        # fingerprint is what it always was
        rows = sorted(
            (self.relative(s), s.label, _file_size(s.path), *((s.group,) if s.group else ()))
            for s in (*self.samples, *self.background)
        )
        for row in rows:
            digest.update(b"\n" + json.dumps(row).encode())
        return digest.hexdigest()

    def subset(self, split: str) -> DatasetIndex:
        """Samples of one split, same root and classes (call :func:`assign_splits` first)."""
        name = _normalise_split(split)
        if name is None:
            raise ValueError(f"unknown split {split!r}; expected one of {SPLITS}")
        if not any(s.split for s in self.samples):
            raise DatasetError(f"{self.root}: no splits assigned; call assign_splits() first")
        chosen = [s for s in self.samples if s.split == name]
        return DatasetIndex(
            self.root,
            list(self.class_names),
            chosen,
            [],
            multi_label=self.multi_label,
            background=[s for s in self.background if s.split == name],
            groups_from=self.groups_from,
        )

    def per_image(self) -> DatasetIndex:
        """One sample per image (its first finding's), for training a multi-label head on
        each image once; a single-label index as it is."""
        if not self.multi_label:
            return self
        seen: set[Path] = set()
        first = [s for s in self.samples if not (s.path in seen or seen.add(s.path))]
        return replace(self, samples=first + list(self.background), background=[])

    def regions(self, positions: Sequence[int] | None = None) -> list[str]:
        """The reference regions at least one sample (of ``positions``) brings."""
        chosen = self.samples if positions is None else [self.samples[i] for i in positions]
        have = {kind for s in chosen for kind in s.regions}
        return [kind for kind in REGION_COLUMNS if kind in have]

    def counts(self) -> dict[str, int]:
        """Samples per class name, every class listed (zero included), in class order."""
        totals = dict.fromkeys(self.class_names, 0)
        for sample in self.samples:
            totals[self.class_names[sample.label]] += 1
        return totals


# --------------------------------------------------------------------------- discovery


def discover(
    root: Path,
    *,
    class_names: list[str] | None = None,
    on_error: str = "raise",
    check_headers: bool = False,
) -> DatasetIndex:
    """Index a dataset directory (manifest.csv if present, else an ImageFolder tree).

    ``on_error="skip"`` records missing files (and empty class folders) in ``skipped``
    instead of raising; structural problems (bad manifest rows, paths escaping the root,
    unknown labels) always raise, because skipping them would hide a wrong dataset.
    ``check_headers`` also reads every image's header (not its pixels): a file that is no
    readable image is skipped with its reason, or (``raise``) stops discovery naming it, before
    hours of training reach it.
    """
    _check_on_error(on_error)
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset root is not a directory")
    root = root.resolve()
    wanted = _check_class_names(class_names)
    manifest = root / MANIFEST_NAME
    if manifest.is_file():
        index = _from_manifest(root, manifest, wanted, on_error)
    else:
        index = _from_folders(root, wanted, on_error)
    index = _with_groups(index)
    if check_headers:
        index = _readable(index, on_error)
    if not index.samples:
        extra = f" ({len(index.skipped)} skipped)" if index.skipped else ""
        raise DatasetError(f"{root}: no images found{extra}")
    return index


def _with_groups(index: DatasetIndex) -> DatasetIndex:
    """Say where the groups come from; without a group column, NIH-style names
    (``00000013_005.png``: patient 13, follow-up 5) group each patient's images, so that a
    split never puts one patient's follow-ups in both train and test."""
    every = [*index.samples, *index.background]
    if any(s.group for s in every):
        return replace(index, groups_from="manifest")
    found = [NIH_NAME.fullmatch(s.path.name) for s in every]
    if not every or not all(found):
        return index
    patients = [m.group(1) for m in found if m is not None]
    if len(set(patients)) == len(set(s.path for s in every)):  # no patient recurs
        return index
    patient = {s.path: f"patient {m.group(1)}" for s, m in zip(every, found, strict=True) if m}
    return replace(
        index,
        samples=[replace(s, group=patient[s.path]) for s in index.samples],
        background=[replace(s, group=patient[s.path]) for s in index.background],
        groups_from="file names",
    )


def _readable(index: DatasetIndex, on_error: str) -> DatasetIndex:
    """``index`` without the samples (and background images) whose header does not read
    (each skipped, or the first one raised); a multi-label image's samples are read once."""
    skipped = list(index.skipped)
    reasons: dict[Path, str | None] = {}

    def readable(sample: Sample) -> bool:
        if sample.path not in reasons:
            try:
                image_size(sample.path)
                reasons[sample.path] = None
            except ImageReadError as exc:
                if on_error == "raise":
                    raise DatasetError(
                        f"{index.relative(sample)}: {exc.reason} (--on-bad-file skip leaves "
                        "such files out and lists them)"
                    ) from None
                reasons[sample.path] = exc.reason
                skipped.append((index.relative(sample), exc.reason))
        return reasons[sample.path] is None

    kept = [s for s in index.samples if readable(s)]
    background = [s for s in index.background if readable(s)]
    return replace(index, samples=kept, skipped=skipped, background=background)


def summary(index: DatasetIndex) -> dict[str, Any]:
    """What a command that read the dataset says about it: images per class and split, and
    every skipped file with its reason."""
    per_class = {name: 0 for name in index.class_names}
    per_split: dict[str, int] = {}
    for sample in index.samples:
        per_class[index.class_names[sample.label]] += 1
    for sample in index.per_image().samples:  # multi-label: images, not (image, finding) pairs
        if sample.split:
            per_split[sample.split] = per_split.get(sample.split, 0) + 1
    out = {
        "root": str(index.root),
        "images": len({s.path for s in (*index.samples, *index.background)}),
        "classes": per_class,
        "splits": per_split,
        "skipped": [{"path": path, "reason": reason} for path, reason in index.skipped],
    }
    groups = {s.group for s in (*index.samples, *index.background) if s.group}
    if groups:
        out.update(groups=len(groups), groups_from=index.groups_from)
    if index.multi_label:  # classes count the images with each finding present
        out.update(multi_label=True, samples=len(index.samples), unlabelled=index.unlabelled)
    return out


def _check_on_error(on_error: str) -> None:
    if on_error not in ON_ERROR:
        raise ValueError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")


def _check_class_names(class_names: Sequence[str] | None) -> list[str] | None:
    if class_names is None:
        return None
    names = [str(name) for name in class_names]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"class_names must be non-empty and unique, got {names}")
    return names


CONTENT_DIGEST_VERSION = "camdrift-content-v1"


def content_digest(root: Path) -> str:
    """sha256 over every file under ``root``: sorted (relative path, sha256 of its bytes).

    Unlike :meth:`DatasetIndex.fingerprint` everything counts (pixels, manifest, splits,
    masks), so equal digests mean byte-identical folders: a client can look an upload up on
    the server instead of sending it again.
    """
    files = sorted((p.relative_to(root).as_posix(), p) for p in root.rglob("*") if p.is_file())
    with ThreadPoolExecutor(max_workers=8) as pool:  # hashlib releases the GIL on large reads
        hashes = list(pool.map(sha256_file, (path for _, path in files)))
    digest = hashlib.sha256(CONTENT_DIGEST_VERSION.encode())
    for (relative, _), file_hash in zip(files, hashes, strict=True):
        digest.update(b"\n" + json.dumps([relative, file_hash]).encode())
    return digest.hexdigest()


def _relative(root: Path, path: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _file_size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError as exc:
        raise DatasetError(f"{path}: cannot read file size ({exc})") from exc


def _is_hidden(name: str) -> bool:
    return name.startswith(".")


def _inside(root: Path, path: Path, dirs: dict[str, bool] | None = None) -> bool:
    """True when the path, symlinks resolved, stays under the (resolved) root.

    ``dirs`` (one scan's cache: directory -> whether its real path is under the root) makes
    a file that is no symlink, and has no '..', cost one ``lstat`` instead of one per path
    component: a 20,000-row manifest with three files a row took seconds to check."""
    text = str(path)
    parent, _, name = text.rpartition(os.sep)
    if dirs is None or name in ("", ".", "..") or not parent:
        return path.resolve().is_relative_to(root)
    try:
        if stat.S_ISLNK(os.lstat(text).st_mode):
            return path.resolve().is_relative_to(root)
    except OSError:  # missing: resolved as its directory's real path + its name, as resolve()
        pass
    inside = dirs.get(parent)
    if inside is None:
        inside = dirs[parent] = Path(os.path.realpath(parent)).is_relative_to(root)
    return inside


# --------------------------------------------------------------------------- manifest


@dataclass(frozen=True)
class _Row:
    """One parsed manifest row before labels become indices."""

    line: int
    path: Path
    label: str
    split: str | None
    mask: Path | None
    marker: int | None
    lung_mask: Path | None = None
    shortcut_mask: Path | None = None
    bbox: tuple[Box, ...] | None = None
    group: str | None = None
    findings: tuple[str, ...] | None = None  # multi-label: the findings present


def _from_manifest(
    root: Path, manifest: Path, class_names: list[str] | None, on_error: str
) -> DatasetIndex:
    columns: dict[str, str] = {}
    rows = list(_read_manifest(root, manifest, columns))
    multi = rows[0].findings is not None if rows else LABELS_COLUMN in columns
    finding_columns = [v for k, v in columns.items() if k.startswith("__finding__")]
    if multi:
        found = {f for row in rows for f in row.findings or ()}
        names = class_names or finding_columns or sorted(found)
    else:
        names = class_names or sorted({row.label for row in rows})
    position = {name: i for i, name in enumerate(names)}
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    background: list[Sample] = []
    for row in rows:
        wanted = row.findings if multi else (row.label,)
        for label in wanted or ():
            if label not in position:
                raise DatasetError(
                    f"{MANIFEST_NAME} line {row.line}: label {label!r} is not in "
                    f"class_names {names}"
                )
        problem = _missing_file_problem(root, row)
        if problem is not None:
            if on_error == "raise":
                raise DatasetError(f"{MANIFEST_NAME} line {row.line}: {problem}")
            skipped.append((_relative(root, row.path), f"line {row.line}: {problem}"))
            continue
        present = tuple(sorted(position[f] for f in wanted or ()))
        if multi and not present:
            background.append(
                Sample(row.path, -1, row.split, marker=row.marker, group=row.group, findings=())
            )
        for label in present:
            samples.append(
                Sample(
                    row.path,
                    label,
                    row.split,
                    row.mask,
                    row.marker,
                    row.lung_mask,
                    row.shortcut_mask,
                    row.bbox,
                    row.group,
                    present if multi else None,
                )
            )
    return DatasetIndex(
        root, list(names), samples, skipped, multi_label=multi, background=background
    )


def _missing_file_problem(root: Path, row: _Row) -> str | None:
    """Why a row's image or a mask cannot be used, or None; these are the skippable errors."""
    files = (
        ("", row.path),
        ("mask ", row.mask),
        ("lung_mask ", row.lung_mask),
        ("shortcut_mask ", row.shortcut_mask),
    )
    for what, path in files:
        if path is None:
            continue
        try:
            mode = path.stat().st_mode  # one stat for both questions
        except OSError as exc:
            if exc.errno not in _MISSING:
                raise
            return f"{what}{_relative(root, path)} does not exist"
        if not stat.S_ISREG(mode):
            return f"{what}{_relative(root, path)} is not a file"
    return None


_MISSING = (errno.ENOENT, errno.ENOTDIR, errno.EBADF, errno.ELOOP)  # what Path.exists() ignores


def _read_manifest(
    root: Path, manifest: Path, columns: dict[str, str] | None = None
) -> Iterator[_Row]:
    """Parse and check every row; line numbers are physical lines (header = line 1).
    ``columns`` (when given) receives the header's column map."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            found = _manifest_columns(reader.fieldnames)
            if columns is not None:
                columns.update(found)
            columns = found
            seen: dict[str, int] = {}
            dirs: dict[str, bool] = {}  # real-path checks of this scan (see _inside)
            for raw in reader:
                row = _parse_row(root, reader.line_num, raw, columns, dirs)
                key = row.path.as_posix()
                if key in seen:
                    raise DatasetError(
                        f"{MANIFEST_NAME} line {row.line}: {_relative(root, row.path)} is "
                        f"already listed on line {seen[key]}"
                    )
                seen[key] = row.line
                yield row
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DatasetError(f"{manifest}: cannot read manifest ({exc})") from exc


KNOWN_COLUMNS = (
    "path",
    "label",
    LABELS_COLUMN,
    "split",
    "marker",
    GROUP_COLUMN,
    BBOX_COLUMN,
    *REGION_COLUMNS.values(),
)


def _manifest_columns(fieldnames: Sequence[str] | None) -> dict[str, str]:
    """Map canonical column names to the header's spelling (case and spaces ignored).

    Labels come from ``label`` (one class), ``labels`` (findings, ``|``-separated) or, when
    neither is there, every other column (one 0/1 column per finding, CheXpert style: the
    finding columns are marked ``__finding__<header>``)."""
    if not fieldnames:
        raise DatasetError(f"{MANIFEST_NAME} line 1: empty manifest (no header)")
    columns = {name.strip().lower(): name for name in fieldnames if name is not None}
    if "path" not in columns:
        raise DatasetError(
            f"{MANIFEST_NAME} line 1: missing required column(s) ['path']; "
            f"header is {list(fieldnames)}"
        )
    if "label" in columns and LABELS_COLUMN in columns:
        raise DatasetError(f"{MANIFEST_NAME} line 1: give label or labels, not both")
    if "label" not in columns and LABELS_COLUMN not in columns:
        findings = [name for key, name in columns.items() if key not in KNOWN_COLUMNS]
        if not findings:
            raise DatasetError(
                f"{MANIFEST_NAME} line 1: missing required column(s) ['label'] (or labels, "
                f"or one 0/1 column per finding); header is {list(fieldnames)}"
            )
        columns.update({f"__finding__{name}": name for name in findings})
    return columns


def _parse_row(
    root: Path,
    line: int,
    raw: dict[str, Any],
    columns: dict[str, str],
    dirs: dict[str, bool] | None = None,
) -> _Row:
    def cell(name: str) -> str:
        value = raw.get(columns[name]) if name in columns else None
        return value.strip() if isinstance(value, str) else ""

    where = f"{MANIFEST_NAME} line {line}"
    path, label = cell("path"), cell("label")
    findings = _findings(raw, columns, where)
    if not path or (findings is None and not label):
        raise DatasetError(f"{where}: path and label must both be set")
    split = None
    if cell("split"):
        split = _normalise_split(cell("split"))
        if split is None:
            raise DatasetError(f"{where}: unknown split {cell('split')!r}; use {SPLITS}")
    masks = {
        kind: _safe_path(root, cell(column), f"{where}, column {column}", dirs)
        if cell(column)
        else None
        for kind, column in REGION_COLUMNS.items()
    }
    bbox = _parse_boxes(cell(BBOX_COLUMN), where) if cell(BBOX_COLUMN) else None
    marker = _parse_marker(cell("marker"), where) if cell("marker") else None
    return _Row(
        line,
        _safe_path(root, path, where, dirs),
        label,
        split,
        masks["lesion"],
        marker,
        masks["lung"],
        masks["shortcut"],
        bbox,
        cell(GROUP_COLUMN) or None,
        findings,
    )


def _findings(raw: dict[str, Any], columns: dict[str, str], where: str) -> tuple[str, ...] | None:
    """The findings present in a multi-label row (None for a single-label manifest)."""
    if LABELS_COLUMN in columns:
        text = raw.get(columns[LABELS_COLUMN]) or ""
        names = [n.strip() for n in text.split(FINDING_SEPARATOR) if n.strip()]
        if len(set(names)) != len(names):
            raise DatasetError(f"{where}: a finding is listed twice in {text!r}")
        return tuple(names)
    marked = [name for key, name in columns.items() if key.startswith("__finding__")]
    if not marked:
        return None
    present = []
    for name in marked:
        value = (raw.get(name) or "").strip().lower()
        if value in POSITIVE:
            present.append(name)
        elif value not in NEGATIVE:
            raise DatasetError(
                f"{where}: finding column {name!r} holds {value!r}; use 1 (present) or 0, "
                "-1 or empty (absent)"
            )
    return tuple(present)


def _safe_path(root: Path, text: str, where: str, dirs: dict[str, bool] | None = None) -> Path:
    """root/text, refusing absolute paths, '..' and symlinks that lead out of the root."""
    posix = text.replace("\\", "/")
    parts = [part for part in posix.split("/") if part not in ("", ".")]  # as PurePosixPath
    if posix.startswith("/") or (parts and parts[0].endswith(":")):
        raise DatasetError(f"{where}: {text} is an absolute path; paths must be relative")
    if ".." in parts:
        raise DatasetError(f"{where}: {text} escapes the dataset root ('..' not allowed)")
    path = root / "/".join(parts) if parts else root
    if not _inside(root, path, dirs):
        raise DatasetError(f"{where}: {text} resolves outside the dataset root (symlink)")
    return path


def _normalise_split(value: str) -> str | None:
    return _SPLIT_ALIASES.get(value.strip().lower())


def _parse_boxes(text: str, where: str) -> tuple[Box, ...]:
    """``x0 y0 x1 y1`` (pixels of the image, spaces between), several boxes joined by ``;``."""
    boxes = []
    for part in text.split(";"):
        fields = part.split()
        try:
            numbers = [float(f) for f in fields]
        except ValueError:
            numbers = []
        if len(numbers) != 4 or not all(math.isfinite(v) for v in numbers):
            raise DatasetError(
                f"{where}, column {BBOX_COLUMN}: {part.strip()!r} is not a box 'x0 y0 x1 y1' "
                "(four numbers in image pixels; several boxes joined by ';')"
            )
        x0, y0, x1, y1 = numbers
        if min(numbers) < 0 or x1 <= x0 or y1 <= y0:
            raise DatasetError(
                f"{where}, column {BBOX_COLUMN}: {part.strip()!r} needs 0 <= x0 < x1 and "
                "0 <= y0 < y1 (x0 y0 = top-left, x1 y1 = bottom-right, in image pixels)"
            )
        boxes.append((x0, y0, x1, y1))
    return tuple(boxes)


def _parse_marker(text: str, where: str) -> int:
    try:
        number = float(text)
    except ValueError:
        number = math.nan
    if not number.is_integer():
        raise DatasetError(f"{where}: marker {text!r} is not an integer")
    return int(number)


# --------------------------------------------------------------------------- ImageFolder


def _from_folders(root: Path, class_names: list[str] | None, on_error: str) -> DatasetIndex:
    skipped: list[tuple[str, str]] = []
    folders = _class_folders(root, skipped)
    if class_names is not None:
        unknown = sorted(set(folders) - set(class_names))
        if unknown:
            raise DatasetError(f"{root}: class folder(s) {unknown} not in class_names")
    images = {
        name: list(_folder_images(root, folder, on_error, skipped))
        for name, folder in folders.items()
    }
    names = class_names if class_names is not None else _non_empty(root, images, on_error, skipped)
    samples = [
        Sample(
            path,
            label,
            None,
            _mask_for(root, path, REGION_DIRS["lesion"]),
            lung_mask=_mask_for(root, path, REGION_DIRS["lung"]),
            shortcut_mask=_mask_for(root, path, REGION_DIRS["shortcut"]),
        )
        for label, name in enumerate(names)
        for path in images.get(name, [])
    ]
    return DatasetIndex(root, list(names), samples, skipped)


def _non_empty(
    root: Path, images: dict[str, list[Path]], on_error: str, skipped: list[tuple[str, str]]
) -> list[str]:
    """Derived classes: an empty folder would silently add a class the model never sees."""
    names = []
    for name in sorted(images):
        if images[name]:
            names.append(name)
        elif on_error == "raise":
            raise DatasetError(f"{root / name}: class folder has no images")
        else:
            skipped.append((name, "class folder has no images"))
    return names


def _class_folders(root: Path, skipped: list[tuple[str, str]]) -> dict[str, Path]:
    """Visible top-level directories except the mask folders; loose top-level images are
    noted."""
    folders: dict[str, Path] = {}
    for entry in sorted(root.iterdir()):
        if _is_hidden(entry.name):
            continue
        if entry.is_dir():
            if entry.name not in REGION_DIRS.values():
                folders[entry.name] = entry
        elif is_image_file(entry):
            skipped.append((entry.name, "image outside any class folder"))
    return folders


def _folder_images(
    root: Path, folder: Path, on_error: str, skipped: list[tuple[str, str]]
) -> Iterator[Path]:
    """Image files under one class folder, sorted; hidden entries and links out refused."""
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if not _is_hidden(d))
        for name in sorted(filenames):
            if _is_hidden(name):
                continue
            path = Path(dirpath) / name
            rel = _relative(root, path)
            if not is_image_file(path):
                skipped.append((rel, "not an image suffix"))
            elif not _inside(root, path):
                raise DatasetError(f"{rel}: resolves outside the dataset root (symlink)")
            elif not path.is_file():
                if on_error == "raise":
                    raise DatasetError(f"{rel}: not a readable file (broken link?)")
                skipped.append((rel, "not a readable file (broken link?)"))
            else:
                yield path


def _mask_for(root: Path, image: Path, folder: str = MASKS_DIR) -> Path | None:
    """<folder>/<same relative path> (or the same name as .png) when present."""
    rel = image.relative_to(root)
    for candidate in (root / folder / rel, (root / folder / rel).with_suffix(".png")):
        if candidate.is_file() and _inside(root, candidate):
            return candidate
    return None


# --------------------------------------------------------------------------- splits


def assign_splits(
    index: DatasetIndex, val: float = 0.15, test: float = 0.15, seed: int = 0
) -> DatasetIndex:
    """Keep complete manifest splits; otherwise a seeded split stratified by class -- or, when
    the manifest names groups (patients), a seeded split of whole groups, so that no patient's
    images are in two splits (a multi-label image is a group of its findings' samples).

    Deterministic for a seed and independent of discovery order (samples are sorted by
    relative path per class before shuffling, each class with its own seeded stream).
    A class with >= 3 samples gets at least one sample in every split whose fraction > 0.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"need 0 <= val, test and val + test < 1, got val={val} test={test}")
    if index.multi_label:
        return _split_findings(index, val, test, seed)
    if index.samples and all(s.split for s in index.samples):
        return replace(index, samples=list(index.samples), skipped=list(index.skipped))
    if any(s.split for s in index.samples):
        warnings.warn(
            "some samples have a manifest split and some do not; reassigning all splits",
            stacklevel=2,
        )
    if any(s.group for s in index.samples):
        samples = _split_by_group(index, val, test, seed)
        return replace(index, samples=samples, skipped=list(index.skipped))
    split_of: dict[int, str] = {}
    for label, positions in sorted(_positions_by_class(index).items()):
        positions.sort(key=lambda i: index.relative(index.samples[i]))
        random.Random(f"{seed}/{index.class_names[label]}").shuffle(positions)
        n_val, n_test = _split_sizes(len(positions), val, test)
        for rank, pos in enumerate(positions):
            split_of[pos] = "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
    samples = [replace(s, split=split_of[i]) for i, s in enumerate(index.samples)]
    return replace(index, samples=samples, skipped=list(index.skipped))


def _split_findings(index: DatasetIndex, val: float, test: float, seed: int) -> DatasetIndex:
    """A multi-label index: its manifest splits when every image has one, else whole images
    (or groups) to splits, an image's finding samples and the background images alike."""
    every = [*index.samples, *index.background]
    if every and all(s.split for s in every):
        return replace(index, samples=list(index.samples), background=list(index.background))
    split = _split_by_group(replace(index, samples=every), val, test, seed)
    n = len(index.samples)
    return replace(index, samples=split[:n], background=split[n:], skipped=list(index.skipped))


SPLIT_RECORD_KIND = "camdrift-split-v1"


def split_record(index: DatasetIndex, val: float, test: float, seed: int) -> dict[str, Any]:
    """What a training run stores (in its checkpoints' metadata) when it drew the split itself:
    enough to draw the same split again, and the dataset it belongs to. :func:`assign_splits`
    is deterministic for a seed and independent of discovery order, so this is the split."""
    split = assign_splits(index, val, test, seed)
    return {
        "kind": SPLIT_RECORD_KIND,
        "fingerprint": index.fingerprint(),
        "val": val,
        "test": test,
        "seed": seed,
        "counts": {name: sum(s.split == name for s in split.samples) for name in SPLITS},
    }


def apply_split_record(index: DatasetIndex, record: Any) -> DatasetIndex | None:
    """The training run's split of ``index`` when ``record`` (a :func:`split_record`) belongs
    to this very dataset (same fingerprint) and the dataset has no split of its own; else
    None. An audit then evaluates the held-out images, not the ones the model learned."""
    if not isinstance(record, dict) or record.get("kind") != SPLIT_RECORD_KIND:
        return None
    own = any(s.split for s in (*index.samples, *index.background))
    if own or record.get("fingerprint") != index.fingerprint():
        return None
    try:
        val, test, seed = float(record["val"]), float(record["test"]), int(record["seed"])
        return assign_splits(index, val, test, seed)
    except (KeyError, TypeError, ValueError):
        return None


def _split_by_group(index: DatasetIndex, val: float, test: float, seed: int) -> list[Sample]:
    """Whole groups (patients) to splits: groups in a seeded order fill test, then val, up to
    their share of the images, the rest train. A sample without a group is a group of its
    own. Not stratified by class (a patient's images go together whatever their labels)."""
    members: dict[str, list[int]] = defaultdict(list)
    for i, sample in enumerate(index.samples):
        members[sample.group or f"\0{index.relative(sample)}"].append(i)
    order = sorted(members)
    random.Random(f"{seed}/groups").shuffle(order)
    n = len(index.samples)
    want = {"test": math.floor(n * test + 0.5), "val": math.floor(n * val + 0.5)}
    filled = {"test": 0, "val": 0}
    split_of: dict[int, str] = {}
    for group in order:
        name = next((k for k in ("test", "val") if filled[k] < want[k]), "train")
        if name != "train":
            filled[name] += len(members[group])
        for i in members[group]:
            split_of[i] = name
    if "train" not in split_of.values():
        raise DatasetError(
            f"{index.root}: {len(members)} groups are too few to split {val:.0%}/{test:.0%} and "
            "keep any for training"
        )
    return [replace(s, split=split_of[i]) for i, s in enumerate(index.samples)]


def _positions_by_class(index: DatasetIndex) -> dict[int, list[int]]:
    groups: dict[int, list[int]] = defaultdict(list)
    for i, sample in enumerate(index.samples):
        groups[sample.label].append(i)
    return groups


def _split_sizes(n: int, val: float, test: float) -> tuple[int, int]:
    """(n_val, n_test) by rounding half up, >= 1 each when n >= 3, and >= 1 left to train."""
    n_val, n_test = math.floor(n * val + 0.5), math.floor(n * test + 0.5)
    min_val = 1 if n >= 3 and val > 0 else 0
    min_test = 1 if n >= 3 and test > 0 else 0
    n_val, n_test = max(n_val, min_val), max(n_test, min_test)
    while n - n_val - n_test < 1 and n_val + n_test > 0:
        if n_val > min_val and (n_val >= n_test or n_test <= min_test):
            n_val -= 1
        elif n_test > min_test:
            n_test -= 1
        else:
            break
    return n_val, n_test
