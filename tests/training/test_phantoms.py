"""Phantom chest X-ray generator: determinism, layout, masks, shortcut kinds, refusals."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from training.phantoms import (
    CLASSES,
    MANIFEST_HEADER,
    POSITIONAL_KINDS,
    SHORTCUT_KINDS,
    SOURCE_CLASSES,
    generate_dataset,
    plan_dataset,
    read_params,
    render_phantom,
    render_variants,
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
    listed = [r[c] for r in rows for c in ("path", "mask", "lung_mask", "shortcut_mask") if r[c]]
    assert pngs == sorted(listed)
    assert sum(bool(r["shortcut_mask"]) for r in rows) == 2  # the two normal images
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


# ------------------------------------------------------------------ corner output unchanged

# sha256 over (relative path, bytes) of every image and lesion mask, recorded with the
# generator as it was before shortcut kinds, lung and shortcut masks were added: the corner
# marker's datasets must stay byte-identical so that nothing downstream changes.
_BEFORE_KINDS = {
    "plain": (
        {"per_class": 3, "size": 32, "seed": 0},
        "716a1c90ec94ffc1710eb21c9c414874b9c1aae6d3ec12a1814493214f8dbf44",
    ),
    "correlated": (
        {"per_class": 4, "size": 32, "seed": 1, "shortcut": "covid"},
        "30785cff9021c976f11e35adadce05858c47db8b49cb313056d3108f2f207ed7",
    ),
    "random_confound": (
        {
            "per_class": 6,
            "size": 48,
            "seed": 2,
            "shortcut": "normal",
            "shortcut_eval": "random",
            "shortcut_confound": 0.5,
        },
        "1a9bf28ee1e596bacdeacee0edf83df6397262dd38eebc5c7db67e35c0ad7784",
    ),
    "absent": (
        {"per_class": 4, "size": 32, "seed": 3, "shortcut": "effusion", "shortcut_eval": "absent"},
        "a55ddd96a8bab9e42490ac349b4e2660be2b170bd6402b7f67209a5d7c1aeae4",
    ),
}


@pytest.mark.parametrize("name", sorted(_BEFORE_KINDS))
def test_corner_datasets_are_byte_identical_to_before_kinds(tmp_path: Path, name: str) -> None:
    options, expected = _BEFORE_KINDS[name]
    rows = _rows(generate_dataset(tmp_path / name, **options))  # type: ignore[arg-type]
    files = sorted({r["path"] for r in rows} | {r["mask"] for r in rows})
    digest = hashlib.sha256()
    for rel in files:
        digest.update(rel.encode())
        digest.update((tmp_path / name / rel).read_bytes())
    assert digest.hexdigest() == expected


# ------------------------------------------------------------------ shortcut kinds


def _placements(kind: str) -> tuple[str | None, ...]:
    return (None, "usual", "moved") if kind in POSITIONAL_KINDS else (None, "usual")


@pytest.mark.parametrize("size", [32, 96])
@pytest.mark.parametrize("kind", SHORTCUT_KINDS)
def test_each_kind_changes_only_its_own_pixels(kind: str, size: int) -> None:
    for seed in range(4):
        variants = render_variants(
            "pneumonia", size, np.random.default_rng(seed), kind=kind, placements=_placements(kind)
        )
        clean = variants[0]
        assert clean.shortcut is None and clean.placement is None
        for v in variants[1:]:
            assert v.image.dtype == np.float32 and 0.0 <= v.image.min() <= v.image.max() <= 1.0
            assert np.array_equal(v.lesion, clean.lesion) and np.array_equal(v.lungs, clean.lungs)
            changed = np.abs(v.image - clean.image) > 1e-6
            if kind == "scanner":  # global: no region, and nearly every pixel differs
                assert v.shortcut is None and changed.mean() > 0.9
                continue
            assert v.shortcut is not None and v.shortcut.any()
            assert changed.any() and not (changed & ~v.shortcut).any()
            assert changed[v.shortcut].mean() > 0.2  # the region is the token, not the image
            assert not (v.shortcut & clean.lesion).any()
        if kind in POSITIONAL_KINDS:  # moved: somewhere training never showed it
            usual, moved = variants[1].shortcut, variants[2].shortcut
            assert not (usual & moved).any()


@pytest.mark.parametrize("kind", SHORTCUT_KINDS)
def test_variants_equal_single_renders(kind: str) -> None:
    """The probe renders all placements from one anatomy; each must equal a render that drew
    only that placement (what generate_dataset writes)."""
    placements = _placements(kind)
    together = render_variants(
        "effusion", 48, np.random.default_rng(11), kind=kind, placements=placements
    )
    for placement, joint in zip(placements, together, strict=True):
        (alone,) = render_variants(
            "effusion", 48, np.random.default_rng(11), kind=kind, placements=(placement,)
        )
        assert np.array_equal(alone.image, joint.image)
    image, _ = render_phantom("effusion", 48, np.random.default_rng(11), shortcut=True, kind=kind)
    assert np.array_equal(image, together[1].image)


def test_letter_positions_and_glyphs_vary() -> None:
    boxes = set()
    for seed in range(12):
        (v,) = render_variants(
            "normal", 64, np.random.default_rng(seed), kind="letter", placements=("usual",)
        )
        ys, xs = np.nonzero(v.shortcut)
        boxes.add((ys.min(), xs.min()))
        assert ys.max() < 32  # usual: the top border or the upper half of a side border
        near_border = min(ys.min(), xs.min(), 63 - xs.max())
        assert near_border <= 64 // 16 + round(0.03 * 64)
    assert len(boxes) >= 8


def _dataset_pixels(root: Path) -> dict[str, tuple[dict[str, str], np.ndarray]]:
    return {r["path"]: (r, _png(root / r["path"])) for r in _rows(root / "manifest.csv")}


@pytest.mark.parametrize("kind", SHORTCUT_KINDS)
def test_shortcut_mask_column_covers_what_the_shortcut_changed(tmp_path: Path, kind: str) -> None:
    """File level: the same seed with and without the shortcut in eval differs only inside
    the manifest's shortcut_mask (or everywhere, for the global scanner kind)."""
    common = {"per_class": 6, "size": 32, "seed": 5, "shortcut": "covid", "shortcut_kind": kind}
    evals = ["correlated", "absent"] + (["moved"] if kind in POSITIONAL_KINDS else [])
    sets = {}
    for mode in evals:
        generate_dataset(tmp_path / mode, shortcut_eval=mode, **common)  # type: ignore[arg-type]
        sets[mode] = _dataset_pixels(tmp_path / mode)
    shown = 0
    for rel, (row, without) in sets["absent"].items():
        local = row["marker"] == "1" and kind != "scanner"
        assert bool(row["shortcut_mask"]) == local
        for mode in evals[:1] + evals[2:]:
            other_row, with_it = sets[mode][rel]
            assert other_row["lung_mask"] == row["lung_mask"] and other_row["mask"] == row["mask"]
            changed = with_it != without
            if other_row["marker"] == row["marker"]:
                assert not changed.any()
                continue
            shown += 1
            assert other_row["marker"] == "1" and row["split"] != "train"
            if kind == "scanner":
                assert other_row["shortcut_mask"] == "" and changed.mean() > 0.9
                continue
            region = _png(tmp_path / mode / other_row["shortcut_mask"]) > 0
            assert changed.any() and not (changed & ~region).any()
    assert shown == 2 * (len(evals) - 1)  # covid's val + test image, per mode that shows it


