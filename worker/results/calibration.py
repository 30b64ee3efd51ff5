"""Gate thresholds from reference fine-tunes, with a controlled false-alarm rate (issue 13).

The gate checks, per (class, method, metric), the class ``mean`` of a drift metric over the
included samples. A *reference* is an audit of the baseline against a fine-tune known to be
good (a reseeded run of the accepted recipe, an earlier accepted release). K references give,
per check, K draws of that class mean under the null "nothing is wrong"; this module turns them
into a policy whose thresholds a new good fine-tune crosses rarely, for the whole policy at once.

The threshold of one check is a one-sided **prediction bound for one new run**, not a quantile
of the K values (with K = 5 the empirical 0.3% quantile does not exist)::

    z_k = T(class mean of reference k)       T: atanh on (-1, 1), logit on (0, 1),
                                                identity for a signed change (catalog)
    bound = mean(z) -/+ t_{K-1, 1-level} * s(z) * sqrt(1 + 1/K)
    threshold = clip(T^-1(bound), metric bounds)

Why this form: if a good run's transformed class mean is normal (run-to-run variation; the
transforms make bounded means roughly normal with a stable variance), then
``(z_new - mean(z)) / (s(z) * sqrt(1 + 1/K))`` follows Student's t with K - 1 degrees of freedom
exactly: ``sqrt(1 + 1/K)`` adds the uncertainty of ``mean(z)`` to the new run's own spread, and
the t quantile (not the normal one) pays for estimating ``s`` from only K runs. So P(a new good
run crosses the bound) = ``level``, averaged over the references one happened to draw.

The side comes from the catalog (``worse``): a similarity gets a lower bound (``>=``), a
distance an upper bound (``<=``), a signed change both (two rules). **Bonferroni**: with m
checks, each check gets ``level = alpha / m`` (a signed change's two tails ``alpha / (2m)``
each), so P(any check fails on a good fine-tune) <= alpha whatever the checks' dependence;
for independent checks it is 1 - (1 - alpha/m)^m, just under alpha. K >= 3 is required (with
K = 2, one degree of freedom, the bound is a formality).

The randomisation ceiling (MPRT-style, Adebayo et al. 2018) reads each threshold on a scale
from the floor (0: the references' own level, or the noise floor when the audits measured one)
to the drift of a model whose top layers were re-initialised (1), see :func:`ceiling_scale`.

Torch-free: reference rows come as :class:`~worker.results.rows.RowTable` (or row dicts), or
from the ``.samples.jsonl`` files that ``camdrift drift`` writes next to its reports.
"""

from __future__ import annotations

import functools
import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from scipy import stats as sps

from worker.catalog import Direction, metric_info
from worker.results.ceiling import scale_position
from worker.results.gate.policy import Policy, parse_policy
from worker.results.rows import DRIFT, RowTable
from worker.results.study import load_local_entry

DEFAULT_ALPHA = 0.05
MIN_REFERENCES = 3
# what a calibration checks unless told: three signals every audit computes (overlap, pattern,
# location); the benchmark adds consistency_change and outside_lung_change
# (docs/gate-calibration.md)
DEFAULT_METRICS: tuple[str, ...] = ("iou_top20", "pearson", "displacement")
LOGIT_EPS = 1e-6  # class means of exactly 0 or 1 sit this far inside (0, 1) before the logit
DIGITS = 6  # thresholds are written rounded outward (towards "pass") to this many decimals

Side = Literal["lower", "upper"]
TransformName = Literal["atanh", "logit", "identity"]


class CalibrationError(ValueError):
    """References that cannot be calibrated on; the message says which and why."""


# --------------------------------------------------------------------------- scales


@dataclass(frozen=True)
class Transform:
    """A variance-stabilising scale: ``forward`` to it, ``inverse`` back."""

    name: TransformName
    forward: Callable[[np.ndarray], np.ndarray]
    inverse: Callable[[np.ndarray], np.ndarray]


