"""Offline data and training: ``phantoms``, ``train``, ``finetune``, ``pretrain``.

Torch is imported inside each command."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from service.cli.options import (
    ARCH_DEFAULT,
    DEVICE_DEFAULT,
    IMAGE_SIZE_DEFAULT,
    IN_CHANS_DEFAULT,
    ON_BAD_FILE_DEFAULT,
    PER_CLASS_DEFAULT,
    RESIZE_DEFAULT,
    TRAIN_BATCH_SIZE_DEFAULT,
    TRAIN_SEED_DEFAULT,
    Arch,
    BadFile,
    Device,
    ImageSize,
    InChans,
    InputSize,
    PerClass,
    Resize,
    Stats,
    TrainBatchSize,
    TrainBitDepth,
    TrainSeed,
    Window,
    channel_stats,
)
from service.cli.output import console, print_data, print_training, user_errors
from training.import_request import intensity_window
from training.resize import check_resize


@user_errors
def phantoms(
    out: Annotated[Path, typer.Option(help="Folder to write the dataset into")],
    per_class: PerClass = PER_CLASS_DEFAULT,
    size: ImageSize = IMAGE_SIZE_DEFAULT,
    seed: Annotated[int, typer.Option(help="Random seed (same seed, same bytes)")] = 0,
    shortcut: Annotated[str | None, typer.Option(help="Class that carries the shortcut")] = None,
    shortcut_kind: Annotated[
        str,
        typer.Option(
            help="corner (marker), letter (L/R token near the border), frame (collimation "
            "border) or scanner (global line texture)"
        ),
    ] = "corner",
    shortcut_eval: Annotated[
        str,
        typer.Option(
            help="Shortcut in val/test: correlated, random, absent or moved (corner/letter "
            "drawn where training never showed it)"
        ),
    ] = "correlated",
    shortcut_confound: Annotated[
        float,
        typer.Option(
            help="Share of the shortcut class's train images that show another "
            "class's finding (the marker becomes the only reliable cue)"
        ),
    ] = 0.0,
    task: Annotated[str, typer.Option(help="target (five diseases) or source (pretraining)")] = (
        "target"
    ),
) -> None:
    """Generate the phantom chest X-ray dataset (ImageFolder tree + lesion, lung and shortcut
    masks + manifest.csv + phantoms.json)."""
    from training.phantoms import generate_dataset
    from training.progress import progress

    with progress("phantoms", total=per_class * 5, unit="img") as bar:
        manifest = generate_dataset(
            out,
            per_class,
            size,
            seed,
            shortcut=shortcut,
            shortcut_kind=shortcut_kind,
            shortcut_eval=shortcut_eval,
            shortcut_confound=shortcut_confound,
            task=task,
            progress=bar.update,
        )
    console.print(f"wrote {manifest}")


def _train_config(**kw: Any) -> Any:
    from training.protocol import PhaseConfig, TrainConfig

    tl = PhaseConfig(
        epochs=kw.pop("tl_epochs"),
        lr=kw.pop("tl_lr"),
        batch_size=kw["batch_size"],
        weight_decay=kw["weight_decay"],
        patience=kw["patience"],
    )
    ft = PhaseConfig(
        epochs=kw.pop("ft_epochs"),
        lr=kw.pop("ft_lr"),
        batch_size=kw.pop("batch_size"),
        weight_decay=kw.pop("weight_decay"),
        patience=kw.pop("patience"),
    )
    size = kw.pop("input_size")
    mean, std = (
        channel_stats(kw.pop("mean", None), "mean"),
        channel_stats(kw.pop("std", None), "std"),
    )
    return TrainConfig(
        tl=tl, ft=ft, input_size=(size, size) if size else None, mean=mean, std=std, **kw
    )


def _one_phase_config(
    arch: str,
    input_size: int | None,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    device: str,
) -> Any:
    """Settings for the commands that train one phase (``pretrain``, ``finetune``): the FT
    phase's, with early stopping off (patience = epochs)."""
    return _train_config(
        arch=arch,
        pretrained="none",
        input_size=input_size,
        tl_epochs=0,
        tl_lr=lr,
        ft_epochs=epochs,
        ft_lr=lr,
        batch_size=batch_size,
        weight_decay=1e-4,
        patience=epochs,
        seed=seed,
        device=device,
    )


