"""Checkpoints: round trip, metadata, plain state dicts, and refusal of pickled code."""

from __future__ import annotations

import json
import struct

import pytest
import torch

from training.checkpoint_format import CheckpointError, read_header, read_metadata
from training.checkpoints import load_checkpoint, model_metadata, save_checkpoint
from training.zoo import create_model

CLASSES = ["normal", "pneumonia", "covid", "tuberculosis", "effusion"]


@pytest.fixture
def model():
    torch.manual_seed(0)
    m = create_model("tinycnn", 5)
    m.train()
    with torch.no_grad():  # move BatchNorm statistics away from their defaults
        m(torch.randn(8, 3, 96, 96))
    return m.eval()


def test_round_trip_gives_identical_outputs(tmp_path, model) -> None:
    path = tmp_path / "ft.safetensors"
    sha = save_checkpoint(
        path, model, model_metadata(model, CLASSES, phase="ft", parent_sha256="ab" * 32)
    )
    loaded, meta = load_checkpoint(path)
    x = torch.randn(3, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["phase"] == "ft" and meta["parent_sha256"] == "ab" * 32
    assert meta["sha256"] == sha and meta["class_names"] == CLASSES
    assert read_metadata(path)["arch"] == "tinycnn"


def test_plain_state_dict_needs_arch_and_classes(tmp_path, model) -> None:
    path = tmp_path / "weights.pt"
    torch.save(model.net.state_dict(), path)
    with pytest.raises(CheckpointError, match="name the arch"):
        load_checkpoint(path)
    loaded, meta = load_checkpoint(path, arch="tinycnn", class_names=CLASSES)
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        assert torch.equal(model(x), loaded(x))
    assert meta["arch"] == "tinycnn"


class _Payload:
    def __reduce__(self):
        return (print, ("this must never run",))


def test_pickled_code_is_refused_and_never_runs(tmp_path, model, capsys) -> None:
    path = tmp_path / "evil.pt"
    torch.save({"weights": model.net.state_dict(), "payload": _Payload()}, path)
    capsys.readouterr()
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path, arch="tinycnn", class_names=CLASSES)
    assert "this must never run" not in capsys.readouterr().out


def test_forged_header_is_refused(tmp_path, model) -> None:
    path = tmp_path / "ok.safetensors"
    save_checkpoint(path, model, model_metadata(model, CLASSES))
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    name = next(k for k in header if k != "__metadata__")
    header[name]["data_offsets"][1] += 10**9
    forged = json.dumps(header).encode()
    bad = tmp_path / "forged.safetensors"
    bad.write_bytes(struct.pack("<Q", len(forged)) + forged + raw[8 + n :])
    with pytest.raises(CheckpointError, match="forged"):
        read_header(bad)
    with pytest.raises(CheckpointError):
        load_checkpoint(bad)
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 4)
    with pytest.raises(CheckpointError, match="not a safetensors"):
        load_checkpoint(tmp_path / "junk.safetensors")


@pytest.mark.parametrize("offsets", [[0, 24], [8, 32], [32, 52]])
def test_overlapping_or_short_tensors_are_refused(tmp_path, offsets) -> None:
    """A header whose tensors share bytes or leave some uncovered is a forgery."""
    import numpy as np
    from safetensors.numpy import save_file

    path = tmp_path / "two.safetensors"
    save_file({"a": np.zeros((2, 3), np.float32), "b": np.ones(4, np.int64)}, str(path))
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    assert header["b"]["data_offsets"] == [0, 32] and header["a"]["data_offsets"] == [32, 56]
    header["a"]["data_offsets"] = offsets
    forged = json.dumps(header).encode()
    bad = tmp_path / "overlap.safetensors"
    bad.write_bytes(struct.pack("<Q", len(forged)) + forged + raw[8 + n :])
    with pytest.raises(CheckpointError, match="forged safetensors header"):
        read_header(bad)


def test_wrong_arch_weights_are_refused(tmp_path, model) -> None:
    path = tmp_path / "w.pt"
    torch.save(model.net.state_dict(), path)
    with pytest.raises(CheckpointError, match="do not fit resnet18"):
        load_checkpoint(path, arch="resnet18", class_names=CLASSES)


def test_metadata_is_validated(tmp_path, model) -> None:
    with pytest.raises(CheckpointError, match="num_classes"):
        save_checkpoint(
            tmp_path / "x.safetensors", model, model_metadata(model, CLASSES, num_classes=4)
        )
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        load_checkpoint(tmp_path / "missing.safetensors")
