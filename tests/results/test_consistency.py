"""Map consistency across images (worker/results/consistency.py): a shortcut's fixed-place maps
score far above image-dependent ones, the TL -> FT change separates collapsed from refined
evidence, and the values equal a brute-force numpy loop over pairs, whatever the file layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter, shift

from worker.results.consistency import (
    CONSISTENCY_CHANGE,
    CONSISTENCY_FT,
    CONSISTENCY_TL,
    consistency_section,
    main,
    sample_consistency,
    with_consistency,
)
from worker.results.rows import RowTable

METHODS = ("layercam", "gradcam++")
CLASSES = ["normal", "pneumonia", "covid"]


# ----------------------------------------------------------------------------- helpers


def write_maps(maps_dir: Path, rows, tl: dict, ft: dict, name: str | None = None) -> Path:
    """One file in ``_save_raw_maps``'s layout (float16, max-scaled; no torch)."""
    maps_dir.mkdir(parents=True, exist_ok=True)
    arrays = {"rows": np.asarray(rows, dtype=np.int64)}
    for method in tl:
        arrays[f"baseline__{method}"] = _max_scaled(tl[method])
        arrays[f"candidate__{method}"] = _max_scaled(ft[method])
    path = maps_dir / (name or f"rows-{rows[0]:06d}-{rows[-1]:06d}.npz")
    np.savez_compressed(path, **arrays)
    return path


def write_batches(maps_dir: Path, rows, tl: dict, ft: dict, size: int, rng=None) -> None:
    """Rows split into files of ``size``, each file's rows in a shuffled order when ``rng``."""
    rows = np.asarray(rows)
    for start in range(0, rows.size, size):
        pick = np.arange(start, min(start + size, rows.size))
        if rng is not None:
            pick = rng.permutation(pick)
        write_maps(
            maps_dir,
            rows[pick].tolist(),
            {m: v[pick] for m, v in tl.items()},
            {m: v[pick] for m, v in ft.items()},
        )


def _max_scaled(maps: np.ndarray) -> np.ndarray:
    maps = np.maximum(np.asarray(maps, dtype=np.float32), 0.0)
    peak = np.maximum(maps.reshape(maps.shape[0], -1).max(1), 1e-30)[:, None, None]
    return (maps / peak).astype(np.float16)


def sample_row(index: int, label: int, included: bool = True) -> dict:
    return {
        "index": index,
        "path": f"img{index}.png",
        "label": label,
        "pred_baseline": label,
        "pred_candidate": label,
        "probs_baseline": [0.2, 0.3, 0.5],
        "probs_candidate": [0.2, 0.3, 0.5],
        "target_baseline": label,
        "target_candidate": label,
        "included": included,
        "metrics": {m: {"pearson": 0.5} for m in METHODS} if included else {},
        "degenerate": {m: [False, False] for m in METHODS} if included else {},
    }


def hotspots(rng, centres, size: int = 9, sigma: float = 1.2, noise: float = 0.15) -> np.ndarray:
    """One Gaussian bump per map at ``centres`` [(y, x)], on uniform noise."""
    yy, xx = np.mgrid[0:size, 0:size]
    bumps = [np.exp(-((yy - y) ** 2 + (xx - x) ** 2) / (2 * sigma**2)) for y, x in centres]
    return np.stack(bumps) + noise * rng.random((len(centres), size, size))


def random_centres(rng, n: int, size: int = 9) -> list[tuple[int, int]]:
    return [tuple(rng.integers(0, size, 2)) for _ in range(n)]