@user_errors
def train(
    data: Annotated[Path, typer.Option(help="Dataset folder (manifest.csv or ImageFolder)")],
    out: Annotated[Path, typer.Option(help="Run folder for tl/ft checkpoints and metrics")],
    arch: Arch = ARCH_DEFAULT,
    pretrained: Annotated[str, typer.Option(help="none, imagenet or a weights file")] = "none",
    input_size: InputSize = None,
    in_chans: InChans = IN_CHANS_DEFAULT,
    mean: Stats = None,
    std: Stats = None,
    tl_epochs: Annotated[int, typer.Option(help="Epochs of phase TL (frozen backbone)")] = 12,
    tl_lr: Annotated[float, typer.Option(help="Learning rate of phase TL")] = 1e-2,
    ft_epochs: Annotated[int, typer.Option(help="Epochs of phase FT (everything trains)")] = 10,
    ft_lr: Annotated[float, typer.Option(help="Learning rate of phase FT")] = 5e-4,
    batch_size: TrainBatchSize = TRAIN_BATCH_SIZE_DEFAULT,
    weight_decay: Annotated[float, typer.Option()] = 1e-4,
    patience: Annotated[int, typer.Option(help="Early-stopping patience (val macro AUC)")] = 4,
    seed: TrainSeed = TRAIN_SEED_DEFAULT,
    device: Device = DEVICE_DEFAULT,
    workers: Annotated[int, typer.Option(help="Data-loader worker processes")] = 0,
    save_every_epoch: Annotated[bool, typer.Option(help="Also keep per-epoch checkpoints")] = False,
    augment: Annotated[bool, typer.Option(help="Light label-preserving augmentation")] = True,
    on_bad_file: BadFile = ON_BAD_FILE_DEFAULT,
    bit_depth: TrainBitDepth = None,
    resize: Resize = RESIZE_DEFAULT,
    window: Window = None,
) -> None:
    """Two-phase training: TL (frozen backbone, new head), then FT (all layers, lower lr)."""
    from training.protocol import train_two_phase

    cfg = _train_config(
        arch=arch,
        pretrained=pretrained,
        input_size=input_size,
        in_chans=in_chans,
        mean=mean,
        std=std,
        tl_epochs=tl_epochs,
        tl_lr=tl_lr,
        ft_epochs=ft_epochs,
        ft_lr=ft_lr,
        batch_size=batch_size,
        weight_decay=weight_decay,
        patience=patience,
        seed=seed,
        device=device,
        workers=workers,
        save_every_epoch=save_every_epoch,
        augment=augment,
    )
    cfg.on_bad_file = on_bad_file.on_error()
    cfg.bit_depth = bit_depth
    cfg.resize = check_resize(resize)
    cfg.window = intensity_window(window)
    result = train_two_phase(data, out, cfg)
    print_data(result["data"])
    print_training(result)
    console.print(f"checkpoints: {out / 'tl.safetensors'}  {out / 'ft.safetensors'}")


@user_errors
def finetune(
    data: Annotated[Path, typer.Option(help="Dataset to fine-tune on")],
    parent: Annotated[Path, typer.Option("--from", help="The TL checkpoint to start from")],
    out: Annotated[Path, typer.Option(help="Run folder for ft.safetensors and metrics")],
    epochs: Annotated[int, typer.Option()] = 10,
    lr: Annotated[float, typer.Option()] = 5e-4,
    batch_size: TrainBatchSize = TRAIN_BATCH_SIZE_DEFAULT,
    seed: TrainSeed = TRAIN_SEED_DEFAULT,
    device: Device = DEVICE_DEFAULT,
    on_bad_file: BadFile = ON_BAD_FILE_DEFAULT,
    bit_depth: TrainBitDepth = None,
) -> None:
    """Phase FT alone from an existing TL checkpoint (e.g. one TL, several fine-tunes)."""
    from training.protocol import finetune as run_finetune

    cfg = _one_phase_config(ARCH_DEFAULT, None, epochs, lr, batch_size, seed, device)
    cfg.on_bad_file = on_bad_file.on_error()
    cfg.bit_depth = bit_depth
    result = run_finetune(data, parent, out, cfg)
    print_data(result["data"])
    test = result["ft"]["test"]
    console.print(
        f"fine-tuned from {parent}: test accuracy {test['accuracy']:.3f}, "
        f"macro AUC {test['macro_auc']:.3f} -> {out / 'ft.safetensors'}"
    )


