"""Job errors without server paths (``worker.runtime.redact``): each expected text is written
out by hand."""

from __future__ import annotations

from pathlib import Path

from worker.runtime.redact import DATA, STORE, redact

SHA = "ab" * 32


def test_a_stored_checkpoint_file_is_named_by_its_hash(tmp_path) -> None:
    store = tmp_path / "store"
    message = f"[Errno 2] No such file or directory: '{store}/checkpoints/{SHA}.safetensors'"
    assert redact(message, [], [(store, STORE)]) == (
        f"[Errno 2] No such file or directory: 'checkpoint sha256:{SHA}'"
    )


def test_labelled_paths_as_given_and_resolved(tmp_path) -> None:
    real = tmp_path / "real"
    (real / "NORMAL").mkdir(parents=True)
    link = tmp_path / "link"
    link.symlink_to(real)
    labels = [(str(link), "dataset:d1"), (str(real), "dataset:d1")]
    labels += [(str(tmp_path / "m.safetensors"), "checkpoint:c1")]
    message = (
        f"cannot decode {real}/NORMAL/3.png; {link}/NORMAL/4.png: truncated;"
        f" {tmp_path}/m.safetensors: bad header"
    )
    assert redact(message, labels, []) == (
        "cannot decode dataset:d1/NORMAL/3.png; dataset:d1/NORMAL/4.png: truncated;"
        " checkpoint:c1: bad header"
    )


def test_other_paths_under_a_root_keep_only_what_is_below(tmp_path) -> None:
    store, data = tmp_path / "store", tmp_path / "data"
    roots = [(store, STORE), (data, DATA)]
    message = f"{store}/jobs/j1/maps/rows-000000-000007.npz missing, {data}/x/NORMAL/1.png odd"
    assert redact(message, [], roots) == (
        "<store>/jobs/j1/maps/rows-000000-000007.npz missing, <data root>/x/NORMAL/1.png odd"
    )
    assert redact(f"{store}: read-only", [], roots) == "<store>: read-only"


def test_a_longer_name_that_starts_like_a_root_is_left_alone(tmp_path) -> None:
    store = tmp_path / "store"
    labels = [(str(tmp_path / "ds"), "dataset:d1")]
    message = f"{tmp_path}/storefront/a.png and {tmp_path}/dsx/b.png"
    assert redact(message, labels, [(store, STORE)]) == message


def test_a_message_without_paths_is_unchanged() -> None:
    message = "shard 3 exceeded its time limit of 1800 s"
    assert redact(message, [("/srv/d", "dataset:d")], [(Path("/srv/store"), STORE)]) == message
