"""An ImageFolder dataset keeps its hold-out: training records the split it drew in the
checkpoints, and an audit of the same data evaluates that test split, not the training images."""

from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest

from training.checkpoint_format import read_metadata
from training.datasets import assign_splits, discover
from training.phantoms import generate_dataset
from training.protocol import PhaseConfig, TrainConfig, train_two_phase
from worker.engine.audit import Audit, AuditConfig
from worker.runtime.local_run import run_audit


def _image_folder(phantoms: Path, out: Path) -> Path:
    """The phantoms as a plain ``root/<class>/<image>`` tree: no manifest, no splits."""
    with open(phantoms / "manifest.csv") as fh:
        for row in csv.DictReader(fh):
            target = out / row["label"] / Path(row["path"]).name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(phantoms / row["path"], target)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("split-record")
    generate_dataset(root / "phantoms", per_class=8, size=32, seed=4)
    folder = _image_folder(root / "phantoms", root / "folder")
    cfg = TrainConfig(
        arch="tinycnn",
        input_size=(32, 32),
        progress=False,
        seed=3,
        tl=PhaseConfig(epochs=1, batch_size=16),
        ft=PhaseConfig(epochs=1, batch_size=16),
    )
    train_two_phase(folder, root / "run", cfg)
    return root


def test_checkpoints_record_the_split_they_drew(trained) -> None:
    meta = read_metadata(trained / "run" / "ft.safetensors")
    record = meta["split"]
    index = discover(trained / "folder")
    assert record["fingerprint"] == index.fingerprint() == meta["dataset_fingerprint"]
    assert (record["val"], record["test"], record["seed"]) == (0.15, 0.15, 3)
    split = assign_splits(index, 0.15, 0.15, 3)
    assert record["counts"] == {
        name: sum(s.split == name for s in split.samples) for name in ("train", "val", "test")
    }


def test_an_audit_of_the_same_folder_evaluates_the_held_out_images(trained, tmp_path) -> None:
    run, folder = trained / "run", trained / "folder"
    audit = Audit(run / "tl.safetensors", run / "ft.safetensors", folder, AuditConfig())
    split = assign_splits(discover(folder), 0.15, 0.15, 3)
    held_out = {str(s.path) for s in split.samples if s.split == "test"}
    evaluated = {str(audit.index.samples[p].path) for p in audit.positions}
    assert evaluated == held_out and 0 < len(evaluated) < len(split.samples) // 4
    report = run_audit(
        run / "tl.safetensors",
        run / "ft.safetensors",
        folder,
        AuditConfig(sample_filter="all", metrics=["pearson"]),
        tmp_path / "r.json",
    )
    dataset = report["dataset"]
    assert dataset["evaluated_split"] == "test" and dataset["num_evaluated"] == len(held_out)
    assert dataset["split_source"] == "training record (ft)"
    # --split test now works on an ImageFolder tree
    named = Audit(run / "tl.safetensors", run / "ft.safetensors", folder, AuditConfig(split="test"))
    assert named.total == len(held_out)


def test_other_data_is_not_split_by_a_record_that_is_not_its_own(trained, tmp_path) -> None:
    run = trained / "run"
    changed = shutil.copytree(trained / "folder", tmp_path / "changed")
    extra = next((changed / "normal").iterdir())
    shutil.copy(extra, changed / "normal" / "extra.png")
    audit = Audit(run / "tl.safetensors", run / "ft.safetensors", changed, AuditConfig())
    assert audit.split_source is None and audit.total == len(audit.index.samples)
    with pytest.raises(ValueError, match="no samples in split 'test'"):
        Audit(run / "tl.safetensors", run / "ft.safetensors", changed, AuditConfig(split="test"))


def test_a_model_near_chance_and_upsampled_images_are_said_once(trained, tmp_path) -> None:
    """Random tinycnn weights score near chance; 32-px images audited at 64 px are upsampled.
    The report says both, and the CLI, the markdown and the HTML page show it."""
    from tests.builders import tiny_audit_inputs
    from worker.render.html_report import write_local_html
    from worker.render.markdown import render_markdown
    from worker.results.report import audit_warnings

    root = tiny_audit_inputs(tmp_path / "tiny", per_class=4, size=48, seed=1)
    small = generate_dataset(tmp_path / "small", per_class=4, size=32, seed=1).parent
    report = run_audit(
        root / "tl.safetensors",
        root / "ft.safetensors",
        small,
        AuditConfig(sample_filter="all", metrics=["pearson"], split=None),
        tmp_path / "r.json",
    )
    assert report["dataset"]["median_image_size"] == [32, 32]
    warnings = report["warnings"]
    assert any("upsampled to the analysis size 48x48" in w for w in warnings), warnings
    aucs = {r: report["performance"][r]["macro_auc"] for r in ("baseline", "candidate")}
    near = [r for r, auc in aucs.items() if auc < 0.6]
    assert [w for w in warnings if "near chance" in w] == [
        w for w in warnings if any(f"the {r} " in w for r in near) and "near chance" in w
    ]
    assert len([w for w in warnings if "near chance" in w]) == len(near)
    assert "**warning**" in render_markdown(report)
    write_local_html(tmp_path / "r.json", tmp_path / "r.html")
    assert "<strong>Warning:</strong>" in (tmp_path / "r.html").read_text()
    # the rule itself, on hand-made numbers
    perf = {"baseline": {"macro_auc": 0.55}, "candidate": {"macro_auc": 0.97}}
    sizes = {"median_image_size": [96, 96], "analysis_size": [96, 96]}
    (only,) = audit_warnings(perf, sizes, {"baseline": {"phase": "tl"}})
    assert only.startswith("the baseline (tl) scores a macro AUC of 0.55")
    assert audit_warnings({"baseline": {"macro_auc": 0.61}}, sizes, {}) == []
