"""A gate verdict as JUnit XML, for CI systems that show test reports."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from typing import Any

from worker.results.gate.evaluate import check_title, required_text

_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ufffe\uffff]")


def _scrub(element: ET.Element) -> None:
    """Drop the characters XML 1.0 cannot hold (ElementTree escapes the rest)."""
    for node in element.iter():
        node.attrib = {k: _NOT_XML.sub("", v) for k, v in node.attrib.items()}
        if node.text:
            node.text = _NOT_XML.sub("", node.text)


def junit_xml(report: dict[str, Any], verdict: dict[str, Any]) -> str:
    """One ``<testsuite name="camdrift">``: a ``min_samples`` testcase, then one testcase per
    expanded check in the verdict's order (failures first; ``classname`` = the method);
    failures say observed vs required, undecided checks are skipped with their reason."""
    suite = ET.Element("testsuite", name="camdrift")
    props = ET.SubElement(suite, "properties")
    models = report.get("models") or {}
    properties = {
        "verdict": verdict.get("verdict"),
        "reason": verdict.get("reason"),
        "min_samples": verdict.get("min_samples"),
        "n_included": verdict.get("n_included"),
        "min_class_samples": verdict.get("min_class_samples"),
        "undecided_classes": ", ".join(verdict.get("undecided_classes") or []) or None,
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
