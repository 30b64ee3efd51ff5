"""The paper's two-phase protocol: transfer learning (frozen backbone), then full fine-tuning.

Phase TL trains a new head on a frozen pretrained backbone (its BatchNorm statistics frozen
too); phase FT starts from the TL weights, unfreezes everything and trains at a lower learning
rate. Each phase stops early on validation macro AUC and keeps its best epoch. The two
results are the checkpoints camdrift compares.
"""

from __future__ import annotations

import copy
import json
import logging
import random
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from training.checkpoints import model_metadata, save_checkpoint
from training.datasets import DatasetIndex, assign_splits, discover, split_record
from training.datasets import summary as dataset_summary
from training.evaluation import classification_metrics, multilabel_metrics
from training.image_dataset import ImageDataset
from training.progress import progress
from training.zoo import ZooModel, create_model

log = logging.getLogger("camdrift.training")


@dataclass
class PhaseConfig:
    """Settings of one training phase."""

    epochs: int = 10
    lr: float = 1e-3
    batch_size: int = 32
    weight_decay: float = 1e-4
    patience: int = 4  # epochs without a better validation macro AUC before stopping


@dataclass
class TrainConfig:
    """Everything ``camdrift train`` can set."""

    arch: str = "tinycnn"
    pretrained: str = "none"
    input_size: tuple[int, int] | None = None  # None: the arch's default
    in_chans: int = 3  # 1: the model reads one grey channel (radiographs)
    mean: tuple[float, ...] | None = None  # None: the arch's config (averaged for 1 channel)
    std: tuple[float, ...] | None = None
    tl: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=12, lr=1e-2))
    ft: PhaseConfig = field(default_factory=lambda: PhaseConfig(epochs=10, lr=5e-4))
    seed: int = 0
    device: str = "auto"
    amp: bool = True  # bf16 autocast, CUDA only
    workers: int = 0
    augment: bool = True
    cache: bool = True  # keep decoded, resized images in memory (small datasets)
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    save_every_epoch: bool = False
    progress: bool = True
    on_bad_file: str = "raise"  # a file that is no readable image: stop naming it, or "skip"
    bit_depth: int | None = None  # 16-bit files without sBIT: their significant bits
    resize: str = "stretch"  # how images meet the input size: stretch, letterbox or crop
    window: tuple[float, float] | None = None  # fixed intensity window (low, high) in [0, 1]


def new_model(run: TrainConfig, num_classes: int) -> ZooModel:
    """The run's architecture, built for its input size, channels and normalisation."""
    return create_model(
        run.arch,
        num_classes,
        run.pretrained,
        in_chans=run.in_chans,
        input_size=run.input_size,
        mean=run.mean,
        std=run.std,
    )


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader
    test: DataLoader
    class_names: list[str]
    fingerprint: str
    split: dict[str, Any] | None = None  # the split this run drew (None: the data's own)
    multi_label: bool = False  # a findings manifest: sigmoid head, BCE, one item per image


def _discover(data: Path, run: TrainConfig, class_names: list[str] | None = None) -> DatasetIndex:
    """The training data, every image's header read first (``run.on_bad_file``: stop at a file
    that is no readable image, naming it, or skip it and list it in the result's ``data``)."""
    return discover(
        Path(data), class_names=class_names, on_error=run.on_bad_file, check_headers=True
    )


def split_for_training(index: DatasetIndex, run: TrainConfig) -> tuple[DatasetIndex, dict | None]:
    """The data's own split when it has one, else a seeded one -- and then its record, which
    the checkpoints carry so that audits of the same data evaluate the held-out images."""
    own = bool(index.samples) and all(s.split for s in index.samples)
    split = assign_splits(index, run.val_fraction, run.test_fraction, run.seed)
    if own:
        return split, None
    return split, split_record(index, run.val_fraction, run.test_fraction, run.seed)


