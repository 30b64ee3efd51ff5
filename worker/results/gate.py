"""The gate (DESIGN §8): a policy of rules over a drift report -> pass / fail / inconclusive.

A policy is a TOML (or JSON) file with the same structure as the ``policy`` of a job body::

    min_samples = 50          # fewer included samples -> "inconclusive"
    [[rule]]
    method = "layercam"       # or "*": every method of the job, each its own check
    metric = "iou_top20"
    stat = "ci95_low"         # mean | median | q05 | q95 | ci95_low | ci95_high | beyond_floor
    class = "overall"         # or "*": every class with samples, each its own check; or a class
    op = ">="
    value = 0.5

Torch-free: the API process validates policies with these models, the worker evaluates them,
and ``camdrift gate`` loads, evaluates and renders them (JUnit XML here, markdown in
:mod:`worker.render.markdown`).
"""

from __future__ import annotations

import json
import math
import operator
import re
import tomllib
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from contextlib import suppress
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    ValidationError,
    model_serializer,
)

from worker.catalog import GATE_OPS, GATE_STATS, METHODS, METRICS, is_metric

VERDICTS: tuple[str, ...] = ("pass", "fail", "inconclusive")
OVERALL, EVERY = "overall", "*"
MAX_INT = 2**31 - 1

OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    ">": operator.gt,
    "<=": operator.le,
    "<": operator.lt,
    "==": operator.eq,
    "!=": operator.ne,
}
assert set(OPS) == set(GATE_OPS)


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the line."""


def _check_rule_method(name: str) -> str:
    if name != EVERY and name not in METHODS:
        raise ValueError(f"method {name!r} is unknown; choose '*' or one of {', '.join(METHODS)}")
    return name


def _check_rule_metric(name: str) -> str:
    if not is_metric(name):
        raise ValueError(
            f"metric {name!r} is unknown; choose from {', '.join(METRICS)} "
            "or iou_topQ with Q in 1..99"
        )
    return name


class Rule(BaseModel):
    """One rule: ``stat`` of ``metric`` under ``method`` for ``class`` compared with ``value``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    method: Annotated[
        str,
        Field(min_length=1, max_length=32, description="a method of the job, or '*' for each"),
        AfterValidator(_check_rule_method),
    ]
    metric: Annotated[str, AfterValidator(_check_rule_metric)]
    stat: Literal[GATE_STATS]  # type: ignore[valid-type]
    op: Literal[GATE_OPS]  # type: ignore[valid-type]
    value: float = Field(allow_inf_nan=False)
    class_: str = Field(
        default=OVERALL,
        alias="class",
        min_length=1,
        max_length=255,
        description="'overall' (all included samples), '*' (each class with samples, the "
        "worst decides) or one class name",
    )
    name: str | None = Field(default=None, min_length=1, max_length=255)

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``class`` under its TOML/JSON name, and only when not overall; ``name`` when set."""
        data = handler(self)
        klass = data.pop("class_", data.pop("class", OVERALL))
        name = data.pop("name", None)
        out = {} if name is None else {"name": name}
        for key in ("method", "metric", "stat"):
            if key in data:
                out[key] = data.pop(key)
        if klass != OVERALL:
            out["class"] = klass
        out.update(data)  # op, value
        return out

    def label(self) -> str:
        """The rule's name, or one made of its parts."""
        if self.name:
            return self.name
        where = "" if self.class_ == OVERALL else f" [{self.class_}]"
        return f"{self.method} {self.metric} {self.stat} {self.op} {self.value:g}{where}"


