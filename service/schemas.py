"""Request and response bodies of the API (pydantic), the source of the OpenAPI document."""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from worker.catalog import (
    DEFAULT_METHODS,
    SAMPLE_FILTERS,
    SPLITS,
    JobStatus,
    check_method,
    check_metric,
    unique,
)
from worker.job_config import DEFAULT_SAMPLE_FILTER, DEFAULT_SPLIT
from worker.results.gate import Policy as GatePolicy
from worker.results.gate import Rule as GateRule

MethodName = Annotated[str, AfterValidator(check_method)]
MetricName = Annotated[str, AfterValidator(check_metric)]
Ident = Annotated[str, Field(min_length=1, max_length=64)]
MAX_INT = 2**31 - 1  # fits every backend's INTEGER
NO_NUL = r"^[^\x00]*$"  # Postgres text cannot hold NUL


class _In(BaseModel):
    """Request bodies: unknown fields and loose types are errors, not silently ignored."""

    model_config = ConfigDict(extra="forbid", strict=True)


class _Out(BaseModel):
    model_config = ConfigDict(from_attributes=True)


# --------------------------------------------------------------------------- common


class Links(BaseModel):
    model_config = ConfigDict(extra="allow")

    self: str


class Health(BaseModel):
    status: Literal["ok"]


class Ready(BaseModel):
    status: Literal["ready"]
    checks: dict[str, str]


# --------------------------------------------------------------------------- checkpoints


class CheckpointOut(_Out):
    id: str
    sha256: str
    name: str
    arch: str
    num_classes: int
    class_names: list[str]
    phase: str | None
    input_size: list[int]
    meta: dict[str, Any]
    size_bytes: int
    created_at: datetime


class CheckpointPage(BaseModel):
    items: list[CheckpointOut]
    total: int
    limit: int
    offset: int


class CheckpointImportOut(_Out):
    """A weights file trained elsewhere on its way to a checkpoint: ``queued`` / ``running``
    until a worker converted it (``succeeded``: ``checkpoint_id``) or could not (``failed``:
    ``error``). Poll ``links.self``."""

    id: str
    status: Literal["queued", "running", "succeeded", "failed"]
    filename: str
    name: str | None
    fields: dict[str, Any] = Field(description="arch, class_names, input_size, ... as given")
    source_sha256: str
    size_bytes: int
    checkpoint_id: str | None
    error: str | None
    created_at: datetime
    finished_at: datetime | None
    links: Links


class CheckpointImportPage(BaseModel):
    items: list[CheckpointImportOut]
    total: int
    limit: int
    offset: int


# --------------------------------------------------------------------------- datasets


class DatasetPathIn(_In):
    """A dataset already on the server, under one of the configured data roots."""

    path: str = Field(min_length=1, max_length=4096, pattern=NO_NUL)
    name: str | None = Field(default=None, min_length=1, max_length=255, pattern=NO_NUL)


class SkippedFile(BaseModel):
    path: str
    reason: str


class DatasetOut(_Out):
    id: str
    name: str
    source: Literal["upload", "path"]
    num_samples: int
    class_names: list[str]
    class_counts: dict[str, int]
    fingerprint: str
    content_sha256: str | None = Field(
        description="uploads: digest of every stored file (paths + bytes); null for server paths"
    )
    skipped: list[SkippedFile]
    created_at: datetime


class DatasetPage(BaseModel):
    items: list[DatasetOut]
    total: int
    limit: int
    offset: int


# --------------------------------------------------------------------------- drift jobs


class PolicyRule(GateRule):
    """One gate rule (docs/architecture.md, "Gate"): ``stat`` of ``metric`` under ``method`` for
    ``class`` (``overall``, ``*`` = each class of the checkpoints, or a class name) against
    ``value``."""


class Policy(GatePolicy):
    """The gate policy, the same structure as the CLI's TOML file (at least one rule)."""

    rule: list[PolicyRule] = Field(min_length=1, max_length=1000)


# JobConfig options a REST client does not choose: the service computes in float32 (no
# autocast; a verdict must not depend on which GPU a shard landed on) with the default
# bootstrap size. Every other JobConfig option is a JobIn field with the same default
# (tests/service/test_job_body.py holds the two together).
SERVER_CHOSEN: tuple[str, ...] = ("autocast", "n_boot")


