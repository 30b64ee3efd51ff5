"""Score-CAM equals pytorch-grad-cam's; IG is complete and equals a plain per-step loop;
both are selectable end to end (Audit via ``camdrift drift``).

Only the Score-CAM oracle tests need pytorch-grad-cam (skipped without it, failed under CI);
the IG tests and the end-to-end ones run without it."""

from __future__ import annotations

import copy
import json

import numpy as np
import torch
from torch import nn
from typer.testing import CliRunner

from service.cli import app
from tests.builders import drift_args, random_batch, seeded_model, tiny_audit_inputs
from tests.ci import require_module
from worker.engine.attribution import attribute, attribute_batch
from worker.engine.perturbation import integrated_gradients
from worker.results.report_schema import validate_report

TOL = 1e-4


def _oracle_scorecam(model, images, targets, layer_path: str) -> np.ndarray:
    grad_cam = require_module("pytorch_grad_cam")  # skip here, fail under CI
    ScoreCAM = grad_cam.ScoreCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputSoftmaxTarget

    net = copy.deepcopy(model)
    with ScoreCAM(model=net, target_layers=[net.get_submodule(layer_path)]) as cam:
        cam.batch_size = 64  # its own chunking, per sample (ours: 40 or 200, across samples)
        return cam(
            input_tensor=images,
            targets=[ClassifierOutputSoftmaxTarget(int(t)) for t in targets],
        )


def _check_scorecam(model, images, targets, target_layer=None, chunk=40) -> None:
    layer = target_layer or model.spec.feature_layer
    expected = _oracle_scorecam(model, images, targets, layer)
    got = attribute(model, images, targets, ["scorecam"], target_layer=target_layer, chunk=chunk)
    assert got["scorecam"].shape == images.shape[:1] + images.shape[2:]
    diff = np.abs(got["scorecam"].numpy() - expected).max()
    assert diff < TOL, f"scorecam: max abs diff {diff:.2e}"


def test_scorecam_matches_oracle_tinycnn_default_and_named_paths() -> None:
    model = seeded_model("tinycnn", 0)
    images, targets = random_batch(0, 3, 48, 64)
    assert len(set(targets.tolist())) > 1  # mixed targets
    _check_scorecam(model, images, targets)
    _check_scorecam(model, images, targets, target_layer="net.features.14")


def test_scorecam_matches_oracle_resnet18() -> None:
    """512 channels: 2 x 512 masked forwards per side, so small inputs (a 2 x 2 feature map)."""
    model = seeded_model("resnet18", 1)
    images, _ = random_batch(1, 2, 34, 34)
    _check_scorecam(model, images, torch.tensor([0, 3]), chunk=200)


def test_scorecam_chunking_only_changes_rounding() -> None:
    model = seeded_model("tinycnn", 2)
    images, targets = random_batch(2, 2, 48, 48)
    a = attribute_batch(model, images, targets, ["scorecam"], chunk=7).raw["scorecam"]
    b = attribute_batch(model, images, targets, ["scorecam"], chunk=256).raw["scorecam"]
    assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


class Smooth(nn.Module):
    """Tiny and smooth everywhere (softplus, tanh), so the midpoint rule converges fast."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.Softplus(),
            nn.Conv2d(8, 8, 3, stride=2, padding=1),
            nn.Tanh(),
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.Linear(8, 5),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _smooth(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return Smooth().eval()


def test_ig_completeness_at_64_steps() -> None:
    model = _smooth(0)
    images, targets = random_batch(3, 4, 16, 16)
    attr = integrated_gradients(model, images, targets, steps=64, chunk=50)
    with torch.no_grad():
        logits_x = model(images).gather(1, targets[:, None])[:, 0]
        logits_0 = model(torch.zeros_like(images)).gather(1, targets[:, None])[:, 0]
    delta = logits_x - logits_0
    total = attr.sum(dim=(1, 2, 3))
    rel = ((total - delta).abs() / delta.abs().clamp_min(1e-6)).max()
    assert rel < 1e-2, f"completeness: relative error {rel:.2e}"
    # and the gap closes as steps grow (midpoint rule)
    coarse = integrated_gradients(model, images, targets, steps=4).sum(dim=(1, 2, 3))
    assert (total - delta).abs().max() < (coarse - delta).abs().max()


def _ig_loop(model, images, targets, steps: int) -> torch.Tensor:
    """Textbook IG: one sample, one step, one backward at a time."""
    out = torch.zeros_like(images)
    for i in range(images.shape[0]):
        x = images[i : i + 1]
        grads = torch.zeros_like(x)
        for k in range(steps):
            point = ((k + 0.5) / steps * x).clone().requires_grad_(True)
            model(point)[0, int(targets[i])].backward()
            grads += point.grad
        out[i] = (x * grads / steps)[0]
    return out


def test_ig_equals_a_per_sample_per_step_loop() -> None:
    model = _smooth(1)
    images, targets = random_batch(4, 3, 16, 16)
    expected = _ig_loop(model, images, targets, steps=8)
    got = integrated_gradients(model, images, targets, steps=8, chunk=5)  # chunks span samples
    assert (got - expected).abs().max() < 1e-5
    tiny = seeded_model("tinycnn", 5)
    images, targets = random_batch(5, 2, 32, 32)
    expected = _ig_loop(tiny, images, targets, steps=6)
    result = attribute_batch(tiny, images, targets, ["ig"], ig_steps=6, chunk=4)
    raw = expected.abs().sum(dim=1)
    assert (result.raw["ig"] - raw).abs().max() < 1e-5
    assert result.maps["ig"].shape == (2, 32, 32)
    assert torch.allclose(result.maps["ig"].flatten(1).max(1).values, torch.ones(2))


def test_all_families_in_one_call() -> None:
    model = seeded_model("tinycnn", 6)
    images, targets = random_batch(6, 2, 48, 48)
    both = attribute_batch(model, images, targets, ["layercam", "scorecam", "ig"])
    assert list(both.maps) == ["layercam", "scorecam", "ig"]
    alone = attribute_batch(model, images, targets, ["layercam"])
    assert torch.equal(both.maps["layercam"], alone.maps["layercam"])
    for name, m in both.maps.items():
        assert m.shape == (2, 48, 48) and m.min() >= 0 and m.max() <= 1, name
    resized = attribute_batch(model, images, targets, ["ig"], output_size=(24, 24))
    assert resized.maps["ig"].shape == (2, 24, 24)
    with torch.no_grad():  # a caller's no_grad does not stop IG
        inside = attribute_batch(model, images, targets, ["ig"])
    assert torch.allclose(inside.maps["ig"], both.maps["ig"])


def test_drift_cli_with_scorecam_and_ig(tmp_path) -> None:
    world = tiny_audit_inputs(tmp_path, per_class=2)
    out = tmp_path / "report.json"
    result = CliRunner().invoke(
        app,
        drift_args(
            world,
            "--out",
            str(out),
            "--methods",
            "scorecam,ig",
            "--sample-filter",
            "all",
            "--split",
            "all",
            "--max-samples",
            "4",
            "--device",
            "cpu",
            "--html",
            str(tmp_path / "report.html"),
        ),
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    validate_report(report)
    assert set(report["summaries"]) == {"scorecam", "ig"}
    assert report["subsets"]["included"] == 4
    assert (tmp_path / "report.html").stat().st_size > 0
