"""The report's schema as pydantic models: validation for readers, JSON Schema for docs.

Torch-free; the service validates stored reports against the same models it publishes.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

Number = float | None


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stats(_Strict):
    n: int
    n_nan: int
    mean: Number
    std: Number
    median: Number
    q05: Number
    q25: Number
    q75: Number
    q95: Number
    ci95_low: Number
    ci95_high: Number


class Performance(_Strict):
    n: int
    accuracy: Number
    macro_auc: Number
    auc_per_class: dict[str, Number]
    recall_per_class: dict[str, Number]
    confusion_matrix: list[list[int]]


class ModelInfo(BaseModel):
    source: str
    sha256: str | None
    arch: str
    phase: str | None
    class_names: list[str]
    input_size: list[int]
    parent_sha256: str | None = None
    train_metrics: dict[str, Any] | None = None


class DatasetInfo(BaseModel):
    source: str
    fingerprint: str
    num_samples: int
    num_evaluated: int
    class_names: list[str]
    split: str | None
    analysis_size: list[int]


class ClassCount(_Strict):
    evaluated: int
    included: int


class Subsets(_Strict):
    evaluated: int
    included: int
    true_positive: int
    baseline_correct: int
    candidate_correct: int
    disagreement: int
    per_class: dict[str, ClassCount]


class Comparison(_Strict):
    metric: str
    method_a: str
    method_b: str
    n: int
    statistic: Number
    p_value: Number
    effect_size: Number


class SamplesRef(_Strict):
    location: str | None
    count: int
    included: int


class FloorEntry(_Strict):
    direction: Literal["lower", "higher", "abs"]
    threshold: Number
    beyond_floor: Number
    beyond_floor_per_class: dict[str, Number]
    floor: Stats


class CheckpointScore(_Strict):
    accuracy: Number
    macro_auc: Number


class TrajectorySeries(_Strict):
    from_first: list[Stats]
    consecutive: list[Stats]
    sharpest_step: int | None


class TrajectorySection(_Strict):
    """Drift along baseline -> intermediates -> candidate (``worker.results.trajectory``)."""

    checkpoints: list[dict[str, Any]]
    steps: int
    samples: int
    performance: list[CheckpointScore]
    series: dict[str, dict[str, TrajectorySeries]]


class DriftReport(BaseModel):
    """A drift report, ``schema_version`` 1.x. Later sections (verdict, noise floor) extend it."""

    schema_version: str = Field(pattern=r"^1\.\d+$")
    kind: Literal["camdrift.drift-report"]
    created_at: str
    camdrift_version: str
    models: dict[Literal["baseline", "candidate", "replica"], ModelInfo]
    dataset: DatasetInfo
    config: dict[str, Any]
    subsets: Subsets
    performance: dict[Literal["baseline", "candidate"], Performance]
    summaries: dict[str, dict[str, dict[str, Stats]]]
    method_comparisons: list[Comparison]
    degenerate: dict[str, dict[Literal["baseline", "candidate"], int]]
    samples: SamplesRef
    noise_floor: dict[str, dict[str, FloorEntry]] | None = None
    replica_floor: dict[str, dict[str, FloorEntry]] | None = None
    trajectory: TrajectorySection | None = None
    verdict: dict[str, Any] | None = None


def validate_report(doc: dict[str, Any]) -> DriftReport:
    """Raise pydantic.ValidationError when ``doc`` is not a valid report."""
    return DriftReport.model_validate(doc)


def report_json_schema() -> dict[str, Any]:
    return DriftReport.model_json_schema()
