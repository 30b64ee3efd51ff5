"""Per-class noise-floor shares and the gate rules that read them, on data where every class
has a different share (so a per-class value can never coincide with the overall one); and the
``min_samples`` boundary: exactly ``min_samples`` included samples are decided."""

from __future__ import annotations

import numpy as np
import pytest

from training.phantoms import CLASSES
from worker.results.gate import Policy, evaluate_policy
from worker.results.report import build_report, noise_floor

NAMES = list(CLASSES)
METHOD = "layercam"
# the drift axis of each metric, written out here (the oracle's own table):
# similarity -> lower is drift (floor's 5% quantile), distance -> higher (95%), change -> |x| (95%)
AXIS = {"pearson": "lower", "iou_top20": "lower", "displacement": "higher"}
AXIS["concentration_change"] = "abs"
METRICS = list(AXIS)
# per class, the fraction of samples whose drift is pushed far beyond the floor
PUSHED = {"normal": 0.8, "pneumonia": 0.5, "covid": 0.0, "tuberculosis": 0.25, "effusion": 0.1}
PER_CLASS = 20
SPREAD = {"lower": (0.9, 0.02), "higher": (0.02, 0.005), "abs": (0.0, 0.01)}


def _rows(seed: int = 0) -> list[dict]:
    """Rows with a floor and a drift per metric; drift of class c is noise-like except for a
    ``PUSHED[c]`` share pushed beyond the floor; one NaN drift value in every class."""
    rng = np.random.default_rng(seed)
    rows = []
    index = 0
    for label, name in enumerate(NAMES):
        pushed = round(PUSHED[name] * PER_CLASS)
        for k in range(PER_CLASS):
            floor, metrics = {}, {}
            for metric, axis in AXIS.items():
                centre, spread = SPREAD[axis]
                f = float(rng.normal(centre, spread))
                d = float(rng.normal(centre, spread * 0.3))  # well inside the floor
                if k < pushed:
                    d = {"lower": 0.2, "higher": 0.4}.get(axis, 0.5 * (-1) ** k)
                if k == PER_CLASS - 1:
                    d = None  # undefined drift (a degenerate map): not a sample of the share
                floor[metric], metrics[metric] = f, d
            probs = [0.0] * len(NAMES)
            probs[label] = 1.0
            rows.append(
                {
                    "index": index,
                    "path": f"{name}/{k}.png",
                    "label": label,
                    "pred_baseline": label,
                    "pred_candidate": label,
                    "probs_baseline": probs,
                    "probs_candidate": probs,
                    "target_baseline": label,
                    "target_candidate": label,
                    "included": True,
                    "metrics": {METHOD: metrics},
                    "degenerate": {METHOD: [False, False]},
                    "floor": {METHOD: floor},
                }
            )
            index += 1
    return rows


def _oracle_shares(rows: list[dict], metric: str) -> tuple[float, float, dict]:
    """(threshold, overall share, per-class shares) by plain numpy."""
    axis = AXIS[metric]
    floor = np.array([r["floor"][METHOD][metric] for r in rows], dtype=float)
    drift = np.array(
        [np.nan if (v := r["metrics"][METHOD][metric]) is None else v for r in rows], dtype=float
    )
    labels = np.array([r["label"] for r in rows])
    if axis == "lower":
        threshold = np.quantile(floor, 0.05)
        hit = drift < threshold
    else:
        magnitude = np.abs if axis == "abs" else (lambda x: x)
        threshold = np.quantile(magnitude(floor), 0.95)
        hit = magnitude(drift) > threshold
    ok = ~np.isnan(drift)
    per_class = {}
    for k, name in enumerate(NAMES):
        mine = ok & (labels == k)
        per_class[name] = float(hit[mine].sum() / mine.sum()) if mine.any() else None
    return float(threshold), float(hit[ok].sum() / ok.sum()), per_class


def test_the_data_gives_every_class_its_own_share() -> None:
    """Guard: per-class shares all differ from each other and from the overall share."""
    rows = _rows()
    for metric in METRICS:
        _, overall, per_class = _oracle_shares(rows, metric)
        values = list(per_class.values())
        assert len(set(values)) == len(values), (metric, per_class)
        assert all(abs(v - overall) > 0.05 for v in values), (metric, overall, per_class)


