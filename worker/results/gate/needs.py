"""What a policy needs from an audit, and whether a job can give it — checked before the audit.

A policy that names a class the checkpoints lack, or a method the job does not compute, can
only ever give "inconclusive" checks; in CI an inconclusive gate is often non-blocking, so one
typo would switch the gate off. These checks run before anything is uploaded or attributed
(``camdrift gate`` locally and against a server, ``camdrift drift --policy``, and
``POST /drift-jobs``), and :func:`audit_options` turns on what the policy reads, so every entry
point computes the same things and gives the same verdict on the same inputs.

Torch-free: checkpoint class names come from the safetensors header (no tensor is read).
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.catalog import DEFAULT_METHODS, DEFAULT_METRICS
from worker.results.gate.policy import EVERY, OVERALL, Policy, PolicyError

# stat -> the job option that measures what it reads (a rule on a floor needs that floor)
FLOOR_OPTIONS: dict[str, str] = {"beyond_floor": "noise_floor"}


class PolicyMismatch(PolicyError):
    """A valid policy the job could not decide; ``problems`` lists each rule at fault."""

    def __init__(self, problems: Sequence[PolicyProblem]) -> None:
        self.problems = list(problems)
        super().__init__("; ".join(p.sentence() for p in self.problems))


@dataclass(frozen=True)
class PolicyProblem:
    """One rule the job cannot decide: ``rule`` (0-based), the rule's ``key`` at fault."""

    rule: int
    key: str
    label: str
    message: str

    @property
    def field(self) -> str:
        """Where it sits in a policy document: ``rule[1].class`` (the API prefixes its body)."""
        return f"rule[{self.rule}].{self.key}"

    def sentence(self) -> str:
        """``policy rule 2 (label): message`` — for a command line."""
        return f"policy rule {self.rule + 1} ({self.label}): {self.message}"


def audit_options(policy: Policy, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` (job-body fields) plus what the policy reads: the floor a rule's stat needs
    (``beyond_floor`` -> ``noise_floor: true``) and every metric a rule names, after the given
    metrics (or the default ones). Idempotent; methods are left as given (they cost an
    attribution each: :func:`policy_problems` names a missing one instead)."""
    out = dict(options)
    for rule in policy.rule:
        option = FLOOR_OPTIONS.get(rule.stat)
        if option is not None:
            out[option] = True
    metrics = list(out.get("metrics") or DEFAULT_METRICS)
    for rule in policy.rule:
        if rule.metric not in metrics:
            metrics.append(rule.metric)
    out["metrics"] = metrics
    return out


def policy_problems(
    policy: Policy,
    *,
    class_names: Sequence[str] | None,
    methods: Sequence[str],
    metrics: Sequence[str],
    noise_floor: bool,
) -> list[PolicyProblem]:
    """Every rule that names a class the checkpoints lack, a method or metric the job does not
    compute, or a floor it does not measure, in rule order. ``class_names`` None: unknown (no
    class check)."""
    problems: list[PolicyProblem] = []
    measured = {"noise_floor": noise_floor}
    for i, rule in enumerate(policy.rule):

        def problem(key: str, message: str, i: int = i) -> None:
            problems.append(PolicyProblem(i, key, policy.rule[i].label(), message))

        if rule.method != EVERY and rule.method not in methods:
            problem(
                "method",
                f"method {rule.method!r} is not computed by the job; its methods are "
                f"{', '.join(methods)}",
            )
        if rule.metric not in metrics:
            problem(
                "metric",
                f"metric {rule.metric!r} is not computed by the job; its metrics are "
                f"{', '.join(metrics)}",
            )
        option = FLOOR_OPTIONS.get(rule.stat)
        if option is not None and not measured[option]:
            problem("stat", f"{rule.stat} needs the noise floor, which the job does not measure")
        if class_names is not None and rule.class_ not in (OVERALL, EVERY, *class_names):
            near = difflib.get_close_matches(rule.class_, list(class_names), n=1)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            problem(
                "class",
                f"class {rule.class_!r} is not a class of the checkpoints{hint}; choose "
                f"'overall', '*' or one of {', '.join(class_names)}",
            )
    return problems


def checkpoint_class_names(paths: Sequence[tuple[str, Path]]) -> list[str]:
    """The class names the checkpoints share, read from their headers; ``paths`` are
    (option, path) pairs. :class:`PolicyError` when one cannot be read or the sets differ."""
    from training.checkpoint_format import CheckpointError, read_metadata

    names: list[str] | None = None
    first = ""
    for option, path in paths:
        try:
            mine = [str(name) for name in read_metadata(Path(path))["class_names"]]
        except CheckpointError as exc:
            raise PolicyError(
                f"cannot read the classes of {option} {path}: {exc} — weights trained elsewhere "
                "are imported when --arch and --classes name them"
            ) from None
        if names is None:
            names, first = mine, option
        elif mine != names:
            raise PolicyError(f"class sets do not match: {first} has {names}, {option} has {mine}")
    return names or []


def fit_policy(
    policy: Policy,
    options: dict[str, Any],
    checkpoints: Sequence[tuple[str, Path]],
    class_names: list[str] | None = None,
) -> dict[str, Any]:
    """The audit options this policy needs (:func:`audit_options`), after checking it against
    the checkpoints' classes (``class_names`` when the files are weights to import, else read
    from their headers) and the job's methods; :class:`PolicyMismatch` names every rule the
    job could not decide (:class:`PolicyError` when a checkpoint cannot be read). Used by
    every command-line entry point before anything is uploaded or attributed."""
    fitted = audit_options(policy, options)
    problems = policy_problems(
        policy,
        class_names=class_names or checkpoint_class_names(checkpoints),
        methods=list(fitted.get("methods") or DEFAULT_METHODS),
        metrics=fitted["metrics"],
        noise_floor=bool(fitted.get("noise_floor")),
    )
    if problems:
        raise PolicyMismatch(problems)
    return fitted
