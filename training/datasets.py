"""Dataset discovery and splits, torch-free (the pixels: :mod:`training.image_dataset`).

A dataset is a directory: either images listed in ``manifest.csv`` (``path,label`` plus
optional ``split``, ``mask``, ``lung_mask``, ``shortcut_mask``, ``bbox``, ``marker``) or an
ImageFolder tree ``root/<class>/**/<image>`` (masks under ``masks/``, ``lung_masks/``,
``shortcut_masks/`` at the image's relative path).
:func:`discover` turns it into a :class:`DatasetIndex` (no pixels read) whose
:meth:`~DatasetIndex.fingerprint` identifies the data in checkpoints and job records.

Torch-free, so the API process can discover and fingerprint uploads.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any

from training.checkpoint_format import sha256_file
from training.imageio import ImageReadError, image_size, is_image_file

MANIFEST_NAME = "manifest.csv"
MASKS_DIR = "masks"
# the reference regions a sample can bring (worker.catalog.REGIONS names the same three): the
# manifest column of its mask PNG and, in an ImageFolder tree, the folder mirroring the images
REGION_COLUMNS = {"lesion": "mask", "lung": "lung_mask", "shortcut": "shortcut_mask"}
GROUP_COLUMN = "group"  # the patient (or study) an image belongs to: splits never divide one
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
        digest.update(json.dumps(header, sort_keys=True).encode())
        # a sample's group counts where there is one (it decides the split); without groups the
        # fingerprint is what it always was
        rows = sorted(
            (self.relative(s), s.label, _file_size(s.path), *((s.group,) if s.group else ()))
            for s in self.samples
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
        return DatasetIndex(self.root, list(self.class_names), chosen, [])

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
    if check_headers:
        index = _readable(index, on_error)
    if not index.samples:
        extra = f" ({len(index.skipped)} skipped)" if index.skipped else ""
        raise DatasetError(f"{root}: no images found{extra}")
    return index


def _readable(index: DatasetIndex, on_error: str) -> DatasetIndex:
    """``index`` without the samples whose header does not read (each skipped, or the first
    one raised)."""
    kept, skipped = [], list(index.skipped)
    for sample in index.samples:
        try:
            image_size(sample.path)
        except ImageReadError as exc:
            if on_error == "raise":
                raise DatasetError(
                    f"{index.relative(sample)}: {exc.reason} (--on-bad-file skip leaves such "
                    "files out and lists them)"
                ) from None
            skipped.append((index.relative(sample), exc.reason))
            continue
        kept.append(sample)
    return replace(index, samples=kept, skipped=skipped)


def summary(index: DatasetIndex) -> dict[str, Any]:
    """What a command that read the dataset says about it: images per class and split, and
    every skipped file with its reason."""
    per_class = {name: 0 for name in index.class_names}
    per_split: dict[str, int] = {}
    for sample in index.samples:
        per_class[index.class_names[sample.label]] += 1
        if sample.split:
            per_split[sample.split] = per_split.get(sample.split, 0) + 1
    return {
        "root": str(index.root),
        "images": len(index.samples),
        "classes": per_class,
        "splits": per_split,
        "skipped": [{"path": path, "reason": reason} for path, reason in index.skipped],
    }


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


def _inside(root: Path, path: Path) -> bool:
    """True when the path, symlinks resolved, stays under the (resolved) root."""
    return path.resolve().is_relative_to(root)


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


def _from_manifest(
    root: Path, manifest: Path, class_names: list[str] | None, on_error: str
) -> DatasetIndex:
    rows = list(_read_manifest(root, manifest))
    names = class_names or sorted({row.label for row in rows})
    position = {name: i for i, name in enumerate(names)}
    samples: list[Sample] = []
    skipped: list[tuple[str, str]] = []
    for row in rows:
        if row.label not in position:
            raise DatasetError(
                f"{MANIFEST_NAME} line {row.line}: label {row.label!r} is not in "
                f"class_names {names}"
            )
        problem = _missing_file_problem(root, row)
        if problem is not None:
            if on_error == "raise":
                raise DatasetError(f"{MANIFEST_NAME} line {row.line}: {problem}")
            skipped.append((_relative(root, row.path), f"line {row.line}: {problem}"))
            continue
        label = position[row.label]
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
            )
        )
    return DatasetIndex(root, list(names), samples, skipped)


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
        rel = _relative(root, path)
        if not path.exists():
            return f"{what}{rel} does not exist"
        if not path.is_file():
            return f"{what}{rel} is not a file"
    return None


def _read_manifest(root: Path, manifest: Path) -> Iterator[_Row]:
    """Parse and check every row; line numbers are physical lines (header = line 1)."""
    try:
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            columns = _manifest_columns(reader.fieldnames)
            seen: dict[str, int] = {}
            for raw in reader:
                row = _parse_row(root, reader.line_num, raw, columns)
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


def _manifest_columns(fieldnames: Sequence[str] | None) -> dict[str, str]:
    """Map canonical column names to the header's spelling (case and spaces ignored)."""
    if not fieldnames:
        raise DatasetError(f"{MANIFEST_NAME} line 1: empty manifest (no header)")
    columns = {name.strip().lower(): name for name in fieldnames if name is not None}
    missing = [c for c in ("path", "label") if c not in columns]
    if missing:
        raise DatasetError(
            f"{MANIFEST_NAME} line 1: missing required column(s) {missing}; "
            f"header is {list(fieldnames)}"
        )
    return columns


