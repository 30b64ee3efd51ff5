"""Hostile checkpoint headers over real HTTP: bounded, validated, 422 naming the field, keep-alive.

The audit's catalogue (issue 15, item 4): metadata that is stored and then breaks a job
(``input_size`` 20000 x 20000), that is accepted though the safetensors library refuses it later
(``num_classes: 5.0``, a boolean in a shape, non-string ``__metadata__`` values), and metadata
that answered 500 and dropped the keep-alive connection (``__metadata__`` a list, JSON nested
100k deep, ``phase`` an object, strings longer than their Postgres column, a NUL). Each case is
uploaded to a real uvicorn on one keep-alive connection; the reader is also tested directly.
"""

from __future__ import annotations

import http.client
import json
import socket
import struct
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi.testclient import TestClient

from service import migrate
from service.app import create_app
from tests.service.conftest import assert_problem, fresh_postgres_database
from training.checkpoint_format import (
    MAX_ARCH_CHARS,
    MAX_INPUT_SIDE,
    MAX_METADATA_BYTES,
    MAX_PHASE_CHARS,
    MIN_INPUT_SIDE,
    CheckpointError,
    json_depth,
    read_metadata,
)
from worker.store.models import Checkpoint
from worker.store.settings import Settings

GOOD_META: dict[str, Any] = {
    "arch": "tinycnn",
    "num_classes": 2,
    "class_names": ["normal", "effusion"],
    "input_size": [32, 32],
    "in_chans": 3,
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "phase": "tl",
    "target_layer": None,
    "train_metrics": {"accuracy": 0.5},
}
TENSORS: dict[str, Any] = {"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}}
DATA = b"\0" * 16
DEEP = 100_000


def header_bytes(header: Any) -> bytes:
    return json.dumps(header).encode() if not isinstance(header, bytes) else header


def safetensors_bytes(header: Any, data: bytes = DATA) -> bytes:
    """A safetensors file: 8-byte little-endian length, the JSON header, the data."""
    raw = header_bytes(header)
    return struct.pack("<Q", len(raw)) + raw + data


def with_meta(**changes: Any) -> dict[str, Any]:
    """A header whose camdrift metadata is GOOD_META with ``changes`` (``...`` deletes a key)."""
    meta = {**GOOD_META, **changes}
    meta = {k: v for k, v in meta.items() if v is not ...}
    return {**TENSORS, "__metadata__": {"camdrift": json.dumps(meta)}}


def with_raw_meta(text: str) -> dict[str, Any]:
    return {**TENSORS, "__metadata__": {"camdrift": text}}


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# (id, file bytes, words the 422's message must contain: the field at fault)
CASES: list[tuple[str, bytes, str]] = [
    (
        "input_size 20000x20000",
        safetensors_bytes(with_meta(input_size=[20000, 20000])),
        "input_size",
    ),
    ("input_size [0, 64]", safetensors_bytes(with_meta(input_size=[0, 64])), "input_size"),
    ("input_size [-5, 64]", safetensors_bytes(with_meta(input_size=[-5, 64])), "input_size"),
    ("input_size a boolean", safetensors_bytes(with_meta(input_size=[True, 64])), "input_size"),
    ("input_size floats", safetensors_bytes(with_meta(input_size=[64.0, 64])), "input_size"),
    ("input_size 3 sides", safetensors_bytes(with_meta(input_size=[64, 64, 64])), "input_size"),
    (
        "metadata over the cap",
        safetensors_bytes(with_meta(notes="x" * MAX_METADATA_BYTES)),
        "__metadata__",
    ),
    ("num_classes a float (2.0)", safetensors_bytes(with_meta(num_classes=2.0)), "num_classes"),
    (
        "num_classes a boolean",
        safetensors_bytes(with_meta(num_classes=True, class_names=["a"])),
        "num_classes",
    ),
    (
        "a boolean in a tensor shape",
        safetensors_bytes({**with_meta(), "w": {**TENSORS["w"], "shape": [True, 4]}}),
        "shape",
    ),
    (
        "a float in data_offsets",
        safetensors_bytes({**with_meta(), "w": {**TENSORS["w"], "data_offsets": [0, 16.0]}}),
        "data_offsets",
    ),
    (
        "a non-string __metadata__ value",
        safetensors_bytes(
            {**TENSORS, "__metadata__": {"camdrift": json.dumps(GOOD_META), "format": 5}}
        ),
        "__metadata__.format",
    ),
    ("__metadata__ a list", safetensors_bytes({**TENSORS, "__metadata__": ["x"]}), "__metadata__"),
    ("__metadata__ a string", safetensors_bytes({**TENSORS, "__metadata__": "x"}), "__metadata__"),
    (
        "camdrift value a number",
        safetensors_bytes({**TENSORS, "__metadata__": {"camdrift": 5}}),
        "__metadata__.camdrift",
    ),
    (
        "camdrift value an object",
        safetensors_bytes({**TENSORS, "__metadata__": {"camdrift": GOOD_META}}),
        "__metadata__.camdrift",
    ),
    ("camdrift JSON a number", safetensors_bytes(with_raw_meta("5")), "camdrift"),
    ("camdrift JSON a list", safetensors_bytes(with_raw_meta("[1, 2]")), "camdrift"),
    ("camdrift not JSON", safetensors_bytes(with_raw_meta("{arch: tinycnn")), "camdrift"),
    ("JSON nested 100k deep", safetensors_bytes(with_raw_meta(nested(DEEP))), "__metadata__"),
    (
        "JSON nested 10k deep under the size cap",
        safetensors_bytes(with_raw_meta('{"train_metrics": ' + nested(10_000) + "}")),
        "nested",
    ),
    (
        "a header nested 100k deep",
        safetensors_bytes(
            b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}, "x": '
            + nested(DEEP).encode()
            + b"}"
        ),
        "nested",
    ),
    ("phase an object", safetensors_bytes(with_meta(phase={"name": "tl"})), "phase"),
    ("phase a number", safetensors_bytes(with_meta(phase=7)), "phase"),
    ("phase over 50 characters", safetensors_bytes(with_meta(phase="p" * 51)), "phase"),
    ("arch over 100 characters", safetensors_bytes(with_meta(arch="a" * 101)), "arch"),
    ("arch empty", safetensors_bytes(with_meta(arch="")), "arch"),
    ("arch a list", safetensors_bytes(with_meta(arch=["tinycnn"])), "arch"),
    ("a NUL in arch", safetensors_bytes(with_meta(arch="tiny\x00cnn")), "arch"),
    (
        "a NUL in a class name",
        safetensors_bytes(with_meta(class_names=["nor\x00mal", "effusion"])),
        "class_names[0]",
    ),
    (
        "a NUL in a nested key",
        safetensors_bytes(with_meta(train_metrics={"acc\x00": 1.0})),
        "train_metrics",
    ),
    (
        "NaN in mean",
        safetensors_bytes(with_raw_meta(json.dumps({**GOOD_META, "mean": [float("nan"), 1, 1]}))),
        "mean[0]",
    ),
    ("std zero", safetensors_bytes(with_meta(std=[0.0, 1.0, 1.0])), "std"),
    ("mean of 2 channels", safetensors_bytes(with_meta(mean=[0.5, 0.5])), "mean"),
    ("class names repeated", safetensors_bytes(with_meta(class_names=["a", "a"])), "class_names"),
    ("header not UTF-8", safetensors_bytes(b'{"w": "\xff\xfe"}'), "UTF-8"),
    ("header length past the file", struct.pack("<Q", 10**6) + b"{}", "header"),
    ("header length 2**40", struct.pack("<Q", 2**40) + b"{}", "header"),
]
ACCEPTED: list[tuple[str, dict[str, Any]]] = [
    ("phase of 50 characters", {"phase": "p" * MAX_PHASE_CHARS}),
    ("arch of 100 characters", {"arch": "a" * MAX_ARCH_CHARS}),
    ("the smallest and largest sides", {"input_size": [MIN_INPUT_SIDE, MAX_INPUT_SIDE]}),
    ("no phase", {"phase": None}),
    ("one grey channel", {"mean": [0.5], "std": [0.25]}),
    ("unicode names", {"class_names": ["épanchement", "正常"]}),
]