@pytest.mark.parametrize("metric", METRICS)
def test_noise_floor_shares_per_class_match_a_numpy_oracle(metric: str) -> None:
    rows = _rows()
    got = noise_floor(rows, [METHOD], METRICS, NAMES, n_boot=50, seed=0)[METHOD][metric]
    threshold, overall, per_class = _oracle_shares(rows, metric)
    assert got["direction"] == AXIS[metric]
    assert got["threshold"] == pytest.approx(threshold, rel=1e-12, abs=1e-15)
    assert got["beyond_floor"] == pytest.approx(overall, abs=1e-12)
    assert set(got["beyond_floor_per_class"]) == set(NAMES)
    for name in NAMES:
        assert got["beyond_floor_per_class"][name] == pytest.approx(per_class[name], abs=1e-12), (
            name
        )


def test_a_class_without_rows_has_no_share() -> None:
    rows = [r for r in _rows() if r["label"] != NAMES.index("covid")]
    got = noise_floor(rows, [METHOD], ["pearson"], NAMES, n_boot=20, seed=0)[METHOD]["pearson"]
    assert got["beyond_floor_per_class"]["covid"] is None
    _, _, per_class = _oracle_shares(rows, "pearson")
    assert got["beyond_floor_per_class"]["normal"] == pytest.approx(per_class["normal"])


# --------------------------------------------------------------------------- the gate


def _report(rows: list[dict]) -> dict:
    return build_report(
        rows,
        models={"baseline": {"arch": "tinycnn"}, "candidate": {"arch": "tinycnn"}},
        dataset={"class_names": NAMES, "fingerprint": "f" * 64},
        config={"methods": [METHOD], "metrics": METRICS, "seed": 0, "n_boot": 50},
        samples_location=None,
    )


def _rule(**kw) -> dict:
    rule = {"method": METHOD, "metric": "pearson", "stat": "beyond_floor", "op": "<=", "value": 0.3}
    rule.update(kw)
    return rule


def _policy(*rules: dict, min_samples: int = 0, min_class_samples: int | None = None) -> Policy:
    doc = {"min_samples": min_samples, "rule": list(rules)}
    if min_class_samples is not None:
        doc["min_class_samples"] = min_class_samples
    return Policy.model_validate(doc)


def test_beyond_floor_rules_read_the_class_share_from_a_built_report() -> None:
    """The overall share (~0.3) passes '<= 0.35'; per class, only the classes whose own share
    exceeds 0.35 (normal, pneumonia) fail, on every metric."""
    rows = _rows()
    report = _report(rows)
    for metric in METRICS:
        _, overall, per_class = _oracle_shares(rows, metric)
        limit = 0.35
        assert overall <= limit
        result = evaluate_policy(
            report,
            _policy(
                _rule(metric=metric, value=limit),
                _rule(metric=metric, value=limit, **{"class": "*"}),
                *(_rule(metric=metric, value=limit, **{"class": n}) for n in NAMES),
            ),
        )
        checks = result["rules"]
        assert len(checks) == 1 + 2 * len(NAMES)
        for check in checks:
            want = overall if check["class"] == "overall" else per_class[check["class"]]
            assert check["observed"] == pytest.approx(want, abs=1e-12), (metric, check)
            assert check["passed"] is (want <= limit), (metric, check)
        assert result["verdict"] == "fail"
        failed = {c["class"] for c in checks if c["passed"] is False}
        assert failed == {n for n in NAMES if per_class[n] > limit} == {"normal", "pneumonia"}


def _hand_report(included: int, shares: dict[str, float] | None = None) -> dict:
    """A minimal report: one method x metric, summaries per class, a noise floor with the
    given per-class shares (overall 0.2, distinct from every class)."""
    shares = shares or {"normal": 0.9, "pneumonia": 0.05, "covid": 0.0, "tuberculosis": 0.4}
    shares = {**dict.fromkeys(NAMES, 0.1), **shares}
    summary = {"n": 10, "n_nan": 0, "mean": 0.8, "median": 0.8, "q05": 0.6, "q95": 0.95}
    summary.update({"ci95_low": 0.75, "ci95_high": 0.85, "std": 0.1})
    return {
        "dataset": {"class_names": NAMES},
        "config": {"methods": [METHOD], "metrics": ["pearson"]},
        "subsets": {
            "included": included,
            "per_class": {n: {"evaluated": 10, "included": 10} for n in NAMES},
        },
        "summaries": {METHOD: {"pearson": {"overall": summary, **dict.fromkeys(NAMES, summary)}}},
        "noise_floor": {
            METHOD: {
                "pearson": {
                    "direction": "lower",
                    "threshold": 0.7,
                    "beyond_floor": 0.2,
                    "beyond_floor_per_class": shares,
                }
            }
        },
    }