def _warn_if_upsampled(index: DatasetIndex, size: tuple[int, int], probe: int = 32) -> None:
    """Say so when the images are smaller than the input size: the model then learns from
    interpolated pixels, and its maps resolve no finer detail than the images hold."""
    import warnings

    from training.imageio import ImageReadError, image_size

    sides = []
    for sample in index.samples[:probe]:
        try:
            sides.append(min(image_size(sample.path)))
        except ImageReadError:
            continue
    if sides and sorted(sides)[len(sides) // 2] < min(size):
        message = (
            f"the images (median side {sorted(sides)[len(sides) // 2]} px) are upsampled to the "
            f"input size {size[0]}x{size[1]}; pass --input-size to train at their size"
        )
        log.warning("upsampled images: %s", message)
        warnings.warn(message, stacklevel=3)


def make_loaders(
    index: DatasetIndex,
    model: ZooModel,
    size: tuple[int, int],
    cfg: TrainConfig,
    batch: int,
    drawn: dict[str, Any] | None = None,
) -> Loaders:
    """Train/val/test loaders over a split dataset; every split must hold images. ``drawn``:
    the record of a split this run drew (:func:`split_for_training`), kept for the checkpoints."""
    subsets = {s: index.subset(s).per_image() for s in ("train", "val", "test")}
    counts = {s: len(subset.samples) for s, subset in subsets.items()}
    empty = [s for s, n in counts.items() if n == 0]
    if empty:
        raise ValueError(
            f"data {index.root}: no images in the {' and '.join(empty)} split "
            f"({', '.join(f'{s} {n}' for s, n in counts.items())}); training needs all three: "
            "add images or change the split fractions"
        )
    spec = model.spec
    _warn_if_upsampled(index, size)

    def dataset(split: str, augment: bool) -> ImageDataset:
        return ImageDataset(
            subsets[split],
            size,
            spec.mean,
            spec.std,
            augment=augment,
            cache=cfg.cache,
            channels=model.in_chans,
            multi_hot=index.multi_label,
            bit_depth=cfg.bit_depth,
            resize=cfg.resize,
            window=cfg.window,
        )

    gen = torch.Generator().manual_seed(cfg.seed)
    common = {"batch_size": batch, "num_workers": cfg.workers}
    return Loaders(
        train=DataLoader(dataset("train", cfg.augment), shuffle=True, generator=gen, **common),
        val=DataLoader(dataset("val", False), shuffle=False, **common),
        test=DataLoader(dataset("test", False), shuffle=False, **common),
        class_names=index.class_names,
        fingerprint=index.fingerprint(),
        split=drawn,
        multi_label=index.multi_label,
    )


@torch.no_grad()
def predict(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[np.ndarray, ...]:
    """(labels [N], softmax probabilities [N, C]) over a loader, in order; multi-label
    (a multi-hot dataset): (findings [N, C] bool, sigmoid scores [N, C])."""
    model.eval()
    multi = bool(getattr(loader.dataset, "multi_hot", False))
    labels, probs = [], []
    for images, y, _ in loader:
        logits = model(images.to(device)).float()
        scores = torch.sigmoid(logits) if multi else torch.softmax(logits, 1)
        probs.append(scores.cpu().numpy())
        labels.append(np.asarray(y) > 0.5 if multi else np.asarray(y))
    return np.concatenate(labels), np.concatenate(probs)


def evaluate(model: nn.Module, loader: DataLoader, device: torch.device, names: list[str]) -> dict:
    labels, probs = predict(model, loader, device)
    if labels.ndim == 2:
        return multilabel_metrics(labels, probs, names)
    return classification_metrics(labels, probs, names)


def _set_trainable(model: ZooModel, phase: str) -> list[nn.Parameter]:
    """Freeze the backbone for TL; unfreeze everything for FT. Returns what trains."""
    head = list(model.classifier_parameters())
    for p in model.backbone_parameters():
        p.requires_grad_(phase != "tl")
    for p in head:
        p.requires_grad_(True)
    return head if phase == "tl" else [p for p in model.parameters() if p.requires_grad]


def _train_mode(model: ZooModel, phase: str) -> None:
    """TL keeps the frozen backbone in eval mode so BatchNorm statistics stay pretrained."""
    model.train()
    if phase == "tl":
        model.eval()
        model.classifier().train()


MIN_CYCLE_STEPS = 8  # below this a one-cycle schedule has no room for warm-up and annealing


def make_scheduler(
    optimizer: torch.optim.Optimizer, lr: float, total_steps: int
) -> torch.optim.lr_scheduler.LRScheduler:
    """One-cycle (warm-up then annealing): short runs on small data converge far more
    reliably. A run of fewer than ``MIN_CYCLE_STEPS`` steps keeps ``lr`` constant (torch's
    one-cycle divides by zero at 4 steps and schedules nonsense below)."""
    if total_steps < MIN_CYCLE_STEPS:
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.25
    )


def run_phase(
    model: ZooModel,
    phase: str,
    loaders: Loaders,
    cfg: PhaseConfig,
    run: TrainConfig,
    device: torch.device,
    out_dir: Path | None = None,
    meta_extra: dict | None = None,
) -> dict[str, Any]:
    """Train one phase with early stopping on validation macro AUC; keeps the best weights."""
    params = _set_trainable(model, phase)
    optimizer = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    scheduler = make_scheduler(optimizer, cfg.lr, max(cfg.epochs, 1) * max(len(loaders.train), 1))
    loss_fn = nn.BCEWithLogitsLoss() if loaders.multi_label else nn.CrossEntropyLoss()
    use_amp = run.amp and device.type == "cuda"
    best_auc, best_state, best_epoch, stale = -1.0, None, 0, 0
    history: list[dict[str, float]] = []
    for epoch in range(1, cfg.epochs + 1):
        _train_mode(model, phase)
        total, seen = 0.0, 0
        label = f"{phase} epoch {epoch}/{cfg.epochs}"
        with progress(label, len(loaders.train), "batch", enabled=run.progress) as bar:
            for images, labels, _ in loaders.train:
                images, labels = images.to(device), torch.as_tensor(labels, device=device)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
                    loss = loss_fn(model(images).float(), labels)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
                total += float(loss.detach()) * len(labels)
                seen += len(labels)
                bar.set_note(f"loss={total / seen:.3f}")
                bar.advance()
        val = evaluate(model, loaders.val, device, loaders.class_names)
        auc = val["macro_auc"] if val["macro_auc"] is not None else 0.0
        row = {
            "epoch": epoch,
            "train_loss": total / max(seen, 1),
            "val_accuracy": val["accuracy"],
            "val_macro_auc": auc,
        }
        history.append(row)
        log.info("epoch phase=%s %s", phase, " ".join(f"{k}={v:.4g}" for k, v in row.items()))
        if run.save_every_epoch and out_dir is not None:
            _save(
                model,
                out_dir / "epochs" / f"{phase}_epoch{epoch:03d}.safetensors",
                loaders,
                run,
                {"phase": f"{phase}-epoch{epoch}", **(meta_extra or {})},
            )
        if auc > best_auc:
            best_auc, best_epoch, stale = auc, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
        else:
            stale += 1
            if stale >= cfg.patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return {"history": history, "best_epoch": best_epoch, "best_val_macro_auc": best_auc}


def _save(model: ZooModel, path: Path, loaders: Loaders, run: TrainConfig, extra: dict) -> str:
    size = list(run.input_size or model.spec.input_size)
    meta = model_metadata(
        model,
        loaders.class_names,
        input_size=size,
        dataset_fingerprint=loaders.fingerprint,
        **({"split": loaders.split} if loaders.split else {}),
        **({"multi_label": True} if loaders.multi_label else {}),
        **({"bit_depth": run.bit_depth} if run.bit_depth else {}),
        **({"resize": run.resize} if run.resize != "stretch" else {}),
        **({"window": list(run.window)} if run.window else {}),
        **extra,
    )
    return save_checkpoint(path, model, meta)


def train_two_phase(data: Path, out_dir: Path, run: TrainConfig) -> dict[str, Any]:
    """Train TL then FT; write ``tl.safetensors``, ``ft.safetensors``, ``metrics.json`` and a
    training-curve PNG into ``out_dir``. Returns the metrics document."""
    seed_everything(run.seed)
    device = resolve_device(run.device)
    index, record = split_for_training(_discover(data, run), run)
    model = new_model(run, len(index.class_names)).to(device)
    size = tuple(run.input_size or model.spec.input_size)
    batch = run.tl.batch_size
    loaders = make_loaders(index, model, size, run, batch, drawn=record)
    out_dir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {
        "arch": run.arch,
        "class_names": index.class_names,
        "dataset": str(data),
        "dataset_fingerprint": loaders.fingerprint,
        "config": _jsonable(asdict(run)),
        "split_counts": {s: len(index.subset(s).samples) for s in ("train", "val", "test")},
        "data": dataset_summary(index),
    }
    parent = None
    for phase, cfg in (("tl", run.tl), ("ft", run.ft)):
        if cfg.batch_size != batch:
            loaders = make_loaders(index, model, size, run, cfg.batch_size, drawn=record)
            batch = cfg.batch_size
        extra = {"parent_sha256": parent} if parent else {}
        log.info("phase start phase=%s epochs=%d lr=%g", phase, cfg.epochs, cfg.lr)
        fit = run_phase(model, phase, loaders, cfg, run, device, out_dir, extra)
        test = evaluate(model, loaders.test, device, loaders.class_names)
        val = evaluate(model, loaders.val, device, loaders.class_names)
        summary = {"fit": fit, "val": val, "test": test}
        parent = _save(
            model,
            out_dir / f"{phase}.safetensors",
            loaders,
            run,
            {"phase": phase, "train_metrics": _brief(test), **extra},
        )
        summary["sha256"] = parent
        result[phase] = summary
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    plot_curves(result, out_dir / "training_curves.png")
    return result


def finetune(data: Path, parent: Path, out_dir: Path, run: TrainConfig) -> dict[str, Any]:
    """Phase FT only, from an existing TL checkpoint (e.g. the same TL fine-tuned on another
    dataset); writes ``ft.safetensors`` naming ``parent`` and ``metrics.json``."""
    from training.checkpoints import load_checkpoint

    seed_everything(run.seed)
    device = resolve_device(run.device)
    model, meta = load_checkpoint(Path(parent), map_location=device)
    index = _discover(data, run, list(meta["class_names"]))
    if index.multi_label != bool(meta.get("multi_label")):
        head = "multi-label" if meta.get("multi_label") else "single-label"
        raise ValueError(
            f"{parent} has a {head} head; data {data} is "
            f"{'a findings manifest' if index.multi_label else 'single-label'}"
        )
    index, record = split_for_training(index, run)
    size = tuple(run.input_size or meta["input_size"])
    run.input_size = size
    run.bit_depth = run.bit_depth or meta.get("bit_depth")  # the data as TL read it
    run.resize = meta.get("resize") or "stretch"  # and the model's own preprocessing
    run.window = tuple(meta["window"]) if meta.get("window") else None
    loaders = make_loaders(index, model, size, run, run.ft.batch_size, drawn=record)
    fit = run_phase(
        model, "ft", loaders, run.ft, run, device, out_dir, {"parent_sha256": meta["sha256"]}
    )
    test = evaluate(model, loaders.test, device, loaders.class_names)
    out_dir.mkdir(parents=True, exist_ok=True)
    sha = _save(
        model,
        out_dir / "ft.safetensors",
        loaders,
        run,
        {"phase": "ft", "parent_sha256": meta["sha256"], "train_metrics": _brief(test)},
    )
    result = {
        "arch": meta["arch"],
        "class_names": loaders.class_names,
        "dataset": str(data),
        "parent": str(parent),
        "ft": {"fit": fit, "test": test, "sha256": sha},
        "data": dataset_summary(index),
    }
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2))
    return result


