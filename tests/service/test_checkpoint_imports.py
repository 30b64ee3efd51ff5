"""``POST /checkpoints`` with a weights file trained elsewhere and its form fields: the API
stores the file and an import (202 + Location, no torch in the API), the embedded worker fits it
to the arch; the checkpoint it makes holds exactly the uploaded tensors, and every refusal is a
problem naming the field, or a failed import naming the reason and the upload, never a server
path."""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import pytest
import safetensors.torch
import torch
from fastapi.testclient import TestClient

from tests.service.conftest import assert_problem, upload_checkpoint
from training.checkpoints import load_checkpoint
from training.zoo import create_model

CLASSES = ["effusion", "normal", "pneumonia"]
ARCH = "tinycnn"
FIELDS = {"arch": ARCH, "class_names": ",".join(CLASSES), "input_size": "40"}


@pytest.fixture(scope="module")
def state() -> dict[str, torch.Tensor]:
    torch.manual_seed(3)
    return {k: v.clone() for k, v in create_model(ARCH, len(CLASSES)).net.state_dict().items()}


FORMATS = {
    "plain.pt": lambda sd: sd,
    "dataparallel.pth": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "lightning.ckpt": lambda sd: {"state_dict": {f"model.{k}": v for k, v in sd.items()}},
}


def _write(tmp_path: Path, name: str, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / name
    if name.endswith(".safetensors"):
        safetensors.torch.save_file(state, str(path))
    else:
        torch.save(FORMATS[name](state), path)
    return path


def _finished(client: TestClient, location: str, timeout: float = 60.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        row = client.get(location).json()
        if row["status"] not in ("queued", "running"):
            return row
        assert time.monotonic() < deadline, row
        time.sleep(0.1)


@pytest.mark.parametrize("name", [*FORMATS, "bare.safetensors"])
def test_each_format_imports_to_the_uploaded_tensors(client, tmp_path, state, name) -> None:
    path = _write(tmp_path, name, state)
    response = upload_checkpoint(client, path, **FIELDS, name="chexnet-tl", phase="tl")
    assert response.status_code == 202, response.text
    started = response.json()
    assert response.headers["location"] == started["links"]["self"]
    assert started["status"] == "queued" and started["filename"] == name
    done = _finished(client, response.headers["location"])
    assert done["status"] == "succeeded", done
    record = client.get(f"/checkpoints/{done['checkpoint_id']}").json()
    assert done["links"]["checkpoint"] == f"/checkpoints/{record['id']}"
    assert (record["name"], record["arch"], record["phase"]) == ("chexnet-tl", ARCH, "tl")
    assert record["class_names"] == CLASSES and record["input_size"] == [40, 40]
    assert record["meta"]["imported_from"]["file"] == name  # the upload's name, not the store's
    stored = client.app.state.store.resolve(  # type: ignore[attr-defined]
        f"checkpoints/{record['sha256']}.safetensors"
    )
    model, _ = load_checkpoint(stored)
    loaded = model.net.state_dict()
    assert loaded.keys() == state.keys()
    assert all(torch.equal(loaded[k], state[k]) for k in state)
    # the same bytes and fields again: the same import, answered at once
    again = upload_checkpoint(client, path, **FIELDS, name="chexnet-tl", phase="tl")
    assert again.status_code == 200 and again.json()["id"] == done["id"]
    assert client.get("/checkpoint-imports").json()["total"] == 1


def test_refusals_fail_the_import_with_the_reason_and_no_server_path(
    client, tmp_path, state
) -> None:
    store_root = str(client.app.state.store.root)  # type: ignore[attr-defined]
    pickled = tmp_path / "pickled.pt"
    pickled.write_bytes(pickle.dumps({"w": torch.zeros(1), "obj": Path("x")}))
    other = create_model("torchvision/resnet18", 3).net.state_dict()
    cases = {
        "refused; the file would unpickle code": (pickled, FIELDS),
        "tensor names match": (_write(tmp_path, "plain.pt", other), FIELDS),
        "has 3 outputs; 4 class names were given": (
            _write(tmp_path, "dataparallel.pth", state),
            {**FIELDS, "class_names": "a,b,c,d"},
        ),
        "has no model of that name": (
            _write(tmp_path, "lightning.ckpt", state),
            {**FIELDS, "arch": "timm/no_such_net_v9"},
        ),
    }
    for reason, (path, fields) in cases.items():
        response = upload_checkpoint(client, path, **fields)
        assert response.status_code == 202, response.text
        done = _finished(client, response.headers["location"])
        assert done["status"] == "failed" and done["checkpoint_id"] is None, done
        assert reason in done["error"], done["error"]
        assert store_root not in done["error"], done["error"]
        if fields["arch"] == ARCH:  # a fault of the file: named as it was uploaded
            assert done["error"].startswith(f"{path.name}: "), done["error"]
        assert not list((Path(store_root) / "imports").glob("*"))  # the upload is gone
    assert client.get("/checkpoints").json()["total"] == 0


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"class_names": "a,b"}, "arch", "name the architecture"),
        ({"arch": ARCH}, "class_names", "name the classes"),
        ({**FIELDS, "class_names": "a,a,b"}, "class_names", "twice"),
        ({**FIELDS, "class_names": '["a", 3]'}, "class_names", "JSON array of strings"),
        ({**FIELDS, "input_size": "4"}, "input_size", "8 to 4096"),
        ({**FIELDS, "in_chans": "7"}, "in_chans", "1 to 4"),
        ({**FIELDS, "std": "0.2,0,0.2"}, "std", "positive"),
        ({**FIELDS, "mean": "a,b"}, "mean", "numbers"),
        ({**FIELDS, "phase": "best"}, "phase", "tl, ft, other"),
        ({**FIELDS, "arch": "../../etc"}, "arch", "not an arch name"),
    ],
)
def test_bad_fields_are_problems_naming_the_field(client, tmp_path, state, fields, field, says):
    body = assert_problem(
        upload_checkpoint(client, _write(tmp_path, "plain.pt", state), **fields), 422, field
    )
    assert says in json.dumps(body)
    assert client.get("/checkpoint-imports").json()["total"] == 0


