"""Typed sample rows (SampleRow) and their columnar table (RowTable)."""

from __future__ import annotations

import copy
import dataclasses
import json

import numpy as np
import pytest

from worker.results.report import build_report, noise_floor, subset_counts
from worker.results.rows import RowTable, SampleRow
from worker.results.trajectory import trajectory_section

METHODS = ["gradcam", "layercam"]
METRICS = ["pearson", "iou_top20", "displacement"]
NAMES = ["a", "b", "c"]


def _base(index: int, label: int, included: bool) -> dict:
    return {
        "index": index,
        "path": f"c{label}/s{index}.png",
        "label": label,
        "pred_baseline": label,
        "pred_candidate": (label + index) % 3,
        "probs_baseline": [0.7, 0.2, 0.1],
        "probs_candidate": [0.1, 0.3, 0.6],
        "target_baseline": label,
        "target_candidate": label,
        "included": included,
        "metrics": {},
        "degenerate": {},
    }


def _named(rng: np.random.Generator, none_at: float = 0.2) -> dict:
    return {
        m: {k: None if rng.random() < none_at else float(rng.normal()) for k in METRICS}
        for m in METHODS
    }


def audit_like_rows(n: int = 30, *, floors: bool, steps: int = 0, seed: int = 0) -> list[dict]:
    """Rows shaped as an audit writes them (key order included): excluded samples carry no
    metrics; included ones drift, floors and trajectory drift, with None values."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in rng.permutation(n):
        label = int(rng.integers(0, 3))
        row = _base(int(i), label, bool(rng.random() < 0.7))
        if steps:
            row["probs_trajectory"] = [
                [round(float(p), 6) for p in rng.dirichlet(np.ones(3))] for _ in range(steps - 1)
            ]
        if row["included"]:
            row["metrics"] = _named(rng)
            row["degenerate"] = {m: [bool(rng.random() < 0.3), False] for m in METHODS}
            if floors:
                row["replica_floor"] = _named(rng)
            if steps:
                row["trajectory"] = {
                    m: {
                        kind: [_named(rng)[m] for _ in range(steps)]
                        for kind in ("from_first", "consecutive")
                    }
                    for m in METHODS
                }
            if floors:
                row["floor"] = _named(rng)
        rows.append(row)
    return rows


@pytest.mark.parametrize(
    ("floors", "steps"), [(False, 0), (True, 0), (False, 3), (True, 4), (True, 1)]
)
def test_sample_row_round_trips_the_dict_exactly(floors: bool, steps: int) -> None:
    rows = audit_like_rows(floors=floors, steps=steps)
    assert any(not r["included"] for r in rows) and any(r["included"] for r in rows)
    for row in rows:
        typed = SampleRow.from_dict(row)
        back = typed.to_dict()
        assert back == row
        assert json.dumps(back) == json.dumps(row)  # key order too, at every level
        assert SampleRow.from_dict(json.loads(json.dumps(back))) == typed


def test_sample_row_keeps_the_key_order_it_read_and_defaults_to_the_audits() -> None:
    row = next(r for r in audit_like_rows(floors=True, steps=2) if r["included"])
    # the SQL loader's order: floor before replica_floor before trajectory
    sql = {k: row[k] for k in row if k not in ("replica_floor", "trajectory", "floor")}
    sql.update(floor=row["floor"], replica_floor=row["replica_floor"], trajectory=row["trajectory"])
    assert list(SampleRow.from_dict(sql).to_dict()) == list(sql)
    built = dataclasses.replace(SampleRow.from_dict(sql), key_order=None)
    assert list(built.to_dict()) == list(row)  # the audit's order


def test_sample_row_refuses_a_dict_that_is_not_a_row() -> None:
    row = _base(0, 1, False)
    with pytest.raises(ValueError, match="missing"):
        SampleRow.from_dict({k: v for k, v in row.items() if k != "label"})
    with pytest.raises(ValueError, match="unknown"):
        SampleRow.from_dict({**row, "extra": 1})


def test_sample_row_does_not_share_state_with_its_dict() -> None:
    row = next(r for r in audit_like_rows(floors=True) if r["included"])
    typed = SampleRow.from_dict(row)
    out = typed.to_dict()
    out["metrics"]["gradcam"]["pearson"] = 123.0
    row["metrics"]["gradcam"]["pearson"] = 456.0
    assert typed.metrics["gradcam"]["pearson"] not in (123.0, 456.0)


def _column(rows: list[dict], method: str, metric: str, key: str = "metrics") -> np.ndarray:
    values = [((r.get(key) or {}).get(method) or {}).get(metric) for r in rows]
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def test_table_columns_equal_the_rows() -> None:
    rows = audit_like_rows(floors=True, steps=3)
    table = RowTable.from_rows(rows)
    ordered = sorted(rows, key=lambda r: r["index"])
    assert table.index.tolist() == [r["index"] for r in ordered]
    for name in ("label", "pred_baseline", "pred_candidate", "target_baseline", "included"):
        assert getattr(table, name).tolist() == [r[name] for r in ordered], name
    assert table.included.dtype == bool
    np.testing.assert_array_equal(table.probs_baseline, [r["probs_baseline"] for r in ordered])
    assert table.probs_trajectory.shape == (2, len(rows), 3)
    np.testing.assert_array_equal(
        table.probs_trajectory[1], [r["probs_trajectory"][1] for r in ordered]
    )
    assert table.has("drift") and table.has("floor") and table.has("replica_floor")
    assert table.has("from_first") and table.has("trajectory")
    inc = table.included
    for method in METHODS:
        np.testing.assert_array_equal(
            table.flags(method, inc),
            [r["degenerate"][method] for r in ordered if r["included"]],
        )
        for metric in METRICS:
            for series, key in (("drift", "metrics"), ("floor", "floor")):
                got = table.values(method, metric, series=series)
                np.testing.assert_array_equal(got, _column(ordered, method, metric, key))
                assert np.isnan(got[~inc]).all()
            for kind in ("from_first", "consecutive"):
                for step in range(3):
                    want = [
                        r["trajectory"][method][kind][step][metric]
                        for r in ordered
                        if r["included"]
                    ]
                    want = np.array([np.nan if v is None else v for v in want], dtype=float)
                    got = table.values(method, metric, kind, step, mask=inc)
                    np.testing.assert_array_equal(got, want)
                assert np.isnan(table.values(method, metric, kind, 3)).all()
    # an unknown method or metric reads NaN; values are copies
    assert np.isnan(table.values("nope", "pearson")).all()
    table.values("gradcam", "pearson")[:] = 7.0
    assert not (table.values("gradcam", "pearson") == 7.0).any()
    with pytest.raises(ValueError, match="step"):
        table.values("gradcam", "pearson", "consecutive")


def test_table_without_floors_or_trajectories() -> None:
    rows = audit_like_rows(floors=False)
    table = RowTable.from_rows(rows)
    assert not table.has("floor") and not table.has("replica_floor") and not table.has("trajectory")
    assert table.probs_trajectory is None and (table.trajectory_lengths == -1).all()
    assert np.isnan(table.values("gradcam", "pearson", "floor")).all()
    empty = RowTable.from_rows([])
    assert len(empty) == 0 and not empty.has("drift")
    assert empty.values("gradcam", "pearson").shape == (0,)


def test_take_keeps_rows_aligned() -> None:
    rows = audit_like_rows(floors=True, steps=2)
    table = RowTable.from_rows(rows)
    part = table.take(table.included)
    assert len(part) == int(table.included.sum()) and part.included.all()
    np.testing.assert_array_equal(
        part.values("layercam", "displacement", "floor"),
        table.values("layercam", "displacement", "floor", mask=table.included),
    )
    assert part.probs_trajectory.shape[1] == len(part)


def _meta(steps: int = 0) -> dict:
    return {
        "models": {"baseline": {"phase": "tl"}, "candidate": {"phase": "ft"}},
        "dataset": {"class_names": NAMES},
        "config": {"methods": METHODS, "metrics": METRICS, "seed": 1, "n_boot": 100},
        "samples_location": None,
        "trajectory": [{"phase": f"e{k}"} for k in range(1, steps)] or None,
    }


@pytest.mark.parametrize(("floors", "steps"), [(False, 0), (True, 3), (True, 1)])
def test_public_functions_take_rows_or_a_table_alike(floors: bool, steps: int) -> None:
    rows = audit_like_rows(n=40, floors=floors, steps=steps)
    table = RowTable.from_rows(copy.deepcopy(rows))
    meta = _meta(steps)
    a, b = build_report(rows, **meta), build_report(table, **meta)
    a.pop("created_at"), b.pop("created_at")
    assert json.dumps(a) == json.dumps(b)
    assert subset_counts(rows, NAMES) == subset_counts(table, NAMES)
    included = table.take(table.included)
    assert json.dumps(
        noise_floor([r for r in rows if r["included"]], METHODS, METRICS, NAMES, n_boot=20, seed=0)
    ) == json.dumps(noise_floor(included, METHODS, METRICS, NAMES, n_boot=20, seed=0))
    checkpoints = [{}] * (max(steps, 1) + 1)
    got = trajectory_section(rows, METHODS, METRICS, NAMES, checkpoints, n_boot=20, seed=0)
    again = trajectory_section(table, METHODS, METRICS, NAMES, checkpoints, n_boot=20, seed=0)
    assert json.dumps(got) == json.dumps(again)
    assert (got is None) == (steps == 0)
