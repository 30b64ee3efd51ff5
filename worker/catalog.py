"""The one vocabulary of camdrift, torch-free: methods, metrics, sample filters, job statuses,
gate stats and the job defaults (docs/architecture.md, "Catalog").

Every other module reads names, meanings and defaults from here: the engine registers one
function per method and metric against these names (``worker.engine``), the API validates
with them, the gate checks policies with them, and reports, studies, trajectories and the
HTML page read each metric's direction and label from :func:`metric_info`. A new metric is one
registered engine function plus one :data:`METRICS` line.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Literal


class Direction(StrEnum):
    """Which way a metric shows *more drift*."""

    LOWER = "lower"  # a similarity: 1 = unchanged, lower = moved
    HIGHER = "higher"  # a distance: 0 = unchanged, higher = moved
    ABS = "abs"  # a signed change: 0 = unchanged, larger magnitude = moved

    def stable(self) -> str:
        """The same axis read as stability: ``higher``, ``lower`` or ``abs`` (lower |x|)."""
        return {"lower": "higher", "higher": "lower", "abs": "abs"}[self.value]

    def magnitude(self, value: Any) -> Any:
        """The value on this metric's drift axis: |x| for a signed change (numbers or arrays)."""
        return abs(value) if self is Direction.ABS else value

    def tail(self) -> float:
        """The quantile of a floor's distribution on the drift side (its 95% tail)."""
        return 0.05 if self is Direction.LOWER else 0.95

    def beyond(self, value: Any, threshold: float) -> Any:
        """Is ``value`` further into drift than ``threshold``? (numbers or numpy arrays)"""
        if self is Direction.LOWER:
            return value < threshold
        return self.magnitude(value) > threshold


# --------------------------------------------------------------------------- methods

MethodKind = Literal["one_pass", "extra_pass"]


@dataclass(frozen=True)
class MethodInfo:
    """An attribution method: ``one_pass`` methods are functions of the single pass's
    (A, G); ``extra_pass`` ones run their own, expensive, passes only when asked."""

    name: str
    kind: MethodKind
    label: str
    text: str


METHODS: dict[str, MethodInfo] = {
    m.name: m
    for m in (
        MethodInfo("gradcam", "one_pass", "Grad-CAM", "Σ_c mean(G_c) · A_c"),
        MethodInfo("gradcam++", "one_pass", "Grad-CAM++", "Σ_c Σ relu(G) α · A_c"),
        MethodInfo("layercam", "one_pass", "LayerCAM", "Σ_c relu(G_c) ⊙ A_c"),
        MethodInfo("xgradcam", "one_pass", "XGrad-CAM", "Σ_c (Σ G A / Σ A) · A_c"),
        MethodInfo("hirescam", "one_pass", "HiResCAM", "Σ_c G_c ⊙ A_c"),
        # one masked forward per feature channel per sample
        MethodInfo("scorecam", "extra_pass", "Score-CAM", "softmax gain of channel-masked inputs"),
        # 32 path forwards + backwards per sample
        MethodInfo("ig", "extra_pass", "Integrated Gradients", "Σ_rgb |x · mean ∇ along the path|"),
    )
}
ONE_PASS_METHODS: tuple[str, ...] = tuple(m for m, i in METHODS.items() if i.kind == "one_pass")
EXTRA_PASS_METHODS: tuple[str, ...] = tuple(m for m, i in METHODS.items() if i.kind == "extra_pass")
DEFAULT_METHODS: tuple[str, ...] = ("layercam", "gradcam++")  # the paper's two


# --------------------------------------------------------------------------- metrics


@dataclass(frozen=True)
class RegionInfo:
    """A reference region a dataset can bring per image (a mask at the analysis size), which
    the localisation metrics measure the maps against (docs/architecture.md, "Drift metrics")."""

    name: str
    source: str  # where a dataset brings it (training.datasets reads these columns / folders)
    text: str


REGIONS: dict[str, RegionInfo] = {
    r.name: r
    for r in (
        RegionInfo(
            "lesion",
            "manifest `mask` (PNG) or `bbox` (x0 y0 x1 y1 in image pixels); masks/<image>",
            "where the finding is",
        ),
        RegionInfo("lung", "manifest `lung_mask` (PNG); lung_masks/<image>", "the lung fields"),
        RegionInfo(
            "shortcut",
            "manifest `shortcut_mask` (PNG); shortcut_masks/<image>",
            "a known non-anatomical cue: marker, burned-in text, border",
        ),
    )
}
MetricModel = Literal["baseline", "candidate"]
# ``pair``: the engine computes it per (baseline map, candidate map) batch; ``audit``: computed
# after the audit across samples from the stored raw maps (``worker.results.consistency``)
MetricStage = Literal["pair", "audit"]
PAIR_STAGE: MetricStage = "pair"
AUDIT_STAGE: MetricStage = "audit"