def test_what_is_not_a_weights_file_is_refused_at_upload(
    client, tmp_path, state, checkpoint_files
) -> None:
    text = tmp_path / "notes.pt"
    text.write_text("not weights")
    assert "neither a zip archive nor a pickle" in json.dumps(
        assert_problem(upload_checkpoint(client, text, **FIELDS), 422, "file")
    )
    odd = tmp_path / "weights.onnx"
    odd.write_bytes(b"\x80\x02}q\x00.")
    assert_problem(upload_checkpoint(client, odd, **FIELDS), 422, "file")
    # a camdrift checkpoint needs no import; a foreign file without fields says what to send
    ours = checkpoint_files.baseline
    assert "already" in json.dumps(
        assert_problem(upload_checkpoint(client, ours, **FIELDS), 422, "arch")
    )
    bare = _write(tmp_path, "bare.safetensors", state)
    assert "arch and class_names" in json.dumps(
        assert_problem(upload_checkpoint(client, bare), 422, "file")
    )
    assert client.get("/checkpoint-imports").json()["total"] == 0


def test_broker_down_answers_503_and_a_retry_imports(make_client, tmp_path, state) -> None:
    down = make_client(broker_url="redis://127.0.0.1:9/0")
    path = _write(tmp_path, "plain.pt", state)
    body = assert_problem(upload_checkpoint(down, path, **FIELDS), 503)
    assert "upload it again" in body["detail"]
    row = down.get("/checkpoint-imports").json()["items"][0]
    assert (row["status"], row["error"]) == ("failed", "broker unavailable")
    up = make_client()  # same database and store, no broker: the embedded worker
    retry = upload_checkpoint(up, path, **FIELDS)
    assert retry.status_code == 202 and retry.json()["id"] == row["id"]
    assert _finished(up, retry.headers["location"])["status"] == "succeeded"


def test_a_multi_label_head_is_recorded_as_such(client, tmp_path, state) -> None:
    path = _write(tmp_path, "plain.pt", state)
    response = upload_checkpoint(client, path, **FIELDS, multi_label="true")
    done = _finished(client, response.headers["location"])
    assert done["fields"]["multi_label"] is True and done["status"] == "succeeded", done
    record = client.get(f"/checkpoints/{done['checkpoint_id']}").json()
    assert record["meta"]["multi_label"] is True
    plain = upload_checkpoint(client, path, **FIELDS)  # other fields: another import
    assert plain.status_code == 202 and plain.json()["id"] != done["id"]
    single = _finished(client, plain.headers["location"])
    assert "multi_label" not in client.get(f"/checkpoints/{single['checkpoint_id']}").json()["meta"]
    assert_problem(
        upload_checkpoint(client, path, **FIELDS, multi_label="maybe"), 422, "multi_label"
    )
