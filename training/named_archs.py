"""Architectures by name: any timm model (``timm/<name>``) or torchvision classifier
(``torchvision/<name>``), beside the zoo's own names.

Input size, mean and std come from the model's pretrained config (timm's ``pretrained_cfg``,
torchvision's default weights' transforms) unless the caller gives them; the feature-map split
is found on the built net (:mod:`training.splits`). Nothing here downloads unless ImageNet
weights are asked for.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import timm
import torch
from torch import nn

from training.hub import timm_pretrained, torchvision_pretrained
from training.splits import Split, graph_split, timm_split

TIMM = "timm/"
TORCHVISION = "torchvision/"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class NamedConfig:
    """What a named architecture's pretrained config says about its input."""

    input_size: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fixed_size: bool  # the net is built for one input size (ViT, Swin): pass it at build


def is_named(arch: str) -> bool:
    return arch.startswith((TIMM, TORCHVISION))


def library_name(arch: str) -> tuple[str, str]:
    """``timm/convnext_nano`` -> ("timm", "convnext_nano")."""
    library, _, name = arch.partition("/")
    return library, name


@functools.cache
def named_config(arch: str) -> NamedConfig:
    """The named arch's input config; a clear error for a name its library lacks."""
    library, name = library_name(arch)
    if library == "timm":
        if not timm.is_model(name):
            raise ValueError(_unknown(arch, timm.list_models(f"*{name[:4]}*")))
        cfg = timm.get_pretrained_cfg(name)
        if cfg is None:
            return NamedConfig((224, 224), IMAGENET_MEAN, IMAGENET_STD, False)
        size = tuple(int(v) for v in cfg.input_size[1:])
        return NamedConfig(size, tuple(cfg.mean), tuple(cfg.std), bool(cfg.fixed_input_size))
    import torchvision

    known = torchvision.models.list_models(module=torchvision.models)
    if name not in known:
        raise ValueError(_unknown(arch, [k for k in known if k[:4] == name[:4]]))
    transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
    side = int(transforms.crop_size[0])
    fixed = name.startswith("vit_")
    return NamedConfig((side, side), tuple(transforms.mean), tuple(transforms.std), fixed)


def _unknown(arch: str, near: list[str]) -> str:
    library, _ = library_name(arch)
    hint = f"; similar: {', '.join(f'{library}/{n}' for n in near[:5])}" if near else ""
    return f"unknown arch {arch!r}: {library} has no model of that name{hint}"


def build_named(
    arch: str,
    num_classes: int,
    in_chans: int,
    input_size: tuple[int, int],
    imagenet: bool,
) -> nn.Module:
    """The named net with a fresh ``num_classes`` head and ``in_chans`` input channels."""
    library, name = library_name(arch)
    cfg = named_config(arch)
    if library == "timm":
        kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans}
        if cfg.fixed_size and tuple(input_size) != cfg.input_size:
            kwargs["img_size"] = tuple(input_size)
        if not imagenet:
            return timm.create_model(name, pretrained=False, **kwargs)
        return timm_pretrained(name, kwargs, arch)
    return _torchvision_net(name, num_classes, in_chans, input_size, imagenet)


def _torchvision_net(
    name: str,
    num_classes: int,
    in_chans: int,
    input_size: tuple[int, int],
    imagenet: bool,
) -> nn.Module:
    import torchvision

    kwargs: dict = {}
    if (
        name.startswith("vit_")
        and tuple(input_size) != named_config(f"{TORCHVISION}{name}").input_size
    ):
        if input_size[0] != input_size[1]:
            raise ValueError(f"torchvision/{name} takes square inputs, got {tuple(input_size)}")
        kwargs["image_size"] = int(input_size[0])
    if imagenet:
        if kwargs:
            raise ValueError(f"torchvision/{name}'s ImageNet weights are for its default size")
        net = torchvision_pretrained(name, f"{TORCHVISION}{name}")
        _replace_classifier(net, num_classes)
    else:
        net = torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    if in_chans != 3:
        _adapt_stem(net, in_chans)
    return net


def classifier_path(net: nn.Module, num_classes: int) -> str:
    """The module producing the logits: timm's ``get_classifier``, else the last Linear (or
    1x1 conv) with ``num_classes`` outputs."""
    if hasattr(net, "get_classifier"):
        head = net.get_classifier()
        for name, module in net.named_modules():
            if module is head:
                return name
    found = ""
    for name, module in net.named_modules():
        out = getattr(module, "out_features", None) or getattr(module, "out_channels", None)
        if isinstance(module, nn.Linear | nn.Conv2d) and out == num_classes:
            found = name
    if not found:
        raise ValueError(f"no classifier layer with {num_classes} outputs in this model")
    return found


def _replace_classifier(net: nn.Module, num_classes: int) -> None:
    name = ""
    for path, module in net.named_modules():
        if isinstance(module, nn.Linear):
            name = path
    old = net.get_submodule(name)
    _set_module(net, name, nn.Linear(old.in_features, num_classes))


def _adapt_stem(net: nn.Module, in_chans: int) -> None:
    """The first conv takes ``in_chans`` channels: the RGB filters' sum, shared equally
    (for one channel, timm's ``adapt_input_conv`` rule)."""
    name, conv = next((n, m) for n, m in net.named_modules() if isinstance(m, nn.Conv2d))
    new = nn.Conv2d(
        in_chans,
        conv.out_channels,
        conv.kernel_size,
        conv.stride,
        conv.padding,
        conv.dilation,
        conv.groups,
        conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(
            conv.weight.sum(dim=1, keepdim=True).expand(-1, in_chans, -1, -1) / in_chans
        )
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    _set_module(net, name, new)


def _set_module(net: nn.Module, path: str, module: nn.Module) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(net.get_submodule(parent) if parent else net, leaf, module)


def named_split(arch: str, net: nn.Module, input_size: tuple[int, int], in_chans: int) -> Split:
    """The auto-found feature-map split of a named net (see :mod:`training.splits`)."""
    library, name = library_name(arch)
    if library == "timm":
        return timm_split(net, input_size, in_chans)
    block = None
    if name.startswith("vit_"):
        block = f"encoder.layers.encoder_layer_{len(net.encoder.layers) - 2}"
    return graph_split(net, input_size, in_chans, token_block=block)