@dataclass(frozen=True)
class MetricInfo:
    """A per-sample metric of a baseline map and a candidate map: a drift between the two, or
    (``model`` set) one model's level, stored beside the drift so that its direction reads."""

    name: str
    label: str
    bounds: tuple[float, float]
    unchanged: float  # the value of two identical maps (a level: its ideal value)
    worse: Direction  # which way is more drift (a region metric: which way is worse)
    text: str  # one line: what it measures and what "unchanged" reads as
    default: bool = True  # computed when a job names no metrics (and its region exists)
    requires: str | None = None  # the REGIONS entry each sample needs; NaN where it has none
    model: MetricModel | None = None  # a level of this model's map, not a pair's drift
    stage: MetricStage = PAIR_STAGE  # ``audit``: no engine function; computed across samples


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo(
            "displacement",
            "displacement",
            (0, 1),
            0,
            Direction.HIGHER,
            "centroid distance / √2 · 0 = same place",
        ),
        MetricInfo(
            "peak_displacement",
            "peak displacement",
            (0, 1),
            0,
            Direction.HIGHER,
            "distance of the peaks / √2 · 0 = same place",
        ),
        MetricInfo(
            "iou_top20",
            "IoU@20",
            (0, 1),
            1,
            Direction.LOWER,
            "overlap of each map's top 20% pixels · 1 = same region",
        ),
        MetricInfo(
            "iou_t50",
            "IoU≥0.50",
            (0, 1),
            1,
            Direction.LOWER,
            "overlap of the pixels ≥ 0.5 · 1 = same region",
        ),
        MetricInfo(
            "pearson", "Pearson r", (-1, 1), 1, Direction.LOWER, "pattern correlation · 1 = same"
        ),
        MetricInfo(
            "spearman", "Spearman ρ", (-1, 1), 1, Direction.LOWER, "rank correlation · 1 = same"
        ),
        MetricInfo(
            "concentration_change",
            "Δ concentration",
            (-1, 1),
            0,
            Direction.ABS,
            "Gini(FT) − Gini(TL) · > 0 = more focused",
        ),
        MetricInfo(
            "entropy_change",
            "Δ entropy",
            (-1, 1),
            0,
            Direction.ABS,
            "H(FT) − H(TL), normalised · > 0 = more spread",
        ),
        # Arun et al., Radiology: AI 2021 (saliency repeatability); asked for by name
        MetricInfo(
            "ssim", "SSIM", (-1, 1), 1, Direction.LOWER, "structural similarity · 1 = same", False
        ),
        # Map consistency across images (issue 13, item 3a; SpRAy, Lapuschkin et al. 2019):
        # each sample's mean Pearson r with the other included maps of its class, per model,
        # and the change FT − TL. A shortcut puts a class's evidence on one fixed place, so
        # its maps of different images look alike: > 0 = the candidate's maps collapsed.
        # Reference-free (no masks needed); computed after the audit from the stored raw
        # maps, so no noise floor exists for them (the gate refuses ``beyond_floor``).
        MetricInfo(
            "consistency_tl",
            "consistency (TL)",
            (-1, 1),
            0,
            Direction.HIGHER,
            "TL map's mean r with its class's other maps · 0 = image-dependent",
            model="baseline",
            stage=AUDIT_STAGE,
        ),
        MetricInfo(
            "consistency_ft",
            "consistency (FT)",
            (-1, 1),
            0,
            Direction.HIGHER,
            "FT map's mean r with its class's other maps · 0 = image-dependent",
            model="candidate",
            stage=AUDIT_STAGE,
        ),
        MetricInfo(
            "consistency_change",
            "Δ consistency",
            (-2, 2),
            0,
            Direction.HIGHER,
            "consistency FT − TL · > 0 = maps collapsed onto a common place",
            stage=AUDIT_STAGE,
        ),
        # Reference-based localisation (issue 13), where the data brings the region: each
        # model's level (``model``; ``unchanged`` = its ideal) and the change FT − TL, whose
        # sign says whether the evidence moved toward the region or away from it.
        # Relevance mass (Arras et al. 2022): the share of the map's mass inside the lesion.
        MetricInfo(
            "lesion_mass_tl",
            "lesion mass (TL)",
            (0, 1),
            1,
            Direction.LOWER,
            "TL map's mass inside the lesion · 1 = all",
            requires="lesion",
            model="baseline",
        ),
        MetricInfo(
            "lesion_mass_ft",
            "lesion mass (FT)",
            (0, 1),
            1,
            Direction.LOWER,
            "FT map's mass inside the lesion · 1 = all",
            requires="lesion",
            model="candidate",
        ),
        MetricInfo(
            "lesion_mass_change",
            "Δ lesion mass",
            (-1, 1),
            0,
            Direction.LOWER,
            "lesion mass FT − TL · < 0 = moved off the pathology",
            requires="lesion",
        ),
        # Pointing game (Zhang et al. 2016): is the map's peak (its first maximum, row-major,
        # as peak_displacement's) inside the lesion; 1 or 0, no tolerance margin
        MetricInfo(
            "pointing_tl",
            "pointing (TL)",
            (0, 1),
            1,
            Direction.LOWER,
            "TL map's peak inside the lesion · 1 = yes",
            requires="lesion",
            model="baseline",
        ),
        MetricInfo(
            "pointing_ft",
            "pointing (FT)",
            (0, 1),
            1,
            Direction.LOWER,
            "FT map's peak inside the lesion · 1 = yes",
            requires="lesion",
            model="candidate",
        ),
        MetricInfo(
            "pointing_change",
            "Δ pointing",
            (-1, 1),
            0,
            Direction.LOWER,
            "pointing FT − TL · −1 = the peak left the lesion",
            requires="lesion",
        ),
        # A known shortcut cue (the phantoms' marker, a burned-in text box)
        MetricInfo(
            "shortcut_mass_tl",
            "shortcut mass (TL)",
            (0, 1),
            0,
            Direction.HIGHER,
            "TL map's mass on the shortcut · 0 = none",
            requires="shortcut",
            model="baseline",
        ),
        MetricInfo(
            "shortcut_mass_ft",
            "shortcut mass (FT)",
            (0, 1),
            0,
            Direction.HIGHER,
            "FT map's mass on the shortcut · 0 = none",
            requires="shortcut",
            model="candidate",
        ),
        MetricInfo(
            "shortcut_mass_change",
            "Δ shortcut mass",
            (-1, 1),
            0,
            Direction.HIGHER,
            "shortcut mass FT − TL · > 0 = moved onto the cue",
            requires="shortcut",
        ),
        # The anatomy prior (DeGrave et al. 2021): evidence on text, markers, borders, neck
        MetricInfo(
            "outside_lung_tl",
            "outside lungs (TL)",
            (0, 1),
            0,
            Direction.HIGHER,
            "TL map's mass outside the lungs · 0 = none",
            requires="lung",
            model="baseline",
        ),
        MetricInfo(
            "outside_lung_ft",
            "outside lungs (FT)",
            (0, 1),
            0,
            Direction.HIGHER,
            "FT map's mass outside the lungs · 0 = none",
            requires="lung",
            model="candidate",
        ),
        MetricInfo(
            "outside_lung_change",
            "Δ outside lungs",
            (-1, 1),
            0,
            Direction.HIGHER,
            "outside lungs FT − TL · > 0 = moved off anatomy",
            requires="lung",
        ),
    )
}
DEFAULT_METRICS: tuple[str, ...] = tuple(
    m for m, info in METRICS.items() if info.default and info.requires is None
)  # what a job that names no metrics computes on a dataset without regions


