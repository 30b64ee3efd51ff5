"""``vit_small_patch16_224`` end to end, below its 224 px default: phantoms -> two-phase
training -> checkpoints -> drift audit (LayerCAM, Grad-CAM++, noise floor) -> report -> HTML,
and the same through the ``camdrift train`` / ``camdrift drift`` commands.

The arch is built with timm's ``dynamic_img_size``, so a checkpoint trained at 64 px has a
4 x 4 token grid (48 px: 3 x 3); every step must follow the checkpoint's ``input_size``
rather than the arch's 224 px default (a 14 x 14 grid). Phantoms are written at 96 px so
that the resize to the checkpoint's size is exercised too. Sizes are tiny: this checks the
plumbing, not accuracy.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from service.cli import app
from training.checkpoint_format import metadata_from_header, read_header
from training.checkpoints import load_checkpoint
from training.datasets import discover
from training.image_dataset import ImageDataset
from training.phantoms import CLASSES, generate_dataset
from training.protocol import PhaseConfig, TrainConfig, train_two_phase
from training.zoo import arch_spec, create_model
from worker.catalog import DEFAULT_METRICS, pair_metrics
from worker.engine.attribution import attribute, attribute_batch
from worker.engine.audit import Audit, AuditConfig, LoadedModel
from worker.render.html_report import method_label, write_local_html
from worker.results.report_schema import validate_report
from worker.runtime.local_run import artifact_paths, run_audit

METRICS = pair_metrics(DEFAULT_METRICS)  # the per-pair ones; consistency is per class
ARCH = "vit_small_patch16_224"
METHODS = ["layercam", "gradcam++"]
PHANTOM_SIZE = 96
SIZE, GRID = 64, 4  # the API run: 64 px, a 4 x 4 token grid
CLI_SIZE, CLI_GRID = 48, 3  # the command-line run: 48 px, 3 x 3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Phantoms at 96 px with manifest splits (70/15/15), six per class."""
    root = tmp_path_factory.mktemp("vit") / "data"
    generate_dataset(root, per_class=6, size=PHANTOM_SIZE, seed=3)
    return root


