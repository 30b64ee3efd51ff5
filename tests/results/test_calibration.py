"""Calibrated gate thresholds (worker.results.calibration): the bound equals an independent scipy
computation, the policy loads with the gate's loader, and on a synthetic null the whole policy's
false-alarm rate on held-out good runs is near its nominal alpha while a drifted run is caught.

The synthetic null: per run and per check (class x method x metric), the run's class level is
drawn on the metric's variance-stabilising scale (atanh / logit / identity) from a normal
distribution (run-to-run variation), and each included sample's value is that level plus normal
within-sample noise; the gate statistic is the class mean of those values. Checks are
independent, so with m checks at level alpha/m each the family-wise rate is exactly
1 - (1 - alpha/m)^m (just under alpha) when the transformed class mean is normal.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps

from worker.catalog import metric_info
from worker.results.calibration import (
    CalibrationError,
    Check,
    calibrate,
    ceiling_scale,
    class_means,
    policy_toml,
    supports_min_class_samples,
)
from worker.results.gate import load_policy
from worker.results.report import build_report
from worker.results.rows import RowTable, SampleRow

CLASSES = ["normal", "pneumonia", "covid", "tuberculosis", "effusion"]
METHODS = ["layercam", "gradcam++"]
# metric -> (centre on the transformed scale, run-to-run sd there, within-sample sd raw)
NULL: dict[str, tuple[float, float, float]] = {
    "pearson": (math.atanh(0.6), 0.10, 0.05),  # atanh scale
    "iou_top20": (0.0, 0.15, 0.05),  # logit scale: IoU around 0.5
    "displacement": (math.log(0.1 / 0.9), 0.15, 0.01),  # logit scale: around 0.1
    "concentration_change": (0.02, 0.01, 0.01),  # identity, signed, two-sided
}
METRICS = list(NULL)
PER_CLASS = 8
ALPHA = 0.05
M = len(CLASSES) * len(METHODS) * len(METRICS)  # 40 checks


def _inverse(metric: str, z: np.ndarray) -> np.ndarray:
    """Back from the transformed scale, written out here (not the module's)."""
    if metric_info(metric).worse.value == "abs":
        return z
    if metric_info(metric).bounds == (-1, 1):
        return np.tanh(z)
    return 1.0 / (1.0 + np.exp(-z))


def _forward(metric: str, x: np.ndarray) -> np.ndarray:
    if metric_info(metric).worse.value == "abs":
        return x
    if metric_info(metric).bounds == (-1, 1):
        return np.arctanh(x)
    return np.log(x / (1.0 - x))


def _run_values(rng: np.random.Generator, runs: int, shift: dict[Check, float] | None = None):
    """Per-sample values [runs, classes, methods, metrics, PER_CLASS] of ``runs`` good runs
    (``shift``: add this much to a check's level on the transformed scale: a drifted run)."""
    out = np.empty((runs, len(CLASSES), len(METHODS), len(METRICS), PER_CLASS))
    for j, metric in enumerate(METRICS):
        centre, run_sd, sample_sd = NULL[metric]
        z = rng.normal(centre, run_sd, size=(runs, len(CLASSES), len(METHODS)))
        for check, delta in (shift or {}).items():
            if check.metric == metric:
                z[:, CLASSES.index(check.klass), METHODS.index(check.method)] += delta
        level = _inverse(metric, z)[..., None]
        noise = rng.normal(0.0, sample_sd, size=(runs, len(CLASSES), len(METHODS), PER_CLASS))
        out[:, :, :, j, :] = level + noise
    return out


def _rows(
    values: np.ndarray, excluded: int = 0, floor: np.ndarray | None = None
) -> list[dict[str, Any]]:
    """One run's per-sample values [classes, methods, metrics, PER_CLASS] as audit rows (plus
    ``excluded`` rows per class that the sample filter left out, with wild values; ``floor``:
    the noise floor series, same shape)."""
    rows = []
    for c in range(len(CLASSES)):
        for i in range(PER_CLASS + excluded):
            keep = i < PER_CLASS
            metrics = {
                method: {
                    metric: float(values[c, a, j, i]) if keep else 0.999
                    for j, metric in enumerate(METRICS)
                }
                for a, method in enumerate(METHODS)
            }
            row = SampleRow(
                index=len(rows),
                path=f"{CLASSES[c]}/{i}.png",
                label=c,
                pred_baseline=c,
                pred_candidate=c,
                probs_baseline=tuple(float(k == c) for k in range(len(CLASSES))),
                probs_candidate=tuple(float(k == c) for k in range(len(CLASSES))),
                target_baseline=c,
                target_candidate=c,
                included=keep,
                metrics=metrics,
                degenerate={m: (False, False) for m in METHODS},
                floor=None
                if floor is None or not keep
                else {
                    method: {metric: float(floor[c, a, j, i]) for j, metric in enumerate(METRICS)}
                    for a, method in enumerate(METHODS)
                },
            )
            rows.append(row.to_dict())
    return rows


def _tables(values: np.ndarray) -> list[RowTable]:
    return [RowTable.from_rows(_rows(v)) for v in values]


def _thresholds(cal) -> list[tuple[int, int, int, str, float]]:
    """(class, method, metric indices, op, value) of every rule."""
    out = []
    for fit in cal.fits:
        ijk = (
            CLASSES.index(fit.check.klass),
            METHODS.index(fit.check.method),
            METRICS.index(fit.check.metric),
        )
        out += [(*ijk, b.op, b.value) for b in fit.bounds]
    return out


def _fails(means: np.ndarray, rules) -> np.ndarray:
    """[runs, rules] bool: the rule fails on the run's class mean (the gate's ops)."""
    out = np.zeros((means.shape[0], len(rules)), dtype=bool)
    for r, (c, a, j, op, value) in enumerate(rules):
        x = means[:, c, a, j]
        out[:, r] = x < value if op == ">=" else x > value
    return out


# --------------------------------------------------------------------------- the bound itself


def test_each_threshold_is_the_t_prediction_bound_on_its_scale() -> None:
    rng = np.random.default_rng(1)
    k = 5
    tables = _tables(_run_values(rng, k))
    cal = calibrate(tables, CLASSES, METHODS, METRICS, alpha=ALPHA)
    assert cal.m == M and cal.k == k and math.isclose(cal.level, ALPHA / M)
    assert len(cal.fits) == M
    for fit in cal.fits:
        metric = fit.check.metric
        c = CLASSES.index(fit.check.klass)
        # the oracle: class means straight from the row dicts, then scipy's t quantile
        means = []
        for table in tables:
            mask = table.included & (table.label == c)
            means.append(np.mean(table.values(fit.check.method, metric, mask=mask)))
        z = _forward(metric, np.asarray(means))
        two_sided = metric_info(metric).worse.value == "abs"
        level = ALPHA / M / (2 if two_sided else 1)
        half = sps.t.ppf(1 - level, k - 1) * z.std(ddof=1) * math.sqrt(1 + 1 / k)
        worse = metric_info(metric).worse.value
        expected = []
        if worse in ("lower", "abs"):
            expected.append((">=", _inverse(metric, np.asarray(z.mean() - half))))
        if worse in ("higher", "abs"):
            expected.append(("<=", _inverse(metric, np.asarray(z.mean() + half))))
        assert [b.op for b in fit.bounds] == [op for op, _ in expected]
        for bound, (_, value) in zip(fit.bounds, expected, strict=True):
            assert math.isclose(bound.level, level)
            assert abs(bound.value - float(value)) <= 1.01e-6  # rounded outward to 6 decimals
            # outward: never stricter than the exact bound
            assert bound.value <= value if bound.op == ">=" else bound.value >= value
        np.testing.assert_allclose(fit.values, means, rtol=0, atol=1e-12)


def test_class_means_are_the_gate_statistic_of_included_finite_values() -> None:
    rng = np.random.default_rng(2)
    values = _run_values(rng, 1)[0]
    values[1, 0, 0, :3] = np.nan  # degenerate maps: NaN, skipped by the mean
    rows = _rows(values, excluded=2)
    means = class_means(rows, CLASSES, METHODS, METRICS)
    report = build_report(
        rows,
        models={"baseline": {}, "candidate": {}},
        dataset={"class_names": CLASSES},
        config={"methods": METHODS, "metrics": METRICS, "n_boot": 10},
        samples_location=None,
    )
    for (klass, method, metric), (mean, n) in (
        (tuple(vars(c).values()), v) for c, v in means.items()
    ):
        c, a, j = CLASSES.index(klass), METHODS.index(method), METRICS.index(metric)
        finite = values[c, a, j][np.isfinite(values[c, a, j])]
        assert n == finite.size and math.isclose(mean, float(finite.mean()), rel_tol=1e-12)
        assert math.isclose(report["summaries"][method][metric][klass]["mean"], mean)


@pytest.mark.parametrize("k", [0, 1, 2])
def test_fewer_than_three_references_is_a_clear_error(k: int) -> None:
    tables = _tables(_run_values(np.random.default_rng(3), k)) if k else []
    with pytest.raises(CalibrationError, match="at least 3 reference"):
        calibrate(tables, CLASSES, METHODS, METRICS)


def test_bad_references_are_clear_errors() -> None:
    values = _run_values(np.random.default_rng(4), 3)
    with pytest.raises(CalibrationError, match="alpha must lie in"):
        calibrate(_tables(values), CLASSES, METHODS, METRICS, alpha=1.5)
    same = _tables(np.repeat(values[:1], 3, axis=0))
    with pytest.raises(CalibrationError, match=r"identical .* copies of one checkpoint"):
        calibrate(same, CLASSES, METHODS, METRICS)
    tables = _tables(values)
    tables[2] = tables[2].take(tables[2].label != CLASSES.index("covid"))
    with pytest.raises(CalibrationError, match="class 'covid' has included samples in some"):
        calibrate(tables, CLASSES, METHODS, METRICS, names=["r1", "r2", "r3"])
    nan = values.copy()
    nan[1, 2, 0, 0, :] = np.nan
    with pytest.raises(CalibrationError, match="layercam pearson, class covid: no finite"):
        calibrate(_tables(nan), CLASSES, METHODS, METRICS)
    # a class no reference includes is skipped, not an error
    dropped = [t.take(t.label != CLASSES.index("effusion")) for t in _tables(values)]
    cal = calibrate(dropped, CLASSES, METHODS, METRICS)
    assert cal.skipped_classes == ["effusion"] and cal.m == 4 * len(METHODS) * len(METRICS)


# --------------------------------------------------------------------------- the policy document


def test_policy_document_loads_with_the_gate_and_says_how_it_was_made(tmp_path) -> None:
    rng = np.random.default_rng(5)
    tables = _tables(_run_values(rng, 4))
    cal = calibrate(tables, CLASSES, METHODS, METRICS, alpha=0.1)
    ceiling = _tables(
        _run_values(rng, 1, {Check(c, a, "pearson"): -1.0 for c in CLASSES for a in METHODS})
    )[0]
    cal.ceiling = ceiling_scale(cal, ceiling, tables)
    cal.ceiling_model = {"layers": "head", "modules": ["fc"], "seed": 0}
    text = policy_toml(cal, command="camdrift calibrate --from-reports a.json b.json c.json d.json")
    path = tmp_path / "calibrated.toml"
    path.write_text(text)
    policy = load_policy(path)
    assert policy.min_samples == len(CLASSES) * PER_CLASS
    if supports_min_class_samples():
        assert policy.class_minimum() == PER_CLASS
    two_sided = len(CLASSES) * len(METHODS)  # concentration_change: both tails
    assert len(policy.rule) == M + two_sided
    seen = set()
    for rule in policy.rule:
        assert rule.stat == "mean" and rule.class_ in CLASSES and rule.method in METHODS
        assert rule.name and rule.metric in rule.name and rule.class_ in rule.name
        seen.add((rule.class_, rule.method, rule.metric, rule.op))
        worse = metric_info(rule.metric).worse.value
        assert rule.op in {"lower": (">=",), "higher": ("<=",), "abs": (">=", "<=")}[worse]
    assert len(seen) == len(policy.rule)
    for needle in (
        "alpha = 0.1",
        f"m = {M} checks",
        "K = 4 references",
        "atanh",
        "logit",
        "identity",
        "t_{3, ",
        "sqrt(1 + 1/K)",
        "made by: camdrift calibrate --from-reports a.json",
        "ceiling:",
        "floor (references)",
    ):
        assert needle in text, needle
    assert text.count("reference class means") == M


def test_ceiling_positions_on_the_floor_to_ceiling_scale() -> None:
    rng = np.random.default_rng(6)
    tables = _tables(_run_values(rng, 8))
    cal = calibrate(tables, CLASSES, METHODS, ["pearson", "displacement"])
    random_model = _run_values(rng, 1)[0]
    random_model[..., 0, :] = 0.1  # pearson falls to 0.1 everywhere
    random_model[..., 2, :] = 0.05  # displacement *smaller* than the references': no separation
    scale = ceiling_scale(cal, RowTable.from_rows(_rows(random_model)), tables)
    for fit in cal.fits:
        entry = scale[fit.check]
        assert entry.floor_source == "references" and math.isclose(entry.floor, np.mean(fit.values))
        if fit.check.metric == "pearson":
            assert entry.separable and math.isclose(entry.ceiling, 0.1)
            (position,) = entry.positions
            expected = (fit.bounds[0].value - entry.floor) / (0.1 - entry.floor)
            assert math.isclose(position, expected) and 0 < position < 1
        else:
            assert not entry.separable and entry.positions == (None,)


def test_the_noise_floor_is_the_scale_zero_when_the_references_measured_it() -> None:
    rng = np.random.default_rng(8)
    values = _run_values(rng, 8)
    floors = rng.uniform(0.9, 1.0, size=values.shape[:1] + values.shape[1:])
    floors[..., 2, :] = rng.uniform(0.0, 0.01, size=floors[..., 2, :].shape)  # displacement
    tables = [RowTable.from_rows(_rows(v, floor=f)) for v, f in zip(values, floors, strict=True)]
    cal = calibrate(tables, CLASSES, METHODS, ["pearson", "displacement"])
    random_model = _run_values(rng, 1)[0]
    random_model[..., 0, :] = 0.0
    random_model[..., 2, :] = 0.5
    scale = ceiling_scale(cal, RowTable.from_rows(_rows(random_model)), tables)
    for fit in cal.fits:
        c, a, j = (
            CLASSES.index(fit.check.klass),
            METHODS.index(fit.check.method),
            METRICS.index(fit.check.metric),
        )
        entry = scale[fit.check]
        floor = floors[:, c, a, j, :].mean(axis=-1).mean()  # per reference, then over them
        assert entry.floor_source == "noise floor" and math.isclose(entry.floor, floor)
        top = 0.0 if fit.check.metric == "pearson" else 0.5
        assert entry.separable and math.isclose(entry.ceiling, top)
        assert math.isclose(entry.positions[0], (fit.bounds[0].value - floor) / (top - floor))


def test_every_reference_passes_its_own_policy() -> None:
    """Samuelson: no reference lies more than (K-1)/sqrt(K) sample sds from the mean, less than
    t_{K-1} * sqrt(1 + 1/K) at any level below 1/2 -- a policy that failed its own references
    would be broken."""
    rng = np.random.default_rng(7)
    values = _run_values(rng, 6)
    cal = calibrate(_tables(values), CLASSES, METHODS, METRICS)
    means = values.mean(axis=-1)
    assert not _fails(means, _thresholds(cal)).any()


# --------------------------------------------------------------------------- the synthetic null

K = 8
DRAWS = 300  # calibrations, each on K fresh reference runs (as audit rows)
HELD_OUT = 2000  # good runs per calibration, never seen by it
SHIFTED = 500  # drifted runs per calibration and shift
DRIFT = Check("covid", "layercam", "pearson")
SHIFTS = (6, 8)  # the drifted class's Pearson level moves down by this many run-to-run sds


def _class_means(rng: np.random.Generator, runs: int, shift: dict[Check, float] | None = None):
    """Class means [runs, classes, methods, metrics] drawn from the null directly: the run's
    level plus the mean of PER_CLASS normal sample noises, i.e. N(0, sd^2 / PER_CLASS) -- the
    same distribution as :func:`_run_values` averaged, at an eighth of the cost."""
    out = np.empty((runs, len(CLASSES), len(METHODS), len(METRICS)))
    for j, metric in enumerate(METRICS):
        centre, run_sd, sample_sd = NULL[metric]
        z = rng.normal(centre, run_sd, size=(runs, len(CLASSES), len(METHODS)))
        for check, delta in (shift or {}).items():
            if check.metric == metric:
                z[:, CLASSES.index(check.klass), METHODS.index(check.method)] += delta
        noise = rng.normal(0.0, sample_sd / math.sqrt(PER_CLASS), size=z.shape)
        out[..., j] = _inverse(metric, z) + noise
    return out


@pytest.fixture(scope="module")
def null_study() -> dict[str, Any]:
    rng = np.random.default_rng(2024)
    per_draw, per_rule, caught, drift_rule = (
        [],
        [],
        {s: [] for s in SHIFTS},
        {s: [] for s in SHIFTS},
    )
    sd = NULL[DRIFT.metric][1]
    for _ in range(DRAWS):
        cal = calibrate(_tables(_run_values(rng, K)), CLASSES, METHODS, METRICS, alpha=ALPHA)
        rules = _thresholds(cal)
        fails = _fails(_class_means(rng, HELD_OUT), rules)
        per_draw.append(fails.any(axis=1).mean())
        per_rule.append(fails.mean(axis=0))
        where = (CLASSES.index(DRIFT.klass), METHODS.index(DRIFT.method), 0)
        target = [r[:3] for r in rules].index(where)  # pearson is METRICS[0]
        for shift in SHIFTS:
            drifted = _fails(_class_means(rng, SHIFTED, {DRIFT: -shift * sd}), rules)
            caught[shift].append(drifted.any(axis=1).mean())
            drift_rule[shift].append(drifted[:, target].mean())
    return {
        "fwer": np.asarray(per_draw),
        "per_rule": np.asarray(per_rule),
        "caught": {s: float(np.mean(v)) for s, v in caught.items()},
        "drift_rule": {s: float(np.mean(v)) for s, v in drift_rule.items()},
        "last": cal,
        "rules": rules,
    }


def test_family_wise_false_alarm_rate_is_near_alpha_on_held_out_good_runs(null_study) -> None:
    fwer = null_study["fwer"]
    rate, se = fwer.mean(), fwer.std(ddof=1) / math.sqrt(fwer.size)
    exact = 1 - (1 - ALPHA / M) ** M  # independent checks, each exactly at alpha / m
    print(f"family-wise false alarms {rate:.4f} +/- {se:.4f} (exact {exact:.4f}, alpha {ALPHA})")
    # The band: +/- alpha/4 around the exact value, about 4 Monte Carlo standard errors (most of
    # the spread is between calibrations: K = 8 references estimate s loosely). A normal
    # instead of a t quantile gives about 4 alpha, no Bonferroni about 0.9: far outside.
    assert se < 0.004
    assert exact - ALPHA / 4 < rate < exact + ALPHA / 4


def test_each_rule_alone_false_alarms_at_its_level(null_study) -> None:
    """Each one-sided rule's rate over its level (alpha/m, alpha/2m per tail of a signed
    change), pooled over the rules: 1 when the bound is exact. Heavy-tailed between
    calibrations (a small s_K makes a rule fire often), hence the band of +/- 0.3."""
    tails = [metric_info(METRICS[j]).worse.value == "abs" for _, _, j, _, _ in null_study["rules"]]
    levels = np.asarray([ALPHA / M / (2 if two else 1) for two in tails])
    ratio = (null_study["per_rule"] / levels).mean(axis=1)  # per calibration, pooled over rules
    mean, se = ratio.mean(), ratio.std(ddof=1) / math.sqrt(ratio.size)
    print(f"per-rule false alarms / level {mean:.3f} +/- {se:.3f}")
    assert 0.7 < mean < 1.3


def test_a_drifted_run_is_caught_as_often_as_the_noncentral_t_predicts(null_study) -> None:
    """The drifted check fails when z_new + shift < mean_K - q * s_K * sqrt(1 + 1/K), i.e. when a
    noncentral t (K - 1 df, noncentrality shift / (sd * sqrt(1 + 1/K))) exceeds q; sd is the
    class mean's total sd on the atanh scale (run-to-run plus within-sample, delta method)."""
    run_sd, sample_sd = NULL[DRIFT.metric][1:]
    r = math.tanh(NULL[DRIFT.metric][0])
    sd = math.hypot(run_sd, sample_sd / math.sqrt(PER_CLASS) / (1 - r * r))
    q = sps.t.ppf(1 - ALPHA / M, K - 1)
    for shift in SHIFTS:
        power = sps.nct.sf(q, K - 1, shift * run_sd / (sd * math.sqrt(1 + 1 / K)))
        got, caught = null_study["drift_rule"][shift], null_study["caught"][shift]
        print(f"shift {shift} sd: rule fails {got:.3f} (nct {power:.3f}), caught {caught:.3f}")
        assert abs(got - power) < 0.04
        assert caught >= got
    assert null_study["caught"][8] > 0.9