@user_errors
def pretrain(
    data: Annotated[Path, typer.Option(help="Source-task dataset (e.g. phantoms --task source)")],
    out: Annotated[Path, typer.Option(help="Weights file to write (.safetensors)")],
    arch: Arch = ARCH_DEFAULT,
    input_size: InputSize = None,
    epochs: Annotated[int, typer.Option()] = 8,
    lr: Annotated[float, typer.Option()] = 2e-3,
    batch_size: TrainBatchSize = TRAIN_BATCH_SIZE_DEFAULT,
    seed: TrainSeed = TRAIN_SEED_DEFAULT,
    device: Device = DEVICE_DEFAULT,
    on_bad_file: BadFile = ON_BAD_FILE_DEFAULT,
    bit_depth: TrainBitDepth = None,
) -> None:
    """Pretrain a backbone on a source task offline (our stand-in for ImageNet weights)."""
    from training.protocol import pretrain as run_pretrain

    cfg = _one_phase_config(arch, input_size, epochs, lr, batch_size, seed, device)
    cfg.on_bad_file = on_bad_file.on_error()
    cfg.bit_depth = bit_depth
    result = run_pretrain(data, out, cfg)
    print_data(result["data"])
    test = result["test"]
    console.print(
        f"pretrained {arch}: source-task test accuracy {test['accuracy']:.3f}, "
        f"macro AUC {test['macro_auc']:.3f} -> {out}"
    )


COMMANDS = (phantoms, train, finetune, pretrain)


@user_errors
def import_checkpoint(
    source: Annotated[
        Path, typer.Argument(help="Weights file (.pt/.pth/.bin/.ckpt/.safetensors) or folder")
    ],
    out: Annotated[Path, typer.Option(help="camdrift checkpoint to write (.safetensors)")],
    arch: Annotated[
        str | None,
        typer.Option(help="timm/<name>, torchvision/<name> or a zoo name (default: config.json)"),
    ] = None,
    classes: Annotated[
        str | None, typer.Option(help="Class names in logit order, comma-separated")
    ] = None,
    input_size: InputSize = None,
    in_chans: Annotated[
        int | None, typer.Option(help="Input channels (default: read from the stem's weights)")
    ] = None,
    mean: Stats = None,
    std: Stats = None,
    phase: Annotated[str, typer.Option(help="tl, ft or other")] = "other",
    multi_label: Annotated[
        bool, typer.Option("--multi-label", help="A multi-label (sigmoid) head")
    ] = False,
    resize: Resize = RESIZE_DEFAULT,
    window: Window = None,
) -> None:
    """Turn a checkpoint trained elsewhere into a camdrift checkpoint (read weights-only)."""
    from training.import_request import ImportFieldError, ImportRequest, class_names
    from training.importing import import_checkpoint as run_import

    try:
        names = class_names(classes) if classes else None
    except ImportFieldError as exc:
        raise ValueError(f"--classes: {exc.reason}") from None
    request = ImportRequest(
        arch=arch,
        class_names=names,
        input_size=(input_size, input_size) if input_size else None,
        mean=channel_stats(mean, "mean"),
        std=channel_stats(std, "std"),
        in_chans=in_chans,
        phase=phase,
        multi_label=multi_label,
        resize=check_resize(resize),
        window=intensity_window(window),
    )
    done = run_import(source, out, request)
    meta = done.meta
    for note in done.notes:
        console.print(note)
    console.print(
        f"imported {meta['arch']} ({meta['num_classes']} "
        f"{'findings, multi-label' if meta.get('multi_label') else 'classes'}, "
        f"{meta['in_chans']} channel(s), "
        f"input {meta['input_size'][0]}x{meta['input_size'][1]}): {done.path}  "
        f"sha256 {done.sha256[:12]}"
    )
