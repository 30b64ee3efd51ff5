"""The gate's policy (TOML/JSON, errors naming the line), its evaluation, JUnit and markdown."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest

from worker.catalog import DEFAULT_METRICS, METRICS
from worker.render.markdown import render_markdown
from worker.results.gate import (
    Policy,
    PolicyError,
    Rule,
    audit_options,
    default_policy,
    evaluate_policy,
    junit_xml,
    load_policy,
    parse_policy,
    policy_problems,
)

CLASSES = ["normal", "pneumonia", "covid"]

VALID_TOML = """\
# a policy
min_samples = 20

[[rule]]
name = "overlap held"
method = "layercam"
metric = "iou_top20"
stat = "ci95_low"
op = ">="
value = 0.5

[[rule]]
method = "*"
metric = "displacement"
stat = "mean"
class = "*"
op = "<="
value = 1
"""


def _error(func: Any, *args: Any) -> str:
    """The PolicyError message ``func(*args)`` raises."""
    with pytest.raises(PolicyError) as info:
        func(*args)
    return str(info.value)


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- parsing


def test_toml_policy_parses_with_defaults(tmp_path) -> None:
    policy = load_policy(_write(tmp_path, "policy.toml", VALID_TOML))
    assert policy.min_samples == 20 and len(policy.rule) == 2
    first, second = policy.rule
    assert (first.name, first.method, first.stat, first.class_) == (
        "overlap held",
        "layercam",
        "ci95_low",
        "overall",
    )
    assert second.class_ == "*" and second.value == 1.0 and second.name is None
    assert second.label() == "* displacement mean <= 1 [*]"


def test_json_policy_parses_and_round_trips(tmp_path) -> None:
    doc = {
        "rule": [
            {"method": "gradcam", "metric": "iou_top10", "stat": "q05", "op": ">", "value": 0.1},
            {
                "name": "covid pattern",
                "method": "*",
                "metric": "pearson",
                "stat": "median",
                "class": "covid",
                "op": "!=",
                "value": -0.5,
            },
        ]
    }
    policy = load_policy(_write(tmp_path, "policy.json", json.dumps(doc, indent=2)))
    assert policy.min_samples == 50
    assert policy.rule[1].class_ == "covid"
    dumped = policy.model_dump(by_alias=True, mode="json")
    assert dumped == {"min_samples": 50, "rule": doc["rule"]}  # class only when not overall
    assert policy.model_dump(mode="json") == dumped
    assert Policy.model_validate(dumped) == policy


def test_default_policy_ships_with_the_package() -> None:
    policy = default_policy()
    assert policy.min_samples == 30
    rules = {(r.metric, r.stat, r.op, r.value) for r in policy.rule}
    assert rules == {
        ("spearman", "mean", ">=", 0.292),
        ("displacement", "mean", "<=", 0.165),
        ("concentration_change", "mean", ">=", -0.173),
    }  # chosen by bench/gate_calibration.py --fit-default (docs/gate-calibration.md)
    assert all(r.method == "*" and r.class_ == "*" and r.name for r in policy.rule)
    shipped = Path(__file__).parents[2] / "worker/results/gate/policies/default.toml"
    text = shipped.read_text()
    assert text.count("[[rule]]") == 3 and text.count("#") > 10  # every rule is explained


BAD_TOML = [
    # (text, line, fragment)
    ("min_samples = 3\n[[rule]]\nmethod = = 1\n", 3, "invalid TOML"),
    ('min_samples = 3\n[[rule]]\nmethod = "x\n', 3, "invalid TOML"),
    (
        VALID_TOML.replace('metric = "displacement"', 'metric = "iou"'),
        14,
        "metric 'iou' is unknown",
    ),
    (VALID_TOML.replace('stat = "ci95_low"', 'stat = "p99"'), 8, "stat 'p99' is unknown"),
    (VALID_TOML.replace('op = "<="', 'op = "=<"'), 17, "op '=<' is unknown"),
    (VALID_TOML.replace('method = "layercam"', 'method = "saliency"'), 6, "method 'saliency'"),
    (VALID_TOML.replace("value = 1\n", 'value = "high"\n'), 18, "value 'high'"),
    (VALID_TOML.replace("value = 1\n", "value = nan\n"), 18, "finite"),
    (VALID_TOML.replace("value = 1\n", "value = true\n"), 18, "value True"),
    (VALID_TOML.replace("value = 1\n", ""), 12, "rule 2: value is missing"),
    (VALID_TOML.replace('class = "*"', 'klass = "*"'), 16, "unknown key 'klass'"),
    (VALID_TOML.replace("min_samples = 20", "min_samples = -1"), 2, "min_samples -1"),
    (VALID_TOML.replace("min_samples = 20", "min_samples = 2.5"), 2, "min_samples 2.5"),
    (VALID_TOML.replace("min_samples = 20", "mins = 2"), 2, "unknown key 'mins'"),
]


@pytest.mark.parametrize(("text", "line", "fragment"), BAD_TOML)
def test_toml_errors_name_file_and_line(tmp_path, text, line, fragment) -> None:
    path = _write(tmp_path, "policy.toml", text)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    message = str(info.value)
    assert message.startswith(f"{path} line {line}:"), message
    assert fragment in message, message
    assert "\n" not in message


def test_a_rule_error_names_the_rule(tmp_path) -> None:
    text = VALID_TOML.replace('metric = "displacement"', 'metric = "iou"')
    message = _error(load_policy, _write(tmp_path, "p.toml", text))
    assert message == (
        f"{tmp_path / 'p.toml'} line 14: rule 2: metric 'iou' is unknown; choose from "
        f"{', '.join(METRICS)} or iou_topQ with Q in 1..99"
    )
    assert message.startswith(
        f"{tmp_path / 'p.toml'} line 14: rule 2: metric 'iou' is unknown; choose from "
        "displacement, peak_displacement, iou_top20, iou_t50, pearson, spearman, "
        "concentration_change, entropy_change"
    )


def test_several_errors_are_all_reported_in_line_order(tmp_path) -> None:
    text = VALID_TOML.replace('op = "<="', 'op = "~"').replace('stat = "ci95_low"', 'stat = "x"')
    message = _error(parse_policy, text, "p.toml")
    assert message.index("p.toml line 8: rule 1: stat") < message.index("p.toml line 17: rule 2")


@pytest.mark.parametrize(
    ("text", "fragment"),
    [
        ("min_samples = 3\n", "no [[rule]] table"),
        ("min_samples = 3\nrule = []\n", "line 2: no rules"),
        ("[rule]\nmethod = '*'\n", "line 1: rules are [[rule]] tables"),
    ],
)
def test_a_policy_needs_rules(text, fragment) -> None:
    with pytest.raises(PolicyError, match=r"p\.toml") as info:
        parse_policy(text, "p.toml")
    assert fragment in str(info.value)


def test_json_errors_name_the_line(tmp_path) -> None:
    broken = _write(tmp_path, "p.json", '{"min_samples": 3,\n "rule": [\n}')
    assert "p.json line 3: invalid JSON" in _error(load_policy, broken)
    doc = {
        "rule": [
            {"method": "*", "metric": "pearson", "stat": "mean", "op": ">=", "value": 0.2},
            {"method": "*", "metric": "pearson", "stat": "mean", "op": ">=", "value": "x"},
        ]
    }
    bad = _write(tmp_path, "q.json", json.dumps(doc, indent=2))
    message = _error(load_policy, bad)
    assert message.startswith(f"{bad} line 15: rule 2: value 'x'"), message
    listed = _write(tmp_path, "r.json", "[1, 2]")
    assert "r.json line 1: a policy is a JSON object" in _error(load_policy, listed)


def test_file_problems(tmp_path) -> None:
    assert "no such policy file" in _error(load_policy, tmp_path / "none.toml")
    other = _write(tmp_path, "p.yaml", "min_samples: 1")
    assert ".toml or .json" in _error(load_policy, other)
    assert isinstance(PolicyError("x"), ValueError)


def test_rule_models_are_strict() -> None:
    base = {"method": "*", "metric": "pearson", "stat": "mean", "op": ">=", "value": 0.2}
    assert Rule.model_validate({**base, "class": "covid"}).class_ == "covid"
    for bad in ({**base, "class_": "covid"}, {**base, "value": "0.2"}, {**base, "class": ""}):
        with pytest.raises(ValueError):
            Rule.model_validate(bad)


# --------------------------------------------------------------------------- evaluation


def _stats(mean: float | None, n: int = 10, **extra: Any) -> dict[str, Any]:
    values = dict.fromkeys(
        ("std", "median", "q05", "q25", "q75", "q95", "ci95_low", "ci95_high"), mean
    )
    return {"n": n, "n_nan": 0, "mean": mean, **values, **extra}


def make_report(
    values: dict[str, dict[str, dict[str, float | None]]],
    *,
    included: int = 100,
    per_class: dict[str, int] | None = None,
) -> dict[str, Any]:
    """A minimal report: ``values[method][metric][group] = mean`` (group: overall/class)."""
    per_class = per_class or dict.fromkeys(CLASSES, included // len(CLASSES))
    summaries = {
        method: {
            metric: {
                group: _stats(mean, n=per_class.get(group, included)) for group, mean in g.items()
            }
            for metric, g in metrics.items()
        }
        for method, metrics in values.items()
    }
    return {
        "models": {
            "baseline": {"arch": "tinycnn", "phase": "tl", "sha256": "a" * 64},
            "candidate": {"arch": "tinycnn", "phase": "ft", "sha256": "b" * 64},
        },
        "dataset": {"class_names": CLASSES, "fingerprint": "c" * 64, "num_evaluated": included},
        "config": {"methods": list(values), "metrics": ["iou_top20"], "sample_filter": "all"},
        "subsets": {
            "evaluated": included,
            "included": included,
            "per_class": {c: {"evaluated": k, "included": k} for c, k in per_class.items()},
        },
        "performance": {"baseline": {"n": included, "accuracy": 0.9, "macro_auc": 0.95}},
        "summaries": summaries,
        "verdict": None,
    }


def _policy(*rules: dict[str, Any], min_samples: int = 10) -> Policy:
    return Policy.model_validate({"min_samples": min_samples, "rule": list(rules)})


def _rule(**kw: Any) -> dict[str, Any]:
    return {
        "method": "layercam",
        "metric": "iou_top20",
        "stat": "mean",
        "op": ">=",
        "value": 0.5,
    } | kw


IOU = {"overall": 0.6, "normal": 0.7, "pneumonia": 0.55, "covid": 0.3}
REPORT = make_report(
    {"layercam": {"iou_top20": IOU}, "gradcam++": {"iou_top20": IOU | {"overall": 0.4}}}
)


def test_pass_and_fail() -> None:
    passed = evaluate_policy(REPORT, _policy(_rule()))
    assert passed["verdict"] == "pass" and passed["reason"] == "all 1 checks passed"
    (check,) = passed["rules"]
    assert check | {"name": None} == {
        "name": None,
        "method": "layercam",
        "metric": "iou_top20",
        "stat": "mean",
        "class": "overall",
        "op": ">=",
        "value": 0.5,
        "observed": 0.6,
        "n": 100,
        "passed": True,
        "reason": "observed 0.600 >= 0.5",
    }
    failed = evaluate_policy(REPORT, _policy(_rule(), _rule(value=0.7, name="strict")))
    assert failed["verdict"] == "fail" and failed["counts"]["failed"] == 1
    assert failed["rules"][0]["reason"] == "observed 0.600, required >= 0.7"  # failures first
    assert failed["rules"][0]["name"] == "strict"
    assert failed["min_samples"] == 10 and failed["n_included"] == 100
    assert failed["policy"]["rule"][1]["name"] == "strict"
    json.dumps(failed)  # stored as JSON


def test_too_few_samples_is_inconclusive_even_when_a_rule_fails() -> None:
    result = evaluate_policy(REPORT, _policy(_rule(value=0.9), min_samples=101))
    assert result["verdict"] == "inconclusive"
    assert "only 100 included samples" in result["reason"] and "101" in result["reason"]
    assert result["rules"][0]["passed"] is False  # still reported


def test_a_missing_value_is_inconclusive_but_a_failure_wins() -> None:
    report = make_report({"layercam": {"iou_top20": {"overall": None}}})
    report["summaries"]["layercam"]["iou_top20"]["overall"].update(n=0, n_nan=4)
    result = evaluate_policy(report, _policy(_rule()))
    assert result["verdict"] == "inconclusive"
    assert result["rules"][0]["passed"] is None
    assert result["rules"][0]["reason"] == "no finite iou_top20 values (4 NaN)"
    both = evaluate_policy(
        make_report({"layercam": {"iou_top20": {"overall": 0.1}, "pearson": {"overall": None}}}),
        _policy(_rule(), _rule(metric="pearson")),
    )
    assert both["verdict"] == "fail"


def test_every_class_expands_to_every_class_of_the_checkpoints() -> None:
    report = make_report(
        {"layercam": {"iou_top20": IOU | {"effusion": None}}},
        per_class={"normal": 5, "pneumonia": 5, "covid": 5, "effusion": 0},
    )
    report["dataset"]["class_names"] = [*CLASSES, "effusion"]
    result = evaluate_policy(report, _policy(_rule(**{"class": "*"}), min_samples=5))
    assert [c["class"] for c in result["rules"]] == ["covid", "effusion", "normal", "pneumonia"]
    assert [c["passed"] for c in result["rules"]] == [False, None, True, True]
    assert result["verdict"] == "fail" and result["rules"][0]["observed"] == 0.3
    one = evaluate_policy(report, _policy(_rule(**{"class": "pneumonia"}), min_samples=5))
    assert one["verdict"] == "pass" and one["rules"][0]["n"] == 5


def test_every_method_expands_to_the_jobs_methods() -> None:
    result = evaluate_policy(REPORT, _policy(_rule(method="*")))
    assert [c["method"] for c in result["rules"]] == ["gradcam++", "layercam"]  # failed first
    assert [c["passed"] for c in result["rules"]] == [False, True]
    grid = evaluate_policy(REPORT, _policy(_rule(method="*", **{"class": "*"})))
    assert len(grid["rules"]) == 2 * len(CLASSES)


@pytest.mark.parametrize(
    ("op", "value", "passed"),
    [
        (">=", 0.6, True),
        (">", 0.6, False),
        ("<=", 0.6, True),
        ("<", 0.6, False),
        ("==", 0.6, True),
        ("!=", 0.6, False),
        (">", 0.59, True),
        ("<", 0.61, True),
    ],
)
def test_ops(op, value, passed) -> None:
    result = evaluate_policy(REPORT, _policy(_rule(op=op, value=value)))
    assert result["rules"][0]["passed"] is passed
    assert result["verdict"] == ("pass" if passed else "fail")


@pytest.mark.parametrize(
    ("rule", "reason"),
    [
        (_rule(method="hirescam"), "method hirescam not in this job"),
        (_rule(metric="spearman"), "metric spearman not in this job"),
        (_rule(**{"class": "effusion"}), "class effusion not in this job"),
        (_rule(stat="beyond_floor"), "no noise floor"),
    ],
)
def test_what_the_report_lacks_is_inconclusive(rule, reason) -> None:
    result = evaluate_policy(REPORT, _policy(rule))
    assert result["verdict"] == "inconclusive"
    assert result["rules"][0]["passed"] is None and reason in result["rules"][0]["reason"]


def test_beyond_floor_reads_the_noise_floor() -> None:
    """beyond_floor = share of samples whose drift lies beyond the floor's 95% tail."""
    report = make_report({"layercam": {"iou_top20": IOU, "displacement": {"overall": 0.2}}})

    def entry(overall: float, per_class: dict[str, float]) -> dict:
        return {
            "direction": "lower",
            "threshold": 0.8,
            "beyond_floor": overall,
            "beyond_floor_per_class": per_class,
            "floor": _stats(0.9),
        }

    report["noise_floor"] = {
        "layercam": {
            "iou_top20": entry(0.3, {}),
            "displacement": entry(0.15, {}),
        }
    }
    result = evaluate_policy(
        report,
        _policy(
            _rule(stat="beyond_floor", op="<=", value=0.25),
            _rule(metric="displacement", stat="beyond_floor", op="<=", value=0.1),
        ),
    )
    assert [round(c["observed"], 6) for c in result["rules"]] == [0.3, 0.15]
    assert result["verdict"] == "fail" and result["counts"]["failed"] == 2
    report["noise_floor"]["layercam"]["iou_top20"] = entry(0.1, {"a": 0.05})
    result = evaluate_policy(report, _policy(_rule(stat="beyond_floor", op="<=", value=0.25)))
    assert result["rules"][0]["observed"] == pytest.approx(0.1)
    report.pop("noise_floor")
    result = evaluate_policy(report, _policy(_rule(stat="beyond_floor", op="<=", value=0.25)))
    assert result["rules"][0]["passed"] is None and "no noise floor" in result["rules"][0]["reason"]


