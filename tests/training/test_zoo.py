"""Model zoo: shapes at each arch's default input size, pretrained sources, errors."""

from __future__ import annotations

import pytest
import torch

from tests.ci import require_module
from training.checkpoints import model_metadata, save_checkpoint
from training.zoo import ARCHS, create_model, list_archs

EXPECTED = {
    "densenet201": ((224, 224), (1920, 7, 7)),
    "resnet50v2": ((224, 224), (2048, 7, 7)),
    "inception_v3": ((299, 299), (2048, 8, 8)),
    "vit_small_patch16_224": ((224, 224), (384, 14, 14)),
    "resnet18": ((224, 224), (512, 7, 7)),
    "tinycnn": ((96, 96), (128, 12, 12)),
    "densenet_small": ((128, 128), (123, 8, 8)),
    "resnetv2_small": ((128, 128), (256, 8, 8)),
    "inception_small": ((128, 128), (256, 8, 8)),
}
# CPU-sized members of the paper's three families (bench/paper_study.py trains them)
SMALL = ("densenet_small", "resnetv2_small", "inception_small")


def test_registry_lists_required_archs() -> None:
    assert set(EXPECTED) <= set(list_archs())


@pytest.mark.parametrize("arch", sorted(EXPECTED))
def test_output_and_feature_map_shapes(arch: str) -> None:
    size, grid = EXPECTED[arch]
    model = create_model(arch, num_classes=5, pretrained="none")
    assert model.input_size == size
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        features = model.forward_features(x)
        logits = model.forward_head(features)
        assert torch.allclose(model(x), logits, atol=1e-5)
    assert tuple(model.to_grid(features).shape) == (1, *grid)
    assert tuple(logits.shape) == (1, 5)
    module = model.get_submodule(ARCHS[arch].feature_layer)
    seen = []
    handle = module.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    with torch.no_grad():
        model(x)
    handle.remove()
    assert tuple(seen[-1]) == tuple(features.shape), "feature_layer must produce the feature map"


def test_local_weights_file_loads_backbone_and_keeps_new_head(tmp_path) -> None:
    torch.manual_seed(0)
    source = create_model("tinycnn", num_classes=4)
    path = tmp_path / "pre.safetensors"
    save_checkpoint(path, source, model_metadata(source, ["a", "b", "c", "d"]))
    target = create_model("tinycnn", num_classes=5, pretrained=path)
    src, dst = source.net.state_dict(), target.net.state_dict()
    assert torch.equal(src["features.0.weight"], dst["features.0.weight"])
    assert dst["fc.weight"].shape == (5, 128)


@pytest.mark.parametrize("arch", SMALL)
def test_small_family_member_backbone_round_trip(tmp_path, arch: str) -> None:
    """A pretrained file of a small arch loads every backbone tensor; the new head stays new."""
    torch.manual_seed(1)
    source = create_model(arch, num_classes=4)
    path = tmp_path / "pre.safetensors"
    save_checkpoint(path, source, model_metadata(source, ["a", "b", "c", "d"]))
    target = create_model(arch, num_classes=5, pretrained=path)
    head = {
        name
        for name, p in target.net.named_parameters()
        if any(p is q for q in target.classifier_parameters())
    }
    src, dst = source.net.state_dict(), target.net.state_dict()
    assert head and all(dst[k].shape[0] == 5 for k in head)
    backbone = [k for k in dst if k not in head]
    assert len(backbone) > 20
    for key in backbone:
        assert torch.equal(src[key], dst[key]), key
    x = torch.randn(2, 3, *target.input_size)
    with torch.no_grad():  # same backbone, so same feature map
        assert torch.allclose(source.forward_features(x), target.forward_features(x))


@pytest.mark.parametrize("arch", SMALL)
def test_small_family_member_has_no_imagenet_weights(arch: str) -> None:
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_model(arch, 5, pretrained="imagenet")


@pytest.mark.parametrize("arch", SMALL)
def test_small_family_member_attribution_matches_oracle(arch: str) -> None:
    """The engine's five gradient CAMs at the default layer equal pytorch-grad-cam's, and
    ``attribute_batch`` gives one [0, 1] map per image at the input size."""
    require_module("pytorch_grad_cam")
    from tests.builders import random_batch, seeded_model
    from tests.engine.test_attribution_oracle import _check
    from worker.engine.attribution import attribute_batch

    model = seeded_model(arch, 0)
    images, targets = random_batch(0, 3, *model.input_size)
    _check(model, images, targets)
    result = attribute_batch(model, images, targets, ["layercam", "gradcam++"])
    for name, maps in result.maps.items():
        assert tuple(maps.shape) == (3, *model.input_size)
        assert maps.min() >= 0 and maps.max() <= 1
        assert not result.degenerate[name].any(), "an all-zero map would make the oracle moot"


def test_errors_name_the_problem(tmp_path) -> None:
    with pytest.raises(ValueError, match="unknown arch 'nope'"):
        create_model("nope", 5)
    with pytest.raises(ValueError, match="no ImageNet weights"):
        create_model("tinycnn", 5, pretrained="imagenet")
    with pytest.raises(ValueError, match="num_classes"):
        create_model("tinycnn", 1)
    other = create_model("resnet18", 5)
    path = tmp_path / "r18.safetensors"
    save_checkpoint(path, other, model_metadata(other, list("abcde")))
    with pytest.raises(ValueError, match="not a tinycnn backbone"):
        create_model("tinycnn", 5, pretrained=path)


def test_imagenet_weights_offline_fail_at_once_with_the_way_out(monkeypatch, tmp_path) -> None:
    """No hub and nothing cached: one clear error instead of a minute of retries (the hub
    client is put in offline mode, so it never tries the network)."""
    import huggingface_hub.constants as hub

    import training.hub

    monkeypatch.setattr(training.hub, "hub_reachable", lambda *a, **k: False)
    monkeypatch.setattr(hub, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    calls = []

    def no_network(*args, **kwargs):  # any HTTP attempt would be a test bug
        calls.append(args)
        raise AssertionError("the hub client went to the network")

    monkeypatch.setattr("huggingface_hub.file_download.get_session", no_network, raising=False)
    with pytest.raises(
        ValueError, match=r"cannot be reached.*pretrained 'none', or a weights file"
    ):
        create_model("resnet18", 5, pretrained="imagenet")
    assert not calls
    assert hub.HF_HUB_OFFLINE is False  # restored


def test_hub_probe_says_no_for_a_closed_port() -> None:
    from training.hub import hub_reachable

    assert hub_reachable(("127.0.0.1", 1), timeout=1.0) is False
