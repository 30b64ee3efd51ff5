"""The report's schema as pydantic models: the one description of a drift report.

The builder (:mod:`worker.results.report`) writes the report as JSON; every reader (the HTML
page, the markdown summary, charts, studies) parses it once with :func:`report_view` and reads
attributes. The service publishes the same models (OpenAPI, ``camdrift report-schema``).
Torch-free.

Sections that other parts of camdrift extend (models, dataset, config, the verdict and its
checks) keep keys they do not declare; the numeric sections (stats, floors, performance) are
strict. New fields are optional, so a report written by an older camdrift still validates.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from functools import cache
from typing import Any, Literal, TypeVar, Union, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

REPORT_KIND = "camdrift.drift-report"
Number = float | None
Role = Literal["baseline", "candidate"]
VerdictState = Literal["pass", "fail", "inconclusive"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class _Open(BaseModel):
    """A section others extend: keys it does not declare are kept (``model_extra``)."""

    model_config = ConfigDict(extra="allow", populate_by_name=True)


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
    # single-label: C x C (true x predicted); multi-label: one [tn, fp, fn, tp] per finding
    confusion_matrix: list[list[int]]
    multi_label: bool = False
    threshold: Number = None  # multi-label: the sigmoid score a finding is found above


class ModelInfo(_Open):
    source: str
    sha256: str | None
    arch: str
    phase: str | None
    class_names: list[str]
    input_size: list[int]
    parent_sha256: str | None = None
    train_metrics: dict[str, Any] | None = None


class DatasetInfo(_Open):
    source: str
    fingerprint: str
    num_samples: int
    num_evaluated: int
    class_names: list[str]
    split: str | None
    analysis_size: list[int]


class ReportConfig(_Open):
    """The options the results depend on (``worker.job_config.JobConfig.results_dict``)."""

    methods: list[str]
    metrics: list[str]
    sample_filter: str | None = None
    seed: int | None = None
    n_boot: int | None = None


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


class TrajectoryCheckpoint(_Open):
    """One checkpoint of the sequence: its model description plus an x-axis ``label``."""

    label: str
    source: str | None = None
    sha256: str | None = None
    arch: str | None = None
    phase: str | None = None


class TrajectorySection(_Strict):
    """Drift along baseline -> intermediates -> candidate (``worker.results.trajectory``)."""

    checkpoints: list[TrajectoryCheckpoint]
    steps: int
    samples: int
    performance: list[CheckpointScore]
    series: dict[str, dict[str, TrajectorySeries]]


class ConsistencySummary(_Strict):
    """Mean map consistency (a sample's mean Pearson r with its class's other maps) of each
    model over the ``n`` samples defined for both, their change FT − TL, and how many samples
    each model's value was defined for (``worker.results.consistency``)."""

    tl: Number
    ft: Number
    change: Number
    n: int
    n_tl: int
    n_ft: int


class ConsistencyMethod(_Strict):
    overall: ConsistencySummary
    classes: dict[str, ConsistencySummary]


class Check(_Open):
    """One rule of a policy expanded to one method and class (``worker.results.gate``);
    ``passed`` None: undecided (no value, or too few samples of its class)."""

    name: str | None = None
    method: str
    metric: str
    stat: str
    class_: str = Field(alias="class")
    op: str
    value: float
    observed: Number
    n: int | None = None
    passed: bool | None
    reason: str = ""


class CheckCounts(_Open):
    checks: int
    passed: int
    failed: int
    unknown: int


class Verdict(_Open):
    """A policy's verdict on the report (``worker.results.gate.evaluate_policy``)."""

    verdict: VerdictState
    reason: str = ""
    min_samples: int | None = None
    min_class_samples: int | None = None
    n_included: int | None = None
    counts: CheckCounts | None = None
    undecided_classes: list[str] | None = None
    policy: dict[str, Any] | None = None
    rules: list[Check] = Field(default_factory=list)

    def failed(self) -> list[Check]:
        return [c for c in self.rules if c.passed is False]

    def unknown(self) -> list[Check]:
        return [c for c in self.rules if c.passed is None]

    def ordered(self) -> list[Check]:
        """The checks, failed first, then undecided, then passed (policy order within)."""
        rank = {False: 0, None: 1, True: 2}
        return sorted(self.rules, key=lambda c: rank[c.passed])


class CeilingPosition(_Open):
    """A class mean on the floor (0) -> randomised model (1) scale (worker.results.ceiling)."""

    n: int
    drift: float | None
    floor: float | None
    floor_source: Literal["noise floor", "identical maps"] | None = None
    ceiling: float | None
    position: float | None
    separable: bool


