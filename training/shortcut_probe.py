"""Behavioural ground truth for the phantom benchmark: does a model rely on the shortcut?

Training a model on data with a shortcut does not mean the model uses it; some fine-tunes learn
the finding anyway. So the benchmark labels a model "shortcut" by what it does: the phantom
generator is deterministic, so the very test images the model was scored on are rendered again
with the shortcut present, removed and (for the positional kinds) moved -- same anatomy, same
lesion, only the shortcut pixels differ -- and the shortcut class's recall and softmax score
are compared across those conditions.

Decision rule (:data:`RULE`): ``relies_on_shortcut`` when the recall drop (present - absent)
is >= 0.30 **and** a one-sided exact McNemar test on the paired images (the discordant pairs,
right with the shortcut and wrong without it vs the reverse, binomial with p = 1/2) rejects
"the shortcut does not help" at 5 %. Pairing makes it the right test: each image is its own
control. A small test split cannot reach significance; ``n_shortcut`` says how many images the
decision stands on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import stats
from torch import nn

from training.phantoms import (
    POSITIONAL_KINDS,
    SPLITS,
    PhantomParams,
    PlannedImage,
    plan_dataset,
    read_params,
    render_planned,
    to_uint8,
)

RECALL_DROP_MIN = 0.30
ALPHA = 0.05
RULE = (
    "relies_on_shortcut = recall_drop >= {drop:.2f} and a one-sided exact McNemar test "
    "(binomial, p = 1/2, over the shortcut-class images right with the shortcut and wrong "
    "without it vs the reverse) gives p < {alpha:g}"
)
CONDITIONS = ("present", "absent", "moved", "planted")
"""present: the shortcut on the shortcut class's images, where training put it (the trained
world); absent: no shortcut anywhere; moved: the shortcut class's token elsewhere (corner,
letter only); planted: the shortcut on every image, so other classes can be pulled over."""


@dataclass(frozen=True)
class ConditionStats:
    """The model on one rendering of the split."""

    recall: float  # of the shortcut class
    mean_score: float  # the shortcut class's mean softmax score on its own images
    accuracy: float  # over all images of the split
    class_accuracy: dict[str, float]  # per class: share of its images predicted right
    pulled_rate: float  # share of the other classes' images predicted as the shortcut class


@dataclass(frozen=True)
class ShortcutProbe:
    """Behavioural ground truth for one model on one phantom folder."""

    shortcut_class: str
    shortcut_kind: str
    split: str
    n_images: int
    n_shortcut: int  # images of the shortcut class in the split: what the decision stands on
    recall_present: float
    recall_absent: float
    recall_moved: float | None  # None: the kind has no other place (frame, scanner)
    score_present: float
    score_absent: float
    score_moved: float | None
    recall_drop: float  # present - absent
    score_drop: float  # present - absent, mean softmax score of the shortcut class
    moved_recall_drop: float | None  # present - moved
    lost_without: int  # shortcut-class images right with the shortcut, wrong without it
    gained_without: int  # ... wrong with it, right without it
    p_value: float  # one-sided exact McNemar
    relies_on_shortcut: bool
    rule: str
    conditions: dict[str, ConditionStats]
    phantoms: dict[str, Any]  # the folder's generation options (phantoms.json)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def mcnemar_one_sided(lost: int, gained: int) -> float:
    """P(X >= lost) for X ~ Binomial(lost + gained, 1/2); 1.0 without discordant pairs."""
    n = lost + gained
    if n == 0:
        return 1.0
    return float(stats.binomtest(lost, n, 0.5, alternative="greater").pvalue)


def probe_checkpoint(
    checkpoint: Path,
    data: Path,
    *,
    split: str = "test",
    device: str = "cpu",
    batch_size: int = 64,
) -> ShortcutProbe:
    """Load a camdrift checkpoint and probe it on a phantom folder (see :func:`probe_model`)."""
    from training.checkpoints import load_checkpoint

    _check_split(split)
    params = _shortcut_params(Path(data))  # fail on the data before loading weights
    dev = _device(device)
    model, meta = load_checkpoint(Path(checkpoint), map_location=dev)
    return probe_model(
        model,
        list(meta["class_names"]),
        Path(data),
        input_size=(int(meta["input_size"][0]), int(meta["input_size"][1])),
        mean=meta["mean"],
        std=meta["std"],
        channels=int(meta.get("in_chans", 3)),
        split=split,
        device=dev,
        batch_size=batch_size,
        params=params,
    )


def probe_model(
    model: nn.Module,
    class_names: Sequence[str],
    data: Path,
    *,
    input_size: tuple[int, int],
    mean: Sequence[float],
    std: Sequence[float],
    channels: int = 3,
    split: str = "test",
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    recall_drop_min: float = RECALL_DROP_MIN,
    alpha: float = ALPHA,
    params: PhantomParams | None = None,
) -> ShortcutProbe:
    """Re-render ``split`` of the phantom folder ``data`` under every condition and score
    ``model`` (logits over ``class_names``) the way training scores it (8-bit pixels, resized
    to ``input_size``, normalised by ``mean``/``std``)."""
    _check_split(split)
    data = Path(data)
    params = params or _shortcut_params(data)
    names = list(class_names)
    if sorted(names) != sorted(params.classes):
        raise ValueError(
            f"checkpoint classes {names} are not the phantom classes {list(params.classes)} "
            f"of data {data}"
        )
    shortcut = str(params.shortcut)
    items = [p for p in plan_dataset(params) if p.split == split]
    mine = np.array([p.label == shortcut for p in items])
    if not mine.any():
        raise ValueError(f"data {data}: no {shortcut!r} images in the {split} split")
    placements: list[str | None] = [None, "usual"]
    if params.shortcut_kind in POSITIONAL_KINDS:
        placements.append("moved")
    pixels = _render(data, params, items, placements, mine)
    ctx = _Scorer(model, input_size, mean, std, channels, torch.device(device), batch_size)
    bare, marked = ctx.probs(pixels[None]), ctx.probs(pixels["usual"])
    present = np.where(mine[:, None], marked, bare)
    chosen = {"present": present, "absent": bare, "planted": marked}
    if "moved" in pixels:
        moved = bare.copy()
        moved[mine] = ctx.probs(pixels["moved"])
        chosen["moved"] = moved
    labels = np.array([names.index(p.label) for p in items])
    target = names.index(shortcut)
    conditions = {
        name: _condition(probs, labels, target, names)
        for name in CONDITIONS
        if (probs := chosen.get(name)) is not None
    }
    right_with = present[mine].argmax(1) == target
    right_without = bare[mine].argmax(1) == target
    lost = int((right_with & ~right_without).sum())
    gained = int((~right_with & right_without).sum())
    p_value = mcnemar_one_sided(lost, gained)
    on, off = conditions["present"], conditions["absent"]
    moved_stats = conditions.get("moved")
    recall_drop = on.recall - off.recall
    return ShortcutProbe(
        shortcut_class=shortcut,
        shortcut_kind=params.shortcut_kind,
        split=split,
        n_images=len(items),
        n_shortcut=int(mine.sum()),
        recall_present=on.recall,
        recall_absent=off.recall,
        recall_moved=None if moved_stats is None else moved_stats.recall,
        score_present=on.mean_score,
        score_absent=off.mean_score,
        score_moved=None if moved_stats is None else moved_stats.mean_score,
        recall_drop=recall_drop,
        score_drop=on.mean_score - off.mean_score,
        moved_recall_drop=None if moved_stats is None else on.recall - moved_stats.recall,
        lost_without=lost,
        gained_without=gained,
        p_value=p_value,
        relies_on_shortcut=bool(recall_drop >= recall_drop_min and p_value < alpha),
        rule=RULE.format(drop=recall_drop_min, alpha=alpha),
        conditions=conditions,
        phantoms=params.to_json(),
    )


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise ValueError(
            f"device {name!r} is not a torch device (auto, cpu, cuda, cuda:1)"
        ) from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: CUDA is not available on this machine")
    return dev


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def _shortcut_params(data: Path) -> PhantomParams:
    params = read_params(data)
    if params.shortcut is None:
        raise ValueError(
            f"data {data}: generated without a shortcut (camdrift phantoms --shortcut CLASS); "
            "there is nothing to probe"
        )
    return params


def _render(
    data: Path,
    params: PhantomParams,
    items: list[PlannedImage],
    placements: list[str | None],
    mine: np.ndarray,
) -> dict[str | None, list[np.ndarray]]:
    """8-bit pixels per placement ("moved" for the shortcut class only); each image as the
    folder shows it must equal its file, or the folder is not what phantoms.json says."""
    pixels: dict[str | None, list[np.ndarray]] = {p: [] for p in placements}
    for item, is_mine in zip(items, mine, strict=True):
        variants = render_planned(params, item, placements)
        rendered = {p: to_uint8(v.image) for p, v in zip(placements, variants, strict=True)}
        _check_file(data, item, rendered[item.placement])
        for placement in placements:
            if placement != "moved" or is_mine:
                pixels[placement].append(rendered[placement])
    return pixels


def _check_file(data: Path, item: PlannedImage, expected: np.ndarray) -> None:
    path = data / item.relative
    try:
        with Image.open(path) as img:
            on_disk = np.asarray(img)
    except OSError as exc:
        raise ValueError(f"data {data}: cannot read {item.relative} ({exc})") from None
    if on_disk.shape != expected.shape or not np.array_equal(on_disk, expected):
        raise ValueError(
            f"data {data}: {item.relative} differs from its re-render with the options in "
            "phantoms.json (edited, or written by another camdrift version); regenerate it"
        )


class _Scorer:
    """Softmax probabilities of a model on 8-bit images, preprocessed exactly as
    :class:`~training.image_dataset.ImageDataset` does (/255, antialiased bilinear resize,
    channel expansion, (x - mean) / std)."""

    def __init__(
        self,
        model: nn.Module,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        channels: int,
        device: torch.device,
        batch_size: int,
    ) -> None:
        self.model = model.to(device).eval()
        self.size = (int(input_size[0]), int(input_size[1]))
        self.mean = _per_channel(mean, channels).to(device)
        self.std = _per_channel(std, channels).to(device)
        self.channels = channels
        self.device = device
        self.batch_size = max(1, int(batch_size))

    @torch.no_grad()
    def probs(self, images: list[np.ndarray]) -> np.ndarray:
        out = []
        for start in range(0, len(images), self.batch_size):
            chunk = np.stack(images[start : start + self.batch_size])
            x = torch.from_numpy(chunk.astype(np.float32) / 255.0)[:, None].to(self.device)
            if tuple(x.shape[-2:]) != self.size:
                x = F.interpolate(
                    x, size=self.size, mode="bilinear", antialias=True, align_corners=False
                )
            x = (x.expand(-1, self.channels, -1, -1) - self.mean) / self.std
            logits = self.model(x).float()
            out.append(torch.softmax(logits, dim=1).cpu().numpy())
        return np.concatenate(out).astype(np.float64)


def _per_channel(values: Sequence[float], channels: int) -> torch.Tensor:
    items = [float(v) for v in values]
    if len(items) != channels:
        if len(set(items)) != 1:
            raise ValueError(f"mean/std have {len(items)} values for {channels} channel(s)")
        items = items[:1] * channels
    return torch.tensor(items, dtype=torch.float32).view(1, channels, 1, 1)


def _condition(
    probs: np.ndarray, labels: np.ndarray, target: int, names: list[str]
) -> ConditionStats:
    pred = probs.argmax(1)
    mine = labels == target
    others = ~mine
    per_class = {
        name: float(np.mean(pred[labels == k] == k))
        for k, name in enumerate(names)
        if (labels == k).any()
    }
    return ConditionStats(
        recall=float(np.mean(pred[mine] == target)),
        mean_score=float(probs[mine, target].mean()),
        accuracy=float(np.mean(pred == labels)),
        class_accuracy=per_class,
        pulled_rate=float(np.mean(pred[others] == target)) if others.any() else 0.0,
    )