def test_ci_needs_two_values() -> None:
    report = make_report({"layercam": {"iou_top20": {"overall": 0.5}}})
    report["summaries"]["layercam"]["iou_top20"]["overall"].update(n=1, ci95_low=None)
    result = evaluate_policy(report, _policy(_rule(stat="ci95_low")))
    assert result["rules"][0]["reason"] == "ci95_low needs at least 2 values, 1 available"


# --------------------------------------------------------------------------- JUnit, markdown


def test_junit_counts_failures_and_skips() -> None:
    policy = _policy(
        _rule(method="*", name='overlap <held> & "kept"'),
        _rule(metric="pearson"),
        min_samples=10,
    )
    verdict = evaluate_policy(REPORT, policy)
    root = ET.fromstring(junit_xml(REPORT, verdict).encode())
    assert root.tag == "testsuite" and root.get("name") == "camdrift"
    cases = root.findall("testcase")
    assert len(cases) == 4 == int(root.get("tests"))  # min_samples + 2 methods + pearson
    assert root.get("failures") == "1" and root.get("skipped") == "1" and root.get("errors") == "0"
    assert cases[0].get("name") == "min_samples: at least 10 included"
    assert cases[0].find("skipped") is None and cases[0].find("failure") is None
    failed = cases[1]  # failures first
    assert failed.get("classname") == "gradcam++"
    assert failed.get("name") == 'overlap <held> & "kept": iou_top20 mean, class overall'
    assert failed.find("failure").get("message") == "observed 0.400, required >= 0.5"
    assert "pearson not in this job" in cases[2].find("skipped").get("message")
    props = {p.get("name"): p.get("value") for p in root.iter("property")}
    assert props["verdict"] == "fail" and props["baseline_sha256"] == "a" * 64