def default_metrics(regions: Iterable[str] = ()) -> list[str]:
    """What a job that names no metrics computes on data that brings ``regions``: the default
    pair metrics, then the default region metrics whose region every such job can measure."""
    have = set(regions)
    return [
        m
        for m, info in METRICS.items()
        if info.default and (info.requires is None or info.requires in have)
    ]


AUDIT_METRICS: tuple[str, ...] = tuple(m for m, i in METRICS.items() if i.stage == AUDIT_STAGE)


def metric_stage(name: str) -> MetricStage:
    """Where ``name`` is computed: by the engine per map pair, or after the audit across
    samples; a name the catalog does not hold (a stored ``iou_topQ`` of another Q) is a pair's."""
    info = METRICS.get(name)
    return info.stage if info is not None else PAIR_STAGE


def is_audit_metric(name: str) -> bool:
    """Computed after the audit across samples, never by the engine per pair."""
    return metric_stage(name) == AUDIT_STAGE


def pair_metrics(names: Iterable[str]) -> list[str]:
    """``names`` without the audit-stage ones: what the engine computes per map pair (and what
    a noise floor or a trajectory step can measure)."""
    return [m for m in names if not is_audit_metric(m)]


def audit_metrics(names: Iterable[str]) -> list[str]:
    """The audit-stage names of ``names``, in their order."""
    return [m for m in names if is_audit_metric(m)]


def required_regions(metrics: Iterable[str]) -> list[str]:
    """The regions ``metrics`` need, in :data:`REGIONS` order (``iou_topQ`` needs none)."""
    needed = {METRICS[m].requires for m in metrics if m in METRICS}
    return [r for r in REGIONS if r in needed]


