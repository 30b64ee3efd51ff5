"""Multi-label audits (sigmoid heads, CheXpert / ChestX-ray14 style manifests): each present
finding of an image is one sample whose maps explain that finding, and the report's
per-finding drift, subsets and AUC equal an independent computation: pytorch-grad-cam maps
with the finding as target, scipy correlations, and a brute-force pairwise AUC over images."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

from tests.ci import require_module
from training.checkpoints import model_metadata, save_checkpoint
from training.datasets import DatasetError, assign_splits, discover
from training.phantoms import CLASSES, generate_dataset
from training.zoo import create_model
from worker.engine.audit import AuditConfig
from worker.runtime.local_run import run_audit

require_module("pytorch_grad_cam")  # skip here, fail under CI
from pytorch_grad_cam import GradCAMPlusPlus, LayerCAM  # noqa: E402
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget  # noqa: E402

SIZE = 32
FINDINGS = ["atelectasis", "effusion", "nodule"]
# per image, by position: the findings present (the third pattern has none: not audited)
PATTERNS = [("effusion",), ("atelectasis", "nodule"), (), ("effusion", "nodule"), ("nodule",)]
METHODS = {"layercam": LayerCAM, "gradcam++": GradCAMPlusPlus}


def _images(root: Path) -> list[str]:
    generate_dataset(root, per_class=4, size=SIZE, seed=5)
    return sorted(
        p.relative_to(root).as_posix()
        for p in root.rglob("*.png")
        if p.parent.name in CLASSES and "masks" not in p.relative_to(root).parts
    )


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("multilabel")
    data = root / "data"
    images = _images(data)
    truth = {path: PATTERNS[i % len(PATTERNS)] for i, path in enumerate(images)}
    with open(data / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "labels"])
        for path, present in truth.items():
            writer.writerow([path, "|".join(present)])
    pixels = np.stack(
        [np.asarray(Image.open(data / p).convert("RGB"), np.float32) / 255 for p in images]
    )
    paths = {}
    for seed, phase in ((0, "tl"), (1, "ft")):
        torch.manual_seed(seed)
        model = create_model("tinycnn", len(FINDINGS)).eval()
        # spread each finding's logits to unit scale and centre them on these images: scores
        # well apart (no ties once rounded), about half above 0.5, so the true_positive
        # filter keeps some samples and drops others
        mean = torch.tensor(model.spec.mean)[:, None, None]
        std = torch.tensor(model.spec.std)[:, None, None]
        head = model.classifier()
        with torch.no_grad():
            x = (torch.from_numpy(pixels).permute(0, 3, 1, 2) - mean) / std
            spread = model(x).std(0)
            head.weight /= spread[:, None]
            head.bias /= spread
            head.bias -= model(x).median(0).values + 0.1
        meta = model_metadata(
            model, FINDINGS, phase=phase, input_size=[SIZE, SIZE], multi_label=True
        )
        paths[phase] = root / f"{phase}.safetensors"
        save_checkpoint(paths[phase], model, meta)
    return {"root": root, "data": data, "truth": truth, **paths}


def _audit(world, sample_filter: str, name: str) -> tuple[dict, list[dict]]:
    out = world["root"] / f"{name}.json"
    cfg = AuditConfig(
        methods=list(METHODS),
        metrics=["pearson", "spearman"],
        sample_filter=sample_filter,
        split=None,
        batch_size=4,
    )
    report = run_audit(world["tl"], world["ft"], world["data"], cfg, out)
    rows = [
        json.loads(line)
        for line in out.with_suffix(".samples.jsonl").read_text().split("\n")
        if line
    ]
    return report, rows


def _oracle_inputs(world) -> tuple[list[str], torch.Tensor, list[torch.nn.Module]]:
    from training.checkpoints import load_checkpoint

    paths = sorted(world["truth"])
    pixels = [
        np.asarray(Image.open(world["data"] / p).convert("RGB"), np.float32) / 255 for p in paths
    ]
    models, x = [], torch.from_numpy(np.stack(pixels)).permute(0, 3, 1, 2)
    for phase in ("tl", "ft"):
        model, meta = load_checkpoint(world[phase])
        mean = torch.tensor(meta["mean"])[:, None, None]
        std = torch.tensor(meta["std"])[:, None, None]
        models.append((model.eval(), (x - mean) / std))
    return paths, x, models


def test_manifest_expands_each_finding_and_keeps_an_image_in_one_split(world) -> None:
    index = discover(world["data"])
    present = sum(len(v) for v in world["truth"].values())
    assert index.multi_label and index.class_names == sorted(FINDINGS)
    assert len(index.samples) == present
    assert index.unlabelled == sum(not v for v in world["truth"].values())
    for sample in index.samples:
        rel = index.relative(sample)
        assert [FINDINGS[k] for k in sample.findings] == sorted(world["truth"][rel])
        assert FINDINGS[sample.label] in world["truth"][rel]
    split = assign_splits(index, 0.25, 0.25, seed=3)
    splits: dict[str, set] = {}
    for sample in split.samples:
        splits.setdefault(index.relative(sample), set()).add(sample.split)
    assert all(len(s) == 1 for s in splits.values())
    assert {s for v in splits.values() for s in v} == {"train", "val", "test"}


def test_one_column_per_finding_reads_the_same_findings(world, tmp_path) -> None:
    data = tmp_path / "cols"
    images = _images(data)
    with open(data / "manifest.csv", "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["Path", "Atelectasis", "Pleural Effusion", "Nodule"])
        for i, path in enumerate(images):
            present = PATTERNS[i % len(PATTERNS)]
            uncertain = "-1.0" if i % 3 == 0 else ""  # CheXpert's uncertain: absent here
            cells = ["1.0" if f in present else uncertain for f in FINDINGS]
            writer.writerow([path, *cells])
    index = discover(data)
    assert index.class_names == ["Atelectasis", "Pleural Effusion", "Nodule"]
    reference = discover(world["data"], class_names=FINDINGS)
    assert [(index.relative(s), s.label) for s in index.samples] == [
        (reference.relative(s), s.label) for s in reference.samples
    ]
    (data / "manifest.csv").write_text("path,Atelectasis\n" + images[0] + ",2\n")
    with pytest.raises(DatasetError, match="finding column 'Atelectasis' holds '2'"):
        discover(data)


def test_per_finding_drift_equals_pytorch_grad_cam_and_scipy(world) -> None:
    report, rows = _audit(world, "all", "all")
    paths, _, models = _oracle_inputs(world)
    where = {p: i for i, p in enumerate(paths)}
    assert len(rows) == sum(len(v) for v in world["truth"].values())
    assert report["dataset"]["multi_label"] is True
    assert report["dataset"]["unlabelled_images"] == sum(not v for v in world["truth"].values())
    expected: dict[str, dict[str, list[float]]] = {}
    for method, cam_class in METHODS.items():
        maps = []
        for model, x in models:
            idx = [where[r["path"]] for r in rows]
            targets = [ClassifierOutputTarget(int(r["label"])) for r in rows]
            net = model.net
            layer = net.get_submodule(model.spec.feature_layer.removeprefix("net."))
            with cam_class(model=net, target_layers=[layer]) as cam:
                maps.append(cam(input_tensor=x[idx], targets=targets))
        for k, row in enumerate(rows):
            a, b = maps[0][k].ravel(), maps[1][k].ravel()
            r = {"pearson": stats.pearsonr(a, b)[0], "spearman": stats.spearmanr(a, b)[0]}
            for metric, value in r.items():
                assert row["metrics"][method][metric] == pytest.approx(value, abs=2e-4), (
                    method,
                    metric,
                    row["path"],
                )
                expected.setdefault(f"{method}/{metric}", {}).setdefault(
                    FINDINGS[row["label"]], []
                ).append(value)
    for key, per_finding in expected.items():
        method, metric = key.split("/")
        summary = report["summaries"][method][metric]
        for finding, values in per_finding.items():
            assert summary[finding]["n"] == len(values)
            assert summary[finding]["mean"] == pytest.approx(np.mean(values), abs=2e-4)
    counts = report["subsets"]["per_class"]
    for finding in FINDINGS:
        present = sum(finding in v for v in world["truth"].values())
        assert counts[finding]["evaluated"] == counts[finding]["included"] == present


def _pairwise_auc(truth: np.ndarray, scores: np.ndarray) -> float | None:
    pos, neg = scores[truth], scores[~truth]
    if not len(pos) or not len(neg):
        return None
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(wins / (len(pos) * len(neg)))


def test_true_positive_filter_and_auc_per_finding(world) -> None:
    report, rows = _audit(world, "true_positive", "tp")
    paths, _, models = _oracle_inputs(world)
    audited = [p for p in paths if world["truth"][p]]
    with torch.no_grad():
        scores = [torch.sigmoid(model(x)).numpy() for model, x in models]
    where = {p: i for i, p in enumerate(paths)}
    kept = {(r["path"], FINDINGS[r["label"]]) for r in rows if r["included"]}
    found = {
        (p, f)
        for p in audited
        for f in world["truth"][p]
        if all(s[where[p], FINDINGS.index(f)] > 0.5 for s in scores)
    }
    every = {(p, f) for p in audited for f in world["truth"][p]}
    assert kept == found and 0 < len(found) < len(every)  # the filter tells them apart
    for r in rows:  # "pred" is the finding when found, else -1
        for role, s in zip(("baseline", "candidate"), scores, strict=True):
            hit = s[where[r["path"]], r["label"]] > 0.5
            assert r[f"pred_{role}"] == (r["label"] if hit else -1)
            assert r[f"probs_{role}"] == pytest.approx(s[where[r["path"]]].tolist(), abs=1e-5)
    truth = np.array([[f in world["truth"][p] for f in FINDINGS] for p in audited])
    for role, s in zip(("baseline", "candidate"), scores, strict=True):
        perf = report["performance"][role]
        assert perf["multi_label"] is True and perf["n"] == len(audited)
        mine = s[[where[p] for p in audited]]
        for c, finding in enumerate(FINDINGS):
            assert perf["auc_per_class"][finding] == pytest.approx(
                _pairwise_auc(truth[:, c], mine[:, c])
            )
            tp = int(((mine[:, c] > 0.5) & truth[:, c]).sum())
            assert perf["confusion_matrix"][c][3] == tp
        assert perf["accuracy"] == pytest.approx(float(np.mean((mine > 0.5) == truth)))


def test_heads_must_agree_and_the_html_page_renders(world, tmp_path) -> None:
    from worker.render.html_report import write_local_html

    torch.manual_seed(0)
    model = create_model("tinycnn", len(FINDINGS))
    single = tmp_path / "single.safetensors"
    save_checkpoint(single, model, model_metadata(model, FINDINGS, input_size=[SIZE, SIZE]))
    with pytest.raises(ValueError, match="one checkpoint is multi-label"):
        run_audit(world["tl"], single, world["data"], AuditConfig(split=None), tmp_path / "x.json")
    _audit(world, "disagreement", "dis")
    page = tmp_path / "report.html"
    write_local_html(world["root"] / "dis.json", page)
    text = page.read_text()
    assert "<th>finding</th><th>tn</th><th>fp</th><th>fn</th><th>tp</th>" in text


POLICY = """min_samples = 1
min_class_samples = 1
[[rule]]
method = "layercam"
metric = "pearson"
stat = "mean"
class = "*"
op = ">="
value = -1.0
"""


def test_the_gate_judges_per_finding_the_same_locally_and_through_the_service(
    world, tmp_path
) -> None:
    """The multi-label dataset zipped and uploaded, the job sharded by the embedded worker:
    the report's per-finding numbers and the verdict equal the local run's."""
    from typer.testing import CliRunner

    from service.cli import app
    from service.cli.demo import EmbeddedServer

    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    common = [
        "gate",
        *("--baseline", str(world["tl"]), "--candidate", str(world["ft"])),
        *("--data", str(world["data"]), "--policy", str(policy)),
        *("--split", "all", "--sample-filter", "all", "--methods", "layercam"),
    ]
    runner = CliRunner()
    local = runner.invoke(app, [*common, "--local", "--report", str(tmp_path / "local.json")])
    with EmbeddedServer(tmp_path / "service") as server:
        remote = runner.invoke(
            app, [*common, "--server", server, "--report", str(tmp_path / "remote.json")]
        )
    for result in (local, remote):
        assert result.exit_code == 0, result.output
    docs = [json.loads((tmp_path / f"{k}.json").read_text()) for k in ("local", "remote")]
    checks = [[c["class"] for c in d["verdict"]["rules"]] for d in docs]
    assert checks[0] == checks[1] and set(FINDINGS) <= set(checks[0])
    for doc in docs:
        assert doc["dataset"]["multi_label"] is True
    summary = [d["summaries"]["layercam"]["pearson"] for d in docs]
    for finding in FINDINGS:
        assert summary[1][finding]["n"] == summary[0][finding]["n"] > 0
        assert summary[1][finding]["mean"] == pytest.approx(summary[0][finding]["mean"], abs=1e-5)
    for role in ("baseline", "candidate"):
        a, b = (d["performance"][role] for d in docs)
        assert b["auc_per_class"] == pytest.approx(a["auc_per_class"])
        assert b["multi_label"] is True and b["confusion_matrix"] == a["confusion_matrix"]


def test_a_study_compares_multi_label_audits_sample_by_finding(world) -> None:
    from worker.results.study import load_local_entry, study_report

    _audit(world, "all", "study-all")
    _, tp_rows = _audit(world, "true_positive", "study-tp")
    entries = [load_local_entry(world["root"] / f"{n}.json", n) for n in ("study-all", "study-tp")]
    doc = study_report(entries, n_boot=50)
    assert doc["n_common"] == sum(r["included"] for r in tp_rows) > 0
    assert doc["dataset"]["num_evaluated"] == sum(len(v) for v in world["truth"].values())
    assert set(doc["methods"]) == set(METHODS) and doc["rankings"]
