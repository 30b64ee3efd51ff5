"""Study reports: rankings, Kendall tau and bootstrap order probabilities across model pairs."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
from scipy import stats as sps

from worker.results.study import STUDY_KIND, stability_direction, study_report

METHODS = ["layercam", "gradcam++"]
METRICS = ["pearson", "displacement", "entropy_change"]
N = 120
# per entry, method, metric: the true mean of the synthetic values
MEANS = {
    # pearson: the methods rank the entries in opposite orders, far apart (clear reversals)
    ("A", "layercam", "pearson"): 0.9,
    ("B", "layercam", "pearson"): 0.6,
    ("C", "layercam", "pearson"): 0.3,
    ("A", "gradcam++", "pearson"): 0.3,
    ("B", "gradcam++", "pearson"): 0.6,
    ("C", "gradcam++", "pearson"): 0.9,
    # displacement: A and B swap by a hair under heavy noise (a noisy reversal), C is far behind
    ("A", "layercam", "displacement"): 1.00,
    ("B", "layercam", "displacement"): 1.01,
    ("C", "layercam", "displacement"): 4.0,
    ("A", "gradcam++", "displacement"): 1.01,
    ("B", "gradcam++", "displacement"): 1.00,
    ("C", "gradcam++", "displacement"): 4.0,
    # entropy change: signed, ranked by mean absolute change
    ("A", "layercam", "entropy_change"): -0.5,
    ("B", "layercam", "entropy_change"): 0.1,
    ("C", "layercam", "entropy_change"): 0.3,
    ("A", "gradcam++", "entropy_change"): -0.5,
    ("B", "gradcam++", "entropy_change"): 0.1,
    ("C", "gradcam++", "entropy_change"): 0.3,
}
NOISE = {"pearson": 0.05, "displacement": 0.6, "entropy_change": 0.02}


def make_entry(
    name: str, *, fingerprint: str = "f" * 64, n: int = N, like: str | None = None
) -> dict:
    """Rows whose values, over the common samples, average exactly to ``MEANS`` (noise is
    centred there), so the point-estimate orders are known and the noise sets the confidence."""
    like = like or name
    rng = np.random.default_rng(ord(name))
    common = np.arange(n) % 10 != 9  # B's filter drops every tenth sample
    noise = {}
    for method, metric in itertools.product(METHODS, METRICS):
        z = rng.normal(0, NOISE[metric], size=n)
        noise[method, metric] = z - z[common].mean()
    rows = []
    for i in range(n):
        included = bool(common[i]) or name != "B"
        metrics = {}
        if included:
            for method in METHODS:
                metrics[method] = {
                    metric: float(MEANS[like, method, metric] + noise[method, metric][i])
                    for metric in METRICS
                }
            if i == 3 and name == "C":
                metrics["layercam"]["pearson"] = None  # undefined: left out of that column
        rows.append({"index": i, "label": i % 3, "included": included, "metrics": metrics})
    report = {
        "models": {
            "baseline": {"arch": f"arch-{name}", "phase": "tl", "sha256": name * 64},
            "candidate": {"arch": f"arch-{name}", "phase": "ft", "sha256": name.lower() * 64},
        },
        "dataset": {"fingerprint": fingerprint, "num_evaluated": n},
        "config": {"methods": METHODS, "metrics": METRICS},
    }
    return {"name": name, "job_id": None, "report": report, "rows": rows}


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    return [make_entry(name) for name in "ABC"]


@pytest.fixture(scope="module")
def study(entries) -> dict:
    return study_report(entries, n_boot=500, seed=7)


def scipy_means(entries: list[dict], method: str, metric: str) -> np.ndarray:
    """The oracle: per entry, the mean over samples included and defined in every entry."""
    columns = []
    for entry in entries:
        columns.append(
            [
                (r["metrics"].get(method) or {}).get(metric) if r["included"] else None
                for r in entry["rows"]
            ]
        )
    table = np.array([[np.nan if v is None else v for v in c] for c in columns], dtype=float)
    table = table[:, np.isfinite(table).all(axis=0)]
    if stability_direction(metric) == "abs":
        table = np.abs(table)
    return table.mean(axis=1)


def test_rankings_and_tau_equal_a_scipy_computation(entries, study) -> None:
    assert study["kind"] == STUDY_KIND and study["methods"] == METHODS
    assert study["n_common"] == N - N // 10
    assert [e["arch"] for e in study["entries"]] == ["arch-A", "arch-B", "arch-C"]
    assert study["entries"][0]["models"]["candidate"]["sha256"] == "a" * 64
    names = ["A", "B", "C"]
    for metric in METRICS:
        stable = {}
        for method in METHODS:
            means = scipy_means(entries, method, metric)
            got = study["rankings"][method][metric]
            assert [got["means"][n] for n in names] == pytest.approx(means, abs=1e-12)
            stable[method] = means if stability_direction(metric) == "higher" else -means
            expected = [names[k] for k in np.argsort(-stable[method], kind="stable")]
            assert got["ranking"] == expected
            ranks = sps.rankdata(-stable[method])
            assert [got["ranks"][n] for n in names] == list(ranks)
        tau = sps.kendalltau(
            scipy_means(entries, "layercam", metric), scipy_means(entries, "gradcam++", metric)
        )
        assert study["kendall_tau"][metric] == [
            {
                "methods": METHODS,
                "tau": pytest.approx(tau.statistic),
                "p_value": pytest.approx(tau.pvalue),
            }
        ]
    assert study["rankings"]["layercam"]["pearson"]["ranking"] == ["A", "B", "C"]
    assert study["rankings"]["gradcam++"]["pearson"]["ranking"] == ["C", "B", "A"]
    assert study["kendall_tau"]["pearson"][0]["tau"] == pytest.approx(-1.0)
    # lower displacement, lower |entropy change| = more stable
    assert study["rankings"]["layercam"]["displacement"]["ranking"][-1] == "C"
    assert study["rankings"]["layercam"]["entropy_change"]["ranking"] == ["B", "C", "A"]
    assert study["rankings"]["layercam"]["pearson"]["n"] == N - N // 10 - 1


def test_bootstrap_probabilities_are_deterministic_and_bounded(entries, study) -> None:
    again = study_report(entries, n_boot=500, seed=7)
    assert again == study
    other = study_report(entries, n_boot=500, seed=8)
    probs = []
    for method, metric in itertools.product(METHODS, METRICS):
        table = study["rankings"][method][metric]["order_probability"]
        for a, b in itertools.permutations("ABC", 2):
            p = table[a][b]
            assert 0.0 <= p <= 1.0
            assert p + table[b][a] == pytest.approx(1.0)
            probs.append(p)
    assert probs != [
        other["rankings"][m][k]["order_probability"][a][b]
        for m, k in itertools.product(METHODS, METRICS)
        for a, b in itertools.permutations("ABC", 2)
    ]
    assert study["rankings"]["layercam"]["pearson"]["order_probability"]["A"]["C"] == 1.0


def test_clear_reversal_confident_noisy_one_not(study) -> None:
    by_key = {(r["metric"], tuple(sorted(r["pair"]))): r for r in study["reversals"]}
    clear = by_key["pearson", ("A", "C")]
    assert clear["methods"] == METHODS and clear["pair"] == ["A", "C"]
    assert clear["orders"]["layercam"] == {"more_stable": "A", "probability": 1.0}
    assert clear["orders"]["gradcam++"] == {"more_stable": "C", "probability": 1.0}
    assert clear["confidence"] == 1.0 and clear["confident"]
    noisy = by_key["displacement", ("A", "B")]
    assert noisy["confidence"] < 0.9 and not noisy["confident"]
    first, second = (noisy["orders"][m]["probability"] for m in METHODS)
    assert noisy["confidence"] == min(first, second)
    # no reversal where both methods agree
    assert not any(r["metric"] == "entropy_change" for r in study["reversals"])
    assert ("displacement", ("A", "C")) not in by_key


def test_mismatched_datasets_and_sample_sets_are_refused(entries) -> None:
    with pytest.raises(ValueError, match="another dataset"):
        study_report([entries[0], make_entry("D", fingerprint="0" * 64, like="A")], n_boot=10)
    with pytest.raises(ValueError, match="another sample set"):
        study_report([entries[0], make_entry("D", n=N - 1, like="A")], n_boot=10)
    with pytest.raises(ValueError, match="at least two"):
        study_report(entries[:1], n_boot=10)
    with pytest.raises(ValueError, match="unique"):
        study_report([entries[0], entries[0]], n_boot=10)


def _write_local(folder, entry: dict) -> str:
    """A local report as ``camdrift drift`` writes it: R.json + R.samples.jsonl."""
    path = folder / f"{entry['name']}.json"
    path.write_text(json.dumps({**entry["report"], "kind": "camdrift.drift-report"}))
    with open(folder / f"{entry['name']}.samples.jsonl", "w") as fh:
        for row in entry["rows"]:
            fh.write(json.dumps(row) + "\n")
    return str(path)


def test_cli_study_writes_the_report_and_prints_the_tables(tmp_path, entries) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    paths = [_write_local(tmp_path, e) for e in entries]
    out = tmp_path / "study.json"
    args = ["study", "--out", str(out), "--n-boot", "200", "--seed", "3"]
    for path in paths:
        args += ["--report", path]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    written = json.loads(out.read_text())
    local = [{**e, "report": {**e["report"], "kind": "camdrift.drift-report"}} for e in entries]
    assert written == json.loads(json.dumps(study_report(local, n_boot=200, seed=3)))
    assert "Kendall tau" in result.output and "reversals" in result.output
    assert "-1.000" in result.output and "1.00 *" in result.output  # tau, a sure reversal

    other = make_entry("D", fingerprint="0" * 64, like="A")
    bad = CliRunner().invoke(
        app,
        [
            "study",
            "--report",
            paths[0],
            "--report",
            _write_local(tmp_path, other),
            "--out",
            str(out),
        ],
    )
    assert bad.exit_code == 2 and "another dataset" in bad.output
    missing = CliRunner().invoke(
        app, ["study", "--report", paths[0], "--report", str(tmp_path / "nope.json")]
    )
    assert missing.exit_code == 2 and "no report" in missing.output
    (tmp_path / "B.samples.jsonl").unlink()
    no_rows = CliRunner().invoke(app, ["study", "--report", paths[0], "--report", paths[1]])
    assert no_rows.exit_code == 2 and "per-sample rows" in no_rows.output


# --------------------------------------------------------------------------- replicates
# two architectures, three replicate trainings each; every replicate's mean is pinned (tiny
# sample noise), so the sample bootstrap alone is sure of every pairwise order, while the
# replicates' spread (training seeds) leaves the architectures' order uncertain
REPLICATE_MEANS = {
    ("X", "layercam"): (0.50, 0.70, 0.90),
    ("Y", "layercam"): (0.60, 0.65, 0.68),
    ("X", "gradcam++"): (0.40, 0.62, 0.75),
    ("Y", "gradcam++"): (0.66, 0.70, 0.72),
}


def make_replicate(arch: str, k: int, n: int = 200) -> dict:
    rng = np.random.default_rng(100 * ord(arch) + k)
    rows = []
    for i in range(n):
        metrics = {
            m: {"pearson": REPLICATE_MEANS[arch, m][k] + float(rng.normal(0, 1e-4))}
            for m in METHODS
        }
        rows.append({"index": i, "label": i % 3, "included": True, "metrics": metrics})
    report = {
        "models": {
            "baseline": {"arch": arch, "phase": "tl", "sha256": f"{arch}{k}" * 32},
            "candidate": {"arch": arch, "phase": "ft", "sha256": f"{arch}{k}".lower() * 32},
        },
        "dataset": {"fingerprint": "f" * 64, "num_evaluated": n},
        "config": {"methods": METHODS, "metrics": ["pearson"]},
    }
    return {"name": f"{arch}-seed{k}", "job_id": None, "report": report, "rows": rows}


def exact_group_probability(x: tuple[float, ...], y: tuple[float, ...]) -> float:
    """The oracle: P(mean of len(x) draws with replacement from x > the same from y), by
    enumerating every draw (sample noise is negligible here), ties one half."""
    means_x = [np.mean(d) for d in itertools.product(x, repeat=len(x))]
    means_y = [np.mean(d) for d in itertools.product(y, repeat=len(y))]
    wins = sum((a > b) + 0.5 * (a == b) for a in means_x for b in means_y)
    return wins / (len(means_x) * len(means_y))


def test_replicates_rank_architectures_over_seeds_not_only_samples() -> None:
    entries = [make_replicate(arch, k) for arch in "XY" for k in range(3)]
    n_boot = 4000
    document = study_report(entries, n_boot=n_boot, seed=5)
    replicates = document["replicates"]
    assert replicates["groups"] == {
        "X": ["X-seed0", "X-seed1", "X-seed2"],
        "Y": ["Y-seed0", "Y-seed1", "Y-seed2"],
    }
    for method in METHODS:
        ranking = replicates["rankings"][method]["pearson"]
        x, y = REPLICATE_MEANS["X", method], REPLICATE_MEANS["Y", method]
        assert ranking["means"]["X"] == pytest.approx(np.mean(x), abs=1e-4)
        assert ranking["means"]["Y"] == pytest.approx(np.mean(y), abs=1e-4)
        assert ranking["seed_sd"]["X"] == pytest.approx(np.std(x, ddof=1), abs=1e-4)
        assert ranking["replicates"] == {"X": 3, "Y": 3}
        want = exact_group_probability(x, y)
        got = ranking["order_probability"]["X"]["Y"]
        se = math.sqrt(want * (1 - want) / n_boot)
        assert abs(got - want) < 4 * se + 1e-3, (method, got, want)
        assert 0.1 < want < 0.9  # the seeds leave the order uncertain
        # the sample bootstrap alone is sure of every single-replicate pair
        entry_probs = document["rankings"][method]["pearson"]["order_probability"]
        assert entry_probs["X-seed2"]["Y-seed2"] in (0.0, 1.0)
    # layercam: X ahead (0.70 vs 0.643); gradcam++: Y ahead (0.59 vs 0.693)
    (reversal,) = replicates["reversals"]
    assert reversal["pair"] == ["X", "Y"] and not reversal["confident"]
    assert reversal["confidence"] == pytest.approx(
        min(
            exact_group_probability(
                REPLICATE_MEANS["X", "layercam"], REPLICATE_MEANS["Y", "layercam"]
            ),
            exact_group_probability(
                REPLICATE_MEANS["Y", "gradcam++"], REPLICATE_MEANS["X", "gradcam++"]
            ),
        ),
        abs=0.03,
    )
    # replicate by replicate, the sample bootstrap calls some reversals sure
    assert any(r["confident"] for r in document["reversals"])


def test_no_replicate_section_without_replicates(study) -> None:
    assert study["replicates"] is None


def test_cli_and_markdown_show_the_architectures_across_replicates(tmp_path) -> None:
    from typer.testing import CliRunner

    from service.cli import app
    from worker.render.markdown import render_study_markdown

    entries = [make_replicate(arch, k) for arch in "XY" for k in range(3)]
    args = ["study", "--out", str(tmp_path / "study.json"), "--n-boot", "300"]
    for entry in entries:
        args += ["--report", _write_local(tmp_path, entry)]
    result = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "across replicate trainings (X: 3; Y: 3)" in result.output
    assert "reversals between architectures" in result.output
    text = render_study_markdown(json.loads((tmp_path / "study.json").read_text()))
    assert "### Across replicate trainings (seeds and samples)" in text
    assert "X: X-seed0, X-seed1, X-seed2" in text
    sd = np.std(REPLICATE_MEANS["X", "layercam"], ddof=1)
    assert f"X (0.7 ± {sd:.3g})" in text or f"X (0.700 ± {sd:.3f})" in text, text
