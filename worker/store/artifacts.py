"""The artifact store: a directory for the large things SQL must not hold.

Layout under the root::

    checkpoints/<sha256>.safetensors   uploaded checkpoints, content-addressed
    datasets/<id>/                     extracted dataset uploads
    jobs/<id>/maps/rows-*.npz          raw attribution maps written by the workers
    tmp/                               staging; same filesystem, so renames are atomic

Records keep paths relative to the root (``relative``/``resolve``) so the API and workers may
mount the store at different places.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


class ArtifactStore:
    """Paths into the store and the atomic write helpers everything uses."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()

    def ensure(self) -> ArtifactStore:
        for sub in ("checkpoints", "datasets", "jobs", "tmp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        return self

    # -- paths

    @property
    def tmp_dir(self) -> Path:
        return self.root / "tmp"

    def checkpoint_path(self, sha256: str) -> Path:
        return self.root / "checkpoints" / f"{sha256}.safetensors"

    def import_path(self, request_key: str, suffix: str) -> Path:
        """An uploaded weights file waiting for a worker to convert it (``suffix``: its kind)."""
        return self.root / "imports" / f"{request_key}{suffix}"

    def dataset_dir(self, dataset_id: str) -> Path:
        return self.root / "datasets" / dataset_id

    def job_dir(self, job_id: str) -> Path:
        return self.root / "jobs" / job_id

    def maps_dir(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "maps"

    def relative(self, path: Path) -> str:
        """A store path as recorded in SQL (POSIX, relative to the root)."""
        return Path(path).resolve().relative_to(self.root).as_posix()

    def resolve(self, recorded: str) -> Path:
        """A recorded path back to a filesystem path (absolute paths pass through)."""
        path = Path(recorded)
        return path if path.is_absolute() else self.root / path

    # -- atomic writes

    def temp_path(self, suffix: str = "") -> Path:
        """A fresh, unused file name in the staging folder (the caller creates the file)."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.tmp_dir, suffix=suffix)
        os.close(fd)
        return Path(name)

    @contextmanager
    def staging_dir(self, prefix: str = "stage-") -> Iterator[Path]:
        """A temp folder in the store, removed on exit unless it was moved away."""
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        path = Path(tempfile.mkdtemp(dir=self.tmp_dir, prefix=prefix))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    def write_bytes(self, dest: Path, data: bytes) -> None:
        """Write ``dest`` atomically: readers see the old file or the whole new one."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        try:
            with open(tmp, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, dest)
        finally:
            tmp.unlink(missing_ok=True)

    def move_into(self, src: Path, dest: Path) -> None:
        """Rename a staged file or folder into place (atomic on one filesystem)."""
        dest.parent.mkdir(parents=True, exist_ok=True)
        os.replace(src, dest)
