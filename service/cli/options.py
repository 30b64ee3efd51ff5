"""Option types shared by the commands, each with one default.

A command writes ``methods: Methods = METHODS_DEFAULT``: the type carries the option's help,
the constant next to it its default. Audit defaults come from :mod:`worker.job_config` and
:mod:`worker.catalog`, so ``camdrift drift``, ``camdrift gate`` and a REST job body agree; the
one documented difference is the gate's sample filter (``all``,
:data:`worker.job_config.GATE_SAMPLE_FILTER`). Execution and training defaults equal those of
``AuditConfig`` and ``training.protocol`` (torch-side modules, not imported here;
``tests/test_drift_cli.py`` checks that they agree).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

from service.cli.sequence import VIA_HELP
from training.import_request import ImportFieldError, ImportRequest, request_from_form
from worker.catalog import DEFAULT_METHODS
from worker.job_config import (
    DEFAULT_SAMPLE_FILTER,
    DEFAULT_SPLIT,
    GATE_SAMPLE_FILTER,
    JobConfig,
)

# --------------------------------------------------------------------------- what an audit computes

Methods = Annotated[str, typer.Option(help="Comma-separated CAM methods")]
METHODS_DEFAULT = ",".join(DEFAULT_METHODS)

Metrics = Annotated[str | None, typer.Option(help="Comma-separated metrics (all)")]
METRICS_DEFAULT = None  # the catalog's default metrics

SampleFilter = Annotated[str, typer.Option(help="true_positive, all, predicted or disagreement")]
SAMPLE_FILTER_DEFAULT = DEFAULT_SAMPLE_FILTER

GateSampleFilter = Annotated[
    str,
    typer.Option(
        help="all (default: every sample, maps explain its label, so a class the "
        "baseline misses cannot hide drift), true_positive (the paper's), predicted "
        "or disagreement"
    ),
]
GATE_SAMPLE_FILTER_DEFAULT = GATE_SAMPLE_FILTER

MaxSamples = Annotated[int | None, typer.Option(help="Seeded subsample size")]
MAX_SAMPLES_DEFAULT = JobConfig.model_fields["max_samples"].default

Split = Annotated[str, typer.Option(help="auto (test split if any), all, or a split")]
SPLIT_DEFAULT = DEFAULT_SPLIT

Seed = Annotated[int, typer.Option(help="Seed of subsampling and bootstrap")]
SEED_DEFAULT: int = JobConfig.model_fields["seed"].default

Via = Annotated[list[str] | None, typer.Option(help=VIA_HELP)]

# --------------------------------------------------------------------------- where it runs

Device = Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1")]
DEVICE_DEFAULT = "auto"

BatchSize = Annotated[int, typer.Option()]
BATCH_SIZE_DEFAULT = 16  # audits: AuditConfig.batch_size

# --------------------------------------------------------------------------- training

Arch = Annotated[
    str,
    typer.Option(help="Zoo architecture, or any timm/<name> or torchvision/<name> classifier"),
]
ARCH_DEFAULT = "tinycnn"

InChans = Annotated[int, typer.Option(help="Input channels: 1 reads images as one grey channel")]
IN_CHANS_DEFAULT = 3  # TrainConfig.in_chans
Stats = Annotated[
    str | None,
    typer.Option(help="Input normalisation, comma-separated per channel (default: the arch's)"),
]


def channel_stats(text: str | None, name: str) -> tuple[float, ...] | None:
    """``"0.5,0.5,0.5"`` -> (0.5, 0.5, 0.5); a clear error naming the option otherwise."""
    if text is None:
        return None
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise ValueError(f"--{name}: comma-separated numbers, got {text!r}") from None
    if not values:
        raise ValueError(f"--{name}: at least one number")
    return values


InputSize = Annotated[int | None, typer.Option(help="Square input side (default: arch's)")]

TrainBatchSize = Annotated[int, typer.Option()]
TRAIN_BATCH_SIZE_DEFAULT = 32  # PhaseConfig.batch_size

TrainSeed = Annotated[int, typer.Option()]
TRAIN_SEED_DEFAULT = 0  # TrainConfig.seed

PerClass = Annotated[int, typer.Option(help="Images per class")]
PER_CLASS_DEFAULT = 200

ImageSize = Annotated[int, typer.Option(help="Image side in pixels")]
IMAGE_SIZE_DEFAULT = 96


class OnBadFile(StrEnum):
    """What a command that reads a dataset does with a file that is no readable image."""

    FAIL = "fail"
    SKIP = "skip"

    def on_error(self) -> str:
        """training.datasets.discover's word for it."""
        return "raise" if self is OnBadFile.FAIL else "skip"


BadFile = Annotated[
    OnBadFile,
    typer.Option(
        help="A file that is no readable image: stop and name it (fail), or leave it out and "
        "list it (skip)"
    ),
]
ON_BAD_FILE_DEFAULT = OnBadFile.FAIL