def test_junit_marks_too_few_samples_skipped() -> None:
    verdict = evaluate_policy(REPORT, _policy(_rule(), min_samples=500))
    root = ET.fromstring(junit_xml(REPORT, verdict))
    skipped = root.find("testcase").find("skipped")
    assert "only 100 included samples" in skipped.get("message")
    assert root.get("skipped") == "1" and root.get("failures") == "0"


def test_markdown_has_the_status_line_and_rule_table() -> None:
    policy = _policy(_rule(method="*", name="overlap | held"), _rule(metric="pearson"))
    verdict = evaluate_policy(REPORT, policy)
    text = render_markdown(REPORT, verdict)
    assert text.startswith("## camdrift drift report\n")
    assert "**Gate: FAIL** — 1 of 3 checks failed" in text
    assert "| rule | observed | required | result |" in text
    lines = text.splitlines()
    rows = [line for line in lines if line.startswith("| overlap") or line.startswith("| layercam")]
    assert rows[0] == (  # failures first, pipes escaped
        "| overlap \\| held<br>`gradcam++` iou_top20 mean, class overall "
        "| 0.400 | >= 0.5 | **FAIL** |"
    )
    assert any("| – | >= 0.5 | n/a: metric pearson not in this job |" in line for line in lines)
    assert "**FAIL**" in text and ":x:" not in text
    # the report's own verdict is used when none is given
    assert "**Gate: FAIL**" in render_markdown(REPORT | {"verdict": verdict}, job_id="j1")
    assert "### Gate" not in render_markdown(REPORT)