class MlflowTarget(_In):
    """Where the worker logs the job's verdict, checks and report when it succeeds (the
    worker's ``MLFLOW_TRACKING_URI``): a run, or a new run of an experiment."""

    run_id: str | None = Field(default=None, min_length=1, max_length=64, pattern=r"^[\w-]+$")
    experiment: str | None = Field(default=None, min_length=1, max_length=255, pattern=NO_NUL)


class JobIn(_In):
    """The body of ``POST /drift-jobs`` (docs/architecture.md, "REST API"): the job
    configuration (``worker.job_config.JobConfig`` less :data:`SERVER_CHOSEN`, with its
    defaults) plus ids, the replica, trajectory checkpoints and the gate policy."""

    baseline_id: Ident
    candidate_id: Ident
    dataset_id: Ident
    methods: list[MethodName] = Field(
        default_factory=lambda: list(DEFAULT_METHODS), min_length=1, max_length=16
    )
    metrics: list[MetricName] | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description="null: the default metrics the data can measure (region metrics only where "
        "the dataset brings their masks)",
    )
    sample_filter: Literal[tuple(SAMPLE_FILTERS)] = DEFAULT_SAMPLE_FILTER  # type: ignore[valid-type]
    max_samples: int | None = Field(default=None, ge=1, le=MAX_INT)
    split: Literal[SPLITS] | None = Field(  # type: ignore[valid-type]
        default=DEFAULT_SPLIT, description="auto: the test split when there is one; null: all"
    )
    target_layer: str | None = Field(default=None, min_length=1, max_length=255, pattern=NO_NUL)
    noise_floor: bool = False
    ceiling: str | None = Field(
        default=None,
        pattern=r"^head(\+[1-9][0-9]*)?$",
        description="also audit the baseline against a copy with these top layers "
        "re-initialised (head, or head+N; seeded by seed): the report's ceiling section reads "
        "each drift on the noise floor (0) -> random model (1) scale",
    )
    bit_depth: int | None = Field(
        default=None,
        ge=1,
        le=16,
        description="significant bits of 16-bit grayscale images without an sBIT chunk (12 "
        "for most detectors); null: the baseline checkpoint's recorded depth, else 16",
    )
    baseline_replica_id: Ident | None = None
    trajectory_ids: list[Ident] = Field(
        default_factory=list,
        max_length=64,
        description="checkpoints between the baseline and the candidate, in order (e.g. the "
        "per-epoch ones): the report adds the drift from the baseline and between consecutive "
        "checkpoints at each step",
    )
    seed: int = Field(default=0, ge=0, le=2**32 - 1)
    policy: Policy | None = None
    mlflow: MlflowTarget | None = Field(
        default=None,
        description="log the verdict, every check's value and the report to MLflow when the "
        "job succeeds (needs camdrift[mlflow] and MLFLOW_TRACKING_URI on the worker)",
    )

    def normalised(self) -> dict[str, Any]:
        """Defaults filled in, names de-duplicated: the job's stored config."""
        doc = self.model_dump(mode="json")
        doc["methods"] = unique(self.methods)
        # None: the catalog's defaults for the data, resolved once by the audit (its report's
        # config lists what was computed)
        doc["metrics"] = unique(self.metrics) if self.metrics else None
        if not self.trajectory_ids:  # absent, as before trajectories existed: same request hash
            del doc["trajectory_ids"]
        if self.mlflow is None:  # absent, as before the option existed: same request hash
            del doc["mlflow"]
        return doc


# options added after jobs were stored: left out of the hash at their default, so a replayed
# body hashes as it did before the option existed
HASHED_WHEN_SET: tuple[str, ...] = ("bit_depth",)