def pretrain(data: Path, out: Path, run: TrainConfig) -> dict[str, Any]:
    """Train every layer on a source task: offline stand-in for ImageNet weights."""
    seed_everything(run.seed)
    device = resolve_device(run.device)
    index, record = split_for_training(_discover(data, run), run)
    model = new_model(run, len(index.class_names)).to(device)
    size = tuple(run.input_size or model.spec.input_size)
    loaders = make_loaders(index, model, size, run, run.ft.batch_size, drawn=record)
    fit = run_phase(model, "pretrain", loaders, run.ft, run, device)
    test = evaluate(model, loaders.test, device, loaders.class_names)
    sha = _save(
        model, Path(out), loaders, run, {"phase": "pretrain", "train_metrics": _brief(test)}
    )
    return {"fit": fit, "test": test, "sha256": sha, "data": dataset_summary(index)}


def _brief(metrics: dict) -> dict:
    return {k: metrics[k] for k in ("n", "accuracy", "macro_auc")}


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, Iterable) and not isinstance(obj, str):
        return [_jsonable(v) for v in obj]
    return obj


def plot_curves(result: dict[str, Any], path: Path) -> None:
    """Loss and validation AUC per epoch, both phases on one time axis."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_loss, ax_auc) = plt.subplots(1, 2, figsize=(10, 4))
    offset = 0
    for phase, colour in (("tl", "tab:blue"), ("ft", "tab:orange")):
        rows = result[phase]["fit"]["history"]
        x = [offset + r["epoch"] for r in rows]
        ax_loss.plot(x, [r["train_loss"] for r in rows], "o-", color=colour, label=phase.upper())
        ax_auc.plot(x, [r["val_macro_auc"] for r in rows], "o-", color=colour, label=phase.upper())
        offset += len(rows)
    ax_loss.set(title="training loss", xlabel="epoch", ylabel="cross-entropy")
    ax_auc.set(title="validation macro AUC", xlabel="epoch", ylabel="AUC", ylim=(0.4, 1.01))
    for ax in (ax_loss, ax_auc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(f"{result['arch']}: two-phase training")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