# the family iou_topQ: any integer Q in 1..99, written without leading zeros (one name each)
TOPQ = re.compile(r"iou_top([1-9][0-9]?)")


def topq(name: str) -> int | None:
    """Q of an ``iou_topQ`` name, else None."""
    match = TOPQ.fullmatch(name)
    return int(match.group(1)) if match else None


def is_metric(name: object) -> bool:
    """A catalogued metric, or ``iou_topQ`` for an integer Q in 1..99."""
    return isinstance(name, str) and (name in METRICS or topq(name) is not None)


def metric_info(name: str) -> MetricInfo:
    """The catalog entry of ``name`` (``iou_topQ`` entries are made on demand)."""
    if name in METRICS:
        return METRICS[name]
    q = topq(name)
    if q is None:
        raise ValueError(f"unknown metric {name!r}")
    return MetricInfo(
        name,
        f"IoU@{q}",
        (0, 1),
        1,
        Direction.LOWER,
        f"overlap of each map's top {q}% pixels · 1 = same region",
    )


def drift_direction(metric: str) -> str:
    """``lower`` (a similarity), ``higher`` (a distance) or ``abs`` (a signed change)."""
    return metric_info(metric).worse.value


# --------------------------------------------------------------------------- sample filters


@dataclass(frozen=True)
class FilterInfo:
    """Which samples an audit explains, and which class each model's map explains."""

    name: str
    explains: Literal["label", "prediction"]
    text: str


SAMPLE_FILTERS: dict[str, FilterInfo] = {
    f.name: f
    for f in (
        FilterInfo("true_positive", "label", "label = both predictions (the paper's)"),
        FilterInfo("all", "label", "every sample"),
        FilterInfo("predicted", "prediction", "every sample, each map its model's prediction"),
        FilterInfo("disagreement", "prediction", "the two models' predictions differ"),
    )
}
SPLITS: tuple[str, ...] = ("auto", "train", "val", "test")


# --------------------------------------------------------------------------- jobs


class JobStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"


ACTIVE_STATUSES: tuple[JobStatus, ...] = (JobStatus.QUEUED, JobStatus.RUNNING)
FINISHED_STATUSES: tuple[JobStatus, ...] = (
    JobStatus.SUCCEEDED,
    JobStatus.FAILED,
    JobStatus.CANCELLED,
)


class ShardStatus(StrEnum):
    PENDING = "pending"
    DONE = "done"


# --------------------------------------------------------------------------- gate

GATE_STATS: tuple[str, ...] = (
    "mean",
    "median",
    "q05",
    "q95",
    "ci95_low",
    "ci95_high",
    "beyond_floor",
)
GATE_OPS: tuple[str, ...] = (">=", ">", "<=", "<", "==", "!=")


# --------------------------------------------------------------------------- checks


def check_method(name: str) -> str:
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(METHODS)}")
    return name


def metric_choices() -> str:
    """What a user may name as a metric, for error messages."""
    return f"{', '.join(METRICS)} or iou_topQ with Q in 1..99"


def check_metric(name: str) -> str:
    if not is_metric(name):
        raise ValueError(f"unknown metric {name!r}; choose from {metric_choices()}")
    return name


def check_sample_filter(name: str) -> str:
    if name not in SAMPLE_FILTERS:
        raise ValueError(f"unknown sample_filter {name!r}; choose from {', '.join(SAMPLE_FILTERS)}")
    return name


def validate_methods(methods: Sequence[str] | str) -> list[str]:
    """Known, de-duplicated method names in the caller's order."""
    names = [methods] if isinstance(methods, str) else list(methods)
    if not names:
        raise ValueError("methods: give at least one of " + ", ".join(METHODS))
    for name in names:
        if name not in METHODS:
            raise ValueError(f"methods: unknown {name!r}; choose from {', '.join(METHODS)}")
    return unique(names)


def validate_metrics(metrics: Sequence[str] | str) -> list[str]:
    """Known, de-duplicated metric names in the caller's order."""
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    if not names:
        raise ValueError("metrics: give at least one of " + ", ".join(METRICS))
    for name in names:
        if not is_metric(name):
            raise ValueError(f"metrics: unknown {name!r}; choose from {metric_choices()}")
    return unique(names)


def validate_filter(name: str) -> str:
    if name not in SAMPLE_FILTERS:
        raise ValueError(
            f"sample_filter: unknown {name!r}; choose from {', '.join(SAMPLE_FILTERS)}"
        )
    return name


def unique(names: Sequence[str]) -> list[str]:
    """De-duplicated, in the caller's order (so each name is computed once)."""
    return list(dict.fromkeys(names))