# --------------------------------------------------------------------------- a real server


class LiveServer:
    """uvicorn serving ``app`` on a free loopback port, in a thread of this process."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        config = uvicorn.Config(app, log_level="warning", lifespan="on", timeout_keep_alive=30)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            assert time.monotonic() < deadline, "uvicorn did not start"
            assert self.thread.is_alive(), "uvicorn stopped while starting"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=20)
        self.sock.close()

    def connection(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        conn.connect()
        return conn


def multipart(data: bytes, filename: str = "x.safetensors") -> tuple[bytes, str]:
    boundary = "camdrift-test-boundary-7f3a"
    head = (
        f"--{boundary}\r\n"
        f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def request(
    conn: http.client.HTTPConnection, method: str, url: str, file: bytes | None = None
) -> tuple[int, dict[str, str], bytes]:
    headers: dict[str, str] = {}
    body = None
    if file is not None:
        body, headers["Content-Type"] = multipart(file)
    conn.request(method, url, body=body, headers=headers)
    response = conn.getresponse()
    return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()


def local_port(conn: http.client.HTTPConnection) -> int | None:
    return conn.sock.getsockname()[1] if conn.sock is not None else None


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    folder = tmp_path_factory.mktemp("live")
    settings = Settings(database_url=f"sqlite:///{folder}/db.sqlite", storage=str(folder / "store"))
    migrate.upgrade(settings)
    with LiveServer(create_app(settings)) as live:
        yield live


@pytest.mark.parametrize(("file", "words"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_metadata_is_a_422_naming_the_field_on_a_kept_connection(
    server: LiveServer, file: bytes, words: str
) -> None:
    conn = server.connection()
    port = local_port(conn)
    status, headers, body = request(conn, "POST", "/checkpoints", file)
    assert status == 422, body[:500]
    assert headers["content-type"].startswith("application/problem+json")
    problem = json.loads(body)
    assert problem["status"] == 422
    [error] = problem["errors"]
    assert error["field"] == "file"
    assert words in error["message"], error["message"]
    assert words in problem["detail"]
    assert headers.get("connection", "").lower() != "close"
    assert local_port(conn) == port, "the server closed the keep-alive connection"
    status, _, listed = request(conn, "GET", "/checkpoints")
    assert status == 200 and json.loads(listed)["total"] == 0  # nothing stored
    assert local_port(conn) == port
    conn.close()


def test_a_good_checkpoint_on_the_same_server(server: LiveServer) -> None:
    conn = server.connection()
    status, _, body = request(conn, "POST", "/checkpoints", safetensors_bytes(with_meta()))
    assert status == 201, body
    record = json.loads(body)
    assert record["input_size"] == [32, 32] and record["meta"] == GOOD_META
    conn.close()


# --------------------------------------------------------------------------- bounds


@pytest.mark.parametrize(("changes"), [c[1] for c in ACCEPTED], ids=[c[0] for c in ACCEPTED])
def test_values_at_the_bounds_are_accepted(client: TestClient, changes: dict[str, Any]) -> None:
    response = client.post(
        "/checkpoints", files={"file": ("c.safetensors", safetensors_bytes(with_meta(**changes)))}
    )
    assert response.status_code == 201, response.text
    stored = response.json()["meta"]
    assert {k: stored.get(k) for k in changes} == changes


def test_metadata_just_under_the_cap_is_accepted(client: TestClient) -> None:
    base = len(json.dumps(with_meta(notes="")["__metadata__"]))
    fits = with_meta(notes="x" * (MAX_METADATA_BYTES - base))
    assert len(json.dumps(fits["__metadata__"]).encode()) == MAX_METADATA_BYTES
    ok = client.post("/checkpoints", files={"file": ("c", safetensors_bytes(fits))})
    assert ok.status_code == 201, ok.text
    over = with_meta(notes="x" * (MAX_METADATA_BYTES - base + 1))
    response = client.post("/checkpoints", files={"file": ("c", safetensors_bytes(over))})
    assert "__metadata__" in assert_problem(response, 422, "file")["detail"]


def test_listing_does_not_echo_large_metadata(client: TestClient) -> None:
    """60 MiB of metadata was stored and echoed by every GET /checkpoints; now at most the cap."""
    for i in range(3):
        fits = with_meta(notes=str(i) * (MAX_METADATA_BYTES // 2))
        assert client.post(
            "/checkpoints", files={"file": ("c", safetensors_bytes(fits))}
        ).is_success
    assert len(client.get("/checkpoints").content) < 3 * MAX_METADATA_BYTES


def test_bounds_match_the_columns() -> None:
    columns = Checkpoint.__table__.c
    assert columns.phase.type.length == MAX_PHASE_CHARS
    assert columns.arch.type.length == MAX_ARCH_CHARS


@pytest.mark.services
def test_postgres_columns_never_500(tmp_path: Path, submitted: list[str]) -> None:
    """On Postgres an over-long phase or arch and a NUL failed the INSERT (500); the bounds are
    the columns' own, so the longest allowed values store and one more character is a 422."""
    with fresh_postgres_database() as (url, _, _conn):
        settings = Settings(database_url=url, storage=str(tmp_path / "store"))
        migrate.upgrade(settings)
        with TestClient(create_app(settings)) as client:
            for changes in (
                {"phase": "p" * MAX_PHASE_CHARS},
                {"arch": "a" * MAX_ARCH_CHARS},
                {"train_metrics": {"note": "é" * 100}},
            ):
                response = client.post(
                    "/checkpoints", files={"file": ("c", safetensors_bytes(with_meta(**changes)))}
                )
                assert response.status_code == 201, response.text
            for changes, field in (
                ({"phase": "p" * (MAX_PHASE_CHARS + 1)}, "phase"),
                ({"arch": "a" * (MAX_ARCH_CHARS + 1)}, "arch"),
                ({"arch": "tiny\x00cnn"}, "arch"),
                ({"train_metrics": {"note": "a\x00b"}}, "train_metrics"),
            ):
                response = client.post(
                    "/checkpoints", files={"file": ("c", safetensors_bytes(with_meta(**changes)))}
                )
                assert field in assert_problem(response, 422, "file")["detail"]
            assert client.get("/checkpoints").json()["total"] == 3


