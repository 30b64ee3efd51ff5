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


def evaluate_policy(report: dict[str, Any], policy: Policy) -> dict[str, Any]:
    """Every rule, expanded per method and class, checked against the report's summaries.

    Verdict: ``inconclusive`` when fewer than ``min_samples`` samples were included; else
    ``fail`` when a check failed; else ``inconclusive`` when a check could not be evaluated
    (its observed value is missing); else ``pass``.
    """
    n_included = int((report.get("subsets") or {}).get("included") or 0)
    checks = [check for rule in policy.rule for check in _checks(report, rule)]
    failed = sum(c["passed"] is False for c in checks)
    unknown = sum(c["passed"] is None for c in checks)
    if n_included < policy.min_samples:
        verdict = "inconclusive"
        reason = (
            f"only {n_included} included samples; the policy needs at least "
            f"{policy.min_samples} (min_samples)"
        )
    elif failed:
        verdict, reason = "fail", f"{failed} of {len(checks)} checks failed"
    elif unknown:
        verdict, reason = (
            "inconclusive",
            f"{unknown} of {len(checks)} checks could not be evaluated",
        )
    else:
        verdict, reason = "pass", f"all {len(checks)} checks passed"
    return {
        "verdict": verdict,
        "reason": reason,
        "min_samples": policy.min_samples,
        "n_included": n_included,
        "counts": {
            "checks": len(checks),
            "passed": sum(c["passed"] is True for c in checks),
            "failed": failed,
            "unknown": unknown,
        },
        "policy": policy.model_dump(by_alias=True, mode="json"),
        "rules": checks,
    }


def _report_methods(report: dict[str, Any]) -> list[str]:
    summaries = report.get("summaries") or {}
    configured = (report.get("config") or {}).get("methods")
    return [m for m in configured if m in summaries] if configured else list(summaries)


def _checks(report: dict[str, Any], rule: Rule) -> Iterator[dict[str, Any]]:
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
            yield _check(rule, method, EVERY, None, None, "no class has included samples")
        for klass in classes:
            yield _evaluate(report, rule, method, klass, per_class.get(klass))


def _classes(report: dict[str, Any], per_class: dict[str, Any]) -> list[str]:
    """Class names (report order) with at least one included sample."""
    names = list((report.get("dataset") or {}).get("class_names") or [])
    names = names or [k for k in per_class if k != OVERALL]
    counts = (report.get("subsets") or {}).get("per_class") or {}
    out = []
    for name in names:
        if name in counts:
            included = int(counts[name].get("included") or 0)
        else:
            stats = per_class.get(name) or {}
            included = int(stats.get("n") or 0) + int(stats.get("n_nan") or 0)
        if included > 0:
            out.append(name)
    return out


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