@pytest.fixture(scope="module")
def run_dir(data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TL then FT of a randomly initialised ViT at 64 px, one epoch each, one batch each."""
    cfg = TrainConfig(
        arch=ARCH,
        pretrained="none",
        input_size=(SIZE, SIZE),
        tl=PhaseConfig(epochs=1, lr=1e-3, batch_size=32),
        ft=PhaseConfig(epochs=1, lr=5e-5, batch_size=32),
        seed=0,
        device="cpu",
        augment=False,
        progress=False,
    )
    out = tmp_path_factory.mktemp("vit-run")
    train_two_phase(data, out, cfg)
    return out


@pytest.fixture(scope="module")
def loaded(run_dir: Path) -> dict[str, LoadedModel]:
    """Both trained checkpoints, loaded once: phase -> (model, metadata)."""
    return {
        phase: LoadedModel(*load_checkpoint(run_dir / f"{phase}.safetensors"))
        for phase in ("tl", "ft")
    }


@pytest.fixture(scope="module")
def audit_report(run_dir: Path, data: Path) -> Path:
    """The local audit of TL -> FT on every sample, with the noise floor."""
    cfg = AuditConfig(
        methods=METHODS,
        sample_filter="all",
        split=None,
        batch_size=32,
        device="cpu",
        n_boot=200,
        noise_floor=True,
    )
    out = run_dir / "report.json"
    run_audit(run_dir / "tl.safetensors", run_dir / "ft.safetensors", data, cfg, out)
    return out


def _rows(report_path: Path) -> list[dict]:
    rows_path, _ = artifact_paths(report_path)
    return [json.loads(line) for line in rows_path.read_text().splitlines()]


def _raw_maps(report_path: Path) -> dict[str, np.ndarray]:
    """Every stored raw map array of a report, concatenated over its batch files."""
    _, maps_dir = artifact_paths(report_path)
    files = sorted(maps_dir.glob("rows-*.npz"))
    assert files, f"no raw maps in {maps_dir}"
    parts: dict[str, list[np.ndarray]] = {}
    for path in files:
        with np.load(path) as npz:
            for name in npz.files:
                parts.setdefault(name, []).append(npz[name])
    return {name: np.concatenate(arrays) for name, arrays in parts.items()}


def _oracle_reshape(prefix: int, grid: int):
    """pytorch-grad-cam's ViT recipe: drop prefix tokens, tokens -> a [N, C, g, g] grid."""

    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        assert patches.shape[1] == grid * grid, patches.shape
        return patches.reshape(tokens.shape[0], grid, grid, -1).permute(0, 3, 1, 2)

    return reshape


# --------------------------------------------------------------------------- training


def test_two_phase_training_at_64px_writes_consistent_checkpoints(
    run_dir: Path, loaded: dict[str, LoadedModel]
) -> None:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["arch"] == ARCH and metrics["class_names"] == sorted(CLASSES)
    assert metrics["config"]["input_size"] == [SIZE, SIZE]
    assert (run_dir / "training_curves.png").stat().st_size > 0
    (tl, tl_meta), (ft, ft_meta) = ((loaded[p].model, loaded[p].meta) for p in ("tl", "ft"))
    for meta, phase in ((tl_meta, "tl"), (ft_meta, "ft")):
        assert meta["arch"] == ARCH and meta["phase"] == phase
        assert meta["input_size"] == [SIZE, SIZE]
        assert meta["sha256"] == metrics[phase]["sha256"]
        assert len(metrics[phase]["fit"]["history"]) == 1
        assert math.isfinite(metrics[phase]["fit"]["history"][0]["train_loss"])
    assert ft_meta["parent_sha256"] == tl_meta["sha256"]

    # TL froze the backbone: it is still the seeded random initialisation; FT moved it
    torch.manual_seed(0)
    init = create_model(ARCH, len(CLASSES)).net.state_dict()
    tl_state, ft_state = tl.net.state_dict(), ft.net.state_dict()
    head = {f"head.{k}" for k in tl.net.get_classifier().state_dict()}
    backbone = [k for k in init if k not in head]
    assert all(torch.equal(tl_state[k], init[k]) for k in backbone)
    assert not torch.equal(tl_state["head.weight"], init["head.weight"])
    assert not torch.equal(ft_state["blocks.0.attn.qkv.weight"], init["blocks.0.attn.qkv.weight"])


def test_checkpoint_input_size_sets_the_token_grid(loaded: dict[str, LoadedModel]) -> None:
    """LoadedModel honours the checkpoint's 64 px, not the arch's 224 px default."""
    model = loaded["ft"].model
    assert loaded["ft"].input_size == (SIZE, SIZE) == model.input_size
    assert arch_spec(ARCH).input_size == (224, 224)
    images01 = torch.rand(2, 3, PHANTOM_SIZE, PHANTOM_SIZE)
    prepared = loaded["ft"].prepare(images01)
    assert tuple(prepared.shape) == (2, 3, SIZE, SIZE)
    with torch.no_grad():
        tokens = model.forward_features(prepared)
        assert tuple(tokens.shape) == (2, model.net.num_prefix_tokens + GRID * GRID, 384)
        assert tuple(model.to_grid(tokens).shape) == (2, 384, GRID, GRID)
        assert tuple(model(prepared).shape) == (2, len(CLASSES))


def test_attribution_on_the_4x4_grid_matches_the_oracle(loaded: dict[str, LoadedModel]) -> None:
    """The engine's maps of the trained 64 px ViT equal pytorch-grad-cam's on a 4 x 4 grid."""
    from tests.ci import require_module

    require_module("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from tests.engine.test_attribution_oracle import ORACLES

    model = loaded["ft"].model
    gen = torch.Generator().manual_seed(5)
    images = torch.randn(3, 3, SIZE, SIZE, generator=gen)
    targets = [0, 2, 4]
    got = attribute_batch(model, images, targets, METHODS)
    oracle_net = copy.deepcopy(model)  # pytorch-grad-cam hooks the module it is given
    layer = oracle_net.get_submodule(model.spec.feature_layer)
    reshape = _oracle_reshape(model.net.num_prefix_tokens, GRID)
    for name in METHODS:
        with ORACLES[name](oracle_net, [layer], reshape_transform=reshape) as cam:
            expected = cam(
                input_tensor=images, targets=[ClassifierOutputTarget(t) for t in targets]
            )
        assert tuple(got.raw[name].shape) == (3, GRID, GRID)
        assert tuple(got.maps[name].shape) == (3, SIZE, SIZE)
        diff = np.abs(got.maps[name].numpy() - expected).max()
        assert diff < 1e-4, f"{name}: max abs diff {diff:.2e}"
    hooked = attribute(model, images, targets, METHODS, target_layer="net.blocks.9")
    assert all(tuple(hooked[m].shape) == (3, SIZE, SIZE) for m in METHODS)


# --------------------------------------------------------------------------- audit + report


def test_audit_report_on_the_token_grid(audit_report: Path, run_dir: Path, data: Path) -> None:
    report = json.loads(audit_report.read_text())
    validate_report(report)
    for role in ("baseline", "candidate"):
        model = report["models"][role]
        assert model["arch"] == ARCH and model["input_size"] == [SIZE, SIZE]
    rows = _rows(audit_report)
    n = 6 * len(CLASSES)
    assert len(rows) == n and [r["index"] for r in rows] == list(range(n))

    # subsets are counts of the rows
    subsets = report["subsets"]
    assert subsets["evaluated"] == subsets["included"] == n
    assert subsets["baseline_correct"] == sum(r["label"] == r["pred_baseline"] for r in rows)
    assert subsets["candidate_correct"] == sum(r["label"] == r["pred_candidate"] for r in rows)
    assert subsets["true_positive"] == sum(
        r["label"] == r["pred_baseline"] == r["pred_candidate"] for r in rows
    )
    assert subsets["disagreement"] == sum(r["pred_baseline"] != r["pred_candidate"] for r in rows)
    for k, name in enumerate(report["models"]["baseline"]["class_names"]):
        in_class = sum(r["label"] == k for r in rows)
        assert subsets["per_class"][name] == {"evaluated": in_class, "included": in_class}

    # raw maps: one 4 x 4 map per included sample, role and method, scaled to max 1
    maps = _raw_maps(audit_report)
    assert sorted(maps["rows"].tolist()) == list(range(n))
    for role in ("baseline", "candidate"):
        for method in METHODS:
            raw = maps[f"{role}__{method}"].astype(np.float32)
            assert raw.shape == (n, GRID, GRID)
            assert np.isfinite(raw).all() and raw.min() >= 0.0 and raw.max() <= 1.0 + 1e-3

    # metrics: finite wherever both maps are non-degenerate, and most of them are
    for method in METHODS:
        usable = [r for r in rows if not any(r["degenerate"][method])]
        assert len(usable) >= n // 2, f"{method}: too many degenerate maps to check anything"
        for r in usable:
            # the pair metrics; region metrics (phantom masks) are NaN where a class has no lesion
            values = {m: r["metrics"][method][m] for m in METRICS}
            assert set(report["config"]["metrics"]) >= set(METRICS)
            assert all(v is not None and math.isfinite(v) for v in values.values()), values
        for metric in METRICS:
            defined = [r["metrics"][method][metric] for r in rows]
            overall = report["summaries"][method][metric]["overall"]
            assert overall["n"] == sum(v is not None for v in defined) >= len(usable)
            assert overall["mean"] == pytest.approx(np.mean([v for v in defined if v is not None]))
            assert overall["ci95_low"] <= overall["mean"] <= overall["ci95_high"]
            floors = [r["floor"][method][metric] for r in rows]
            floor = report["noise_floor"][method][metric]["floor"]
            assert floor["n"] == sum(v is not None for v in floors) >= n // 2
            assert math.isfinite(floor["mean"])
    # a 2 % noise + 5 % gain perturbation moves LayerCAM less than a fine-tuning does
    layercam = report["noise_floor"]["layercam"]["pearson"]["floor"]["mean"]
    assert layercam > 0.5


def test_stored_maps_are_the_engines_maps(
    audit_report: Path, loaded: dict[str, LoadedModel], data: Path
) -> None:
    """The report's raw maps are what the (oracle-checked) engine gives on the checkpoint's
    64 px input: re-attribute a few samples and compare to the stored float16 maps."""
    report = json.loads(audit_report.read_text())
    rows = _rows(audit_report)[:4]
    maps = _raw_maps(audit_report)
    position = {int(r): k for k, r in enumerate(maps["rows"])}
    audit = Audit(
        "tl",
        "ft",
        data,
        AuditConfig(methods=METHODS, split=None, device="cpu"),
        models=(loaded["tl"], loaded["ft"]),
    )
    assert audit.analysis_size == (SIZE, SIZE) and audit.total == len(discover(data).samples)
    dataset = ImageDataset(audit.index, audit.analysis_size, (0.0,) * 3, (1.0,) * 3)
    images01 = torch.stack([dataset[audit.positions[r["index"]]][0] for r in rows])
    assert tuple(images01.shape[-2:]) == (SIZE, SIZE)
    for role, loaded in (("baseline", audit.baseline), ("candidate", audit.candidate)):
        labels = torch.tensor([r["label"] for r in rows])
        result = attribute_batch(loaded.model, loaded.prepare(images01), labels, METHODS)
        for method in METHODS:
            raw = result.raw[method]
            peak = raw.flatten(1).max(1).values.clamp_min(1e-30)[:, None, None]
            expected = (raw / peak).numpy()
            stored = np.stack(
                [maps[f"{role}__{method}"][position[r["index"]]] for r in rows]
            ).astype(np.float32)
            np.testing.assert_allclose(stored, expected, atol=2e-3)
    assert report["config"]["noise_floor"] is True


def test_html_report_renders_with_overlays(audit_report: Path, run_dir: Path) -> None:
    page_path = run_dir / "report.html"
    write_local_html(audit_report, page_path)
    page = page_path.read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert ARCH in page
    assert page.count('<img src="data:image/png;base64,') >= 1
    assert "overlay unavailable" not in page
    for method in METHODS:
        assert method_label(method) in page


# --------------------------------------------------------------------------- command line


def test_cli_train_then_drift_for_a_vit(data: Path, tmp_path: Path) -> None:
    runner = CliRunner()
    run = tmp_path / "run"
    trained = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(data),
            "--out",
            str(run),
            "--arch",
            ARCH,
            "--input-size",
            str(CLI_SIZE),
            "--tl-epochs",
            "1",
            "--ft-epochs",
            "1",
            "--ft-lr",
            "5e-5",
            "--tl-lr",
            "1e-3",
            "--batch-size",
            "32",
            "--device",
            "cpu",
            "--no-augment",
        ],
    )
    assert trained.exit_code == 0, trained.output
    assert "two-phase training" in trained.output
    for phase in ("tl", "ft"):
        meta = metadata_from_header(read_header(run / f"{phase}.safetensors"))
        assert meta["arch"] == ARCH and meta["input_size"] == [CLI_SIZE, CLI_SIZE]

    out, html = tmp_path / "drift.json", tmp_path / "drift.html"
    drifted = runner.invoke(
        app,
        [
            "drift",
            "--baseline",
            str(run / "tl.safetensors"),
            "--candidate",
            str(run / "ft.safetensors"),
            "--data",
            str(data),
            "--methods",
            ",".join(METHODS),
            "--sample-filter",
            "all",
            "--max-samples",
            "8",
            "--split",
            "all",
            "--device",
            "cpu",
            "--noise-floor",
            "--out",
            str(out),
            "--html",
            str(html),
        ],
    )
    assert drifted.exit_code == 0, drifted.output
    report = json.loads(out.read_text())
    validate_report(report)
    assert report["models"]["candidate"]["input_size"] == [CLI_SIZE, CLI_SIZE]
    assert report["subsets"]["evaluated"] == report["subsets"]["included"] == 8
    assert report["noise_floor"] is not None
    maps = _raw_maps(out)
    for method in METHODS:
        assert maps[f"candidate__{method}"].shape == (8, CLI_GRID, CLI_GRID)
    assert html.is_file() and ARCH in html.read_text(encoding="utf-8")