class DriftReport(BaseModel):
    """A drift report, ``schema_version`` 1.x. Sections it does not declare are kept."""

    model_config = ConfigDict(extra="allow")

    schema_version: str = Field(pattern=r"^1\.\d+$")
    kind: Literal["camdrift.drift-report"]
    created_at: str
    camdrift_version: str
    models: dict[Literal["baseline", "candidate", "replica"], ModelInfo]
    dataset: DatasetInfo
    config: ReportConfig
    subsets: Subsets
    performance: dict[Role, Performance]
    # what makes the figures mean less than they seem (a model near chance, upsampled images)
    warnings: list[str] = Field(default_factory=list)
    # method -> metric (any catalogued name, worker.catalog.metric_info) -> overall/class
    summaries: dict[str, dict[str, dict[str, Stats]]]
    method_comparisons: list[Comparison]
    degenerate: dict[str, dict[Role, int]]
    samples: SamplesRef
    noise_floor: dict[str, dict[str, FloorEntry]] | None = None
    replica_floor: dict[str, dict[str, FloorEntry]] | None = None
    trajectory: TrajectorySection | None = None
    # method -> metric -> overall/class: the drift on the floor -> ceiling scale (job ``ceiling``)
    ceiling: dict[str, dict[str, dict[str, CeilingPosition]]] | None = None
    # method -> map consistency across images (None: the audit computed no consistency_tl/_ft)
    consistency: dict[str, ConsistencyMethod] | None = None
    verdict: Verdict | None = None


def validate_report(doc: dict[str, Any]) -> DriftReport:
    """Raise pydantic.ValidationError when ``doc`` is not a valid report."""
    return DriftReport.model_validate(doc)


def report_json_schema() -> dict[str, Any]:
    return DriftReport.model_json_schema()


# --------------------------------------------------------------------------- reading

M = TypeVar("M", bound=BaseModel)


def report_view(doc: Mapping[str, Any] | DriftReport) -> DriftReport:
    """The report as its model, parsed once for reading. A valid report validates as it is;
    a partial document (hand-made, cut down, or written by a tool that knew fewer sections)
    reads as far as it goes: see :func:`read_model`."""
    return doc if isinstance(doc, DriftReport) else read_model(DriftReport, doc)


def read_model(model: type[M], data: Any) -> M:
    """``model`` validated from ``data``; when that fails, built field by field instead: a
    field ``data`` lacks or gets wrong reads as its default, else None, an empty dict or list,
    or the section read from nothing. So a reader sees every section as attributes and shows
    "–" for what a document does not hold (the renderers' behaviour before they were typed),
    while a valid report loses nothing."""
    if isinstance(data, model):
        return data
    if not isinstance(data, Mapping):
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError:
        pass
    values: dict[str, Any] = {}
    known, given = set(), set()
    for name, field in model.model_fields.items():
        key = field.alias or name
        known.add(key)
        if key in data:
            given.add(name)
            values[name] = _read_value(field.annotation, data[key])
        elif not field.is_required():
            values[name] = field.get_default(call_default_factory=True)
        else:
            values[name] = _empty(field.annotation)
    if model.model_config.get("extra") == "allow":
        values.update({k: v for k, v in data.items() if isinstance(k, str) and k not in known})
    return model.model_construct(given, **values)


@cache
def _adapter(annotation: Any) -> TypeAdapter:
    return TypeAdapter(annotation)


def _is_model(annotation: Any) -> bool:
    return isinstance(annotation, type) and issubclass(annotation, BaseModel)


def _read_value(annotation: Any, value: Any) -> Any:
    try:
        return _adapter(annotation).validate_python(value)
    except ValidationError:
        pass
    if _is_model(annotation):
        return read_model(annotation, value)
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return None if value is None or not inner else _read_value(inner[0], value)
    if origin is dict:
        if not isinstance(value, Mapping):
            return {}
        out = {}
        for key, item in value.items():
            try:
                key = _adapter(args[0]).validate_python(key)
            except ValidationError:
                continue
            out[key] = _read_value(args[1], item)
        return out
    if origin is list:
        return [_read_value(args[0], v) for v in value] if isinstance(value, list) else []
    return None


def _empty(annotation: Any) -> Any:
    if _is_model(annotation):
        return read_model(annotation, {})
    origin, args = get_origin(annotation), get_args(annotation)
    if origin in (Union, types.UnionType) and type(None) in args:
        return None
    return {dict: {}, list: []}.get(origin)
