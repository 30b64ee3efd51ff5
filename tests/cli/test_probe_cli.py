"""``camdrift probe``: the ground truth for a checkpoint on a phantom folder, as a table and as
JSON; every bad input one line on stderr and exit code 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from service.cli import app
from training.checkpoints import load_checkpoint, model_metadata, save_checkpoint
from training.datasets import discover
from training.image_dataset import ImageDataset
from training.phantoms import CLASSES, generate_dataset
from training.protocol import predict
from training.zoo import create_model

runner = CliRunner()
SIZE = 32
REQUIRED = (
    "recall_present",
    "recall_absent",
    "recall_moved",
    "score_drop",
    "recall_drop",
    "relies_on_shortcut",
    "rule",
)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("probe")
    generate_dataset(root / "data", 10, SIZE, 4, shortcut="effusion", shortcut_confound=0.5)
    torch.manual_seed(1)
    model = create_model("tinycnn", len(CLASSES))
    names = sorted(CLASSES)  # what training writes: discovered labels, alphabetically
    save_checkpoint(
        root / "ft.safetensors", model, model_metadata(model, names, input_size=[40, 40])
    )
    return root


def _probe(world: Path, *extra: str):  # type: ignore[no-untyped-def]
    args = ["probe", "--checkpoint", str(world / "ft.safetensors"), "--data", str(world / "data")]
    return runner.invoke(app, [*args, "--device", "cpu", *extra])


def test_writes_json_that_matches_the_training_pipeline(world: Path) -> None:
    out = world / "out" / "probe.json"
    result = _probe(world, "--json", str(out))
    assert result.exit_code == 0, result.output
    assert "present" in result.stdout and "rule:" in result.stdout
    doc = json.loads(out.read_text())
    assert all(key in doc for key in REQUIRED)
    assert doc["shortcut_class"] == "effusion" and doc["shortcut_kind"] == "corner"
    assert doc["phantoms"]["seed"] == 4 and doc["phantoms"]["shortcut_confound"] == 0.5
    assert set(doc["conditions"]) == {"present", "absent", "moved", "planted"}
    assert doc["recall_drop"] == pytest.approx(doc["recall_present"] - doc["recall_absent"])
    # the present condition is the folder as written (correlated): training's own loader agrees
    model, meta = load_checkpoint(world / "ft.safetensors")
    names = meta["class_names"]
    index = discover(world / "data", class_names=names).subset("test")
    loader = torch.utils.data.DataLoader(ImageDataset(index, (40, 40), [0.5], [0.5]), batch_size=8)
    labels, probs = predict(model, loader, torch.device("cpu"))
    mine = labels == names.index("effusion")
    assert doc["n_shortcut"] == int(mine.sum())
    assert doc["score_present"] == pytest.approx(
        probs[mine, names.index("effusion")].mean(), abs=1e-6
    )
    assert doc["recall_present"] == pytest.approx(
        np.mean(probs[mine].argmax(1) == names.index("effusion"))
    )


def _one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), result.stderr
    return lines[0]


def test_bad_inputs_exit_2_with_one_line(world: Path, tmp_path: Path) -> None:
    missing = runner.invoke(
        app,
        [
            "probe",
            "--checkpoint",
            str(tmp_path / "none.safetensors"),
            "--data",
            str(world / "data"),
        ],
    )
    assert "no such checkpoint" in _one_line_error(missing)
    assert "phantoms.json" in _one_line_error(_probe(world, "--data", str(tmp_path)))
    generate_dataset(tmp_path / "clean", 3, SIZE, 0)
    assert "without a shortcut" in _one_line_error(_probe(world, "--data", str(tmp_path / "clean")))
    assert "split" in _one_line_error(_probe(world, "--split", "holdout"))
    assert "--json" in _one_line_error(_probe(world, "--json", str(tmp_path)))
    assert "device" in _one_line_error(_probe(world, "--device", "tpu9"))
    three = create_model("tinycnn", 3)
    other = tmp_path / "three.safetensors"
    save_checkpoint(other, three, model_metadata(three, ["a", "b", "c"]))
    mismatch = runner.invoke(
        app, ["probe", "--checkpoint", str(other), "--data", str(world / "data"), "--device", "cpu"]
    )
    assert "phantom classes" in _one_line_error(mismatch)


def test_probe_is_listed(world: Path) -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0 and "probe" in result.stdout