def csv(value: str | None) -> list[str] | None:
    """A comma-separated option as names; None when it names nothing."""
    names = [v.strip() for v in value.split(",") if v.strip()] if value else []
    return names or None


BIT_DEPTH_HELP = (
    "Significant bits of 16-bit grayscale images without an sBIT chunk (12 for most detectors)"
)


def _bit_depth(then: str) -> typer.models.OptionInfo:
    return typer.Option(min=1, max=16, help=f"{BIT_DEPTH_HELP}; {then}")


BitDepth = Annotated[int | None, _bit_depth("default: the baseline checkpoint's, else 16")]
Resize = Annotated[
    str,
    typer.Option(
        help="How images meet the input size: stretch (both sides scaled), letterbox (aspect "
        "kept, padded) or crop (aspect kept, centre cut); recorded in the checkpoints",
    ),
]
RESIZE_DEFAULT = "stretch"  # training.resize.DEFAULT_RESIZE
Window = Annotated[
    str | None,
    typer.Option(
        help="A fixed intensity window low,high (fractions of the read range, e.g. 0.2,0.9), "
        "stretched to 0..1 before the normalisation; recorded in the checkpoints",
    ),
]
TrainBitDepth = Annotated[
    int | None, _bit_depth("recorded in the checkpoints so audits read the images the same way")
]


# --------------------------------------------------------------------------- weights to import

WEIGHTS_PANEL = "Weights trained elsewhere (imported: plain, Lightning, DataParallel, safetensors)"
WeightsArch = Annotated[
    str | None,
    typer.Option(
        "--arch",
        help="The files are weights trained elsewhere: timm/<name>, torchvision/<name> or a "
        "zoo name",
        rich_help_panel=WEIGHTS_PANEL,
    ),
]
WeightsClasses = Annotated[
    str | None,
    typer.Option(
        "--classes",
        help="Their class names in logit order, comma-separated",
        rich_help_panel=WEIGHTS_PANEL,
    ),
]
WeightsInputSize = Annotated[
    int | None,
    typer.Option(
        "--input-size", help="Square input side (default: arch's)", rich_help_panel=WEIGHTS_PANEL
    ),
]
WeightsInChans = Annotated[
    int | None,
    typer.Option(
        "--in-chans",
        help="Input channels (default: read from the stem's weights)",
        rich_help_panel=WEIGHTS_PANEL,
    ),
]
WeightsMean = Annotated[
    str | None,
    typer.Option(
        "--mean", help="Input normalisation mean, per channel", rich_help_panel=WEIGHTS_PANEL
    ),
]
WeightsStd = Annotated[
    str | None,
    typer.Option(
        "--std", help="Input normalisation std, per channel", rich_help_panel=WEIGHTS_PANEL
    ),
]
WeightsMultiLabel = Annotated[
    bool,
    typer.Option(
        "--multi-label",
        help="Their head is multi-label (sigmoid per finding)",
        rich_help_panel=WEIGHTS_PANEL,
    ),
]
WeightsResize = Annotated[
    str | None,
    typer.Option(
        "--resize",
        help="How images met their input in training: stretch, letterbox or crop",
        rich_help_panel=WEIGHTS_PANEL,
    ),
]
WeightsWindow = Annotated[
    str | None,
    typer.Option(
        "--window",
        help="Their fixed intensity window low,high (fractions of the range)",
        rich_help_panel=WEIGHTS_PANEL,
    ),
]
WEIGHTS_FLAGS = {
    "arch": "--arch",
    "class_names": "--classes",
    "input_size": "--input-size",
    "in_chans": "--in-chans",
    "mean": "--mean",
    "std": "--std",
    "phase": "--phase",
    "multi_label": "--multi-label",
    "resize": "--resize",
    "window": "--window",
}


def weights_request(
    arch: str | None,
    classes: str | None,
    input_size: int | None,
    in_chans: int | None,
    mean: str | None,
    std: str | None,
    multi_label: bool = False,
    resize: str | None = None,
    window: str | None = None,
) -> ImportRequest | None:
    """The import the weights options ask for (None: the files are camdrift checkpoints),
    checked as ``POST /checkpoints`` checks its form; ValueError naming the option."""
    form = {
        "arch": arch,
        "class_names": classes,
        "input_size": None if input_size is None else str(input_size),
        "in_chans": None if in_chans is None else str(in_chans),
        "mean": mean,
        "std": std,
        "multi_label": "true" if multi_label else None,
        "resize": resize,
        "window": window,
    }
    try:
        return request_from_form(form)
    except ImportFieldError as exc:
        raise ValueError(f"{WEIGHTS_FLAGS[exc.field]}: {exc.reason}") from None
