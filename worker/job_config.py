"""One job configuration: what a drift audit computes, with one default per option.

Torch-free. The REST body (``service.schemas.JobIn``) is this plus ids; ``camdrift drift`` and
``camdrift gate`` build it from their options; the engine's ``AuditConfig`` is this plus where
and in which batches it runs (device, batch size, loader workers), which the results never
depend on. The one documented difference between entry points: ``camdrift gate`` audits
``all`` samples by default (a gate must see every class, not only the ones both models get
right), see :data:`GATE_SAMPLE_FILTER`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.catalog import (
    DEFAULT_METHODS,
    METRICS,
    REGIONS,
    default_metrics,
    validate_filter,
    validate_methods,
    validate_metrics,
)

AUTOCAST_DTYPES: tuple[str, ...] = ("bf16", "fp16")
DEFAULT_SAMPLE_FILTER = "true_positive"  # the paper's
GATE_SAMPLE_FILTER = "all"  # camdrift gate's default
DEFAULT_N_BOOT = 2000
CEILING_LAYERS = re.compile(r"head(\+[1-9][0-9]*)?")  # training.randomise.parse_layers' syntax
DEFAULT_SPLIT = "auto"  # the test split when the dataset has one, else every sample
EXECUTION_ONLY: tuple[str, ...] = ("batch_size", "device", "workers")
# ... of which the results still depend on, at float precision: the batch size picks the
# convolution kernels, whose float32 sums then differ in the last bits (displacement 0.011164795
# vs 0.011164755 at batch 1 vs 16; the metrics themselves are computed per sample), so the
# report's ``config`` records it
RECORDED_EXECUTION: tuple[str, ...] = ("batch_size",)


class JobConfig(BaseModel):
    """What the results depend on (stored with each job and in each report's ``config``)."""

    model_config = ConfigDict(validate_assignment=False)

    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    # as the job names them; None: the catalog's defaults for the data (:func:`resolve_metrics`,
    # which the audit calls once, so its report's config lists what was computed)
    metrics: list[str] | None = None
    sample_filter: str = DEFAULT_SAMPLE_FILTER
    max_samples: int | None = None
    split: str | None = DEFAULT_SPLIT
    target_layer: str | None = None
    seed: int = 0
    autocast: str | None = None  # "bf16" on GPU
    n_boot: int = DEFAULT_N_BOOT
    noise_floor: bool = False  # also measure baseline-vs-perturbed-baseline drift per sample
    # also measure drift to a copy of the baseline with these top layers re-initialised
    # ("head" or "head+N", seeded by ``seed``): the randomisation ceiling (MPRT-style)
    ceiling: str | None = None
    # the significant bits of 16-bit grayscale images without an sBIT chunk (12-bit detector
    # data in 16-bit PNGs); None: the baseline checkpoint's (what it was trained on), else 16
    bit_depth: int | None = None

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> list[str]:
        return validate_methods(value)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, value: Any) -> list[str] | None:
        return validate_metrics(value) if value else None

    @field_validator("sample_filter")
    @classmethod
    def _filter(cls, value: str) -> str:
        return validate_filter(value)

    @field_validator("max_samples")
    @classmethod
    def _max_samples(cls, value: int | None) -> int | None:
        if value is not None and value < 1:
            raise ValueError("max_samples: must be >= 1 or null")
        return value

    @field_validator("autocast")
    @classmethod
    def _autocast(cls, value: str | None) -> str | None:
        if value not in (None, *AUTOCAST_DTYPES):
            raise ValueError(f"autocast: choose from {', '.join(AUTOCAST_DTYPES)} or null")
        return value

    @field_validator("ceiling")
    @classmethod
    def _ceiling(cls, value: str | None) -> str | None:
        if value is not None and CEILING_LAYERS.fullmatch(value) is None:
            raise ValueError(f"ceiling: {value!r}: use head or head+N (N >= 1), or null")
        return value

    @field_validator("bit_depth")
    @classmethod
    def _bit_depth(cls, value: int | None) -> int | None:
        if value is not None and not 1 <= value <= 16:
            raise ValueError("bit_depth: 1..16 bits, or null")
        return value

    @field_validator("n_boot")
    @classmethod
    def _n_boot(cls, value: int) -> int:
        if value < 1:
            raise ValueError("n_boot: must be >= 1")
        return value

    @classmethod
    def from_stored(cls, doc: dict[str, Any]) -> JobConfig:
        """The configuration a stored job (or report) names; keys it does not know are ids and
        gate options of the job body, not configuration."""
        return cls(**{k: v for k, v in (doc or {}).items() if k in cls.model_fields})

    def results_dict(self) -> dict[str, Any]:
        """The report's ``config``: every option the results depend on, nothing else (the
        batch size of an engine's ``AuditConfig`` included, see :data:`RECORDED_EXECUTION`)."""
        return {
            k: v
            for k, v in self.model_dump(mode="json").items()
            if (k in JobConfig.model_fields and k not in EXECUTION_ONLY) or k in RECORDED_EXECUTION
        }


def resolve_metrics(metrics: Sequence[str] | None, regions: Iterable[str]) -> list[str]:
    """The metrics an audit computes on data whose evaluated samples bring ``regions``: the
    named ones, or (None) the catalog's defaults for that data, region metrics only where the
    data has their region. A named region metric the data cannot measure is an error: it would
    be NaN for every sample, a hole in a gate rather than a measurement. Audit-stage names
    (``consistency_*``) stay in the list, so the report's config and summaries cover them; the
    engine skips them per pair and the audit's finish computes them across samples
    (:func:`worker.results.consistency.add_consistency`)."""
    have = set(regions)
    if not metrics:
        return default_metrics(have)
    names = validate_metrics(metrics)
    for name in names:
        region = METRICS[name].requires if name in METRICS else None
        if region is not None and region not in have:
            raise ValueError(
                f"metrics: {name} needs a {region} region per image, and no evaluated sample "
                f"has one; the dataset brings it as {REGIONS[region].source}"
            )
    return names