# --------------------------------------------------------------------------- no silent holes


def test_every_class_reports_a_class_without_samples_as_inconclusive() -> None:
    """``class = "*"`` covers every class of the checkpoints: one without included samples is
    an inconclusive check with n = 0, never a check that silently vanishes."""
    report = make_report(
        {"layercam": {"iou_top20": IOU | {"effusion": None}}},
        per_class={"normal": 10, "pneumonia": 10, "covid": 10, "effusion": 0},
    )
    report["dataset"]["class_names"] = [*CLASSES, "effusion"]
    report["summaries"]["layercam"]["iou_top20"]["effusion"].update(n=0)
    passing = _rule(value=0.2, **{"class": "*"})
    result = evaluate_policy(report, _policy(passing, min_samples=10))
    by_class = {c["class"]: c for c in result["rules"]}
    assert set(by_class) == {*CLASSES, "effusion"}
    empty = by_class["effusion"]
    assert empty["passed"] is None and empty["n"] == 0 and empty["observed"] is None
    assert empty["reason"] == "no included samples of class effusion"
    assert result["verdict"] == "inconclusive"
    assert result["undecided_classes"] == ["effusion"]
    assert "effusion" in result["reason"]


def test_a_class_below_min_class_samples_is_undecided() -> None:
    """Per class the policy's minimum applies too (``min_class_samples``, by default
    ``min_samples``): a class below it is an inconclusive check that still shows its value;
    exactly the minimum is decided."""
    report = make_report(
        {"layercam": {"iou_top20": IOU}},
        per_class={"normal": 10, "pneumonia": 9, "covid": 10},
    )
    rule = _rule(value=0.2, **{"class": "*"})
    result = evaluate_policy(report, _policy(rule, min_samples=10))
    by_class = {c["class"]: c for c in result["rules"]}
    assert [by_class[c]["passed"] for c in CLASSES] == [True, None, True]
    assert by_class["pneumonia"]["observed"] == 0.55  # shown, not decided
    assert by_class["pneumonia"]["reason"] == "undecided: 9 samples, min_class_samples 10"
    assert result["verdict"] == "inconclusive" and result["undecided_classes"] == ["pneumonia"]
    relaxed = Policy.model_validate({"min_samples": 10, "min_class_samples": 9, "rule": [rule]})
    assert evaluate_policy(report, relaxed)["verdict"] == "pass"
    named = evaluate_policy(report, _policy(_rule(value=0.2, **{"class": "pneumonia"})))
    assert named["verdict"] == "inconclusive"
    overall = evaluate_policy(report, _policy(_rule(value=0.2)))
    assert overall["verdict"] == "pass"  # the overall check is held by min_samples alone


