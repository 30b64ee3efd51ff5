"""Gate policies: the Rule/Policy models, reading them from TOML or JSON with the file and line
in every error, and the policy that ships with camdrift.

A policy is a TOML (or JSON) file with the same structure as the ``policy`` of a job body::

    min_samples = 50          # fewer included samples -> "inconclusive"
    min_class_samples = 20    # fewer in a class -> its checks are undecided (default: min_samples)
    [[rule]]
    method = "layercam"       # or "*": every method of the job, each its own check
    metric = "iou_top20"
    stat = "ci95_low"         # mean | median | q05 | q95 | ci95_low | ci95_high | beyond_floor
    class = "overall"         # or "*": every class of the checkpoints, each its own check; or one
    op = ">="
    value = 0.5

Method, metric, stat and op names come from :mod:`worker.catalog`.
"""

from __future__ import annotations

import json
import tomllib
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
    model_validator,
)

from worker.catalog import (
    GATE_OPS,
    GATE_STATS,
    METHODS,
    is_audit_metric,
    is_metric,
    metric_choices,
)
from worker.results.gate.positions import (
    Loc,
    json_lines,
    line_for,
    toml_lines,
    toml_syntax_message,
)

OVERALL, EVERY = "overall", "*"
MAX_INT = 2**31 - 1
DEFAULT_POLICY = "default.toml"  # in this package's policies/ folder


class PolicyError(ValueError):
    """A policy file that cannot be used; the message names the file and the line."""


def _check_rule_method(name: str) -> str:
    if name != EVERY and name not in METHODS:
        raise ValueError(f"method {name!r} is unknown; choose '*' or one of {', '.join(METHODS)}")
    return name


def _check_rule_metric(name: str) -> str:
    if not is_metric(name):
        raise ValueError(f"metric {name!r} is unknown; choose from {metric_choices()}")
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
        description="'overall' (all included samples), '*' (each class of the checkpoints, the "
        "worst decides) or one class name",
    )
    name: str | None = Field(default=None, min_length=1, max_length=255)

    @model_validator(mode="after")
    def _floor_measurable(self) -> Rule:
        """``beyond_floor`` compares each sample's drift with a floor measured per pair; an
        audit-stage metric (``consistency_*``) is computed across the audit's samples from
        the stored maps, and the floor's maps are not stored, so it has no floor to exceed."""
        if self.stat == "beyond_floor" and is_audit_metric(self.metric):
            raise ValueError(
                f"stat 'beyond_floor' cannot apply to {self.metric!r}: it is computed across the"
                " audit's samples and has no noise floor; use mean, median, q05, q95, ci95_low"
                " or ci95_high"
            )
        return self

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
    """``min_samples`` (for the whole verdict), ``min_class_samples`` (for each class's checks;
    by default ``min_samples``) and at least one ``[[rule]]``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    min_samples: int = Field(default=50, ge=0, le=MAX_INT)
    min_class_samples: int | None = Field(
        default=None,
        ge=0,
        le=MAX_INT,
        description="fewer included samples of a class -> that class's checks are undecided "
        "(inconclusive); null: min_samples",
    )
    rule: list[Rule] = Field(min_length=1, max_length=1000)

    @model_serializer(mode="wrap")
    def _compact(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        """``min_class_samples`` only when set, so a policy without it dumps as before."""
        data = handler(self)
        if data.get("min_class_samples") is None:
            data.pop("min_class_samples", None)
        return data

    def class_minimum(self) -> int:
        """Included samples a class needs before its checks are decided."""
        return self.min_samples if self.min_class_samples is None else self.min_class_samples


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
            raise PolicyError(toml_syntax_message(where, str(exc), text)) from None
        lines = toml_lines(text)
    else:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise PolicyError(
                f"{where} line {exc.lineno}: invalid JSON: {exc.msg} (column {exc.colno})"
            ) from None
        if not isinstance(doc, dict):
            raise PolicyError(f"{where} line 1: a policy is a JSON object {{...}}")
        lines = json_lines(text)
    try:
        return Policy.model_validate(doc)
    except ValidationError as exc:
        raise PolicyError(validation_message(where, exc, lines)) from None


def default_policy() -> Policy:
    """The policy that ships with camdrift (``worker/results/gate/policies/default.toml``)."""
    source = resources.files(__package__).joinpath("policies").joinpath(DEFAULT_POLICY)
    return parse_policy(source.read_text(encoding="utf-8"), DEFAULT_POLICY, "toml")


# --------------------------------------------------------------------------- error messages

_CHOICES = {"stat": GATE_STATS, "op": GATE_OPS}
_RULE_KEYS = ("method", "metric", "stat", "op", "value", "class", "name")
_POLICY_KEYS = ("min_samples", "min_class_samples", "rule")


def validation_message(where: str, exc: ValidationError, lines: dict[Loc, int]) -> str:
    """One line: each problem as ``file line N: rule K: what is wrong``, in line order."""
    problems = []
    for error in exc.errors():
        loc = tuple(error["loc"])
        line = line_for(loc, lines)
        prefix = f"{where} line {line}" if line is not None else where
        if len(loc) >= 2 and loc[0] == "rule" and isinstance(loc[1], int):
            prefix += f": rule {loc[1] + 1}"
        problems.append((line or 0, f"{prefix}: {describe(error)}"))
    problems.sort(key=lambda p: p[0])
    return "; ".join(text for _, text in problems)


def describe(error: Any) -> str:
    """One pydantic error in the words of a policy file."""
    loc = tuple(error["loc"])
    key = str(loc[-1]) if loc else "policy"
    kind, value = error["type"], error.get("input")
    in_rule = len(loc) >= 2 and loc[0] == "rule"
    if kind == "missing":
        if loc == ("rule",):
            return "no [[rule]] table; a policy needs at least one rule"
        return f"{key} is missing"
    if kind == "extra_forbidden":
        allowed = _RULE_KEYS if in_rule else _POLICY_KEYS
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
