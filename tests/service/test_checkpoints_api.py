"""POST/GET /checkpoints: header validation without torch, dedup by sha256, size limits."""

from __future__ import annotations

import json
import struct

from tests.service.conftest import assert_problem, upload_checkpoint
from training.checkpoint_format import sha256_file


def _stored(client) -> list[str]:
    store = client.app.state.store
    return sorted(p.name for p in (store.root / "checkpoints").iterdir())


def _tmp_files(client) -> list[str]:
    return [p.name for p in client.app.state.store.tmp_dir.iterdir()]


def test_upload_then_same_bytes_give_the_same_record(client, checkpoint_files) -> None:
    first = upload_checkpoint(client, checkpoint_files.baseline, name="tl run")
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["sha256"] == sha256_file(checkpoint_files.baseline)
    assert body["arch"] == "tinycnn" and body["phase"] == "tl" and body["name"] == "tl run"
    assert body["num_classes"] == 5 and body["input_size"] == [96, 96]
    assert body["meta"]["class_names"] == body["class_names"]
    again = upload_checkpoint(client, checkpoint_files.baseline)
    assert again.status_code == 200
    assert again.json()["id"] == body["id"]
    assert _stored(client) == [f"{body['sha256']}.safetensors"]
    assert _tmp_files(client) == []
    got = client.get(f"/checkpoints/{body['id']}")
    assert got.status_code == 200 and got.json() == body


def test_default_name_is_the_file_stem(client, checkpoint_files) -> None:
    body = upload_checkpoint(client, checkpoint_files.candidate).json()
    assert body["name"] == "ft"


def test_list_is_paged(client, checkpoint_files) -> None:
    for path in (checkpoint_files.baseline, checkpoint_files.candidate, checkpoint_files.replica):
        assert upload_checkpoint(client, path).status_code == 201
    page = client.get("/checkpoints", params={"limit": 2}).json()
    assert page["total"] == 3 and len(page["items"]) == 2 and page["limit"] == 2
    rest = client.get("/checkpoints", params={"limit": 2, "offset": 2}).json()
    ids = {i["id"] for i in page["items"]} | {i["id"] for i in rest["items"]}
    assert len(ids) == 3
    assert_problem(client.get("/checkpoints", params={"limit": 0}), 422, "query.limit")


def test_unknown_checkpoint_is_404(client) -> None:
    assert_problem(client.get("/checkpoints/nope"), 404)


def _forge(path, tmp_path, mutate) -> bytes:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    mutate(header)
    text = json.dumps(header).encode()
    return struct.pack("<Q", len(text)) + text + raw[8 + n :]


def test_forged_header_is_422_and_nothing_is_stored(client, checkpoint_files, tmp_path) -> None:
    def stretch(header):
        name = next(k for k in header if k != "__metadata__")
        header[name]["data_offsets"][1] += 10**9

    forged = _forge(checkpoint_files.baseline, tmp_path, stretch)
    response = client.post("/checkpoints", files={"file": ("x.safetensors", forged)})
    body = assert_problem(response, 422, "file")
    assert "forged" in body["errors"][0]["message"]
    assert _stored(client) == [] and _tmp_files(client) == []
    assert client.get("/checkpoints").json()["total"] == 0


def test_not_safetensors_is_422(client) -> None:
    pickle_zip = b"PK\x03\x04" + b"\x00" * 200  # what torch.save writes: a zip of pickles
    response = client.post("/checkpoints", files={"file": ("evil.pt", pickle_zip)})
    body = assert_problem(response, 422, "file")
    assert "not a safetensors file" in body["detail"]


def test_empty_file_is_422(client) -> None:
    assert_problem(client.post("/checkpoints", files={"file": ("e", b"")}), 422, "file")


def test_safetensors_without_camdrift_metadata_is_422(client, checkpoint_files) -> None:
    response = upload_checkpoint(client, checkpoint_files.no_metadata)
    body = assert_problem(response, 422, "file")
    assert "camdrift metadata" in body["detail"]


def test_oversize_upload_is_413(make_client, checkpoint_files) -> None:
    client = make_client(max_upload_bytes=1000)
    # Far over: refused by Content-Length before any byte is read.
    assert_problem(upload_checkpoint(client, checkpoint_files.baseline), 413, "body")
    # Just over: refused while streaming, by the exact file-size limit.
    response = client.post("/checkpoints", files={"file": ("x.safetensors", b"\0" * 1001)})
    assert_problem(response, 413, "file")
    assert client.post("/checkpoints", files={"file": ("x", b"\0" * 1000)}).status_code == 422
    assert _stored(client) == [] and _tmp_files(client) == []


def test_missing_file_unknown_field_and_wrong_media_type(client) -> None:
    assert_problem(client.post("/checkpoints", files={"name": (None, "x")}), 422, "file")
    assert_problem(client.post("/checkpoints", data={"name": "x"}), 415)
    response = client.post("/checkpoints", files={"file": ("a", b"x")}, data={"colour": "red"})
    assert_problem(response, 422, "colour")
    assert_problem(client.post("/checkpoints", json={"file": "x"}), 415)


def test_two_file_parts_are_refused(client, checkpoint_files) -> None:
    raw = checkpoint_files.baseline.read_bytes()
    response = client.post("/checkpoints", files=[("file", ("a", raw)), ("file", ("b", raw))])
    assert_problem(response, 422, "file")


def test_malformed_multipart_is_400(client) -> None:
    response = client.post(
        "/checkpoints",
        content=b"--xyz\r\nno headers here at all",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert response.status_code in (400, 422), response.text
    assert response.headers["content-type"].startswith("application/problem+json")


class _Payload:
    """Unpickling this would write a marker file: the proof that code ran."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_real_pickled_code_checkpoint_is_refused_unexecuted(client, tmp_path) -> None:
    import io

    import torch

    marker = tmp_path / "executed"
    buffer = io.BytesIO()
    torch.save({"w": torch.zeros(2), "payload": _Payload(str(marker))}, buffer)
    response = client.post("/checkpoints", files={"file": ("evil.pt", buffer.getvalue())})
    assert_problem(response, 422, "file")
    assert not marker.exists(), "the upload must never be unpickled"
    assert _stored(client) == [] and _tmp_files(client) == []