def test_moved_shortcut_sits_elsewhere_in_eval_only(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "c", 6, 32, 7, shortcut="normal", shortcut_kind="corner")
    generate_dataset(
        tmp_path / "m", 6, 32, 7, shortcut="normal", shortcut_kind="corner", shortcut_eval="moved"
    )
    correlated, moved = _dataset_pixels(tmp_path / "c"), _dataset_pixels(tmp_path / "m")
    for rel, (row, pixels) in moved.items():
        assert row["marker"] == ("1" if row["label"] == "normal" else "0")
        same = np.array_equal(pixels, correlated[rel][1])
        assert same == (row["label"] != "normal" or row["split"] == "train")
        if row["label"] == "normal":
            region = _png(tmp_path / "m" / row["shortcut_mask"]) > 0
            ys, xs = np.nonzero(region)
            top_right = ys.max() < 8 and xs.min() >= 16
            assert top_right == (row["split"] != "train")


# ------------------------------------------------------------------ lung masks


def test_lung_masks_cover_the_dark_lung_fields(tmp_path: Path) -> None:
    """Independent of the generator's geometry: inside the body the dark pixels are lung,
    the mask's rim is brighter than its inside, two big fields (one per side) hold it, and
    every lesion lies within it."""
    size = 64
    rows = _rows(generate_dataset(tmp_path / "d", 4, size, 9, shortcut="covid"))
    for r in rows:
        img = _png(tmp_path / "d" / r["path"]).astype(np.float64) / 255.0
        lungs = _png(tmp_path / "d" / r["lung_mask"]) > 0
        lesion = _png(tmp_path / "d" / r["mask"]) > 0
        assert not (lesion & ~lungs).any()
        assert 0.15 < lungs.mean() < 0.45
        ring = ndimage.binary_dilation(lungs, iterations=2) & ~lungs
        assert img[ring].mean() > img[lungs].mean() + 0.08
        labels, _ = ndimage.label(lungs)
        areas = np.bincount(labels.ravel())[1:]
        big = np.argsort(areas)[-2:] + 1
        assert areas[big - 1].sum() > 0.9 * lungs.sum()
        centres = sorted(np.nonzero(labels == k)[1].mean() for k in big)
        assert centres[0] < size / 2 < centres[1]
        if r["label"] != "normal":
            continue
        corners = np.concatenate([img[:3, :3].ravel(), img[:3, -3:].ravel()])
        body = ndimage.binary_fill_holes(ndimage.binary_opening(img > np.median(corners) + 0.08))
        dark = ndimage.binary_erosion(body, iterations=2) & (img < np.percentile(img[lungs], 75))
        assert (dark & lungs).sum() > 0.95 * dark.sum()
        assert (lungs & body).sum() > 0.9 * lungs.sum()


