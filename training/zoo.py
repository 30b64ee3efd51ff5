"""Model zoo: one registry name -> a classifier that knows where its evidence lives.

Every model is a :class:`ZooModel`: a backbone (``forward_features``) that ends at the
feature map attribution reads, and a head (``forward_head``) from that map to logits. The
split is what lets the attribution engine run the backbone once under ``no_grad`` and
backpropagate through the head alone.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import timm
import torch
from torch import nn

from training.hub import timm_pretrained
from training.named_archs import (
    build_named,
    classifier_path,
    is_named,
    named_config,
    named_split,
)
from training.splits import BlockSplit, NativeSplit, Split
from training.weights import read_state_dict

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class ArchSpec:
    """What the zoo knows about one architecture."""

    name: str
    input_size: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_layer: str  # module path (inside ZooModel) producing the backbone's feature map
    timm_name: str | None = None  # None: built here, not by timm
    tokens: bool = False  # transformer: the feature map is a token sequence


ARCHS: dict[str, ArchSpec] = {
    spec.name: spec
    for spec in (
        ArchSpec(
            "densenet201",
            (224, 224),
            IMAGENET_MEAN,
            IMAGENET_STD,
            "net.features.norm5",
            "densenet201",
        ),
        ArchSpec("resnet50v2", (224, 224), HALF, HALF, "net.norm", "resnetv2_50"),
        ArchSpec("inception_v3", (299, 299), HALF, HALF, "net.Mixed_7c", "inception_v3"),
        ArchSpec(
            "vit_small_patch16_224",
            (224, 224),
            HALF,
            HALF,
            "net.blocks.10",
            "vit_small_patch16_224",
            tokens=True,
        ),
        ArchSpec("resnet18", (224, 224), IMAGENET_MEAN, IMAGENET_STD, "net.layer4", "resnet18"),
        ArchSpec("tinycnn", (96, 96), HALF, HALF, "net.features", None),
        # small members of the paper's three families, trainable on a CPU (bench/paper_study.py)
        ArchSpec("densenet_small", (128, 128), HALF, HALF, "net.features.norm5", None),
        ArchSpec("resnetv2_small", (128, 128), HALF, HALF, "net.norm", None),
        ArchSpec("inception_small", (128, 128), HALF, HALF, "net.Mixed_7b", None),
    )
}


class PooledHead(nn.Module):
    """The timm-style head of the nets built here: global average pool, then ``fc``.

    Subclasses define ``forward_features`` and set ``num_features`` and ``fc``.
    """

    fc: nn.Linear
    num_features: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))

    def get_classifier(self) -> nn.Module:
        return self.fc

    def reset_classifier(self, num_classes: int) -> None:
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


class TinyCNN(PooledHead):
    """A four-stage CNN small enough to train in seconds on two CPU cores."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 16) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        channels = in_chans
        # strides 2, 2, 2, 1: a 12 x 12 feature map at 96 px, cheap full-resolution stages
        for out, stride in zip((width, width * 2, width * 4, width * 8), (2, 2, 2, 1), strict=True):
            layers += [
                nn.Conv2d(channels, out, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
                nn.Conv2d(out, out, 3, padding=1, bias=False),
                nn.BatchNorm2d(out),
                nn.ReLU(),
            ]
            channels = out
        self.features = nn.Sequential(*layers)
        self.num_features = channels
        self.fc = nn.Linear(channels, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


def densenet_small(num_classes: int, in_chans: int = 3) -> nn.Module:
    """DenseNet201's family at CPU scale: same dense blocks, transitions and final norm
    (``features.norm5``), growth 12 and three short blocks: an 8 x 8 map at 128 px."""
    from timm.models.densenet import DenseNet

    return DenseNet(
        growth_rate=12, block_config=(3, 6, 6), num_classes=num_classes, in_chans=in_chans
    )


def resnetv2_small(num_classes: int, in_chans: int = 3) -> nn.Module:
    """ResNet50V2's family at CPU scale: pre-activation bottlenecks with BatchNorm and plain
    convs (as timm's ``resnetv2_50``), ending in the final pre-activation norm (``norm``);
    three narrow stages of two blocks: an 8 x 8 map at 128 px."""
    from timm.layers import BatchNormAct2d, create_conv2d
    from timm.models.resnetv2 import ResNetV2

    return ResNetV2(
        layers=[2, 2, 2],
        channels=(64, 128, 256),
        stem_chs=32,
        num_classes=num_classes,
        in_chans=in_chans,
        conv_layer=create_conv2d,
        norm_layer=BatchNormAct2d,
    )


class ConvBN(nn.Sequential):
    """Conv -> BatchNorm -> ReLU, Inception's basic unit."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, stride: int = 1) -> None:
        super().__init__(
            nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(),
        )


class MixedBlock(nn.Module):
    """Inception-A style: parallel 1x1, 1x1->3x3, 1x1->3x3->3x3 and pool->1x1, concatenated."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.branch1x1 = ConvBN(cin, width)
        self.branch3x3 = nn.Sequential(ConvBN(cin, width), ConvBN(width, width, 3))
        self.branch3x3dbl = nn.Sequential(
            ConvBN(cin, width), ConvBN(width, width, 3), ConvBN(width, width, 3)
        )
        self.branch_pool = nn.Sequential(nn.AvgPool2d(3, 1, 1), ConvBN(cin, width))
        self.out_chans = 4 * width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch1x1, self.branch3x3, self.branch3x3dbl, self.branch_pool)
        return torch.cat([b(x) for b in branches], 1)


class ReductionBlock(nn.Module):
    """Inception's grid reduction: strided 3x3, strided double 3x3 and max pool, concatenated."""

    def __init__(self, cin: int, width: int) -> None:
        super().__init__()
        self.branch3x3 = ConvBN(cin, width, 3, stride=2)
        self.branch3x3dbl = nn.Sequential(
            ConvBN(cin, width, 1), ConvBN(width, width, 3), ConvBN(width, width, 3, stride=2)
        )
        self.branch_pool = nn.MaxPool2d(3, 2, 1)
        self.out_chans = 2 * width + cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = (self.branch3x3, self.branch3x3dbl, self.branch_pool)
        return torch.cat([b(x) for b in branches], 1)


class InceptionSmall(PooledHead):
    """InceptionV3's family at CPU scale: a stem, mixed blocks of parallel branches and two
    grid reductions; the feature map is the last mixed block's concatenation (``Mixed_7b``,
    as ``Mixed_7c`` is InceptionV3's), 8 x 8 at 128 px."""

    def __init__(self, num_classes: int, in_chans: int = 3, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            ConvBN(in_chans, width, 3, stride=2),
            ConvBN(width, width * 2, 3),
            nn.MaxPool2d(3, 2, 1),
            ConvBN(width * 2, width * 3, 1),
        )
        self.Mixed_5b = MixedBlock(width * 3, width)
        self.Mixed_6a = ReductionBlock(self.Mixed_5b.out_chans, width * 2)
        self.Mixed_6b = MixedBlock(self.Mixed_6a.out_chans, width * 2)
        self.Mixed_7a = ReductionBlock(self.Mixed_6b.out_chans, width * 3)
        self.Mixed_7b = MixedBlock(self.Mixed_7a.out_chans, width * 4)
        self.num_features = self.Mixed_7b.out_chans
        self.fc = nn.Linear(self.num_features, num_classes)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for block in (self.Mixed_5b, self.Mixed_6a, self.Mixed_6b, self.Mixed_7a, self.Mixed_7b):
            x = block(x)
        return x


# architectures built here rather than by timm name (none has ImageNet weights)
LOCAL_BUILDERS = {
    "tinycnn": TinyCNN,
    "densenet_small": densenet_small,
    "resnetv2_small": resnetv2_small,
    "inception_small": InceptionSmall,
}


class ZooModel(nn.Module):
    """A classifier split at its feature map: ``forward = forward_head o forward_features``.

    The split (:mod:`training.splits`) says where the feature map is and how it becomes a
    grid; for class-token transformers it sits before the last block, so the "feature map" is
    the token sequence entering it (patch tokens carry gradient there; after the last block
    only the class token would).
    """

    def __init__(
        self,
        spec: ArchSpec,
        net: nn.Module,
        num_classes: int,
        split: Split | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        self.net = net
        self.num_classes = num_classes
        self.in_chans = in_chans
        self.split = split or _zoo_split(spec, net)
        self.spec = replace(spec, feature_layer=f"net.{self.split.layer}")

    @property
    def arch(self) -> str:
        return self.spec.name

    @property
    def input_size(self) -> tuple[int, int]:
        return self.spec.input_size

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.split.features(x)

    def forward_head(self, a: torch.Tensor) -> torch.Tensor:
        return self.split.head(a)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The net's own forward (equal to ``forward_head o forward_features``): hooks on any
        of its modules fire, containers included, which a traced graph would skip."""
        return self.net(x)

    def to_grid(self, a: torch.Tensor) -> torch.Tensor:
        """The feature map as [N, C, h, w]; transformer tokens lose their prefix tokens."""
        return self.split.to_grid(a)

    def classifier(self) -> nn.Module:
        """The layer producing the logits (the new head of a transfer-learning phase)."""
        return self.net.get_submodule(classifier_path(self.net, self.num_classes))

    def classifier_parameters(self) -> Iterator[nn.Parameter]:
        """The parameters a transfer-learning phase trains (the new head)."""
        yield from self.classifier().parameters()

    def backbone_parameters(self) -> Iterator[nn.Parameter]:
        head = {id(p) for p in self.classifier_parameters()}
        for p in self.net.parameters():
            if id(p) not in head:
                yield p


def _zoo_split(spec: ArchSpec, net: nn.Module) -> Split:
    if spec.tokens:
        return BlockSplit(net)
    return NativeSplit(net, spec.feature_layer.removeprefix("net."))


def list_archs() -> list[str]:
    return sorted(ARCHS)


def arch_spec(arch: str) -> ArchSpec:
    """A zoo name, or ``timm/<name>`` / ``torchvision/<name>`` (config from the library; the
    feature layer is found when the net is built)."""
    if is_named(arch):
        cfg = named_config(arch)
        return ArchSpec(arch, cfg.input_size, cfg.mean, cfg.std, "")
    try:
        return ARCHS[arch]
    except KeyError:
        raise ValueError(
            f"unknown arch {arch!r}; choose one of {', '.join(list_archs())}, or name any "
            "timm or torchvision classifier as timm/<name> or torchvision/<name>"
        ) from None


def _build_net(spec: ArchSpec, num_classes: int, in_chans: int, imagenet: bool) -> nn.Module:
    if spec.timm_name is None:
        if imagenet:
            raise ValueError(f"{spec.name} has no ImageNet weights; use a local file or 'none'")
        return LOCAL_BUILDERS[spec.name](num_classes, in_chans)
    kwargs: dict = {"num_classes": num_classes, "in_chans": in_chans}
    if spec.tokens:
        kwargs["dynamic_img_size"] = True
    if not imagenet:
        return timm.create_model(spec.timm_name, pretrained=False, **kwargs)
    return timm_pretrained(spec.timm_name, kwargs, spec.name)


def create_model(
    arch: str,
    num_classes: int,
    pretrained: str | Path = "none",
    in_chans: int = 3,
    input_size: tuple[int, int] | None = None,
    mean: tuple[float, ...] | None = None,
    std: tuple[float, ...] | None = None,
) -> ZooModel:
    """Build ``arch`` with a fresh ``num_classes`` head.

    ``arch``: a zoo name or ``timm/<name>`` / ``torchvision/<name>``. ``pretrained``:
    ``"none"`` (random), ``"imagenet"`` (the library's weights; downloads when online), or a
    path to a weights file (a camdrift ``.safetensors`` checkpoint or a plain state dict)
    whose backbone is loaded while the head stays new. ``input_size``: the size the net is
    built for (default: its config's); fixed-size transformers are built at it. ``mean`` /
    ``std``: the input normalisation (default: the config's, averaged for one channel).
    """
    spec = arch_spec(arch)
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    if not 1 <= in_chans <= 4:
        raise ValueError(f"in_chans must be 1..4, got {in_chans}")
    size = tuple(input_size or spec.input_size)
    spec = replace(
        spec,
        input_size=size,
        mean=_per_channel(tuple(mean or spec.mean), in_chans, "mean"),
        std=_per_channel(tuple(std or spec.std), in_chans, "std"),
    )
    source = str(pretrained)
    imagenet = source == "imagenet"
    if is_named(arch):
        net = build_named(arch, num_classes, in_chans, size, imagenet)
        model = ZooModel(spec, net, num_classes, named_split(arch, net, size, in_chans), in_chans)
    else:
        net = _build_net(spec, num_classes, in_chans, imagenet=imagenet)
        model = ZooModel(spec, net, num_classes, in_chans=in_chans)
    if source not in ("none", "imagenet"):
        load_backbone(model, Path(source))
    return model.eval()


def _per_channel(values: tuple[float, ...], in_chans: int, what: str) -> tuple[float, ...]:
    """Statistics for ``in_chans`` channels: one value is shared, RGB ones are averaged for
    a one-channel model."""
    values = tuple(float(v) for v in values)
    if what == "std" and any(v <= 0 for v in values):
        raise ValueError(f"std: every value must be > 0, got {list(values)}")
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return (round(sum(values) / len(values), 6),)
    raise ValueError(f"{what}: {len(values)} values for a {in_chans}-channel model")


def load_backbone(model: ZooModel, path: Path) -> None:
    """Copy every backbone tensor from a weights file; the classifier stays as built."""
    state = read_state_dict(path)
    head_names = {
        name
        for name, p in model.net.named_parameters()
        if any(p is q for q in model.classifier_parameters())
    }
    own = model.net.state_dict()
    wanted = {k for k in own if k not in head_names}
    missing = sorted(k for k in wanted if k not in state)
    if missing:
        raise ValueError(
            f"{path}: not a {model.arch} backbone; missing {len(missing)} tensors, "
            f"e.g. {missing[0]!r}"
        )
    for key in wanted:
        if tuple(state[key].shape) != tuple(own[key].shape):
            raise ValueError(
                f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"{model.arch} needs {tuple(own[key].shape)}"
            )
    model.net.load_state_dict({k: state[k] for k in wanted}, strict=False)


def named_module(model: nn.Module, path: str) -> nn.Module:
    """Resolve a dotted module path (``net.layer4``, ``net.blocks.10``) with a clear error."""
    try:
        return model.get_submodule(path)
    except AttributeError:
        raise ValueError(f"target_layer {path!r} is not a module of this model") from None