def _parse_row(root: Path, line: int, raw: dict[str, Any], columns: dict[str, str]) -> _Row:
    def cell(name: str) -> str:
        value = raw.get(columns[name]) if name in columns else None
        return value.strip() if isinstance(value, str) else ""

    where = f"{MANIFEST_NAME} line {line}"
    path, label = cell("path"), cell("label")
    if not path or not label:
        raise DatasetError(f"{where}: path and label must both be set")
    split = None
    if cell("split"):
        split = _normalise_split(cell("split"))
        if split is None:
            raise DatasetError(f"{where}: unknown split {cell('split')!r}; use {SPLITS}")
    masks = {
        kind: _safe_path(root, cell(column), f"{where}, column {column}") if cell(column) else None
        for kind, column in REGION_COLUMNS.items()
    }
    bbox = _parse_boxes(cell(BBOX_COLUMN), where) if cell(BBOX_COLUMN) else None
    marker = _parse_marker(cell("marker"), where) if cell("marker") else None
    return _Row(
        line,
        _safe_path(root, path, where),
        label,
        split,
        masks["lesion"],
        marker,
        masks["lung"],
        masks["shortcut"],
        bbox,
        cell(GROUP_COLUMN) or None,
    )


def _safe_path(root: Path, text: str, where: str) -> Path:
    """root/text, refusing absolute paths, '..' and symlinks that lead out of the root."""
    rel = PurePosixPath(text.replace("\\", "/"))
    if rel.is_absolute() or (rel.parts and rel.parts[0].endswith(":")):
        raise DatasetError(f"{where}: {text} is an absolute path; paths must be relative")
    if ".." in rel.parts:
        raise DatasetError(f"{where}: {text} escapes the dataset root ('..' not allowed)")
    path = root.joinpath(*rel.parts)
    if not _inside(root, path):
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
    images are in two splits.

    Deterministic for a seed and independent of discovery order (samples are sorted by
    relative path per class before shuffling, each class with its own seeded stream).
    A class with >= 3 samples gets at least one sample in every split whose fraction > 0.
    """
    if not (0 <= val < 1 and 0 <= test < 1 and val + test < 1):
        raise ValueError(f"need 0 <= val, test and val + test < 1, got val={val} test={test}")
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
    if any(s.split for s in index.samples) or record.get("fingerprint") != index.fingerprint():
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