class Policy(BaseModel):
    """``min_samples`` and at least one ``[[rule]]``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min_samples: int = Field(default=50, ge=0, le=MAX_INT)
    rule: list[Rule] = Field(min_length=1, max_length=1000)


# --------------------------------------------------------------------------- loading


def load_policy(path: Path | str) -> Policy:
    """Read a ``.toml`` or ``.json`` policy; :class:`PolicyError` names the file and line."""
    path = Path(path)
    where = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise PolicyError(f"{where}: no such policy file") from None
    except IsADirectoryError:
        raise PolicyError(f"{where}: is a directory, not a policy file") from None
    except UnicodeDecodeError:
        raise PolicyError(f"{where}: not a UTF-8 text file") from None
    except OSError as exc:
        raise PolicyError(f"{where}: cannot read ({exc.strerror or exc})") from None
    suffix = path.suffix.lower()
    if suffix == ".toml":
        return parse_policy(text, where, "toml")
    if suffix == ".json":
        return parse_policy(text, where, "json")
    raise PolicyError(f"{where}: a policy is a .toml or .json file")


def parse_policy(text: str, where: str = "policy", fmt: Literal["toml", "json"] = "toml") -> Policy:
    """Parse and validate policy ``text``; ``where`` names it in error messages."""
    if fmt == "toml":
        try:
            doc: Any = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise PolicyError(_toml_syntax_message(where, str(exc), text)) from None
        lines = _toml_lines(text)
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(
                f"{where} line {exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        if not isinstance(doc, dict):
            raise PolicyError(f"{where} line 1: a policy is a JSON object {{...}}")
        lines = _json_lines(text)
    try:
        return Policy.model_validate(doc)
    except ValidationError as exc:
        raise PolicyError(_validation_message(where, exc, lines)) from None


def default_policy() -> Policy:
    """The policy that ships with camdrift (``worker/policies/default.toml``)."""
    source = resources.files("worker.policies").joinpath("default.toml")
    return parse_policy(source.read_text(encoding="utf-8"), "default.toml", "toml")


_TOML_AT = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")


def _toml_syntax_message(where: str, message: str, text: str) -> str:
    found = _TOML_AT.search(message)
    if found:
        detail = message[: found.start()]
        return f"{where} line {found.group(1)}: invalid TOML: {detail} (column {found.group(2)})"
    detail = message.replace("(at end of document)", "").strip()
    last = max(1, len(text.splitlines()))
    return f"{where} line {last}: invalid TOML: {detail} (at the end of the file)"


_ARRAY_TABLE = re.compile(r"^\s*\[\[\s*([^\]\s]+)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([^\]\s]+)\s*\]")
_KEY = re.compile(r"""^\s*(?:"([^"]+)"|'([^']+)'|([A-Za-z0-9_-]+))\s*=""")

Path_ = tuple[Any, ...]


def _toml_lines(text: str) -> dict[Path_, int]:
    """Line numbers (1-based) of keys and ``[[rule]]`` tables, by validation path.

    ``("rule", i)`` is the i-th ``[[rule]]`` header, ``("rule", i, key)`` a key inside it,
    ``(key,)`` a top-level key. A line scanner, enough for the files a person writes.
    """
    lines: dict[Path_, int] = {}
    counts: dict[str, int] = {}
    table: Path_ = ()
    for number, line in enumerate(text.splitlines(), start=1):
        if match := _ARRAY_TABLE.match(line):
            name = match.group(1)
            index = counts.get(name, 0)
            counts[name] = index + 1
            table = (name, index)
            lines.setdefault((name,), number)
            lines[table] = number
        elif match := _TABLE.match(line):
            table = (match.group(1),)
            lines.setdefault(table, number)
        elif match := _KEY.match(line):
            key = next(g for g in match.groups() if g is not None)
            lines.setdefault((*table, key), number)
    return lines


def _json_lines(text: str) -> dict[Path_, int]:
    """Line numbers of every object key and array element of a valid JSON text, by path."""
    lines: dict[Path_, int] = {}
    decoder = json.JSONDecoder()
    ws = re.compile(r"[ \t\n\r]*")

    def line_of(pos: int) -> int:
        return text.count("\n", 0, pos) + 1

    def skip(pos: int) -> int:
        return ws.match(text, pos).end()  # type: ignore[union-attr]

    def value(pos: int, path: Path_) -> int:
        pos = skip(pos)
        char = text[pos]
        if char == "{":
            pos = skip(pos + 1)
            if text[pos] == "}":
                return pos + 1
            while True:
                key, end = json.decoder.scanstring(text, pos + 1)  # type: ignore[attr-defined]
                lines.setdefault((*path, key), line_of(pos))
                pos = skip(end)  # at ':'
                pos = skip(value(pos + 1, (*path, key)))
                if text[pos] == "}":
                    return pos + 1
                pos = skip(pos + 1)  # past ','
        if char == "[":
            pos = skip(pos + 1)
            if text[pos] == "]":
                return pos + 1
            index = 0
            while True:
                lines.setdefault((*path, index), line_of(pos))
                pos = skip(value(pos, (*path, index)))
                index += 1
                if text[pos] == "]":
                    return pos + 1
                pos = skip(pos + 1)
        _, end = decoder.raw_decode(text, pos)
        return end

    with suppress(IndexError, ValueError):  # the text parsed as JSON already
        value(0, ())
    return lines


def _validation_message(where: str, exc: ValidationError, lines: dict[Path_, int]) -> str:
    """One line: each problem as ``file line N: rule K: what is wrong``."""
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        line = _line_for(loc, lines)
        prefix = f"{where} line {line}" if line is not None else where
        if len(loc) >= 2 and loc[0] == "rule" and isinstance(loc[1], int):
            prefix += f": rule {loc[1] + 1}"
        problems.append((line or 0, f"{prefix}: {_describe(error)}"))
    problems.sort(key=lambda p: p[0])
    return "; ".join(text for _, text in problems)


def _line_for(loc: Path_, lines: dict[Path_, int]) -> int | None:
    for cut in range(len(loc), 0, -1):
        if loc[:cut] in lines:
            return lines[loc[:cut]]
    return None


