"""bench/paper_study.py end to end in ``--quick`` mode: every cell of the paper-style table is
there, finite and in its metric's range, and agrees with the per-sample rows it came from."""

from __future__ import annotations

import itertools
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from bench.paper_study import METHODS, SMALL_ARCHS, TABLE_METRICS, main

RANGES = {
    "iou_top20": (0.0, 1.0),
    "pearson": (-1.0, 1.0),
    "displacement": (0.0, 1.0),
    "concentration_change": (-1.0, 1.0),
}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> tuple[Path, dict[str, Any]]:
    out = tmp_path_factory.mktemp("paper-study")
    return out, main(["--quick", "--out", str(out)])


def test_table_has_every_arch_x_method_with_finite_numbers_in_range(study) -> None:
    _, doc = study
    rows = doc["rows"]
    assert [(r["arch"], r["method"]) for r in rows] == list(itertools.product(SMALL_ARCHS, METHODS))
    assert {r["family"] for r in rows} == {"DenseNet201", "ResNet50V2", "InceptionV3"}
    for row in rows:
        assert row["n"] > 0
        assert list(row["metrics"]) == list(TABLE_METRICS)
        for metric, cell in row["metrics"].items():
            lo, hi = RANGES[metric]
            for key in ("mean", "ci95_low", "ci95_high", "noise_floor_mean", "replica_floor_mean"):
                assert _finite(cell[key]), (row["arch"], row["method"], metric, key)
                assert lo - 1e-9 <= cell[key] <= hi + 1e-9, (metric, key, cell[key])
            assert cell["ci95_low"] <= cell["mean"] <= cell["ci95_high"]
            for key in ("beyond_noise_floor", "beyond_replica_floor"):
                assert 0.0 <= cell[key] <= 1.0


def test_table_means_are_the_per_sample_rows_means(study) -> None:
    """Recomputed from each report's ``.samples.jsonl``, not read back from the summary."""
    _, doc = study
    for row in doc["rows"]:
        path = Path(doc["archs"][row["arch"]]["report"])
        samples = [
            json.loads(line)
            for line in path.with_name(path.stem + ".samples.jsonl").read_text().splitlines()
        ]
        included = [s for s in samples if s["included"]]
        assert len(included) == row["n"]
        for metric, cell in row["metrics"].items():
            values = np.array([s["metrics"][row["method"]][metric] for s in included], float)
            assert cell["mean"] == pytest.approx(np.nanmean(values), abs=1e-9)


def test_training_aucs_and_timings(study) -> None:
    _, doc = study
    for arch in SMALL_ARCHS:
        info = doc["archs"][arch]
        for key in ("tl_test", "ft_test", "replica_tl_test"):
            assert 0.0 <= info[key]["macro_auc"] <= 1.0
            assert info[key]["n"] > 0
        assert 0.0 <= info["pretrain_test_macro_auc"] <= 1.0
    stages = doc["timings"]["stages"]
    for arch in SMALL_ARCHS:
        assert sum(name.startswith(f"{arch}: ") for name in stages) == 4
    assert all(sec >= 0 for sec in stages.values())
    assert doc["timings"]["total"] >= sum(stages.values()) - 0.5


def test_ranking_kendall_tau_and_reversals_are_consistent(study) -> None:
    _, doc = study
    s = doc["study"]
    assert s["methods"] == list(METHODS)
    assert s["n_common"] == doc["rows"][0]["n"] > 0  # sample filter "all": every test image
    for method, metric in itertools.product(METHODS, TABLE_METRICS):
        r = s["rankings"][method][metric]
        assert sorted(r["ranking"]) == sorted(SMALL_ARCHS)
        for a, b in itertools.permutations(SMALL_ARCHS, 2):
            p, q = r["order_probability"][a][b], r["order_probability"][b][a]
            assert 0.0 <= p <= 1.0
            assert p + q == pytest.approx(1.0)
    for metric in TABLE_METRICS:
        (tau,) = s["kendall_tau"][metric]
        assert -1.0 <= tau["tau"] <= 1.0
        orders = [s["rankings"][m][metric]["ranking"] for m in METHODS]
        assert (tau["tau"] == pytest.approx(1.0)) == (orders[0] == orders[1])
    for rev in s["reversals"]:
        first, second = (rev["orders"][m]["more_stable"] for m in rev["methods"])
        assert first != second and {first, second} == set(rev["pair"])
        assert 0.0 <= rev["confidence"] <= 1.0


def test_markdown_and_json_are_written(study) -> None:
    out, doc = study
    assert json.loads((out / "paper_study.json").read_text()) == json.loads(json.dumps(doc))
    assert json.loads((out / "study.json").read_text())["kind"] == "camdrift.study-report"
    md = (out / "paper_study.md").read_text()
    for name in (*TABLE_METRICS.values(), "AUC TL", "AUC FT", "Kendall τ", "**total**"):
        assert name in md
    lines = md.splitlines()
    for arch, method in itertools.product(SMALL_ARCHS, METHODS):
        # one row in the drift table and one in the floor table
        assert sum(ln.startswith(f"| {arch}") and f"| {method} |" in ln for ln in lines) == 2
    for arch in SMALL_ARCHS:
        assert (out / "reports" / f"{arch}.md").read_text().startswith("## camdrift drift report")


def test_parallel_jobs_give_the_sequential_numbers(study, tmp_path) -> None:
    """``--jobs 2`` (spawned worker processes) trains and audits exactly what one process does."""
    _, doc = study
    archs = SMALL_ARCHS[1:]
    parallel = main(["--quick", "--jobs", "2", "--archs", ",".join(archs), "--out", str(tmp_path)])
    assert parallel["settings"]["jobs"] == 2
    sequential = [r for r in doc["rows"] if r["arch"] in archs]
    assert len(parallel["rows"]) == len(sequential) == 4
    for got, want in zip(parallel["rows"], sequential, strict=True):
        assert (got["arch"], got["method"], got["n"]) == (want["arch"], want["method"], want["n"])
        for metric, cell in want["metrics"].items():
            assert got["metrics"][metric]["mean"] == pytest.approx(cell["mean"], abs=1e-6)
    for arch in archs:
        assert parallel["archs"][arch]["ft_test"] == doc["archs"][arch]["ft_test"]
        assert sum(name.startswith(f"{arch}: ") for name in parallel["timings"]["stages"]) == 4
