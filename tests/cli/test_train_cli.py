"""``camdrift train`` says what it read (classes, splits, skipped files with their reasons) and
takes ``--on-bad-file``: a file that is no image stops the run at once naming it, or is left out
and listed -- never a crash hours into training."""

from __future__ import annotations

import shutil

import pytest
from typer.testing import CliRunner

from service.cli import app
from training.phantoms import generate_dataset

runner = CliRunner()


@pytest.fixture
def folder(tmp_path):
    """An ImageFolder tree of phantoms with one truncated PNG and one text file named .png."""
    phantoms = generate_dataset(tmp_path / "phantoms", per_class=6, size=32, seed=2).parent
    root = tmp_path / "folder"
    for path in sorted(phantoms.glob("**/*.png")):
        if "mask" in path.parts[-2] or path.parent == phantoms:
            continue
        label = path.parent.name
        (root / label).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, root / label / path.name)
    assert sum(1 for _ in root.glob("*/*.png")) >= 30
    victim = next((root / "normal").glob("*.png"))
    victim.write_bytes(victim.read_bytes()[:20])  # the header cut short
    (root / "covid" / "notes.png").write_text("not an image")
    return root


ARGS = ["--tl-epochs", "1", "--ft-epochs", "1", "--input-size", "32", "--batch-size", "16"]


def test_a_bad_file_stops_the_run_at_once_naming_it(folder, tmp_path) -> None:
    result = runner.invoke(
        app, ["train", "--data", str(folder), "--out", str(tmp_path / "r"), *ARGS]
    )
    assert result.exit_code == 2, result.output
    assert ".png" in result.output and "--on-bad-file skip" in result.output
    assert not (tmp_path / "r" / "tl.safetensors").exists()


def test_skip_leaves_them_out_and_lists_them(folder, tmp_path) -> None:
    out = tmp_path / "r"
    result = runner.invoke(
        app,
        ["train", "--data", str(folder), "--out", str(out), *ARGS, "--on-bad-file", "skip"],
        env={"COLUMNS": "200"},
    )
    assert result.exit_code == 0, result.output
    assert "skipped 2 file(s):" in result.output
    assert "covid/notes.png:" in result.output
    images = sum(1 for _ in folder.glob("*/*.png")) - 2
    assert f"{images} images" in result.output and "splits: " in result.output
    assert (out / "ft.safetensors").is_file()
    bad = runner.invoke(
        app, ["train", "--data", str(folder), "--out", str(out), "--on-bad-file", "maybe"]
    )
    assert bad.exit_code == 2