def test_manifest_region_columns(tmp_path: Path) -> None:
    rows = _rows(generate_dataset(tmp_path / "d", 5, 32, 2, shortcut="tuberculosis"))
    for r in rows:
        assert r["lung_mask"] == f"masks/lungs/{r['path']}"
        assert r["shortcut_mask"] == (f"masks/shortcut/{r['path']}" if r["marker"] == "1" else "")
    scanner = _rows(
        generate_dataset(tmp_path / "s", 5, 32, 2, shortcut="covid", shortcut_kind="scanner")
    )
    assert {r["marker"] for r in scanner} == {"0", "1"}
    assert all(r["shortcut_mask"] == "" for r in scanner)


# ------------------------------------------------------------------ options on record


def test_params_record_every_shortcut_option_and_read_back(tmp_path: Path) -> None:
    options = {
        "per_class": 5,
        "size": 40,
        "seed": 12,
        "shortcut": "effusion",
        "shortcut_kind": "letter",
        "shortcut_eval": "moved",
        "shortcut_confound": 0.4,
    }
    generate_dataset(tmp_path / "d", **options)  # type: ignore[arg-type]
    raw = json.loads((tmp_path / "d" / "phantoms.json").read_text())
    assert {k: raw[k] for k in options} == options
    assert raw["version"] == 2 and raw["task"] == "target"
    params = read_params(tmp_path / "d")
    assert {k: getattr(params, k) for k in options} == options
    planned = plan_dataset(params)
    assert [p.relative for p in planned] == [
        r["path"] for r in _rows(tmp_path / "d" / "manifest.csv")
    ]


def test_read_params_accepts_version_1_and_refuses_bad_files(tmp_path: Path) -> None:
    generate_dataset(tmp_path / "d", 3, 32, 0, shortcut="covid")
    path = tmp_path / "d" / "phantoms.json"
    raw = json.loads(path.read_text())
    old = {k: v for k, v in raw.items() if k not in ("shortcut_kind", "random_marker_rate")}
    path.write_text(json.dumps({**old, "version": 1}))
    assert read_params(tmp_path / "d").shortcut_kind == "corner"
    for bad, match in (
        ({**raw, "version": 99}, "version"),
        ({**raw, "shortcut_kind": "sticker"}, "shortcut_kind"),
        ({k: v for k, v in raw.items() if k != "seed"}, "seed"),
    ):
        path.write_text(json.dumps(bad))
        with pytest.raises(ValueError, match=match):
            read_params(tmp_path / "d")
    path.write_text("{not json")
    with pytest.raises(ValueError, match=r"phantoms\.json"):
        read_params(tmp_path / "d")
    with pytest.raises(ValueError, match=r"phantoms\.json"):
        read_params(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"shortcut": "covid", "shortcut_kind": "sticker"}, "shortcut_kind"),
        ({"shortcut_kind": "letter"}, "shortcut_kind"),
        ({"shortcut": "covid", "shortcut_kind": "frame", "shortcut_eval": "moved"}, "moved"),
        ({"shortcut": "covid", "shortcut_kind": "scanner", "shortcut_eval": "moved"}, "moved"),
    ],
)
def test_rejects_bad_shortcut_options(tmp_path: Path, kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        generate_dataset(tmp_path / "x", per_class=1, size=32, **kwargs)
    assert not (tmp_path / "x").exists()


def test_phantoms_cli_takes_the_kind(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from service.cli import app

    out = tmp_path / "d"
    args = ["phantoms", "--out", str(out), "--per-class", "3", "--size", "32"]
    result = CliRunner().invoke(
        app, [*args, "--shortcut", "covid", "--shortcut-kind", "frame", "--shortcut-eval", "absent"]
    )
    assert result.exit_code == 0, result.output
    params = json.loads((out / "phantoms.json").read_text())
    assert (params["shortcut_kind"], params["shortcut_eval"]) == ("frame", "absent")
    bad = CliRunner().invoke(
        app, [*args, "--shortcut", "covid", "--shortcut-kind", "frame", "--shortcut-eval", "moved"]
    )
    assert bad.exit_code == 2 and "moved" in bad.output
