"""Staged uploads in ``store/tmp``: owned by the API process that stages them, swept when orphaned.

An upload streams into ``store/tmp`` before it is validated and renamed into place; an API
killed mid-upload (kill -9, out of memory, a container stop) leaves it there for good. Every API
process holds an exclusive lock on ``tmp-owners/<token>.lock`` (beside ``tmp``) for its lifetime
and puts its
``<token>`` in the name of everything it stages. The sweep, at start-up and every few minutes,
removes an entry whose owner holds no lock any more (that process is gone, whichever host
restarted it) and an untagged entry once older than ``tmp_max_age_s``. Several API processes may
share one store: a live one's entries are never touched, however long an upload takes.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # Windows: no advisory locks; tagged entries then go by age as well
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger("camdrift.api")

OWNERS_SUFFIX = "-owners"  # store/tmp-owners holds the lock files (tmp holds only uploads)
SWEEP_EVERY_S = 300.0  # at most; a shorter tmp_max_age_s sweeps more often
_TOKEN = re.compile(r"(?<![0-9a-f])([0-9a-f]{32})(?![0-9a-f])")


class StagingOwner:
    """This process's claim on what it stages: a lock held open until :meth:`release`."""

    def __init__(self, tmp_dir: Path) -> None:
        self.token = uuid.uuid4().hex
        owners = owners_dir(tmp_dir)
        owners.mkdir(parents=True, exist_ok=True)
        self.path = owners / f"{self.token}.lock"
        # Locked under a temporary name, then renamed: a sweep never sees it unlocked.
        pending = owners / f".{self.token}.pending"
        self._fd: int | None = os.open(pending, os.O_CREAT | os.O_RDWR, 0o644)
        if fcntl is not None:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.replace(pending, self.path)

    def suffix(self, suffix: str) -> str:
        """A ``temp_path`` suffix carrying the token: ``.<token>.upload``."""
        return f".{self.token}{suffix}"

    def prefix(self, prefix: str) -> str:
        """A ``staging_dir`` prefix carrying the token: ``dataset-<token>-``."""
        return f"{prefix}{self.token}-"

    def release(self) -> None:
        if self._fd is None:
            return
        self.path.unlink(missing_ok=True)
        os.close(self._fd)  # closing drops the lock
        self._fd = None


def owners_dir(tmp_dir: Path) -> Path:
    """Where the owners' lock files live: ``store/tmp-owners``."""
    return tmp_dir.with_name(tmp_dir.name + OWNERS_SUFFIX)


def staging_of(request: Any) -> StagingOwner:
    """The app's owner (``app.state.staging``), for a route that stages an upload."""
    return request.app.state.staging


def sweep_staging(tmp_dir: Path, max_age_s: float, now: float | None = None) -> list[str]:
    """Remove orphaned entries of ``tmp_dir``; returns their names (sorted)."""
    now = time.time() if now is None else now
    if not tmp_dir.is_dir():
        return []
    owners = owners_dir(tmp_dir)
    dead = _reap_owners(owners, now, max_age_s)
    removed = []
    for entry in tmp_dir.iterdir():
        match = _TOKEN.search(entry.name)
        if match is not None and fcntl is not None:
            token = match.group(1)
            orphaned = token in dead or not (owners / f"{token}.lock").exists()
        else:
            orphaned = now - _newest_mtime(entry) > max_age_s
        if orphaned and _remove(entry):
            removed.append(entry.name)
    if removed:
        log.info("staging_swept removed=%d entries=%s", len(removed), ",".join(sorted(removed)))
    return sorted(removed)


def _reap_owners(owners: Path, now: float, max_age_s: float) -> set[str]:
    """Tokens of owners whose lock nobody holds (their lock files are removed)."""
    dead: set[str] = set()
    if fcntl is None or not owners.is_dir():
        return dead
    for path in owners.iterdir():
        if path.name.endswith(".pending"):  # a crash between create and rename
            if now - _newest_mtime(path) > max_age_s:
                path.unlink(missing_ok=True)
            continue
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:  # held: its process is alive
            os.close(fd)
            continue
        try:
            path.unlink(missing_ok=True)
            dead.add(path.stem)
        finally:
            os.close(fd)
    return dead


def _walk(entry: Path) -> Iterator[Path]:
    yield entry
    if entry.is_dir() and not entry.is_symlink():
        for folder, dirs, files in os.walk(entry):
            for name in (*dirs, *files):
                yield Path(folder) / name


def _newest_mtime(entry: Path) -> float:
    """The latest change under ``entry``: a folder being filled counts as fresh."""
    newest = 0.0
    for path in _walk(entry):
        try:
            newest = max(newest, path.lstat().st_mtime)
        except FileNotFoundError:
            continue
    return newest


def _remove(entry: Path) -> bool:
    try:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()
    except FileNotFoundError:
        return False
    except OSError as exc:
        log.warning("staging_sweep_failed entry=%s error=%s", entry.name, exc)
        return False
    return True


def sweep_interval(max_age_s: float) -> float:
    """Seconds between sweeps: half the age bound, at most ``SWEEP_EVERY_S``."""
    return min(max_age_s / 2, SWEEP_EVERY_S)
