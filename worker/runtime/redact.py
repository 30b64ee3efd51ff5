"""Job errors without server paths: a stored (and served) error names a checkpoint or dataset
by its record id, never by where the server keeps it.

An exception's text often carries a path (``[Errno 2] No such file or directory:
'/srv/store/checkpoints/<sha>.safetensors'``, ``cannot decode /srv/data/x/NORMAL/3.png``).
That tells an API user about the server's disks and nothing they can act on; the id is what
they uploaded and can look up. The worker's log keeps the full text for the operator.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from sqlalchemy.orm import Session

from worker.store import ArtifactStore
from worker.store.models import Checkpoint, Dataset, Job

STORE = "<store>"  # what is left of a store path no record names
DATA = "<data root>"  # ... and of a path under a configured data root
END = r"(?=$|[/\s'\":,;)\]])"  # a path ends at a separator, never inside a longer name
CHECKPOINT_FILE = re.compile(r"checkpoints/([0-9a-f]{64})\.safetensors")


def _forms(path: str | Path) -> list[str]:
    """A path as the message may spell it: as given and resolved (symlinks, ``..``)."""
    given = str(path)
    forms = [given]
    try:
        resolved = str(Path(path).resolve())
    except (OSError, RuntimeError, ValueError):
        return forms
    return forms if resolved == given else [given, resolved]


def file_labels(path: str | Path, name: str) -> list[tuple[str, str]]:
    """``path`` (as given and resolved) labelled ``name``: an upload named as it was sent."""
    return [(form, name) for form in _forms(path)]


def job_labels(session: Session, job: Job, store: ArtifactStore) -> list[tuple[str, str]]:
    """(server path, public name) of the checkpoints and the dataset a job uses."""
    config = job.config or {}
    ids = [job.baseline_id, job.candidate_id, config.get("baseline_replica_id")]
    ids += list(config.get("trajectory_ids") or [])
    labels: list[tuple[str, str]] = []
    for ident in ids:
        record = session.get(Checkpoint, ident) if isinstance(ident, str) else None
        if record is not None:
            path = store.resolve(record.storage_path)
            labels += [(form, f"checkpoint:{record.id}") for form in _forms(path)]
    dataset = session.get(Dataset, job.dataset_id)
    if dataset is not None:
        root = store.resolve(dataset.root_path)
        labels += [(form, f"dataset:{dataset.id}") for form in _forms(root)]
    return labels


def redact(
    message: str, labels: Iterable[tuple[str, str]], roots: Iterable[tuple[str | Path, str]]
) -> str:
    """``message`` with each labelled path replaced by its name (a path inside a dataset keeps
    its part below the root: ``dataset:<id>/NORMAL/3.png``), then any other path under one of
    ``roots`` ((folder, name): the store, the data roots) cut to what is below it (a stored
    checkpoint file: its hash)."""
    for path, name in sorted(labels, key=lambda pair: len(pair[0]), reverse=True):
        if path.strip("/"):
            message = re.sub(re.escape(path.rstrip("/")) + END, lambda _, n=name: n, message)
    forms = {(form.rstrip("/"), name) for root, name in roots for form in _forms(root)}
    for root, name in sorted(forms, key=lambda pair: len(pair[0]), reverse=True):
        if root:
            message = re.sub(
                re.escape(root) + r"(?:/([^\s'\"]*))?" + END,
                lambda m, name=name: _below(m.group(1) or "", name),
                message,
            )
    return message


def _below(rest: str, name: str) -> str:
    found = CHECKPOINT_FILE.fullmatch(rest)
    if found and name == STORE:
        return f"checkpoint sha256:{found.group(1)}"
    return f"{name}/{rest}" if rest else name