# --------------------------------------------------------------------------- the reader


def test_the_reader_names_the_field(tmp_path: Path) -> None:
    """``training.checkpoint_format`` (the workers' reader too) refuses with the key at fault."""
    for name, data, words in CASES:
        path = tmp_path / "c.safetensors"
        path.write_bytes(data)
        with pytest.raises(CheckpointError) as caught:
            read_metadata(path)
        assert words in str(caught.value), name
    path = tmp_path / "good.safetensors"
    path.write_bytes(safetensors_bytes(with_meta()))
    assert read_metadata(path) == GOOD_META


def test_a_deep_document_is_refused_without_recursion(tmp_path: Path) -> None:
    """Nested far beyond the interpreter's recursion limit: refused fast, no RecursionError."""
    path = tmp_path / "deep.safetensors"
    path.write_bytes(safetensors_bytes(with_raw_meta(nested(10_000_000)[:60_000])))
    started = time.perf_counter()
    with pytest.raises(CheckpointError, match="nested"):
        read_metadata(path)
    assert time.perf_counter() - started < 1.0


def _depth(value: Any) -> int:
    """The oracle: nesting depth of a parsed JSON value (recursive; small documents only)."""
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _document(rng: Any, depth: int) -> Any:
    tricky = ['"', "\\", "[", "]", "{", "}", '\\"', "\\\\", "a", "é", "\n"]
    kind = rng.integers(0, 4) if depth < 8 else 3
    if kind == 0:
        return [_document(rng, depth + 1) for _ in range(rng.integers(0, 4))]
    if kind == 1:
        return {
            "".join(rng.choice(tricky, size=rng.integers(0, 5))): _document(rng, depth + 1)
            for _ in range(rng.integers(0, 4))
        }
    if kind == 2:
        return "".join(rng.choice(tricky, size=rng.integers(0, 8)))
    return float(rng.normal()) if rng.random() < 0.5 else int(rng.integers(-9, 9))


def test_json_depth_matches_a_recursive_count() -> None:
    import numpy as np

    rng = np.random.default_rng(0)
    for _ in range(400):
        doc = _document(rng, 0)
        text = json.dumps(doc, ensure_ascii=bool(rng.integers(0, 2)))
        assert json_depth(text.encode()) == _depth(doc), text
    assert json_depth(b"") == 0 and json_depth(b"7") == 0
    assert json_depth(b'"[[[" ') == 0 and json_depth(b'["\\\\", ["\\"]"]]') == 2
    assert json_depth(nested(DEEP).encode()) == DEEP