def request_hash(doc: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of a normalised body (Idempotency-Key comparisons)."""
    doc = {k: v for k, v in doc.items() if not (k in HASHED_WHEN_SET and v is None)}
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Progress(BaseModel):
    done: int
    total: int | None = Field(description="evaluated samples; null until the job is planned")


class JobOut(BaseModel):
    id: str
    status: JobStatus
    progress: Progress
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    error: str | None
    verdict: dict[str, Any] | None
    config: dict[str, Any]
    baseline_id: str
    candidate_id: str
    dataset_id: str
    cancel_requested: bool
    links: Links


class JobPage(BaseModel):
    items: list[JobOut]
    total: int
    limit: int
    offset: int


class Degenerate(BaseModel):
    baseline: bool
    candidate: bool


class SampleOut(BaseModel):
    index: int = Field(description="evaluated row of the job")
    path: str = Field(description="image path relative to the dataset root")
    label: int
    label_name: str | None
    pred_baseline: int
    pred_candidate: int
    target_baseline: int
    target_candidate: int
    included: bool
    probs_baseline: list[float]
    probs_candidate: list[float]
    method: str
    metrics: dict[str, float | None] | None = Field(description="null when not included")
    trajectory: dict[str, list[dict[str, float | None]]] | None = Field(
        default=None,
        description="trajectory jobs: this method's metrics per step, from_first and consecutive",
    )
    probs_trajectory: list[list[float]] | None = Field(
        default=None, description="trajectory jobs: each intermediate checkpoint's probabilities"
    )
    degenerate: Degenerate | None
    overlay: str | None


class SamplePage(BaseModel):
    items: list[SampleOut]
    total: int
    limit: int
    offset: int
    method: str
    sort: str
    order: Literal["asc", "desc"]


# --------------------------------------------------------------------------- calibrations


class CalibrationIn(_In):
    """The body of ``POST /drift-calibrations``: K succeeded drift jobs of known-good fine-tunes
    of one baseline on one dataset, audited with the same options."""

    job_ids: list[Ident] = Field(
        min_length=3,
        max_length=64,
        description="succeeded reference jobs (K >= 3: the run-to-run spread needs them)",
    )
    alpha: float = Field(
        default=0.05, gt=0, lt=1, description="family-wise false-alarm rate on a good fine-tune"
    )
    methods: list[MethodName] | None = Field(
        default=None, min_length=1, description="default: the jobs' methods"
    )
    metrics: list[MetricName] | None = Field(
        default=None,
        min_length=1,
        description="default: those of iou_top20, pearson, displacement the jobs computed",
    )
    min_samples: int | None = Field(default=None, ge=0, le=MAX_INT)
    min_class_samples: int | None = Field(default=None, ge=0, le=MAX_INT)
    ceiling_job_id: Ident | None = Field(
        default=None,
        description="a succeeded job of the baseline vs a randomised-top-layers copy: places "
        "each threshold on the noise floor (0) -> random model (1) scale",
    )


class CalibrationOut(BaseModel):
    """A calibrated policy: ``policy`` is what a job body's ``policy`` takes, ``policy_toml``
    the file ``camdrift gate --policy`` reads (its comments hold every reference statistic)."""

    alpha: float
    k: int
    m: int
    level: float
    job_ids: list[str]
    methods: list[str]
    metrics: list[str]
    skipped_classes: list[str]
    min_samples: int
    min_class_samples: int
    policy: dict[str, Any]
    policy_toml: str


# --------------------------------------------------------------------------- studies


class StudyIn(_In):
    """The body of ``POST /drift-studies``: finished jobs on one dataset to compare."""

    name: str = Field(min_length=1, max_length=255, pattern=NO_NUL)
    job_ids: list[Ident] = Field(
        min_length=2,
        max_length=64,
        description="succeeded drift jobs on the same dataset and evaluated samples",
    )


class StudyOut(BaseModel):
    id: str
    name: str
    job_ids: list[str]
    created_at: datetime
    links: Links


class StudyReport(BaseModel):
    """The study report (``worker.results.study.study_report``): per method x metric rankings of the
    jobs' model pairs, Kendall tau between the methods' rankings, bootstrap order
    probabilities and ranking reversals with their confidence."""

    model_config = ConfigDict(extra="allow")

    schema_version: str
    kind: Literal["camdrift.study-report"]
    study_id: str | None = None
    name: str | None = None
    dataset: dict[str, Any]
    entries: list[dict[str, Any]]
    methods: list[str]
    metrics: list[str]
    n_common: int
    config: dict[str, Any]
    rankings: dict[str, dict[str, Any]]
    kendall_tau: dict[str, list[dict[str, Any]]]
    reversals: list[dict[str, Any]]
    replicates: dict[str, Any] | None = Field(
        default=None,
        description="with replicate trainings per architecture: rankings, order probabilities "
        "and reversals between the architectures over a two-stage (seeds, then samples) bootstrap",
    )