@pytest.mark.parametrize(
    ("klass", "observed", "passed"),
    [
        ("overall", 0.2, True),
        ("normal", 0.9, False),
        ("pneumonia", 0.05, True),
        ("tuberculosis", 0.4, False),
        ("effusion", 0.1, True),
    ],
)
def test_a_named_class_rule_reads_that_class_share(klass: str, observed: float, passed) -> None:
    result = evaluate_policy(_hand_report(100), _policy(_rule(**{"class": klass})))
    (check,) = result["rules"]
    assert check["class"] == klass
    assert check["observed"] == pytest.approx(observed)
    assert check["passed"] is passed
    assert result["verdict"] == ("pass" if passed else "fail")


def test_an_every_class_rule_reads_each_class_share() -> None:
    report = _hand_report(100)
    result = evaluate_policy(report, _policy(_rule(**{"class": "*"})))
    shares = report["noise_floor"][METHOD]["pearson"]["beyond_floor_per_class"]
    observed = {c["class"]: c["observed"] for c in result["rules"]}
    assert observed == pytest.approx(shares)
    assert {c["class"] for c in result["rules"] if c["passed"] is False} == {
        "normal",
        "tuberculosis",
    }
    # and the overall share alone would have passed: the per-class reading is what fails
    assert evaluate_policy(report, _policy(_rule()))["verdict"] == "pass"


# --------------------------------------------------------------------------- min_samples


@pytest.mark.parametrize(
    ("included", "min_samples", "verdict"),
    [
        (30, 30, "pass"),  # exactly min_samples: decided
        (29, 30, "inconclusive"),
        (31, 30, "pass"),
        (0, 0, "pass"),
        (1, 1, "pass"),
    ],
)
def test_exactly_min_samples_is_decided(included: int, min_samples: int, verdict: str) -> None:
    passing = _rule(**{"class": "pneumonia"})  # 10 included samples in the class
    policy = _policy(passing, min_samples=min_samples, min_class_samples=10)
    result = evaluate_policy(_hand_report(included), policy)
    assert result["n_included"] == included
    assert result["verdict"] == verdict, result["reason"]


def test_exactly_min_samples_with_a_failing_check_fails() -> None:
    failing = _rule(**{"class": "normal"})
    policy = _policy(failing, min_samples=30, min_class_samples=10)
    assert evaluate_policy(_hand_report(30), policy)["verdict"] == "fail"
    assert evaluate_policy(_hand_report(29), policy)["verdict"] == "inconclusive"


@pytest.mark.parametrize(
    ("class_minimum", "verdict"),
    [(10, "fail"), (11, "inconclusive"), (None, "inconclusive")],  # None: min_samples (30)
)
def test_exactly_min_class_samples_is_decided(class_minimum: int | None, verdict: str) -> None:
    """Each class holds 10 included samples: a class minimum of 10 decides its checks, 11
    leaves them undecided, and without one the policy's min_samples applies per class."""
    failing = _rule(**{"class": "*"})
    policy = _policy(failing, min_samples=30, min_class_samples=class_minimum)
    result = evaluate_policy(_hand_report(50), policy)
    assert result["verdict"] == verdict, result["reason"]
    undecided = [] if verdict == "fail" else NAMES
    assert result["undecided_classes"] == undecided
    assert all(c["observed"] is not None and c["n"] == 10 for c in result["rules"])


def test_a_candidate_that_is_the_replica_lies_within_its_replica_floor(tmp_path) -> None:
    """A real audit (tiny checkpoints) whose candidate is also its replica: drift and replica
    floor are the same values sample by sample, so at most the floor's 5% tail lies beyond
    (the exact form of the replica check in tests/test_shortcut_scenario.py)."""
    from tests.builders import tiny_audit_inputs
    from worker.engine.audit import AuditConfig
    from worker.runtime.local_run import run_audit

    world = tiny_audit_inputs(tmp_path, per_class=4, size=32)
    cfg = AuditConfig(
        seed=0, sample_filter="all", split=None, device="cpu", metrics=["pearson"], n_boot=200
    )
    report = run_audit(
        world / "tl.safetensors",
        world / "ft.safetensors",
        world / "data",
        cfg,
        tmp_path / "r.json",
        replica=world / "ft.safetensors",
    )
    for method, named in report["replica_floor"].items():
        entry, drift = named["pearson"], report["summaries"][method]["pearson"]["overall"]
        assert entry["floor"]["n"] == drift["n"] == 20
        for stat in ("mean", "q05", "median"):
            assert entry["floor"][stat] == pytest.approx(drift[stat], abs=1e-9), (method, stat)
        assert entry["beyond_floor"] <= 0.05 + 1.0 / drift["n"], method
