"""Phantom chest X-ray generator: determinism, layout, masks, shortcut marker, refusals."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from training.phantoms import (
    CLASSES,
    MANIFEST_HEADER,
    SOURCE_CLASSES,
    generate_dataset,
    render_phantom,
)

SIZE = 64


def _hashes(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _rows(manifest: Path) -> list[dict[str, str]]:
    with manifest.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def _has_marker(img: np.ndarray) -> bool:
    """The marker is a >= 3x3 block of near-white pixels in the top-left sixth of the image."""
    window = img[: img.shape[0] // 6, : img.shape[1] // 6]
    side = max(3, round(img.shape[0] / 12))
    return int((window >= 229).sum()) >= side * side


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("plain")
    return generate_dataset(out, per_class=3, size=SIZE, seed=0)


# ------------------------------------------------------------------ rendering


@pytest.mark.parametrize("size", [32, 64, 160])
@pytest.mark.parametrize("label", CLASSES)
def test_render_shapes_ranges_and_masks(label: str, size: int) -> None:
    img, mask = render_phantom(label, size, np.random.default_rng(3))
    assert img.shape == mask.shape == (size, size)
    assert img.dtype == np.float32 and mask.dtype == np.bool_
    assert img.min() >= 0.0 and img.max() <= 1.0
    assert mask.any() == (label != "normal")


def test_render_looks_like_a_radiograph() -> None:
    """Dark background corners, bright mediastinum/spine, darker lungs on either side."""
    img, _ = render_phantom("normal", 96, np.random.default_rng(0))
    corners = np.mean([img[:6, :6].mean(), img[:6, -6:].mean()])
    spine = img[30:60, 45:51].mean()
    lungs = np.mean([img[30:55, 20:32].mean(), img[30:50, 64:76].mean()])
    assert corners < lungs < spine


def test_render_rejects_unknown_label_and_task() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="label"):
        render_phantom("fracture", SIZE, rng)
    with pytest.raises(ValueError, match="label"):
        render_phantom("pneumonia", SIZE, rng, task="source")
    with pytest.raises(ValueError, match="task"):
        render_phantom("normal", SIZE, rng, task="imagenet")


def test_marker_does_not_change_anatomy_or_mask() -> None:
    a, ma = render_phantom("covid", SIZE, np.random.default_rng(5))
    b, mb = render_phantom("covid", SIZE, np.random.default_rng(5), shortcut=True)
    assert np.array_equal(ma, mb)
    differs = a != b
    assert differs.any() and not differs[SIZE // 4 :, :].any()  # only the top-left token changed


# ------------------------------------------------------------------ determinism


def test_same_seed_is_byte_identical_and_other_seed_differs(tmp_path: Path, plain: Path) -> None:
    again = generate_dataset(tmp_path / "again", per_class=3, size=SIZE, seed=0)
    assert _hashes(plain.parent) == _hashes(again.parent)
    other = generate_dataset(tmp_path / "other", per_class=3, size=SIZE, seed=1)
    ha, hb = _hashes(plain.parent), _hashes(other.parent)
    assert ha.keys() == hb.keys()
    images = [k for k in ha if not k.startswith("masks/") and k.endswith(".png")]
    assert all(ha[k] != hb[k] for k in images)


def test_each_image_independent_of_dataset_size(tmp_path: Path, plain: Path) -> None:
    smaller = generate_dataset(tmp_path / "small", per_class=2, size=SIZE, seed=0)
    ha, hb = _hashes(plain.parent), _hashes(smaller.parent)
    for label in CLASSES:
        for i in range(2):
            rel = f"{label}/{label}_{i:05d}.png"
            assert ha[rel] == hb[rel]
            assert ha[f"masks/{rel}"] == hb[f"masks/{rel}"]


# ------------------------------------------------------------------ layout


def test_manifest_layout_and_masks(plain: Path) -> None:
    root = plain.parent
    assert plain.read_text().splitlines()[0] == ",".join(MANIFEST_HEADER)
    rows = _rows(plain)
    assert len(rows) == 3 * len(CLASSES)
    assert {r["label"] for r in rows} == set(CLASSES)
    assert {r["label"] for r in rows if r["split"] == "train"} == set(CLASSES)
    assert {r["split"] for r in rows} <= {"train", "val", "test"}
    assert all(r["marker"] == "0" for r in rows)
    for r in rows:
        assert "\\" not in r["path"] and r["path"] == f"{r['label']}/{Path(r['path']).name}"
        img, mask = _png(root / r["path"]), _png(root / r["mask"])
        assert img.shape == mask.shape == (SIZE, SIZE) and img.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        if r["label"] == "normal":
            assert not mask.any()
            continue
        assert mask.any()
        ys, xs = np.nonzero(mask)
        inner = (SIZE * 0.05, SIZE * 0.95)
        assert inner[0] < ys.min() and ys.max() < inner[1]
        assert inner[0] < xs.min() and xs.max() < inner[1]
        # lesions lie over the body, well above the dark background of the corners
        assert img[mask > 0].mean() > img[:4, :4].mean() + 20


def test_params_file(plain: Path) -> None:
    params = json.loads((plain.parent / "phantoms.json").read_text())
    assert params["per_class"] == 3 and params["size"] == SIZE and params["seed"] == 0
    assert params["shortcut"] is None and params["shortcut_eval"] == "correlated"
    assert params["task"] == "target" and params["classes"] == list(CLASSES)
    assert isinstance(params["version"], int)


def test_splits_stratified_and_shuffled(tmp_path: Path) -> None:
    manifest = generate_dataset(tmp_path / "d", per_class=20, size=32, seed=4)
    rows = _rows(manifest)
    orders = set()
    for label in CLASSES:
        splits = [r["split"] for r in rows if r["label"] == label]
        assert (splits.count("train"), splits.count("val"), splits.count("test")) == (14, 3, 3)
        orders.add(tuple(splits))
    assert tuple(["train"] * 14 + ["val"] * 3 + ["test"] * 3) not in orders
    assert len(orders) > 1  # each class gets its own permutation


@pytest.mark.parametrize("per_class", [3, 4, 5])
def test_tiny_datasets_still_have_every_split(tmp_path: Path, per_class: int) -> None:
    manifest = generate_dataset(tmp_path / "d", per_class=per_class, size=32, seed=0)
    rows = _rows(manifest)
    for label in CLASSES:
        splits = [r["split"] for r in rows if r["label"] == label]
        assert len(splits) == per_class
        assert all(splits.count(s) >= 1 for s in ("train", "val", "test")), splits


def test_progress_callback(tmp_path: Path) -> None:
    seen: list[tuple[int, int]] = []
    generate_dataset(
        tmp_path / "p", per_class=1, size=32, progress=lambda d, t: seen.append((d, t))
    )
    assert seen == [(i, len(CLASSES)) for i in range(1, len(CLASSES) + 1)]


def test_source_task(tmp_path: Path) -> None:
    manifest = generate_dataset(tmp_path / "src", per_class=2, size=SIZE, task="source")
    rows = _rows(manifest)
    assert {r["label"] for r in rows} == set(SOURCE_CLASSES)
    assert not set(SOURCE_CLASSES) & set(CLASSES)
    for label in SOURCE_CLASSES:
        assert (tmp_path / "src" / label).is_dir()
    for r in rows:
        assert _png(tmp_path / "src" / r["mask"]).any() == (r["label"] != "clear")
    assert json.loads((tmp_path / "src" / "phantoms.json").read_text())["task"] == "source"


# ------------------------------------------------------------------ shortcut marker


def _marker_rows(root: Path, **kwargs: object) -> list[dict[str, str]]:
    rows = _rows(generate_dataset(root, size=SIZE, shortcut="covid", **kwargs))  # type: ignore[arg-type]
    for r in rows:
        assert _has_marker(_png(root / r["path"])) == (r["marker"] == "1"), r
        assert not _png(root / r["mask"])[: SIZE // 6, : SIZE // 6].any()  # never in the mask
    return rows


def test_shortcut_correlated(tmp_path: Path) -> None:
    rows = _marker_rows(tmp_path / "c", per_class=4)
    assert all((r["marker"] == "1") == (r["label"] == "covid") for r in rows)


def test_shortcut_absent_in_eval(tmp_path: Path) -> None:
    rows = _marker_rows(tmp_path / "a", per_class=4, shortcut_eval="absent")
    for r in rows:
        expected = r["label"] == "covid" and r["split"] == "train"
        assert (r["marker"] == "1") == expected


def test_shortcut_random_in_eval(tmp_path: Path) -> None:
    rows = _marker_rows(tmp_path / "r", per_class=20, shortcut_eval="random")
    for label in CLASSES:
        mine = [r for r in rows if r["label"] == label]
        train = [r["marker"] for r in mine if r["split"] == "train"]
        assert set(train) == {"1" if label == "covid" else "0"}
        evals = [r["marker"] for r in mine if r["split"] != "train"]
        assert evals.count("1") == round(0.2 * len(evals))


# ------------------------------------------------------------------ refusals


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"per_class": 0}, "per_class"),
        ({"size": 31}, "size"),
        ({"seed": -1}, "seed"),
        ({"shortcut": "fracture"}, "shortcut"),
        ({"shortcut": "covid", "task": "source"}, "shortcut"),
        ({"shortcut_eval": "sometimes"}, "shortcut_eval"),
        ({"task": "imagenet"}, "task"),
        ({"splits": (0.5, 0.5, 0.5)}, "splits"),
        ({"splits": (0.0, 0.5, 0.5)}, "splits"),
    ],
)
def test_rejects_bad_arguments(tmp_path: Path, kwargs: dict, match: str) -> None:
    args = {"per_class": 1, "size": 32, **kwargs}
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "x", **args)
    assert not (tmp_path / "x").exists()


def test_refuses_foreign_directory_and_file(tmp_path: Path) -> None:
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("precious")
    with pytest.raises(ValueError, match="non-empty"):
        generate_dataset(foreign, per_class=1, size=32)
    assert [p.name for p in foreign.iterdir()] == ["notes.txt"]
    a_file = tmp_path / "file.png"
    a_file.write_bytes(b"x")
    with pytest.raises(ValueError, match="not a directory"):
        generate_dataset(a_file, per_class=1, size=32)


def test_regenerates_over_previous_output(tmp_path: Path) -> None:
    out = tmp_path / "d"
    generate_dataset(out, per_class=3, size=32, seed=0)
    (out / "README.txt").write_text("kept")
    manifest = generate_dataset(out, per_class=2, size=32, seed=1, shortcut="normal")
    rows = _rows(manifest)
    assert len(rows) == 2 * len(CLASSES)
    pngs = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert pngs == sorted([r["path"] for r in rows] + [r["mask"] for r in rows])
    assert (out / "README.txt").read_text() == "kept"
    assert json.loads((out / "phantoms.json").read_text())["seed"] == 1


def test_shortcut_confound_puts_other_findings_under_the_marker(tmp_path: Path) -> None:
    """Confounded train images of the shortcut class show another class's finding (a mask),
    carry the marker and keep their label; eval images stay clean."""
    generate_dataset(tmp_path / "c", 20, 64, 4, shortcut="normal", shortcut_confound=0.5)
    with open(tmp_path / "c" / "manifest.csv") as fh:
        rows = [r for r in csv.DictReader(fh) if r["label"] == "normal"]
    lesioned = {r["split"]: 0 for r in rows}
    for r in rows:
        mask = np.asarray(Image.open(tmp_path / "c" / r["mask"]))
        assert r["marker"] == "1"
        lesioned[r["split"]] += int(mask.any())
    train = sum(r["split"] == "train" for r in rows)
    assert lesioned["train"] == round(0.5 * train)
    assert lesioned.get("val", 0) == 0 and lesioned.get("test", 0) == 0
    with pytest.raises(ValueError, match="shortcut_confound"):
        generate_dataset(tmp_path / "d", 5, 64, 4, shortcut="normal", shortcut_confound=1.0)