def test_a_failure_anywhere_fails_and_the_undecided_classes_are_still_named() -> None:
    """fail anywhere -> fail; else any inconclusive check -> inconclusive; else pass."""
    report = make_report(
        {"layercam": {"iou_top20": IOU}},
        per_class={"normal": 10, "pneumonia": 3, "covid": 10},
    )
    result = evaluate_policy(report, _policy(_rule(value=0.5, **{"class": "*"})))
    assert [c["passed"] for c in result["rules"]] == [False, None, True]  # failures first
    assert [c["class"] for c in result["rules"]] == ["covid", "pneumonia", "normal"]
    assert result["verdict"] == "fail" and result["undecided_classes"] == ["pneumonia"]
    assert result["reason"] == "1 of 3 checks failed; 1 undecided (classes: pneumonia)"
    assert result["counts"] == {"checks": 3, "passed": 1, "failed": 1, "unknown": 1}


def test_checks_are_ordered_failures_first_then_undecided_then_passed() -> None:
    policy = _policy(
        _rule(name="a"),  # overall 0.6: pass
        _rule(name="b", metric="pearson"),  # not in the job: inconclusive
        _rule(name="c", value=0.7),  # fail
        _rule(name="d", method="*", value=0.5),  # layercam pass, gradcam++ fail
    )
    result = evaluate_policy(REPORT, policy)
    order = [(c["name"], c["method"], c["passed"]) for c in result["rules"]]
    assert order == [
        ("c", "layercam", False),
        ("d", "gradcam++", False),
        ("b", "layercam", None),
        ("a", "layercam", True),
        ("d", "layercam", True),
    ]
    root = ET.fromstring(junit_xml(REPORT, result))
    names = [case.get("name").split(":")[0] for case in root.findall("testcase")[1:]]
    assert names == ["c", "d", "b", "a", "d"]


