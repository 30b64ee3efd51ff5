"""Evaluating a policy against a drift report: every rule expanded per method and class into
checks (plain dicts, stored as JSON with the job), and the verdict they add up to."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterator
from typing import Any

from worker.catalog import GATE_OPS
from worker.results.gate.policy import EVERY, OVERALL, Policy, Rule

VERDICTS: tuple[str, ...] = ("pass", "fail", "inconclusive")

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
assert set(OPS) == set(GATE_OPS)


CHECK_ORDER: dict[bool | None, int] = {False: 0, None: 1, True: 2}  # failures first


def evaluate_policy(report: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """Every rule, expanded per method and class, checked against the report's summaries.

    How checks add up (docs/architecture.md, "Gate"): ``inconclusive`` when fewer than
    ``min_samples`` samples were included in all; else ``fail`` when any check failed (a
    failure is a failure whatever else could not be decided); else ``inconclusive`` when any
    check could not be decided (no value, or a class below ``min_class_samples``); else
    ``pass``. ``undecided_classes`` names the classes with an undecided check; the checks are
    listed failures first, then undecided, then passed (policy order within each).
    """
    n_included = int((report.get("subsets") or {}).get("included") or 0)
    checks = [check for rule in policy.rule for check in _checks(report, rule, policy)]
    checks.sort(key=lambda c: CHECK_ORDER[c["passed"]])  # stable: policy order within
    failed = sum(c["passed"] is False for c in checks)
    unknown = sum(c["passed"] is None for c in checks)
    undecided = _undecided_classes(report, checks)
    named = f" (classes: {', '.join(undecided)})" if undecided else ""
    if n_included < policy.min_samples:
        verdict = "inconclusive"
        reason = (
            f"only {n_included} included samples; the policy needs at least "
            f"{policy.min_samples} (min_samples)"
        )
    elif failed:
        verdict, reason = "fail", f"{failed} of {len(checks)} checks failed"
        if unknown:
            reason += f"; {unknown} undecided{named}"
    elif unknown:
        verdict = "inconclusive"
        reason = f"{unknown} of {len(checks)} checks could not be decided{named}"
    else:
        verdict, reason = "pass", f"all {len(checks)} checks passed"
    return {
        "verdict": verdict,
        "reason": reason,
        "min_samples": policy.min_samples,
        "min_class_samples": policy.class_minimum(),
        "n_included": n_included,
        "counts": {
            "checks": len(checks),
            "passed": sum(c["passed"] is True for c in checks),
            "failed": failed,
            "unknown": unknown,
        },
        "undecided_classes": undecided,
        "policy": policy.model_dump(by_alias=True, mode="json"),
        "rules": checks,
    }


def _undecided_classes(report: dict[str, Any], checks: list[dict[str, Any]]) -> list[str]:
    """Classes (report order) with at least one undecided check."""
    found = {c["class"] for c in checks if c["passed"] is None} - {OVERALL, EVERY}
    order = list((report.get("dataset") or {}).get("class_names") or [])
    return [name for name in order if name in found] + sorted(found - set(order))


def _report_methods(report: dict[str, Any]) -> list[str]:
    summaries = report.get("summaries") or {}
    configured = (report.get("config") or {}).get("methods")
    return [m for m in configured if m in summaries] if configured else list(summaries)


def _checks(report: dict[str, Any], rule: Rule, policy: Policy) -> Iterator[dict[str, Any]]:
    summaries = report.get("summaries") or {}
    methods = _report_methods(report) if rule.method == EVERY else [rule.method]
    if not methods:
        yield _check(rule, EVERY, rule.class_, None, None, "the report has no methods")
        return
    for method in methods:
        if method not in summaries:
            yield _check(rule, method, rule.class_, None, None, f"method {method} not in this job")
            continue
        per_class = summaries[method].get(rule.metric)
        if per_class is None:
            yield _check(
                rule, method, rule.class_, None, None, f"metric {rule.metric} not in this job"
            )
            continue
        classes = _classes(report, per_class) if rule.class_ == EVERY else [rule.class_]
        if not classes:
            yield _check(rule, method, EVERY, None, None, "the report names no classes")
        for klass in classes:
            stats = per_class.get(klass)
            check = _evaluate(report, rule, method, klass, stats)
            if stats is not None and klass != OVERALL:
                included = _class_included(report, klass, stats)
                check = _held_back(check, included, policy.class_minimum())
            yield check


def _classes(report: dict[str, Any], per_class: dict[str, Any]) -> list[str]:
    """Every class of the checkpoints (report order), with included samples or not: a class
    without any is an undecided check, never one that silently vanishes."""
    names = list((report.get("dataset") or {}).get("class_names") or [])
    return names or [k for k in per_class if k != OVERALL]


def _class_included(report: dict[str, Any], klass: str, stats: dict[str, Any] | None) -> int:
    """Included samples of ``klass``: the report's subset count, else its summary's n + n_nan."""
    counts = (report.get("subsets") or {}).get("per_class") or {}
    if klass in counts:
        return int(counts[klass].get("included") or 0)
    stats = stats or {}
    return int(stats.get("n") or 0) + int(stats.get("n_nan") or 0)


def _held_back(check: dict[str, Any], included: int, minimum: int) -> dict[str, Any]:
    """A class check on fewer than ``minimum`` included samples of its class is undecided (its
    observed value kept for the reader); one on none says so."""
    klass = check["class"]
    if included == 0:
        return check | {
            "n": 0,
            "observed": None,
            "passed": None,
            "reason": f"no included samples of class {klass}",
        }
    if included >= minimum:
        return check
    return check | {
        "passed": None,
        "reason": f"undecided: {included} samples, min_class_samples {minimum}",
    }


def _evaluate(
    report: dict[str, Any], rule: Rule, method: str, klass: str, stats: dict[str, Any] | None
) -> dict[str, Any]:
    if stats is None:
        return _check(rule, method, klass, None, None, f"class {klass} not in this job")
    n = stats.get("n")
    if rule.stat == "beyond_floor":
        observed, missing = _beyond_floor(report, rule.metric, method, klass, stats)
    else:
        observed = stats.get(rule.stat)
        missing = f"{rule.stat} is not available"
        if observed is None:
            nan = int(stats.get("n_nan") or 0)
            if not n:
                missing = f"no finite {rule.metric} values" + (f" ({nan} NaN)" if nan else "")
            elif rule.stat.startswith("ci95") and n < 2:
                missing = f"{rule.stat} needs at least 2 values, {n} available"
    if observed is None or not math.isfinite(float(observed)):
        return _check(rule, method, klass, None, n, missing)
    observed = float(observed)
    passed = OPS[rule.op](observed, rule.value)
    required = f"{rule.op} {rule.value:g}"
    reason = (
        f"observed {observed:.3f} {required}"
        if passed
        else f"observed {observed:.3f}, required {required}"
    )
    return _check(rule, method, klass, observed, n, reason, passed)


def _beyond_floor(
    report: dict[str, Any], metric: str, method: str, klass: str, stats: dict[str, Any]
) -> tuple[float | None, str]:
    """The share of samples whose drift lies beyond the noise floor's 95% tail (0..1).

    Reads ``report["noise_floor"][method][metric]``: ``beyond_floor`` overall, or
    ``beyond_floor_per_class[class]`` (see ``worker.results.report.noise_floor``).
    """
    floor = report.get("noise_floor")
    if not isinstance(floor, dict) or not floor:
        return None, "the report has no noise floor (run the job with noise_floor: true)"
    entry = (floor.get(method) or {}).get(metric)
    if not isinstance(entry, dict):
        return None, f"no noise floor for {method} {metric}"
    if klass == "overall":
        value = entry.get("beyond_floor")
    else:
        value = (entry.get("beyond_floor_per_class") or {}).get(klass)
    if value is None:
        return None, f"no noise floor for {method} {metric} ({klass})"
    return float(value), ""


def _check(
    rule: Rule,
    method: str,
    klass: str,
    observed: float | None,
    n: int | None,
    reason: str,
    passed: bool | None = None,
) -> dict[str, Any]:
    return {
        "name": rule.label(),
        "method": method,
        "metric": rule.metric,
        "stat": rule.stat,
        "class": klass,
        "op": rule.op,
        "value": rule.value,
        "observed": observed,
        "n": n,
        "passed": passed if observed is not None else None,
        "reason": reason,
    }


# --------------------------------------------------------------------------- reading a check


def check_title(check: dict[str, Any]) -> str:
    """``name: metric stat, class c`` — one check's readable identity."""
    return f"{check['name']}: {check['metric']} {check['stat']}, class {check['class']}"


def required_text(check: dict[str, Any]) -> str:
    """What a check requires: ``>= 0.3``."""
    return f"{check['op']} {float(check['value']):g}"