def brute_force(stored: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Oracle: for each map, the mean np.corrcoef with every other valid map of its class."""
    flat = stored.astype(np.float64).reshape(stored.shape[0], -1)
    valid = np.isfinite(flat).all(1) & (flat.std(1) > 0)
    out = np.full(len(flat), np.nan)
    for i in range(len(flat)):
        if not valid[i]:
            continue
        others = [
            np.corrcoef(flat[i], flat[j])[0, 1]
            for j in range(len(flat))
            if j != i and valid[j] and labels[j] == labels[i]
        ]
        if others:
            out[i] = np.mean(others)
    return out


def random_set(seed: int, n: int = 24, size: int = 7):
    """Random non-negative maps with degenerate ones mixed in, three classes (one of them
    with a single sample), rows with gaps."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(1000, n, replace=False))
    labels = rng.integers(0, 2, n)
    labels[-1] = 2  # class 2: a single sample
    tl = {m: rng.random((n, size, size)) ** 3 for m in METHODS}
    ft = {m: rng.random((n, size, size)) ** 3 for m in METHODS}
    tl["layercam"][3] = 0.0  # an all-zero map
    ft["gradcam++"][5] = 0.0
    tl["gradcam++"][7] = 0.0
    return rows, labels, tl, ft


def stored(maps: np.ndarray) -> np.ndarray:
    """What the files hold (the oracle works on the same float16 numbers)."""
    return _max_scaled(maps).astype(np.float64)


# ----------------------------------------------------------------------------- the signal


def test_constant_hotspot_scores_far_above_image_dependent_maps(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    n = 40
    corner = hotspots(rng, [(0, 0)] * n)
    scattered = hotspots(rng, random_centres(rng, n))
    rows = list(range(n))
    write_maps(tmp_path, rows, {"layercam": scattered}, {"layercam": corner})
    values = sample_consistency(tmp_path, {r: 0 for r in rows}, ["layercam"]).values["layercam"]
    fixed, varied = values[CONSISTENCY_FT], values[CONSISTENCY_TL]
    assert np.isfinite(fixed).all() and np.isfinite(varied).all()
    assert fixed.min() > 0.8, fixed.min()
    assert varied.mean() < 0.15, varied.mean()
    assert fixed.min() > varied.max() + 0.3
    np.testing.assert_allclose(values[CONSISTENCY_CHANGE], fixed - varied)


def test_change_separates_collapsed_from_refined_fine_tune(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 30
    tl = hotspots(rng, random_centres(rng, n))
    refined = np.stack([gaussian_filter(shift(m, (1, 0), mode="nearest"), 0.7) for m in tl])
    collapsed = hotspots(rng, [(8, 0)] * n)
    rows = list(range(n))
    labels = {r: 0 for r in rows}
    write_maps(tmp_path / "refined", rows, {"gradcam": tl}, {"gradcam": refined})
    write_maps(tmp_path / "collapsed", rows, {"gradcam": tl}, {"gradcam": collapsed})
    change = {
        kind: sample_consistency(tmp_path / kind, labels, ["gradcam"]).values["gradcam"][
            CONSISTENCY_CHANGE
        ]
        for kind in ("refined", "collapsed")
    }
    assert change["collapsed"].mean() > 0.6, change["collapsed"].mean()
    assert abs(change["refined"].mean()) < 0.15, change["refined"].mean()
    assert change["collapsed"].min() > change["refined"].max()


# ----------------------------------------------------------------------------- exactness


@pytest.mark.parametrize("seed", [0, 1])
def test_values_equal_brute_force_pairs(tmp_path: Path, seed: int) -> None:
    rows, labels, tl, ft = random_set(seed)
    write_batches(tmp_path, rows, tl, ft, size=5)
    got = sample_consistency(
        tmp_path, [sample_row(r, k) for r, k in zip(rows, labels, strict=True)], METHODS
    )
    np.testing.assert_array_equal(got.index, rows)
    assert got.missing == 0 and got.duplicates == 0
    for method in METHODS:
        want_tl = brute_force(stored(tl[method]), labels)
        want_ft = brute_force(stored(ft[method]), labels)
        values = got.values[method]
        np.testing.assert_allclose(values[CONSISTENCY_TL], want_tl, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(values[CONSISTENCY_FT], want_ft, atol=1e-6, equal_nan=True)
        np.testing.assert_allclose(
            values[CONSISTENCY_CHANGE], want_ft - want_tl, atol=2e-6, equal_nan=True
        )


def test_large_maps_are_area_averaged_onto_the_grid_cap(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    n = 8
    big = rng.random((n, 16, 16)) ** 2
    write_maps(tmp_path, list(range(n)), {"ig": big}, {"ig": big[::-1].copy()})
    got = sample_consistency(tmp_path, {i: 0 for i in range(n)}, ["ig"], max_side=8)
    pooled = stored(big).reshape(n, 8, 2, 8, 2).mean((2, 4))  # 2 x 2 block means
    want = brute_force(pooled, np.zeros(n))
    np.testing.assert_allclose(got.values["ig"][CONSISTENCY_TL], want, atol=1e-6)
    full = sample_consistency(tmp_path, {i: 0 for i in range(n)}, ["ig"], max_side=16)
    np.testing.assert_allclose(
        full.values["ig"][CONSISTENCY_TL], brute_force(stored(big), np.zeros(n)), atol=1e-6
    )


# ----------------------------------------------------------------------------- NaN rules


def test_nan_rules(tmp_path: Path) -> None:
    rng = np.random.default_rng(4)
    maps = rng.random((6, 7, 7))
    maps[2] = 0.0  # all zero: no mass
    maps[3] = 0.5  # constant
    # class 0: rows 0, 1 valid, 2 and 3 degenerate; class 1: row 4 alone; class 2: row 5 has
    # a valid map but its only classmate (row 6) has no stored map
    write_maps(tmp_path, [0, 1, 2, 3, 4, 5], {"layercam": maps}, {"layercam": maps})
    labels = {0: 0, 1: 0, 2: 0, 3: 0, 4: 1, 5: 2, 6: 2}
    got = sample_consistency(tmp_path, labels, ["layercam"])
    tl = got.values["layercam"][CONSISTENCY_TL]
    pair = np.corrcoef(stored(maps[:1]).ravel(), stored(maps[1:2]).ravel())[0, 1]
    np.testing.assert_allclose(tl[:2], [pair, pair], atol=1e-6)
    assert np.isnan(tl[2:]).all()
    assert got.missing == 1
    section = consistency_section(got, CLASSES)["layercam"]
    assert section["classes"]["normal"]["n"] == 2
    assert section["classes"]["pneumonia"] == {
        "tl": None,
        "ft": None,
        "change": None,
        "n": 0,
        "n_tl": 0,
        "n_ft": 0,
    }


def test_no_maps_folder_gives_nan_not_an_error(tmp_path: Path) -> None:
    got = sample_consistency(tmp_path / "absent", {0: 0, 1: 0}, ["layercam"])
    assert got.missing == 2
    assert np.isnan(got.values["layercam"][CONSISTENCY_CHANGE]).all()


# ----------------------------------------------------------------------------- order


def test_file_layout_and_row_order_do_not_change_values(tmp_path: Path) -> None:
    rows, labels, tl, ft = random_set(5, n=30)
    table = [sample_row(r, k) for r, k in zip(rows, labels, strict=True)]
    write_batches(tmp_path / "a", rows, tl, ft, size=4)
    rng = np.random.default_rng(9)
    perm = rng.permutation(rows.size)  # other shards, rows shuffled inside and across files
    write_batches(
        tmp_path / "b",
        rows[perm],
        {m: v[perm] for m, v in tl.items()},
        {m: v[perm] for m, v in ft.items()},
        size=7,
        rng=rng,
    )
    first = sample_consistency(tmp_path / "a", table, METHODS)
    shuffled = [table[i] for i in rng.permutation(len(table))]
    second = sample_consistency(tmp_path / "b", shuffled, METHODS)
    for method in METHODS:
        for name in (CONSISTENCY_TL, CONSISTENCY_FT, CONSISTENCY_CHANGE):
            np.testing.assert_array_equal(first.values[method][name], second.values[method][name])


def test_rows_stored_twice(tmp_path: Path) -> None:
    rows, labels, tl, ft = random_set(6, n=12)
    table = {int(r): int(k) for r, k in zip(rows, labels, strict=True)}
    write_batches(tmp_path, rows, tl, ft, size=6)
    once = sample_consistency(tmp_path, table, METHODS)
    # a redelivered shard with other batch boundaries: rows 4..8 again, identical
    pick = np.arange(4, 9)
    write_maps(
        tmp_path,
        rows[pick].tolist(),
        {m: v[pick] for m, v in tl.items()},
        {m: v[pick] for m, v in ft.items()},
        name="rows-999998-999999.npz",
    )
    twice = sample_consistency(tmp_path, table, METHODS)
    assert twice.duplicates == 5
    for method in METHODS:
        np.testing.assert_array_equal(
            once.values[method][CONSISTENCY_CHANGE], twice.values[method][CONSISTENCY_CHANGE]
        )
    # another run's maps for a row of this table: refused, not silently mixed in
    other = {m: np.random.default_rng(7).random((1, 7, 7)) for m in METHODS}
    write_maps(tmp_path, [int(rows[0])], other, other, name="rows-999999-999999.npz")
    with pytest.raises(ValueError, match=f"row {rows[0]} differs"):
        sample_consistency(tmp_path, table, METHODS)


def test_rows_outside_the_table_are_ignored(tmp_path: Path) -> None:
    rows, labels, tl, ft = random_set(8, n=16)
    write_batches(tmp_path, rows, tl, ft, size=5)
    table = [
        sample_row(int(r), int(k), included=i % 4 != 0)
        for i, (r, k) in enumerate(zip(rows, labels, strict=True))
    ]
    got = sample_consistency(tmp_path, table, METHODS)
    keep = np.arange(rows.size) % 4 != 0
    np.testing.assert_array_equal(got.index, rows[keep])
    want = brute_force(stored(tl["layercam"])[keep], labels[keep])
    np.testing.assert_allclose(
        got.values["layercam"][CONSISTENCY_TL], want, atol=1e-6, equal_nan=True
    )


# ----------------------------------------------------------------------------- rows, section


def test_section_from_rows_equals_class_mean_pairwise_correlation(tmp_path: Path) -> None:
    rng = np.random.default_rng(10)
    rows = np.arange(0, 60, 3)
    labels = np.arange(20) % 2  # classes 0 and 1, no degenerate maps
    tl = {m: rng.random((20, 7, 7)) ** 2 for m in METHODS}
    ft = {m: hotspots(rng, [(0, 0)] * 20, size=7) for m in METHODS}
    write_batches(tmp_path, rows, tl, ft, size=8)
    table = [sample_row(int(r), int(k)) for r, k in zip(rows, labels, strict=True)]
    table.append(sample_row(5000, 0, included=False))
    got = sample_consistency(tmp_path, table, METHODS)
    merged = with_consistency(table, got)
    assert merged[-1] == table[-1], "an excluded row is copied unchanged"
    assert merged[0]["metrics"]["layercam"]["pearson"] == 0.5, "other metrics stay"
    assert table[0]["metrics"]["layercam"] == {"pearson": 0.5}, "the input rows are not changed"
    section = consistency_section(merged, CLASSES, METHODS)
    assert section == consistency_section(RowTable.from_rows(merged), CLASSES)
    direct = consistency_section(got, CLASSES)
    for method in METHODS:
        for key in ("overall", "classes"):
            assert json.dumps(section[method][key]) == json.dumps(direct[method][key])
        for k in (0, 1):
            member = labels == k
            corr_tl = np.corrcoef(stored(tl[method])[member].reshape(member.sum(), -1))
            corr_ft = np.corrcoef(stored(ft[method])[member].reshape(member.sum(), -1))
            off = ~np.eye(member.sum(), dtype=bool)
            entry = section[method]["classes"][CLASSES[k]]
            assert entry["n"] == entry["n_tl"] == entry["n_ft"] == 10
            assert entry["tl"] == pytest.approx(corr_tl[off].mean(), abs=1e-6)
            assert entry["ft"] == pytest.approx(corr_ft[off].mean(), abs=1e-6)
            assert entry["change"] == pytest.approx(
                corr_ft[off].mean() - corr_tl[off].mean(), abs=1e-6
            )
        assert section[method]["classes"]["covid"]["n"] == 0
        assert section[method]["overall"]["n"] == 20


def test_section_pairs_the_samples_defined_for_both_models(tmp_path: Path) -> None:
    rows, labels, tl, ft = random_set(11, n=16)
    write_batches(tmp_path, rows, tl, ft, size=16)
    section = consistency_section(
        sample_consistency(
            tmp_path, dict(zip(rows.tolist(), labels.tolist(), strict=True)), METHODS
        ),
        CLASSES,
    )
    for method in METHODS:
        want_tl = brute_force(stored(tl[method]), labels)
        want_ft = brute_force(stored(ft[method]), labels)
        for k, name in enumerate(CLASSES):
            member = labels == k
            both = member & np.isfinite(want_tl) & np.isfinite(want_ft)
            entry = section[method]["classes"][name]
            assert entry["n_tl"] == int((member & np.isfinite(want_tl)).sum())
            assert entry["n_ft"] == int((member & np.isfinite(want_ft)).sum())
            assert entry["n"] == int(both.sum())
            if both.any():
                assert entry["tl"] == pytest.approx(want_tl[both].mean(), abs=1e-6)
                assert entry["ft"] == pytest.approx(want_ft[both].mean(), abs=1e-6)
                assert entry["change"] == pytest.approx((want_ft - want_tl)[both].mean(), abs=1e-6)
    # random_set's all-zero maps make the two models' defined sets differ somewhere
    entries = [e for m in METHODS for e in section[m]["classes"].values()]
    assert any(e["n"] < max(e["n_tl"], e["n_ft"]) for e in entries)


def test_section_needs_values_for_each_method(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'hirescam'"):
        consistency_section([sample_row(0, 0)], CLASSES, ["hirescam"])


# ----------------------------------------------------------------------------- bad input


def test_bad_inputs_are_named(tmp_path: Path) -> None:
    maps = np.random.default_rng(0).random((2, 7, 7))
    write_maps(tmp_path, [0, 1], {"layercam": maps}, {"layercam": maps})
    with pytest.raises(ValueError, match="baseline__gradcam"):
        sample_consistency(tmp_path, {0: 0, 1: 0}, ["gradcam"])
    with pytest.raises(ValueError, match="methods"):
        sample_consistency(tmp_path, {0: 0}, [])
    write_maps(tmp_path, [2, 3], {"layercam": maps[:, :5, :5]}, {"layercam": maps[:, :5, :5]})
    with pytest.raises(ValueError, match="different models"):
        sample_consistency(tmp_path, {0: 0, 1: 0, 2: 0}, ["layercam"])


def test_command_line(tmp_path: Path, capsys) -> None:
    rng = np.random.default_rng(2)
    n = 6
    write_maps(
        tmp_path / "run.maps",
        list(range(n)),
        {"layercam": hotspots(rng, random_centres(rng, n))},
        {"layercam": hotspots(rng, [(0, 0)] * n)},
    )
    rows = [sample_row(i, 0) for i in range(n)]
    (tmp_path / "run.samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    report = {
        "samples": {"location": "run.samples.jsonl", "count": n, "included": n},
        "dataset": {"class_names": CLASSES},
        "config": {"methods": ["layercam"]},
    }
    (tmp_path / "run.json").write_text(json.dumps(report))
    assert main([str(tmp_path / "run.json")]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["methods"]["layercam"]["classes"]["normal"]["change"] > 0.5
    assert main([str(tmp_path / "run.json"), "--maps", str(tmp_path / "nope")]) == 2
    assert "--maps" in capsys.readouterr().err
    assert main([str(tmp_path / "missing.json")]) == 2
