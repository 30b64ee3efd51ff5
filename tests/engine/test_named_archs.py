"""Any timm or torchvision classifier by name: the auto-found feature map is the library's own
tensor there, the split reproduces the net's logits, and the maps equal pytorch-grad-cam's on
the auto-found layer and on a named module (random weights, 64 px inputs)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from tests.builders import random_batch
from tests.ci import require_module
from tests.engine.test_attribution_oracle import XGRADCAM_CANCELLATION, _check
from training.zoo import ARCHS, create_model
from worker.engine.attribution import attribute_batch

require_module("pytorch_grad_cam")  # skip here, fail under CI
SIZE = 64
PAPER_METHODS = ("layercam", "gradcam++")
# A transformer's residual stream is signed in every one of its hundreds of channels: in every
# sample some channel sum cancels (see test_attribution_oracle, XGRADCAM_CANCELLATION), and
# XGrad-CAM divides by them, so no float32 pair of implementations agrees there. On token
# grids XGrad-CAM is not compared (None); the other four methods check the same A and G.
TOKEN_CANCELLATION = None


def _permute(t: torch.Tensor) -> torch.Tensor:
    return t.permute(0, 3, 1, 2)


def _tokens(prefix: int):
    def reshape(tokens: torch.Tensor) -> torch.Tensor:
        patches = tokens[:, prefix:, :]
        side = int(patches.shape[1] ** 0.5)
        return patches.reshape(tokens.shape[0], side, side, -1).permute(0, 3, 1, 2)

    return reshape


# arch, the library's own name for the feature map (module path, or torchvision graph node
# as ``node:<name>``), a named module to audit instead, pytorch-grad-cam's reshape_transform
CASES = [
    ("timm/convnext_atto", "stages", "net.stages.2", None),
    ("timm/efficientnet_b0", "bn2", "net.blocks.5", None),
    ("timm/densenet121", "features", "net.features.denseblock4", None),
    ("timm/regnetx_002", "s4", "net.s3", None),
    ("timm/mobilenetv3_small_050", "blocks", "net.blocks.4", None),
    ("timm/swin_tiny_patch4_window7_224", "norm", "net.layers.2", _permute),
    ("timm/deit_tiny_patch16_224", "blocks.10", "net.blocks.9", _tokens(1)),
    ("torchvision/densenet121", "node:relu", "net.features.denseblock4", None),
    ("torchvision/resnet50", "layer4", "net.layer3", None),
    ("torchvision/efficientnet_b0", "features", "net.features.6", None),
    ("torchvision/convnext_tiny", "features", "net.features.5", None),
    ("torchvision/mobilenet_v3_small", "features", "net.features.10", None),
    ("torchvision/swin_t", "node:permute", None, None),
    (
        "torchvision/vit_b_16",
        "encoder.layers.encoder_layer_10",
        "net.encoder.layers.encoder_layer_9",
        _tokens(1),
    ),
]
IDS = [case[0] for case in CASES]


class Tapped(nn.Module):
    """``head(tap(features(x)))``: puts a module on a feature map that is a graph node (a
    functional relu, a permute), so pytorch-grad-cam can hook it."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.tap = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.tap(self.model.forward_features(x)))


def _seeded(arch: str, seed: int = 0):
    """Random weights, with BatchNorm statistics measured on random images: at their initial
    (0, 1) statistics some deep nets shrink every activation towards 0 (torchvision's
    EfficientNet gives logits of 1e-13), where float32 maps say nothing."""
    torch.manual_seed(seed)
    model = create_model(arch, 5, input_size=(SIZE, SIZE))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the calibration batches
    if norms:
        model.train()
        with torch.no_grad():
            for _ in range(2):
                model(torch.randn(8, 3, SIZE, SIZE))
    head = model.classifier()
    nn.init.normal_(head.weight, std=head.weight.shape[1] ** -0.5)  # torchvision ViT's is 0
    return model.eval()