def _atanh(x: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(x, -1 + LOGIT_EPS, 1 - LOGIT_EPS))


def _logit(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, LOGIT_EPS, 1 - LOGIT_EPS)
    return np.log(x) - np.log1p(-x)


def _expit(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


TRANSFORMS: dict[str, Transform] = {
    "atanh": Transform("atanh", _atanh, np.tanh),  # Fisher's z for correlations
    "logit": Transform("logit", _logit, _expit),
    "identity": Transform("identity", lambda x: x, lambda x: x),
}


def transform_for(metric: str) -> Transform:
    """The scale of ``metric``'s class means: identity for a signed change (``worse = abs``),
    atanh for a metric bounded in (-1, 1), logit for one bounded in (0, 1)."""
    info = metric_info(metric)
    if info.worse is Direction.ABS:
        return TRANSFORMS["identity"]
    if tuple(info.bounds) == (-1, 1):
        return TRANSFORMS["atanh"]
    if tuple(info.bounds) == (0, 1):
        return TRANSFORMS["logit"]
    return TRANSFORMS["identity"]


def sides_for(metric: str) -> tuple[Side, ...]:
    """Which bounds guard ``metric``: lower for a similarity, upper for a distance, both for a
    signed change."""
    worse = metric_info(metric).worse
    if worse is Direction.LOWER:
        return ("lower",)
    if worse is Direction.HIGHER:
        return ("upper",)
    return ("lower", "upper")


@functools.lru_cache(maxsize=256)
def t_factor(k: int, level: float) -> float:
    """``t_{K-1, 1-level} * sqrt(1 + 1/K)``: the bound's distance from the mean in units of s."""
    if k < MIN_REFERENCES:
        raise CalibrationError(
            f"need at least {MIN_REFERENCES} reference runs to estimate run-to-run spread, got {k}"
        )
    return float(sps.t.ppf(1.0 - level, k - 1)) * math.sqrt(1.0 + 1.0 / k)


def prediction_bound(
    values: Sequence[float], level: float, side: Side, metric: str
) -> tuple[float, float]:
    """(threshold on the metric's scale, unclipped bound on the transformed scale) for one new
    run: the one-sided ``1 - level`` prediction bound of the module docstring."""
    transform = transform_for(metric)
    z = transform.forward(np.asarray(values, dtype=np.float64))
    half = t_factor(int(z.size), float(level)) * float(z.std(ddof=1))
    bound = float(z.mean()) - half if side == "lower" else float(z.mean()) + half
    low, high = metric_info(metric).bounds
    value = float(transform.inverse(np.asarray(bound)))
    return float(np.clip(value, low, high)), bound


# --------------------------------------------------------------------------- class means


@dataclass(frozen=True, order=True)
class Check:
    """What one gate check looks at: the class mean of ``metric`` under ``method``."""

    klass: str
    method: str
    metric: str

    def label(self) -> str:
        return f"{self.method} {self.metric}, class {self.klass}"


def class_means(
    rows: RowTable | Iterable[Mapping[str, Any]],
    class_names: Sequence[str],
    methods: Sequence[str],
    metrics: Sequence[str],
    series: str = DRIFT,
) -> dict[Check, tuple[float | None, int]]:
    """Per check, (the gate statistic: mean of the finite values of the included samples of the
    class -- as the report's ``summaries`` compute it -- or None, their count).

    ``series="floor"``: the same mean of the baseline-vs-perturbed-baseline noise floor."""
    table = RowTable.from_rows(rows)
    included = table.included & table.present.get(series, True)
    masks = [included & (table.label == k) for k in range(len(class_names))]
    out: dict[Check, tuple[float | None, int]] = {}
    for method in methods:
        for metric in metrics:
            column = table.values(method, metric, series=series)
            usable = np.isfinite(column)
            for name, mask in zip(class_names, masks, strict=True):
                finite = column[mask & usable]
                mean = float(finite.mean()) if finite.size else None
                out[Check(name, method, metric)] = (mean, int(finite.size))
    return out


def included_per_class(rows: RowTable, class_names: Sequence[str]) -> dict[str, int]:
    """Included samples per class name (what the gate's per-class minimum counts)."""
    return {
        name: int((rows.included & (rows.label == k)).sum()) for k, name in enumerate(class_names)
    }


# --------------------------------------------------------------------------- the calibration


@dataclass(frozen=True)
class Bound:
    """One rule of the policy: ``class mean op value`` at one-sided level ``level``."""

    side: Side
    op: str
    value: float
    level: float
    transformed: float  # the bound on the transformed scale, before back-transform and clip
    at_limit: bool  # clipped to the metric's bound: a rule that cannot fail


@dataclass(frozen=True)
class CheckFit:
    """One check's K reference class means and the bound(s) they give."""

    check: Check
    values: tuple[float, ...]  # raw class means, one per reference
    counts: tuple[int, ...]  # finite included samples behind each mean
    transform: str
    z_mean: float
    z_sd: float
    bounds: tuple[Bound, ...]

    @property
    def mean(self) -> float:
        return float(np.mean(self.values))

    @property
    def sd(self) -> float:
        return float(np.std(self.values, ddof=1))


@dataclass
class Calibration:
    """A calibrated policy, before it is written: every check's fit and the family's numbers."""

    alpha: float
    k: int
    m: int
    fits: list[CheckFit]
    min_samples: int
    min_class_samples: int  # fewest included samples of a checked class in a reference
    class_names: list[str]
    methods: list[str]
    metrics: list[str]
    references: list[str]
    skipped_classes: list[str] = field(default_factory=list)
    audit: dict[str, Any] = field(default_factory=dict)  # the audits' options (report config)
    ceiling: dict[Check, CeilingEntry] | None = None
    ceiling_model: dict[str, Any] | None = None  # which layers, seed

    @property
    def level(self) -> float:
        """The per-check level alpha / m (Bonferroni)."""
        return self.alpha / self.m


def calibrate(
    references: Sequence[RowTable | Iterable[Mapping[str, Any]]],
    class_names: Sequence[str],
    methods: Sequence[str],
    metrics: Sequence[str] = DEFAULT_METRICS,
    *,
    alpha: float = DEFAULT_ALPHA,
    names: Sequence[str] | None = None,
    min_samples: int | None = None,
    min_class_samples: int | None = None,
) -> Calibration:
    """Thresholds for every (class, method, metric) from K reference audits' rows.

    Classes without included samples in any reference are skipped (listed in
    ``skipped_classes``); a class included in some references but not all, a class mean that
    is undefined in a reference, or K references that agree exactly are errors. ``min_samples``
    defaults to the fewest included samples of a reference, ``min_class_samples`` to the fewest
    of a checked class: the class means vary more on smaller audits than calibrated for.
    """
    if not 0.0 < alpha < 1.0:
        raise CalibrationError(f"alpha must lie in (0, 1), got {alpha}")
    tables = [RowTable.from_rows(r) for r in references]
    k = len(tables)
    names = list(names) if names is not None else [f"reference {i + 1}" for i in range(k)]
    if len(names) != k:
        raise CalibrationError(f"{len(names)} names for {k} references")
    if k < MIN_REFERENCES:
        raise CalibrationError(
            f"need at least {MIN_REFERENCES} reference fine-tunes to estimate run-to-run "
            f"spread, got {k}"
        )
    if not methods or not metrics:
        raise CalibrationError("name at least one method and one metric")
    counts = [included_per_class(t, class_names) for t in tables]
    classes, skipped = [], []
    for name in class_names:
        present = [c[name] > 0 for c in counts]
        if not any(present):
            skipped.append(name)
        elif not all(present):
            missing = [n for n, p in zip(names, present, strict=True) if not p]
            raise CalibrationError(
                f"class {name!r} has included samples in some references but none in "
                f"{', '.join(missing)}; audit every reference on the same data and sample "
                "filter (the gate's default is --sample-filter all)"
            )
        else:
            classes.append(name)
    if not classes:
        raise CalibrationError("no class has included samples in the references")
    means = [class_means(t, class_names, methods, metrics) for t in tables]
    checks = [Check(c, method, metric) for c in classes for method in methods for metric in metrics]
    m = len(checks)
    fits = [_fit(check, [mm[check] for mm in means], names, alpha / m) for check in checks]
    fewest = min(int(t.included.sum()) for t in tables)
    fewest_class = min(c[name] for c in counts for name in classes)
    return Calibration(
        alpha=alpha,
        k=k,
        m=m,
        fits=fits,
        min_samples=fewest if min_samples is None else int(min_samples),
        min_class_samples=fewest_class if min_class_samples is None else int(min_class_samples),
        class_names=list(class_names),
        methods=list(methods),
        metrics=list(metrics),
        references=names,
        skipped_classes=skipped,
    )


def _fit(
    check: Check, per_ref: list[tuple[float | None, int]], names: list[str], level: float
) -> CheckFit:
    undefined = [n for n, (mean, _) in zip(names, per_ref, strict=True) if mean is None]
    if undefined:
        raise CalibrationError(
            f"{check.label()}: no finite values in {', '.join(undefined)} (degenerate maps?); "
            "drop the metric or the method"
        )
    values = np.asarray([mean for mean, _ in per_ref], dtype=np.float64)
    transform = transform_for(check.metric)
    z = transform.forward(values)
    sd = float(z.std(ddof=1))
    if not sd > 0.0:
        raise CalibrationError(
            f"{check.label()}: the {len(values)} references' class means are identical "
            f"({values[0]:.6g}); their run-to-run spread cannot be estimated (are the "
            "references copies of one checkpoint?)"
        )
    sides = sides_for(check.metric)
    side_level = level / len(sides)
    low, high = metric_info(check.metric).bounds
    bounds = []
    for side in sides:
        value, transformed = prediction_bound(values, side_level, side, check.metric)
        value = _round_outward(value, side, low, high)
        bounds.append(
            Bound(
                side=side,
                op=">=" if side == "lower" else "<=",
                value=value,
                level=side_level,
                transformed=transformed,
                at_limit=value <= low if side == "lower" else value >= high,
            )
        )
    return CheckFit(
        check=check,
        values=tuple(float(v) for v in values),
        counts=tuple(n for _, n in per_ref),
        transform=transform.name,
        z_mean=float(z.mean()),
        z_sd=sd,
        bounds=tuple(bounds),
    )


def _round_outward(value: float, side: Side, low: float, high: float) -> float:
    """Rounded to :data:`DIGITS` decimals away from the references (never stricter)."""
    scale = 10.0**DIGITS
    step = math.floor if side == "lower" else math.ceil
    return float(min(max(step(value * scale) / scale, low), high))


# --------------------------------------------------------------------------- the ceiling


@dataclass(frozen=True)
class CeilingEntry:
    """One check on the floor (0) -> ceiling (1) scale, on the metric's own (magnitude) axis."""

    floor: float
    floor_source: str  # "noise floor" or "references"
    ceiling: float | None
    positions: tuple[float | None, ...]  # each bound's threshold, in Bound order
    separable: bool  # the random model drifts beyond the floor in the drift direction


def ceiling_scale(
    calibration: Calibration,
    ceiling_rows: RowTable | Iterable[Mapping[str, Any]],
    floor_rows: Sequence[RowTable | Iterable[Mapping[str, Any]]] = (),
) -> dict[Check, CeilingEntry]:
    """Where each threshold sits between the floor (0) and the randomised model's drift (1).

    Floor: the class mean of the noise floor series (baseline vs a perturbed baseline) averaged
    over the ``floor_rows`` audits that measured one, else the references' mean class mean.
    Ceiling: the class mean of the baseline-vs-randomised-model audit. Signed changes are
    read as magnitudes. A check whose ceiling is not beyond its floor in the drift direction
    is ``separable = False`` (the random model looks no worse than a good fine-tune there) and
    gets no positions.
    """
    cal = calibration
    ceiling = class_means(ceiling_rows, cal.class_names, cal.methods, cal.metrics)
    floors: dict[Check, list[float]] = {}
    for rows in floor_rows:
        table = RowTable.from_rows(rows)
        if not table.has("floor"):
            continue
        for check, (mean, _) in class_means(
            table, cal.class_names, cal.methods, cal.metrics, series="floor"
        ).items():
            if mean is not None:
                floors.setdefault(check, []).append(mean)
    out: dict[Check, CeilingEntry] = {}
    for fit in cal.fits:
        worse = metric_info(fit.check.metric).worse
        if fit.check in floors:
            floor, source = float(np.mean(floors[fit.check])), "noise floor"
        else:
            floor, source = fit.mean, "references"
        top, _ = ceiling.get(fit.check, (None, 0))
        metric = fit.check.metric
        _, separable = scale_position(metric, None, floor, top)
        positions = tuple(scale_position(metric, b.value, floor, top)[0] for b in fit.bounds)
        out[fit.check] = CeilingEntry(
            float(worse.magnitude(floor)),
            source,
            None if top is None else float(worse.magnitude(top)),
            positions,
            separable,
        )
    return out


# --------------------------------------------------------------------------- references on disk


@dataclass(frozen=True)
class ReferenceReport:
    """A ``camdrift drift`` report and its per-sample rows."""

    path: Path
    report: dict[str, Any]
    table: RowTable


def load_reference_report(path: Path | str) -> ReferenceReport:
    """A report and the ``.samples.jsonl`` next to it (``samples.location``)."""
    entry = load_local_entry(Path(path))
    return ReferenceReport(Path(path), entry["report"], RowTable.from_rows(entry["rows"]))


def gate_options(config: Mapping[str, Any]) -> dict[str, Any]:
    """The references' audit options in ``camdrift gate``'s words (the policy's comments say
    how to run the gate so it audits what the references audited)."""
    out: dict[str, Any] = {
        "--sample-filter": config.get("sample_filter"),
        "--split": config.get("split") or "all",
    }
    if config.get("max_samples") is not None:
        out["--max-samples"] = config["max_samples"]
    out["--seed"] = config.get("seed")
    if config.get("target_layer"):
        out["target_layer"] = config["target_layer"]
    return out


AUDIT_KEYS = ("sample_filter", "split", "max_samples", "seed", "target_layer")


def reference_key(report: Mapping[str, Any]) -> dict[str, Any]:
    """What every reference audit (and the ceiling's) must share: the baseline, the classes,
    the dataset and the audit options."""
    return {
        "baseline": ((report.get("models") or {}).get("baseline") or {}).get("sha256"),
        "class_names": (report.get("dataset") or {}).get("class_names"),
        "dataset fingerprint": (report.get("dataset") or {}).get("fingerprint"),
        **{k: (report.get("config") or {}).get(k) for k in AUDIT_KEYS},
    }


def check_reports_agree(reports: Sequence[ReferenceReport]) -> None:
    """References must share the baseline, the classes, the dataset and the audit options."""
    first = reports[0]
    want = reference_key(first.report)
    for rep in reports[1:]:
        got = reference_key(rep.report)
        for name, value in got.items():
            if value != want[name]:
                raise CalibrationError(
                    f"{rep.path}: {name} {value!r} differs from {first.path}'s {want[name]!r}; "
                    "every reference must audit the same baseline on the same data with the "
                    "same options"
                )


# --------------------------------------------------------------------------- the policy document


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _toml_string(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)  # a TOML basic string for these characters


def rule_name(fit: CheckFit, bound: Bound) -> str:
    """What the rule guards, e.g. ``pearson not below good fine-tunes: layercam, class covid``."""
    check = fit.check
    what = "not below" if bound.side == "lower" else "not above"
    where = f"{check.method}, class {check.klass}"
    return f"{check.metric} {what} good fine-tunes: {where} (calibrated)"


def policy_toml(calibration: Calibration, command: str | None = None) -> str:
    """The calibrated policy as TOML: ``min_samples`` and one rule per (class, method, metric)
    (two for a signed change), each preceded by a comment with its reference numbers; checked
    to load with :func:`worker.results.gate.parse_policy` before it is returned."""
    cal = calibration
    n_rules = sum(len(f.bounds) for f in cal.fits)
    two_sided = n_rules - len(cal.fits)
    factors = sorted({b.level for f in cal.fits for b in f.bounds})
    out = [
        "# camdrift gate policy calibrated from reference fine-tunes (`camdrift calibrate`).",
    ]
    if command:
        out.append(f"# made by: {command}")
    out += [
        "#",
        f"# K = {cal.k} references (known-good fine-tunes of one baseline): "
        + ", ".join(cal.references),
    ]
    if cal.audit:
        options = " ".join(f"{k} {v}" for k, v in cal.audit.items())
        out.append(f"# the references' audit options: {options}")
        out.append(
            f"#   run `camdrift gate --methods {','.join(cal.methods)} {options}`: "
            "the thresholds hold for such audits only"
        )
    out += [
        "#",
        "# Each rule bounds one class mean (stat = mean) of one metric under one method. A good",
        "# fine-tune's class mean varies from run to run; on a variance-stabilising scale (atanh",
        "# for a metric in (-1, 1), logit for one in (0, 1), identity for a signed change) it is",
        "# taken as normal, and each threshold is the one-sided prediction bound for ONE new run:",
        "#   mean_K -/+ t_{K-1, 1-level} * s_K * sqrt(1 + 1/K), back-transformed, clipped to the",
        "#   metric's bounds and rounded outward (towards pass) to 6 decimals.",
        "# It is exact for normal run-to-run variation: sqrt(1 + 1/K) adds the uncertainty of",
        "# mean_K, the t quantile (not the normal one) pays for estimating s_K from K runs.",
        f"# Bonferroni over m = {cal.m} checks (classes x methods x metrics = "
        f"{len(cal.class_names) - len(cal.skipped_classes)} x {len(cal.methods)} x "
        f"{len(cal.metrics)}): per-check level",
        f"# alpha / m = {cal.alpha:g} / {cal.m} = {cal.level:.3g}, so P(any rule fails on a good "
        f"fine-tune) <= alpha = {cal.alpha:g}.",
    ]
    if two_sided:
        out.append(
            f"# A signed change is two-sided: two rules, each tail at alpha / (2m) = "
            f"{cal.level / 2:.3g} ({n_rules} rules in all)."
        )
    for level in factors:
        out.append(
            f"# t_{{{cal.k - 1}, {1 - level:.6g}}} * sqrt(1 + 1/{cal.k}) = "
            f"{t_factor(cal.k, level):.4g} (in units of s_K on the transformed scale)"
        )
    if cal.skipped_classes:
        out.append(
            "# not checked (no included samples in the references): "
            + ", ".join(cal.skipped_classes)
        )
    limited = sum(b.at_limit for f in cal.fits for b in f.bounds)
    if limited:
        out.append(
            f"# {limited} rule(s) sit at the metric's bound and cannot fail: with K = {cal.k} "
            "the spread is too uncertain there; add references."
        )
    if cal.ceiling is not None:
        model = cal.ceiling_model or {}
        what = []
        if model.get("layers"):
            modules = ", ".join(model.get("modules") or [])
            what.append(f"{model['layers']}: {modules}; seed {model.get('seed')}")
        if model.get("report"):
            what.append(f"audited in {model['report']}")
        out += [
            "#",
            "# ceiling: drift of the baseline vs a copy with re-initialised top layers "
            f"({'; '.join(what) or 'unknown layers'}), MPRT-style (Adebayo et al. 2018).",
            "# Each rule's comment places its threshold on the scale floor (0) -> ceiling (1),",
            "# on the metric's axis (magnitudes for a signed change), maps normalised to [0, 1]",
            "# per sample as every camdrift metric reads them. With only the top layers",
            "# re-initialised the lower layers still carry the image (Binder et al. 2023): the",
            "# ceiling is this architecture's 'unrelated model' level, not the metric's worst.",
        ]
    out += [
        "",
        f"# the references included {cal.min_samples} samples or more, {cal.min_class_samples} "
        "or more per checked class;",
        "# on fewer the class means vary more than calibrated, so the verdict is inconclusive.",
        f"min_samples = {cal.min_samples}",
    ]
    if supports_min_class_samples():
        out.append(f"min_class_samples = {cal.min_class_samples}")
    for fit in cal.fits:
        out.append("")
        out.extend(_rule_comment(fit, cal))
        for bound in fit.bounds:
            out += [
                "[[rule]]",
                f"name = {_toml_string(rule_name(fit, bound))}",
                f"method = {_toml_string(fit.check.method)}",
                f"metric = {_toml_string(fit.check.metric)}",
                'stat = "mean"',
                f"class = {_toml_string(fit.check.klass)}",
                f'op = "{bound.op}"',
                f"value = {bound.value!r}",
            ]
    text = "\n".join(out) + "\n"
    parse_policy(text, "calibrated policy", "toml")  # what we write, the gate reads
    return text


def supports_min_class_samples() -> bool:
    """Whether this camdrift's policy loader knows the per-class ``min_class_samples``."""
    return "min_class_samples" in Policy.model_fields


def _rule_comment(fit: CheckFit, cal: Calibration) -> list[str]:
    values = " ".join(_fmt(v) for v in fit.values)
    n = "/".join(str(c) for c in fit.counts)
    lines = [
        f"# {fit.check.label()}: reference class means {values}",
        f"#   mean {_fmt(fit.mean)}, sd {_fmt(fit.sd)}, range {_fmt(min(fit.values))}.."
        f"{_fmt(max(fit.values))}; {fit.transform} scale mean {_fmt(fit.z_mean)} sd "
        f"{_fmt(fit.z_sd)}; n = {n}",
    ]
    for bound in fit.bounds:
        if bound.at_limit:
            lines.append(f"#   {bound.side} bound at the metric's limit: this rule cannot fail")
    entry = (cal.ceiling or {}).get(fit.check)
    if entry is not None:
        top = "-" if entry.ceiling is None else _fmt(entry.ceiling)
        where = ", ".join("-" if p is None else f"{p:.2f}" for p in entry.positions)
        note = ""
        if not entry.separable:
            note = " (the random model drifts no further than the floor)"
        elif any(p is not None and p >= 1 for p in entry.positions):
            note = " (beyond the ceiling: this rule passes the random model)"
        lines.append(
            f"#   floor ({entry.floor_source}) {_fmt(entry.floor)}, ceiling {top}: threshold at "
            f"{where} of floor -> ceiling{note}"
        )
    return lines


__all__ = [
    "DEFAULT_ALPHA",
    "DEFAULT_METRICS",
    "MIN_REFERENCES",
    "TRANSFORMS",
    "Bound",
    "Calibration",
    "CalibrationError",
    "CeilingEntry",
    "Check",
    "CheckFit",
    "ReferenceReport",
    "calibrate",
    "ceiling_scale",
    "check_reports_agree",
    "class_means",
    "load_reference_report",
    "policy_toml",
    "prediction_bound",
    "sides_for",
    "supports_min_class_samples",
    "t_factor",
    "transform_for",
]
