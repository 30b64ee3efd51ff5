"""``camdrift import``: every foreign format round-trips to the same logits as the network that
saved it (built here by torchvision / timm directly), and every refusal names its reason."""

from __future__ import annotations

import json
import pickle

import pytest
import safetensors.torch
import timm
import torch
import torchvision
from torch import nn
from typer.testing import CliRunner

from service.cli import app
from training.checkpoint_format import CheckpointError
from training.checkpoints import load_checkpoint
from training.importing import ImportRequest, import_checkpoint

CLASSES = ["effusion", "normal", "pneumonia"]
ARCH = "torchvision/mobilenet_v3_small"
SIZE = 64


@pytest.fixture(scope="module")
def source() -> nn.Module:
    """A torchvision MobileNetV3 with a 3-class head and non-default weights."""
    torch.manual_seed(0)
    net = torchvision.models.mobilenet_v3_small(num_classes=len(CLASSES))
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    return net.eval()


def _same_logits(path, net: nn.Module, in_chans: int = 3) -> None:
    model, meta = load_checkpoint(path)
    assert meta["class_names"] == CLASSES
    x = torch.randn(2, in_chans, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.allclose(model(x), net(x), atol=1e-5)
        assert torch.allclose(model.forward_head(model.forward_features(x)), net(x), atol=1e-5)


def _request(**kw) -> ImportRequest:
    return ImportRequest(**{"arch": ARCH, "class_names": CLASSES, **kw})


FORMATS = {
    "plain.pth": lambda sd: sd,
    "lightning.ckpt": lambda sd: {
        "state_dict": {f"model.{k}": v for k, v in sd.items()},
        "epoch": 3,
        "global_step": 120,
        "hyper_parameters": {"lr": 0.001, "arch": "mobilenet_v3_small"},
    },
    "dataparallel.pt": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "wrapped.pth": lambda sd: {"state_dict": sd, "optimizer": {"lr": 0.1}},
    "model_state_dict.pt": lambda sd: {"model_state_dict": sd, "epoch": 1},
}


@pytest.mark.parametrize("name", sorted(FORMATS))
def test_torch_save_formats_round_trip(tmp_path, source, name) -> None:
    path = tmp_path / name
    torch.save(FORMATS[name](source.state_dict()), path)
    done = import_checkpoint(path, tmp_path / "out.safetensors", _request())
    assert done.meta["imported_from"]["file"] == name
    assert done.prefix == {"lightning.ckpt": "model.", "dataparallel.pt": "module."}.get(name, "")
    _same_logits(done.path, source)


def test_safetensors_without_metadata_round_trips(tmp_path, source) -> None:
    path = tmp_path / "weights.safetensors"
    safetensors.torch.save_file({k: v.contiguous() for k, v in source.state_dict().items()}, path)
    done = import_checkpoint(path, tmp_path / "out.safetensors", _request())
    _same_logits(done.path, source)


def test_hugging_face_folder_describes_itself(tmp_path) -> None:
    """A timm hub folder: arch, class names, input size and normalisation from config.json."""
    torch.manual_seed(2)
    net = timm.create_model("regnetx_002", num_classes=len(CLASSES), in_chans=1).eval()
    folder = tmp_path / "hub-model"
    folder.mkdir()
    safetensors.torch.save_file(
        {k: v.contiguous() for k, v in net.state_dict().items()}, folder / "model.safetensors"
    )
    config = {
        "architecture": "regnetx_002",
        "num_classes": len(CLASSES),
        "label_names": CLASSES,
        "pretrained_cfg": {"input_size": [1, SIZE, SIZE], "mean": [0.4], "std": [0.2]},
    }
    (folder / "config.json").write_text(json.dumps(config))
    done = import_checkpoint(folder, tmp_path / "out.safetensors", ImportRequest())
    meta = done.meta
    assert meta["arch"] == "timm/regnetx_002"
    assert (meta["in_chans"], meta["input_size"], meta["mean"], meta["std"]) == (
        1,
        [SIZE, SIZE],
        [0.4],
        [0.2],
    )
    _same_logits(done.path, net, in_chans=1)


def test_one_channel_stem_is_read_from_the_weights(tmp_path) -> None:
    torch.manual_seed(3)
    net = timm.create_model("regnetx_002", num_classes=len(CLASSES), in_chans=1).eval()
    path = tmp_path / "gray.pth"
    torch.save(net.state_dict(), path)
    done = import_checkpoint(path, tmp_path / "out.safetensors", _request(arch="timm/regnetx_002"))
    assert done.meta["in_chans"] == 1
    _same_logits(done.path, net, in_chans=1)


class Payload:
    """Any class: torch.save pickles it as code to import, which weights_only refuses."""

    def __reduce__(self):
        return (print, ("this would run",))


def test_pickled_code_is_refused_with_todays_message(tmp_path, source) -> None:
    path = tmp_path / "evil.pth"
    with path.open("wb") as f:
        pickle.dump({"state_dict": source.state_dict(), "hook": Payload()}, f)
    with pytest.raises(CheckpointError, match="would unpickle code"):
        import_checkpoint(path, tmp_path / "out.safetensors", _request())
    assert not (tmp_path / "out.safetensors").exists()


def test_wrong_head_size_says_what_was_expected(tmp_path, source) -> None:
    path = tmp_path / "plain.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"head 'classifier.3.weight' has 3 outputs; 5"):
        import_checkpoint(path, tmp_path / "o.safetensors", _request(class_names=list("abcde")))


def test_wrong_architecture_is_named(tmp_path, source) -> None:
    path = tmp_path / "plain.pth"
    torch.save(source.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"not a torchvision/resnet18 checkpoint: \d+ of"):
        import_checkpoint(path, tmp_path / "o.safetensors", _request(arch="torchvision/resnet18"))


def test_renamed_key_is_listed_with_its_nearest_match(tmp_path, source) -> None:
    state = dict(source.state_dict())
    state["classifier.3.kernel"] = state.pop("classifier.3.weight")
    path = tmp_path / "renamed.pth"
    torch.save(state, path)
    with pytest.raises(
        CheckpointError,
        match=r"missing 1: 'classifier.3.weight' \(nearest: 'classifier.3.kernel'\)",
    ):
        import_checkpoint(path, tmp_path / "o.safetensors", _request())


def test_cli_imports_and_refuses_with_exit_code_2(tmp_path, source) -> None:
    path = tmp_path / "plain.pth"
    torch.save(source.state_dict(), path)
    runner = CliRunner()
    args = ["import", str(path), "--out", str(tmp_path / "ok.safetensors"), "--arch", ARCH]
    ok = runner.invoke(app, [*args, "--classes", ",".join(CLASSES)])
    assert ok.exit_code == 0, ok.output
    assert "imported torchvision/mobilenet_v3_small (3 classes" in ok.output
    _same_logits(tmp_path / "ok.safetensors", source)
    bad = runner.invoke(app, [*args, "--classes", "a,b"])
    assert bad.exit_code == 2
    assert "has 3 outputs" in bad.output
    none = runner.invoke(app, ["import", str(path), "--out", str(tmp_path / "x.safetensors")])
    assert none.exit_code == 2 and "name the architecture" in none.output