def test_min_class_samples_parses_round_trips_and_is_checked(tmp_path) -> None:
    text = VALID_TOML.replace("min_samples = 20", "min_samples = 20\nmin_class_samples = 5")
    policy = parse_policy(text, "p.toml")
    assert policy.min_class_samples == 5 and policy.class_minimum() == 5
    dumped = policy.model_dump(by_alias=True, mode="json")
    assert dumped["min_class_samples"] == 5 and Policy.model_validate(dumped) == policy
    plain = parse_policy(VALID_TOML, "p.toml")
    assert plain.class_minimum() == 20
    assert "min_class_samples" not in plain.model_dump(by_alias=True, mode="json")
    bad = _error(parse_policy, text.replace("= 5", "= -5"), "p.toml")
    assert bad.startswith("p.toml line 3: min_class_samples -5"), bad
    unknown = _error(parse_policy, VALID_TOML.replace("min_samples", "min_sample"), "p.toml")
    assert "allowed keys are min_samples, min_class_samples, rule" in unknown


# --------------------------------------------------------------------------- prechecks


def test_audit_options_turn_on_what_the_policy_reads() -> None:
    floor = _policy(_rule(stat="beyond_floor", metric="ssim"), _rule())
    options = audit_options(floor, {"methods": ["layercam"], "seed": 3})
    assert options["noise_floor"] is True and options["seed"] == 3
    assert options["methods"] == ["layercam"]
    assert options["metrics"] == [*DEFAULT_METRICS, "ssim"]  # the defaults and what rules read
    assert audit_options(floor, options) == options  # idempotent
    plain = audit_options(_policy(_rule()), {"metrics": ["pearson"]})
    assert plain["metrics"] == ["pearson", "iou_top20"] and "noise_floor" not in plain
    assert audit_options(_policy(_rule()), {"noise_floor": True})["noise_floor"] is True


