"""``POST /drift-calibrations``: a policy calibrated on K stored reference jobs, equal to the
t prediction bounds computed here with scipy, usable as a job's policy, and clear 422s.

Runs on a migrated SQLite file and on a fresh, migrated Postgres database (the ``postgres``
cases skip when Postgres is away, and fail under CI).
"""

from __future__ import annotations

import math
import tomllib

import numpy as np
import pytest
from scipy import stats as sps

from tests.service.conftest import assert_problem
from tests.service.test_studies_api import _job, client  # noqa: F401  (the fixture)
from worker.results.gate import parse_policy

CLASSES = ["normal", "pneumonia", "covid", "tuberculosis", "effusion"]  # the checkpoints'
METHODS = ["layercam", "gradcam++"]
METRICS = ["pearson", "displacement"]
N = 100
K = 4
ALPHA = 0.1


def reference(seed: int, *, audit_seed: int = 0, baseline: str = "b" * 64) -> dict:
    """One reference audit: per class a different mean, per run a random shift (the run-to-run
    spread the calibration estimates), per sample noise."""
    rng = np.random.default_rng(seed)
    shift = rng.normal(0, 0.05, size=(len(METHODS), len(METRICS)))
    rows = []
    for i in range(N):
        label = i % len(CLASSES)
        metrics = {
            method: {
                "pearson": float(
                    np.clip(0.8 - 0.15 * label + shift[m, 0] + rng.normal(0, 0.05), -1, 1)
                ),
                "displacement": float(abs(0.05 + 0.03 * label + shift[m, 1] + rng.normal(0, 0.01))),
            }
            for m, method in enumerate(METHODS)
        }
        rows.append({"index": i, "label": label, "included": True, "metrics": metrics})
    report = {
        "models": {
            "baseline": {"arch": "tinycnn", "phase": "tl", "sha256": baseline},
            "candidate": {"arch": "tinycnn", "phase": "ft", "sha256": f"{seed:064d}"},
        },
        "dataset": {
            "source": "upload",
            "fingerprint": "f" * 64,
            "num_evaluated": N,
            "class_names": CLASSES,
            "split": None,
            "analysis_size": [8, 8],
        },
        "config": {
            "methods": METHODS,
            "metrics": METRICS,
            "sample_filter": "all",
            "split": None,
            "max_samples": None,
            "seed": audit_seed,
        },
    }
    return {"name": f"ref-{seed}", "job_id": None, "report": report, "rows": rows}


@pytest.fixture
def references(world, db) -> tuple[list[str], list[dict]]:
    entries = [reference(seed) for seed in range(K)]
    return [_job(world, db, e, world.candidate) for e in entries], entries


def expected_bound(entries: list[dict], method: str, metric: str, klass: int, m: int) -> float:
    """The oracle: the class means straight from the rows, the one-sided t prediction bound
    for one new run at alpha / m on the metric's scale (atanh for pearson, logit for
    displacement in (0, 1)), back-transformed."""
    means = np.array(
        [
            np.mean([r["metrics"][method][metric] for r in e["rows"] if r["label"] == klass])
            for e in entries
        ]
    )
    z = np.arctanh(means) if metric == "pearson" else np.log(means / (1 - means))
    half = sps.t.ppf(1 - ALPHA / m, K - 1) * z.std(ddof=1) * math.sqrt(1 + 1 / K)
    if metric == "pearson":
        return float(np.tanh(z.mean() - half))
    return float(1 / (1 + np.exp(-(z.mean() + half))))


def test_the_policy_is_the_t_prediction_bound_of_the_stored_references(world, references) -> None:
    ids, entries = references
    response = world.client.post("/drift-calibrations", json={"job_ids": ids, "alpha": ALPHA})
    assert response.status_code == 200, response.text
    out = response.json()
    m = len(CLASSES) * len(METHODS) * len(METRICS)
    assert (out["k"], out["m"], out["job_ids"]) == (K, m, ids)
    assert out["level"] == pytest.approx(ALPHA / m)
    assert out["min_samples"] == N and out["min_class_samples"] == N // len(CLASSES)
    assert tomllib.loads(out["policy_toml"]) == out["policy"]
    rules = out["policy"]["rule"]
    assert len(rules) == m
    seen = 0
    for rule in rules:
        want = expected_bound(
            entries, rule["method"], rule["metric"], CLASSES.index(rule["class"]), m
        )
        assert rule["op"] == (">=" if rule["metric"] == "pearson" else "<=")
        assert rule["value"] == pytest.approx(want, abs=1.01e-6), rule
        seen += 1
    assert seen == m
    assert parse_policy(out["policy_toml"]).rule  # the gate reads the file

    toml = world.client.post(
        "/drift-calibrations", params={"format": "toml"}, json={"job_ids": ids, "alpha": ALPHA}
    )
    assert toml.status_code == 200 and toml.headers["content-type"].startswith("application/toml")
    assert toml.text == out["policy_toml"]

    # the policy goes straight into a job body
    job = world.client.post("/drift-jobs", json=world.job_body(policy=out["policy"]))
    assert job.status_code == 202, job.text


def test_bad_calibration_requests_name_the_field(world, db, references) -> None:
    ids, _ = references
    url = "/drift-calibrations"
    assert_problem(world.client.post(url, json={"job_ids": ids[:2]}), 422, "body.job_ids")
    twice = world.client.post(url, json={"job_ids": [ids[0], ids[1], ids[0]]})
    assert_problem(twice, 422, "body.job_ids[2]")
    assert "listed twice" in twice.text
    assert_problem(
        world.client.post(url, json={"job_ids": [*ids[:2], "0" * 32]}), 422, "body.job_ids[2]"
    )
    queued = _job(world, db, None, world.candidate, status="queued")
    response = world.client.post(url, json={"job_ids": [*ids[:2], queued]})
    assert_problem(response, 422, "body.job_ids[2]")
    assert "not succeeded" in response.text
    other = _job(world, db, reference(9, audit_seed=3), world.candidate)
    response = world.client.post(url, json={"job_ids": [*ids, other]})
    assert_problem(response, 422, f"body.job_ids[{K}]")
    assert "seed 3" in response.text and "differs" in response.text
    moved = _job(world, db, reference(10, baseline="c" * 64), world.candidate)
    assert_problem(
        world.client.post(url, json={"job_ids": [*ids, moved]}), 422, f"body.job_ids[{K}]"
    )
    response = world.client.post(url, json={"job_ids": ids, "metrics": ["iou_top20"]})
    assert_problem(response, 422, "body.metrics")
    assert "computed no 'iou_top20'" in response.text
    assert_problem(
        world.client.post(url, json={"job_ids": ids, "metrics": ["nope"]}), 422, "body.metrics[0]"
    )
    assert_problem(world.client.post(url, json={"job_ids": ids, "alpha": 1.5}), 422, "body.alpha")
    assert_problem(
        world.client.post(url, json={"job_ids": ids, "ceiling_job_id": moved}),
        422,
        "body.ceiling_job_id",
    )
