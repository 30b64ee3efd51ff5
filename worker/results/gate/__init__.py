"""The gate (docs/architecture.md, "Gate"): a policy of rules over a drift report -> pass /
fail / inconclusive.

Torch-free: the API process validates policies with these models, the worker evaluates them,
and ``camdrift gate`` loads, evaluates and renders them (JUnit XML here, markdown in
:mod:`worker.render.markdown`).

- :mod:`~worker.results.gate.policy`: the Rule/Policy models, loading TOML/JSON files with
  the file and line in every error, and :func:`default_policy` (``policies/default.toml``)
- :mod:`~worker.results.gate.needs`: what a policy needs from the audit (:func:`audit_options`)
  and whether the job can decide it (:func:`policy_problems`, :func:`fit_policy`), checked
  before any audit runs
- :mod:`~worker.results.gate.evaluate`: a policy against a report -> checks and a verdict
- :mod:`~worker.results.gate.junit`: the verdict as JUnit XML
"""

from worker.results.gate.evaluate import (
    OPS,
    VERDICTS,
    check_title,
    evaluate_policy,
    required_text,
)
from worker.results.gate.junit import junit_xml
from worker.results.gate.needs import (
    PolicyMismatch,
    PolicyProblem,
    audit_options,
    checkpoint_class_names,
    fit_policy,
    policy_problems,
)
from worker.results.gate.policy import (
    EVERY,
    MAX_INT,
    OVERALL,
    Policy,
    PolicyError,
    Rule,
    default_policy,
    load_policy,
    parse_policy,
)

__all__ = [
    "EVERY",
    "MAX_INT",
    "OPS",
    "OVERALL",
    "VERDICTS",
    "Policy",
    "PolicyError",
    "PolicyMismatch",
    "PolicyProblem",
    "Rule",
    "audit_options",
    "check_title",
    "checkpoint_class_names",
    "default_policy",
    "evaluate_policy",
    "fit_policy",
    "junit_xml",
    "load_policy",
    "parse_policy",
    "policy_problems",
    "required_text",
]
