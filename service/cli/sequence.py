"""Checkpoint sequences on the command line: ``--via`` files, folders and globs, in order."""

from __future__ import annotations

import glob
import re
from pathlib import Path
from typing import Any

VIA_HELP = (
    "Checkpoints between baseline and candidate, in order: files, folders or quoted globs "
    "('run/epochs/ft_epoch*.safetensors'); repeat the option. Adds the trajectory: drift from "
    "the baseline and between consecutive checkpoints"
)


def _natural_key(path: Path) -> list[Any]:
    """``epoch2`` before ``epoch10``: digit runs compare as numbers."""
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", path.name)]


def expand_sequence(values: list[str]) -> list[Path]:
    """``--via`` values -> checkpoint files in order: a file as given, a folder's
    ``*.safetensors`` and a glob's matches in natural order."""
    out: list[Path] = []
    for value in values:
        path = Path(value)
        if path.is_dir():
            found = sorted(path.glob("*.safetensors"), key=_natural_key)
        elif any(c in value for c in "*?["):
            found = sorted((Path(p) for p in glob.glob(value)), key=_natural_key)
        elif path.is_file():
            found = [path]
        else:
            raise FileNotFoundError(f"--via: no such checkpoint file or folder: {value}")
        if not found:
            raise FileNotFoundError(f"--via: {value} matches no checkpoint")
        out += found
    return out