_CHOICES = {"stat": GATE_STATS, "op": GATE_OPS}
_RULE_KEYS = ("method", "metric", "stat", "op", "value", "class", "name")


def _describe(error: Any) -> str:
    loc = tuple(error["loc"])
    key = str(loc[-1]) if loc else "policy"
    kind, value = error["type"], error.get("input")
    in_rule = len(loc) >= 2 and loc[0] == "rule"
    if kind == "missing":
        if loc == ("rule",):
            return "no [[rule]] table; a policy needs at least one rule"
        return f"{key} is missing"
    if kind == "extra_forbidden":
        allowed = _RULE_KEYS if in_rule else ("min_samples", "rule")
        return f"unknown key {key!r}; allowed keys are {', '.join(allowed)}"
    if kind == "literal_error":
        choices = _CHOICES.get(key, ())
        return f"{key} {value!r} is unknown; choose from {', '.join(choices)}"
    if kind == "value_error":
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "too_short" and loc == ("rule",):
        return "no rules; a policy needs at least one [[rule]] table"
    if kind == "list_type" and loc == ("rule",):
        return "rules are [[rule]] tables (double brackets), one per rule"
    if kind == "model_type" and in_rule:
        return "a rule is a table of keys (a [[rule]] section)"
    msg = str(error["msg"])
    msg = msg[:1].lower() + msg[1:]
    if isinstance(value, dict | list):
        return f"{key}: {msg}"
    return f"{key} {value!r}: {msg}"


# --------------------------------------------------------------------------- evaluation


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


# --------------------------------------------------------------------------- JUnit

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _scrub(element: ET.Element) -> None:
    """Drop the characters XML 1.0 cannot hold (ElementTree escapes the rest)."""
    for node in element.iter():
        node.attrib = {k: _NOT_XML.sub("", v) for k, v in node.attrib.items()}
        if node.text:
            node.text = _NOT_XML.sub("", node.text)


def check_title(check: dict[str, Any]) -> str:
    """``name: metric stat, class c`` — one check's readable identity."""
    return f"{check['name']}: {check['metric']} {check['stat']}, class {check['class']}"


def required_text(check: dict[str, Any]) -> str:
    return f"{check['op']} {float(check['value']):g}"


def junit_xml(report: dict[str, Any], verdict: dict[str, Any]) -> str:
    """One ``<testsuite name="camdrift">``: a ``min_samples`` testcase, then one testcase per
    expanded check (``classname`` = the method); failures say observed vs required, checks
    without an observed value are skipped with their reason."""
    suite = ET.Element("testsuite", name="camdrift")
    props = ET.SubElement(suite, "properties")
    models = report.get("models") or {}
    properties = {
        "verdict": verdict.get("verdict"),
        "reason": verdict.get("reason"),
        "min_samples": verdict.get("min_samples"),
        "n_included": verdict.get("n_included"),
        "baseline_sha256": (models.get("baseline") or {}).get("sha256"),
        "candidate_sha256": (models.get("candidate") or {}).get("sha256"),
        "dataset_fingerprint": (report.get("dataset") or {}).get("fingerprint"),
    }
    for key, value in properties.items():
        if value is not None:
            ET.SubElement(props, "property", name=key, value=str(value))
    tests = failures = skipped = 0

    n_inc, minimum = int(verdict.get("n_included") or 0), int(verdict.get("min_samples") or 0)
    case = ET.SubElement(
        suite, "testcase", classname="camdrift", name=f"min_samples: at least {minimum} included"
    )
    tests += 1
    if n_inc < minimum:
        skipped += 1
        ET.SubElement(
            case,
            "skipped",
            message=f"only {n_inc} included samples, min_samples {minimum}: "
            "the verdict is inconclusive",
        )
    for check in verdict.get("rules") or []:
        tests += 1
        case = ET.SubElement(
            suite, "testcase", classname=str(check["method"]), name=check_title(check)
        )
        if check["passed"] is False:
            failures += 1
            failure = ET.SubElement(
                case,
                "failure",
                message=f"observed {check['observed']:.3f}, required {required_text(check)}",
                type="camdrift.gate",
            )
            failure.text = (
                f"{check['method']} {check['metric']} {check['stat']} (class {check['class']}, "
                f"n={check['n']}): observed {check['observed']:.6g}, "
                f"required {required_text(check)}"
            )
        elif check["passed"] is None:
            skipped += 1
            ET.SubElement(case, "skipped", message=str(check["reason"]))
    suite.set("tests", str(tests))
    suite.set("failures", str(failures))
    suite.set("errors", "0")
    suite.set("skipped", str(skipped))
    suite.set("time", "0")
    _scrub(suite)
    ET.indent(suite)
    body = ET.tostring(suite, encoding="unicode")
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + body + "\n"
