"""One job configuration: what a drift audit computes, with one default per option.

Torch-free. The REST body (``service.schemas.JobIn``) is this plus ids; ``camdrift drift`` and
``camdrift gate`` build it from their options; the engine's ``AuditConfig`` is this plus where
and in which batches it runs (device, batch size, loader workers), which the results never
depend on. The one documented difference between entry points: ``camdrift gate`` audits
``all`` samples by default (a gate must see every class, not only the ones both models get
right), see :data:`GATE_SAMPLE_FILTER`.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from worker.catalog import (
    DEFAULT_METHODS,
    DEFAULT_METRICS,
    validate_filter,
    validate_methods,
    validate_metrics,
)

AUTOCAST_DTYPES: tuple[str, ...] = ("bf16", "fp16")
DEFAULT_SAMPLE_FILTER = "true_positive"  # the paper's
GATE_SAMPLE_FILTER = "all"  # camdrift gate's default
DEFAULT_N_BOOT = 2000
DEFAULT_SPLIT = "auto"  # the test split when the dataset has one, else every sample
EXECUTION_ONLY: tuple[str, ...] = ("batch_size", "device", "workers")


class JobConfig(BaseModel):
    """What the results depend on (stored with each job and in each report's ``config``)."""

    model_config = ConfigDict(validate_assignment=False)

    methods: list[str] = Field(default_factory=lambda: list(DEFAULT_METHODS))
    metrics: list[str] = Field(default_factory=lambda: list(DEFAULT_METRICS))
    sample_filter: str = DEFAULT_SAMPLE_FILTER
    max_samples: int | None = None
    split: str | None = DEFAULT_SPLIT
    target_layer: str | None = None
    seed: int = 0
    autocast: str | None = None  # "bf16" on GPU
    n_boot: int = DEFAULT_N_BOOT
    noise_floor: bool = False  # also measure baseline-vs-perturbed-baseline drift per sample

    @field_validator("methods", mode="before")
    @classmethod
    def _methods(cls, value: Any) -> list[str]:
        return validate_methods(value)

    @field_validator("metrics", mode="before")
    @classmethod
    def _metrics(cls, value: Any) -> list[str]:
        return validate_metrics(value or list(DEFAULT_METRICS))

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
        """The report's ``config``: every option the results depend on, nothing else."""
        return {
            k: v
            for k, v in self.model_dump(mode="json").items()
            if k in JobConfig.model_fields and k not in EXECUTION_ONLY
        }