def test_policy_problems_name_the_rule_field_and_the_valid_names() -> None:
    policy = _policy(
        _rule(**{"class": "covid"}),
        _rule(**{"class": "efusion"}),
        _rule(method="gradcam"),
        _rule(metric="ssim", stat="beyond_floor"),
        _rule(method="*", **{"class": "*"}),
    )
    classes = [*CLASSES, "effusion"]
    problems = policy_problems(
        policy,
        class_names=classes,
        methods=["layercam", "gradcam++"],
        metrics=list(DEFAULT_METRICS),
        noise_floor=False,
    )
    assert [(p.field, p.rule) for p in problems] == [
        ("rule[1].class", 1),
        ("rule[2].method", 2),
        ("rule[3].metric", 3),
        ("rule[3].stat", 3),
    ]
    klass, method, metric, stat = problems
    assert klass.message == (
        "class 'efusion' is not a class of the checkpoints (did you mean 'effusion'?); choose "
        "'overall', '*' or one of normal, pneumonia, covid, effusion"
    )
    assert method.message == (
        "method 'gradcam' is not computed by the job; its methods are layercam, gradcam++"
    )
    assert metric.message.startswith("metric 'ssim' is not computed by the job; its metrics")
    assert stat.message == "beyond_floor needs the noise floor, which the job does not measure"
    assert klass.sentence() == (f"policy rule 2 ({policy.rule[1].label()}): {klass.message}")
    assert not policy_problems(
        policy.model_copy(update={"rule": [policy.rule[0], policy.rule[4]]}),
        class_names=classes,
        methods=["layercam"],
        metrics=list(DEFAULT_METRICS),
        noise_floor=False,
    )
    unknown_classes = policy_problems(
        _policy(_rule(**{"class": "efusion"})),
        class_names=None,
        methods=["layercam"],
        metrics=["iou_top20"],
        noise_floor=False,
    )
    assert unknown_classes == []  # classes unknown (no baseline): nothing to check against