def _library_feature_map(model, reference: str, images: torch.Tensor) -> torch.Tensor:
    """The feature map as the library computes it: a forward hook on its module, or
    torchvision's own feature extractor at its graph node."""
    if reference.startswith("node:"):
        from torchvision.models.feature_extraction import create_feature_extractor

        extractor = create_feature_extractor(model.net, {reference[5:]: "a"})
        return extractor(images)["a"]
    seen: list[torch.Tensor] = []
    hook = model.net.get_submodule(reference).register_forward_hook(
        lambda _m, _i, out: seen.append(out)
    )
    try:
        model.net(images)
    finally:
        hook.remove()
    return seen[-1]


def _assert_informative(model, images, targets, layer) -> None:
    """Equality to the oracle means something only where the maps are not all zero (the
    paper's two methods; HiResCAM's signed sum may be all negative on random weights)."""
    result = attribute_batch(model, images, targets, PAPER_METHODS, target_layer=layer)
    for name in PAPER_METHODS:
        assert not bool(result.degenerate[name].all()), f"{name}: every map is empty"


def test_the_named_archs_are_not_the_zoos() -> None:
    assert len({arch for arch, *_ in CASES} - set(ARCHS)) >= 8
    assert {arch.split("/")[0] for arch, *_ in CASES} == {"timm", "torchvision"}


@pytest.mark.parametrize(("arch", "reference", "named", "reshape"), CASES, ids=IDS)
def test_split_is_the_libraries_feature_map_and_logits(arch, reference, named, reshape) -> None:
    model = _seeded(arch)
    images, _ = random_batch(1, 2, SIZE, SIZE)
    with torch.no_grad():
        features = model.forward_features(images)
        assert torch.allclose(model.forward_head(features), model.net(images), atol=1e-5)
        assert torch.allclose(features, _library_feature_map(model, reference, images), atol=1e-6)
    grid = model.to_grid(features)
    assert grid.ndim == 4 and grid.shape[2] * grid.shape[3] > 1


@pytest.mark.parametrize(("arch", "reference", "named", "reshape"), CASES, ids=IDS)
def test_maps_equal_pytorch_grad_cam_on_the_auto_layer(arch, reference, named, reshape) -> None:
    model = _seeded(arch)
    images, targets = random_batch(2, 4, SIZE, SIZE)
    _assert_informative(model, images, targets, None)
    oracle = (
        (Tapped(model), "tap") if reference.startswith("node:") else (model, f"net.{reference}")
    )
    bound = TOKEN_CANCELLATION if model.split.layout == "NLC" else XGRADCAM_CANCELLATION
    _check(model, images, targets, reshape=reshape, oracle=oracle, cancellation=bound)


# torchvision Swin's stage outputs are channels-last in a channels-first model: no named case
NAMED = [case for case in CASES if case[2] is not None]


@pytest.mark.parametrize(
    ("arch", "reference", "named", "reshape"), NAMED, ids=[c[0] for c in NAMED]
)
def test_maps_equal_pytorch_grad_cam_on_a_named_module(arch, reference, named, reshape) -> None:
    model = _seeded(arch, 1)
    images, targets = random_batch(3, 4, SIZE, SIZE)
    _assert_informative(model, images, targets, named)
    bound = TOKEN_CANCELLATION if model.split.layout == "NLC" else XGRADCAM_CANCELLATION
    _check(model, images, targets, target_layer=named, reshape=reshape, cancellation=bound)


def test_a_torchvision_split_is_traced_once_per_structure(monkeypatch) -> None:
    """A second net of the same arch reuses the traced graphs, over its own weights."""
    from torch.fx.passes.shape_prop import ShapeProp

    from training import splits

    calls = []
    original = ShapeProp.propagate
    monkeypatch.setattr(
        ShapeProp, "propagate", lambda self, *a: calls.append(1) or original(self, *a)
    )
    monkeypatch.setattr(splits, "_TRACED", {})
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(create_model("torchvision/resnet18", 3, input_size=(64, 64)))
    assert len(calls) == 1
    other = create_model("torchvision/resnet18", 4, input_size=(64, 64))  # another head
    assert len(calls) == 2 and other.num_classes == 4
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        outs = [m.forward_head(m.forward_features(x)) for m in models]
        for model, out in zip(models, outs, strict=True):
            assert torch.allclose(out, model.net(x), atol=1e-5)
    assert not torch.allclose(outs[0], outs[1])
