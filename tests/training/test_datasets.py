"""discover / DatasetIndex / assign_splits / ImageDataset on tiny datasets made in tmp_path."""

from __future__ import annotations

import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from training.datasets import (
    DatasetError,
    DatasetIndex,
    Sample,
    assign_splits,
    content_digest,
    discover,
    summary,
)
from training.image_dataset import ImageDataset
from training.imageio import ImageReadError


def write_png(path: Path, value: int = 128, size: tuple[int, int] = (8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size, value, dtype=np.uint8)).save(path)
    return path


def write_manifest(root: Path, rows: list[str], header: str = "path,label") -> None:
    (root / "manifest.csv").write_text("\n".join([header, *rows]) + "\n")


def manifest_set(root: Path, labels: dict[str, str], header: str = "path,label") -> None:
    for name in labels:
        write_png(root / name)
    write_manifest(root, [f"{name},{label}" for name, label in labels.items()], header)


# --------------------------------------------------------------------------- manifest


def test_manifest_basic_with_optional_columns(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        write_png(tmp_path / "img" / name)
    write_png(tmp_path / "m" / "a.png")
    write_manifest(
        tmp_path,
        ["img/a.png,normal,train,m/a.png,1,x", "img/b.png,effusion,Validation,,,y"],
        header="path,label,split,mask,marker,comment",
    )
    index = discover(tmp_path)
    assert index.class_names == ["effusion", "normal"]
    first, second = index.samples
    assert (first.label, first.split, first.marker) == (1, "train", 1)
    assert first.mask == tmp_path.resolve() / "m" / "a.png"
    assert (second.label, second.split, second.mask, second.marker) == (0, "val", None, None)
    assert index.counts() == {"effusion": 1, "normal": 1}


def test_manifest_missing_file_names_line_and_path(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    write_manifest(tmp_path, ["a.png,normal", "gone/b.png,normal"])
    with pytest.raises(DatasetError, match=r"manifest\.csv line 3: gone/b\.png does not exist"):
        discover(tmp_path)


def test_manifest_missing_file_skipped(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    write_manifest(tmp_path, ["a.png,normal", "gone/b.png,covid"])
    index = discover(tmp_path, on_error="skip")
    assert [s.path.name for s in index.samples] == ["a.png"]
    assert index.skipped == [("gone/b.png", "line 3: gone/b.png does not exist")]
    assert index.class_names == ["covid", "normal"]  # the manifest declares the classes


@pytest.mark.parametrize("bad", ["../outside.png", "sub/../../outside.png", "/etc/passwd"])
def test_manifest_path_escaping_root(tmp_path: Path, bad: str) -> None:
    root = tmp_path / "data"
    write_png(root / "a.png")
    write_png(tmp_path / "outside.png")
    write_manifest(root, ["a.png,normal", f"{bad},normal"])
    with pytest.raises(DatasetError, match="line 3"):
        discover(root, on_error="skip")  # never skippable


def test_manifest_symlink_out_of_root(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png(root / "a.png")
    os.symlink(write_png(tmp_path / "secret.png"), root / "link.png")
    write_manifest(root, ["a.png,normal", "link.png,normal"])
    with pytest.raises(DatasetError, match=r"line 3: link\.png resolves outside"):
        discover(root)


def test_manifest_directory_symlinks_are_resolved_once_per_directory(tmp_path: Path) -> None:
    """The scan caches each directory's real path: a linked folder that leads out of the root
    is refused on its first row and on later ones, one that stays inside is followed, and a
    linked file inside a plain folder is still resolved on its own."""
    root = tmp_path / "data"
    write_png(root / "plain" / "a.png")
    write_png(root / "real" / "b.png")
    write_png(tmp_path / "outside" / "c.png")
    write_png(tmp_path / "outside" / "d.png")
    os.symlink(root / "real", root / "inner")
    os.symlink(tmp_path / "outside", root / "outer")
    os.symlink(tmp_path / "outside" / "c.png", root / "plain" / "e.png")
    write_manifest(root, ["plain/a.png,normal", "inner/b.png,normal"])
    assert [s.path.name for s in discover(root).samples] == ["a.png", "b.png"]
    for rows, line in (
        (["plain/a.png,normal", "outer/c.png,normal"], 3),
        (["plain/a.png,normal", "plain/e.png,normal"], 3),
        (["inner/b.png,normal", "outer/missing.png,normal", "outer/d.png,normal"], 3),
    ):
        write_manifest(root, rows)
        with pytest.raises(DatasetError, match=f"line {line}: .* resolves outside"):
            discover(root, on_error="skip")


def test_manifest_rows_are_skipped_for_what_stat_says_of_their_files(tmp_path: Path) -> None:
    """Each kind of entry a row can name (a file, a directory, a symlink to either, a
    dangling one, a missing name, a name under a file) gets the answer ``stat`` gives
    (oracle: ``os.stat`` of each path), with the row's line and the reason."""
    root = tmp_path / "data"
    write_png(root / "plain" / "a.png")
    write_png(root / "plain" / "target.png")
    (root / "plain" / "folder.png").mkdir()
    (root / "plain" / "notadir").write_bytes(b"x")
    os.symlink(root / "plain" / "target.png", root / "plain" / "linked.png")
    os.symlink(root / "plain" / "folder.png", root / "plain" / "linked_folder.png")
    os.symlink(root / "plain" / "gone.png", root / "plain" / "dangling.png")
    cases = {
        "plain/a.png": None,
        "plain/linked.png": None,
        "plain/folder.png": "is not a file",
        "plain/linked_folder.png": "is not a file",
        "plain/dangling.png": "does not exist",
        "plain/missing.png": "does not exist",
        "nowhere/b.png": "does not exist",
        "plain/notadir/c.png": "does not exist",
    }
    for rel, expected in cases.items():  # the oracle agrees with the table
        try:
            regular = os.stat(root / rel).st_mode & 0o170000 == 0o100000
            assert (expected is None) == regular, rel
        except (FileNotFoundError, NotADirectoryError):
            assert expected == "does not exist", rel
    write_manifest(root, [f"{rel},normal" for rel in cases])
    index = discover(root, on_error="skip")
    assert [index.relative(s) for s in index.samples] == ["plain/a.png", "plain/linked.png"]
    assert index.skipped == [
        (rel, f"line {line}: {rel} {expected}")
        for line, (rel, expected) in enumerate(cases.items(), start=2)
        if expected is not None
    ]


def test_manifest_structural_errors(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    write_manifest(tmp_path, ["a.png,normal"], header="file,label")
    with pytest.raises(DatasetError, match="missing required column"):
        discover(tmp_path)
    write_manifest(tmp_path, ["a.png,normal,sometimes"], header="path,label,split")
    with pytest.raises(DatasetError, match="line 2: unknown split"):
        discover(tmp_path)
    write_manifest(tmp_path, ["a.png,normal", "a.png,covid"])
    with pytest.raises(DatasetError, match=r"line 3: a\.png is already listed on line 2"):
        discover(tmp_path)


def test_class_names_order_and_mismatch(tmp_path: Path) -> None:
    manifest_set(tmp_path, {"a.png": "normal", "b.png": "covid"})
    index = discover(tmp_path, class_names=["normal", "covid", "effusion"])
    assert index.class_names == ["normal", "covid", "effusion"]
    assert [s.label for s in index.samples] == [0, 1]
    assert index.counts() == {"normal": 1, "covid": 1, "effusion": 0}
    with pytest.raises(DatasetError, match="line 3: label 'covid' is not in class_names"):
        discover(tmp_path, class_names=["normal"])


def test_root_must_be_a_directory_with_images(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="not a directory"):
        discover(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no images"):
        discover(tmp_path / "empty")


# --------------------------------------------------------------------------- ImageFolder


def test_image_folder_discovery(tmp_path: Path) -> None:
    write_png(tmp_path / "normal" / "x.png")
    write_png(tmp_path / "pneumonia" / "deep" / "y.PNG")
    write_png(tmp_path / "pneumonia" / ".hidden.png")
    write_png(tmp_path / "pneumonia" / ".cache" / "z.png")
    write_png(tmp_path / "masks" / "normal" / "x.png")
    write_png(tmp_path / ".git" / "w.png")
    (tmp_path / "normal" / "notes.txt").write_text("hi")
    index = discover(tmp_path)
    assert index.class_names == ["normal", "pneumonia"]
    assert [(index.relative(s), s.label) for s in index.samples] == [
        ("normal/x.png", 0),
        ("pneumonia/deep/y.PNG", 1),
    ]
    assert index.samples[0].mask == tmp_path.resolve() / "masks" / "normal" / "x.png"
    assert index.samples[1].mask is None
    assert ("normal/notes.txt", "not an image suffix") in index.skipped


def test_image_folder_class_names(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "1.png")
    write_png(tmp_path / "b" / "2.png")
    index = discover(tmp_path, class_names=["b", "a", "c"])
    assert {s.path.name: s.label for s in index.samples} == {"1.png": 1, "2.png": 0}
    with pytest.raises(DatasetError, match=r"\['b'\] not in class_names"):
        discover(tmp_path, class_names=["a"])


def test_image_folder_empty_class(tmp_path: Path) -> None:
    write_png(tmp_path / "a" / "1.png")
    (tmp_path / "b").mkdir()
    with pytest.raises(DatasetError, match="class folder has no images"):
        discover(tmp_path)
    index = discover(tmp_path, on_error="skip")
    assert index.class_names == ["a"] and ("b", "class folder has no images") in index.skipped


# --------------------------------------------------------------------------- fingerprint


def test_fingerprint_stable_and_sensitive(tmp_path: Path) -> None:
    manifest_set(tmp_path, {"a.png": "normal", "b.png": "covid", "c.png": "covid"})
    first = discover(tmp_path).fingerprint()
    assert first == discover(tmp_path).fingerprint()
    assert len(first) == 64
    write_manifest(tmp_path, ["c.png,covid", "a.png,normal", "b.png,covid"])  # reordered
    assert discover(tmp_path).fingerprint() == first
    write_manifest(tmp_path, ["c.png,covid", "a.png,normal", "b.png,normal"])  # relabelled
    assert discover(tmp_path).fingerprint() != first
    write_manifest(tmp_path, ["c.png,covid", "a.png,normal", "b.png,covid"])
    noise = np.random.default_rng(0).integers(0, 255, (8, 8), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "b.png")  # content (so file size) changed
    assert discover(tmp_path).fingerprint() != first


# --------------------------------------------------------------------------- splits


def synthetic_index(per_class: dict[str, int]) -> DatasetIndex:
    root = Path("/data")
    samples = [
        Sample(root / name / f"{i:03d}.png", label)
        for label, (name, n) in enumerate(per_class.items())
        for i in range(n)
    ]
    return DatasetIndex(root, list(per_class), samples, [])


def test_assign_splits_deterministic_and_stratified() -> None:
    index = synthetic_index({"a": 40, "b": 10, "c": 3, "d": 2})
    split = assign_splits(index, val=0.15, test=0.15, seed=7)
    assert split == assign_splits(index, val=0.15, test=0.15, seed=7)
    assert split != assign_splits(index, val=0.15, test=0.15, seed=8)
    shuffled = DatasetIndex(index.root, index.class_names, index.samples[::-1], [])
    by_path = {s.path: s.split for s in split.samples}
    assert by_path == {s.path: s.split for s in assign_splits(shuffled, seed=7).samples}
    for label, name in enumerate(index.class_names):
        splits = [s.split for s in split.samples if s.label == label]
        if len(splits) >= 3:
            assert {"train", "val", "test"} <= set(splits), name
    a = [s.split for s in split.samples if s.label == 0]
    assert (a.count("train"), a.count("val"), a.count("test")) == (28, 6, 6)
    assert split.subset("val").counts() == {"a": 6, "b": 2, "c": 1, "d": 0}


def test_assign_splits_keeps_complete_manifest_splits(tmp_path: Path) -> None:
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    write_manifest(tmp_path, ["a.png,x,test", "b.png,x,train"], header="path,label,split")
    split = assign_splits(discover(tmp_path), seed=3)
    assert [s.split for s in split.samples] == ["test", "train"]
    with pytest.raises(DatasetError, match="no splits assigned"):
        synthetic_index({"a": 3}).subset("train")


# --------------------------------------------------------------------------- ImageDataset


def gray_set(root: Path, values: dict[str, int]) -> DatasetIndex:
    for name, value in values.items():
        write_png(root / "cls" / name, value=value, size=(8, 10))
    return discover(root)


def test_image_dataset_gray_to_three_channels(tmp_path: Path) -> None:
    index = gray_set(tmp_path, {"half.png": 128, "white.png": 255})
    ds = ImageDataset(index, (16, 12), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    assert len(ds) == 2 and isinstance(ds, torch.utils.data.Dataset)
    image, label, i = ds[1]
    assert image.shape == (3, 16, 12) and image.dtype == torch.float32
    assert (label, i) == (0, 1)
    torch.testing.assert_close(image, torch.full((3, 16, 12), 2.0))  # (1 - 0.5) / 0.25
    image, _, _ = ds[0]
    assert image.abs().max() < 0.02  # 128/255 ~ 0.5


def test_image_dataset_one_channel_and_cache(tmp_path: Path) -> None:
    write_png(tmp_path / "c" / "rgb.png")
    Image.fromarray(np.dstack([np.full((8, 8), v, np.uint8) for v in (0, 51, 102)])).save(
        tmp_path / "c" / "rgb.png"
    )
    index = discover(tmp_path)
    plain = ImageDataset(index, (8, 8), mean=[0.0], std=[1.0], channels=1)
    cached = ImageDataset(index, (8, 8), mean=[0.0], std=[1.0], channels=1, cache=True)
    assert plain[0][0].shape == (1, 8, 8)
    assert plain[0][0].mean().item() == pytest.approx(0.2, abs=1e-6)  # mean of 0, .2, .4
    torch.testing.assert_close(cached[0][0], plain[0][0], atol=1e-3, rtol=0)


def test_image_dataset_raise_and_skip(tmp_path: Path) -> None:
    index = gray_set(tmp_path, {"a.png": 10, "b.png": 20, "c.png": 30})
    bad = tmp_path / "cls" / "b.png"
    bad.write_bytes(bad.read_bytes()[:30])
    ds = ImageDataset(index, (8, 8), mean=[0.5], std=[0.5])
    with pytest.raises(ImageReadError, match=r"b\.png"):
        ds[1]
    ds = ImageDataset(index, (8, 8), mean=[0.5], std=[0.5], on_error="skip")
    assert len(ds) == 2 and [s.path.name for s in ds.samples] == ["a.png", "c.png"]
    assert [Path(p).name for p, _ in ds.read_failures] == ["b.png"]
    assert ds.index.skipped[-1][0].endswith("b.png")
    assert len(index.samples) == 3  # the caller's index is not modified
    loader = torch.utils.data.DataLoader(ds, batch_size=2)
    images, _, indices = next(iter(loader))
    assert images.shape == (2, 3, 8, 8) and indices.tolist() == [0, 1]
    (tmp_path / "cls" / "c.png").write_text("broken after validation")
    with pytest.warns(UserWarning, match=r"c\.png"):
        _, _, stand_in = ds[1]
    assert stand_in == 0 and Path(ds.read_failures[-1][0]).name == "c.png"


def test_image_dataset_augment_keeps_laterality(tmp_path: Path) -> None:
    pixels = np.zeros((32, 32), dtype=np.uint8)
    pixels[:, :12] = 255  # bright left side
    write_png(tmp_path / "cls" / "left.png")
    Image.fromarray(pixels).save(tmp_path / "cls" / "left.png")
    ds = ImageDataset(discover(tmp_path), (32, 32), mean=[0.0], std=[1.0], augment=True)
    torch.manual_seed(0)
    outs = [ds[0][0] for _ in range(20)]
    assert all(o.shape == (3, 32, 32) and torch.isfinite(o).all() for o in outs)
    assert all(o[:, :, :12].mean() > 3 * o[:, :, 20:].mean() for o in outs)  # never flipped
    assert not all(torch.equal(outs[0], o) for o in outs[1:])


def test_image_dataset_pickles_for_spawned_workers(tmp_path: Path) -> None:
    ds = ImageDataset(gray_set(tmp_path, {"a.png": 10}), (8, 8), mean=[0.5], std=[0.5])
    again = pickle.loads(pickle.dumps(ds))
    torch.testing.assert_close(again[0][0], ds[0][0])


def test_datasets_module_import_is_torch_free() -> None:
    code = "import sys, training.datasets; assert 'torch' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).parents[2])


def test_content_digest_sees_every_byte_and_path_but_not_write_order(tmp_path: Path) -> None:
    """Equal digests mean byte-identical folders (what lets a client skip an upload); the
    fingerprint, by design, ignores splits and pixels of equal size."""

    def tree(root: Path, order: list[str], split: str = "test", value: int = 100) -> Path:
        for name in order:
            write_png(root / name, value=value if name.endswith("b.png") else 50)
        rows = [f"{name},{name.split('/')[0]},{split}" for name in sorted(order)]
        (root / "manifest.csv").write_text("path,label,split\n" + "\n".join(rows) + "\n")
        return root

    names = ["normal/a.png", "covid/b.png", "covid/c.png"]
    base = tree(tmp_path / "base", names)
    same = tree(tmp_path / "same", names[::-1])
    resplit = tree(tmp_path / "resplit", names, split="val")
    repixel = tree(tmp_path / "repixel", names, value=101)
    digest = content_digest(base)
    assert digest == content_digest(same) and len(digest) == 64
    assert content_digest(resplit) != digest and content_digest(repixel) != digest
    assert discover(resplit).fingerprint() == discover(base).fingerprint()
    assert discover(repixel).fingerprint() == discover(base).fingerprint()
    (base / "covid" / "c.png").rename(base / "covid" / "d.png")
    assert content_digest(base) != digest


# --------------------------------------------------------------------------- regions


def write_mask(path: Path, inside: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(inside.astype(np.uint8) * 255).save(path)
    return path


def test_manifest_region_columns(tmp_path: Path) -> None:
    for name in ("a.png", "b.png", "c.png"):
        write_png(tmp_path / name)
    for name in ("lung.png", "cue.png", "les.png"):
        write_png(tmp_path / "m" / name)
    write_manifest(
        tmp_path,
        [
            "a.png,covid,m/les.png,m/lung.png,m/cue.png,1 2 5 6",
            "b.png,covid,,m/lung.png,, 0 0 8 8 ;2.5 1 3 7.5 ",
            "c.png,normal,,,,",
        ],
        header="path,label,mask,Lung_Mask,shortcut_mask,bbox",
    )
    index = discover(tmp_path)
    a, b, c = index.samples
    root = tmp_path.resolve()
    assert (a.mask, a.lung_mask, a.shortcut_mask) == (
        root / "m" / "les.png",
        root / "m" / "lung.png",
        root / "m" / "cue.png",
    )
    assert a.bbox == ((1.0, 2.0, 5.0, 6.0),)
    assert b.bbox == ((0.0, 0.0, 8.0, 8.0), (2.5, 1.0, 3.0, 7.5)) and b.mask is None
    assert (a.regions, b.regions, c.regions) == (
        ("lesion", "lung", "shortcut"),
        ("lesion", "lung"),
        (),
    )
    assert index.regions() == ["lesion", "lung", "shortcut"]
    assert index.regions([1, 2]) == ["lesion", "lung"] and index.regions([2]) == []


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("1 2 3", r"line 3, column bbox: '1 2 3' is not a box 'x0 y0 x1 y1'"),
        ("1 2 3 x", r"line 3, column bbox: '1 2 3 x' is not a box"),
        ("1 2 3 4; 1 2", r"line 3, column bbox: '1 2' is not a box"),
        ("1 2 3 nan", r"line 3, column bbox: '1 2 3 nan' is not a box"),
        ("5 2 3 4", r"line 3, column bbox: '5 2 3 4' needs 0 <= x0 < x1 and 0 <= y0 < y1"),
        ("1 4 3 4", r"line 3, column bbox: '1 4 3 4' needs 0 <= x0 < x1"),
        ("-1 0 3 4", r"line 3, column bbox: '-1 0 3 4' needs 0 <= x0"),
    ],
)
def test_manifest_bad_bbox_names_line_and_column(tmp_path: Path, cell: str, message: str) -> None:
    write_png(tmp_path / "a.png")
    write_png(tmp_path / "b.png")
    write_manifest(tmp_path, ["a.png,normal,", f'b.png,normal,"{cell}"'], header="path,label,bbox")
    with pytest.raises(DatasetError, match=message):
        discover(tmp_path, on_error="skip")  # never skippable


def test_manifest_region_mask_paths_are_checked_like_mask(tmp_path: Path) -> None:
    root = tmp_path / "data"
    write_png(root / "a.png")
    write_png(tmp_path / "outside.png")
    write_manifest(root, ["a.png,normal,../outside.png"], header="path,label,lung_mask")
    with pytest.raises(DatasetError, match=r"line 2, column lung_mask: \.\./outside\.png escapes"):
        discover(root, on_error="skip")
    write_manifest(root, ["a.png,normal,gone.png"], header="path,label,shortcut_mask")
    with pytest.raises(DatasetError, match=r"line 2: shortcut_mask gone\.png does not exist"):
        discover(root)
    write_png(root / "b.png")
    write_manifest(root, ["a.png,normal,gone.png", "b.png,normal,"], header="path,label,lung_mask")
    index = discover(root, on_error="skip")
    assert [s.path.name for s in index.samples] == ["b.png"]
    assert index.skipped == [("a.png", "line 2: lung_mask gone.png does not exist")]


def test_image_folder_region_mask_folders(tmp_path: Path) -> None:
    write_png(tmp_path / "normal" / "x.png")
    write_png(tmp_path / "covid" / "y.png")
    write_png(tmp_path / "lung_masks" / "normal" / "x.png")
    write_png(tmp_path / "lung_masks" / "covid" / "y.png")
    write_png(tmp_path / "shortcut_masks" / "covid" / "y.png")
    index = discover(tmp_path)
    assert index.class_names == ["covid", "normal"]  # mask folders are not classes
    y, x = index.samples
    root = tmp_path.resolve()
    assert (x.lung_mask, x.shortcut_mask, x.mask) == (root / "lung_masks/normal/x.png", None, None)
    assert y.shortcut_mask == root / "shortcut_masks/covid/y.png"
    assert index.regions() == ["lung", "shortcut"]


def test_region_masks_are_resized_nearest_at_pixel_centres(tmp_path: Path) -> None:
    """Masks of any resolution (same field of view) land on the analysis grid by taking, for
    each analysis pixel, the mask pixel under its centre; no regions asked: nothing is read."""
    rng = np.random.default_rng(0)
    write_png(tmp_path / "img.png", size=(30, 40))  # H 30, W 40
    lung = rng.random((60, 80)) < 0.5  # twice the image
    cue = rng.random((15, 20)) < 0.5  # half the image
    write_mask(tmp_path / "lung.png", lung)
    write_mask(tmp_path / "cue.png", cue)
    write_manifest(
        tmp_path, ["img.png,a,lung.png,cue.png"], header="path,label,lung_mask,shortcut_mask"
    )
    index = discover(tmp_path)
    ds = ImageDataset(index, (12, 16), [0.0], [1.0], regions=["shortcut", "lung", "lesion"])
    image, label, _, masks = ds[0]
    assert (
        label == 0
        and image.shape == (3, 12, 16)
        and masks.shape == (3, 12, 16)
        and masks.dtype == torch.bool
    )

    def centres(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
        rows = np.floor((np.arange(size[0]) + 0.5) * mask.shape[0] / size[0]).astype(int)
        cols = np.floor((np.arange(size[1]) + 0.5) * mask.shape[1] / size[1]).astype(int)
        return mask[np.ix_(rows, cols)]

    assert np.array_equal(masks[0].numpy(), centres(cue, (12, 16)))
    assert np.array_equal(masks[1].numpy(), centres(lung, (12, 16)))
    assert not masks[2].any()  # no lesion mask or box: all False
    same = ImageDataset(index, (60, 80), [0.0], [1.0], regions=["lung"])[0][3]
    assert np.array_equal(same[0].numpy(), lung)  # at the mask's own size: unchanged
    (tmp_path / "lung.png").write_bytes(b"not a png")  # a broken mask ...
    assert len(ImageDataset(index, (12, 16), [0.0], [1.0])[0]) == 3  # ... unread without regions
    with pytest.raises(ImageReadError, match=r"lung\.png"):
        ImageDataset(index, (12, 16), [0.0], [1.0], regions=["lung"])[0]


def test_boxes_are_drawn_at_the_image_size_then_sampled_like_a_mask(tmp_path: Path) -> None:
    write_png(tmp_path / "img.png", size=(30, 40))
    write_manifest(tmp_path, ['img.png,a,"4 3 21 17;30 20 40 30"'], header="path,label,bbox")
    drawn = np.zeros((30, 40), dtype=bool)
    drawn[3:17, 4:21] = drawn[20:30, 30:40] = True
    rows = np.floor((np.arange(12) + 0.5) * 30 / 12).astype(int)
    cols = np.floor((np.arange(16) + 0.5) * 40 / 16).astype(int)
    ds = ImageDataset(discover(tmp_path), (12, 16), [0.0], [1.0], regions=["lesion"])
    assert np.array_equal(ds[0][3][0].numpy(), drawn[np.ix_(rows, cols)])
    assert np.array_equal(ds.region_masks(0)[0].numpy(), drawn[np.ix_(rows, cols)])


def test_region_masks_refuse_what_does_not_fit_the_image(tmp_path: Path) -> None:
    write_png(tmp_path / "img.png", size=(30, 40))
    write_mask(tmp_path / "tall.png", np.ones((40, 40), dtype=bool))
    write_manifest(tmp_path, ["img.png,a,tall.png,"], header="path,label,mask,bbox")
    ds = ImageDataset(discover(tmp_path), (12, 16), [0.0], [1.0], regions=["lesion"])
    with pytest.raises(DatasetError, match=r"tall\.png: mask is 40x40 px, its image 40x30 px"):
        ds[0]
    write_manifest(tmp_path, ["img.png,a,,0 0 41 30"], header="path,label,mask,bbox")
    ds = ImageDataset(discover(tmp_path), (12, 16), [0.0], [1.0], regions=["lesion"])
    with pytest.raises(DatasetError, match=r"img\.png: bbox '0 0 41 30' reaches beyond the 40x30"):
        ds[0]
    with pytest.raises(ValueError, match="regions: unknown"):
        ImageDataset(discover(tmp_path), (12, 16), [0.0], [1.0], regions=["heart"])
    with pytest.raises(ValueError, match="augment"):
        ImageDataset(discover(tmp_path), (12, 16), [0.0], [1.0], regions=["lesion"], augment=True)


def _grouped_manifest(root, groups: dict[str, int], seed: int = 0) -> None:
    """A manifest whose patients (group -> number of images) carry mixed labels."""
    from PIL import Image

    lines = ["path,label,group"]
    k = 0
    for group, count in groups.items():
        for j in range(count):
            name = f"img/{group}_{j:03d}.png"
            (root / "img").mkdir(parents=True, exist_ok=True)
            Image.new("L", (4, 4), color=(k * 7) % 256).save(root / name)
            lines.append(f"{name},{['a', 'b', 'c'][k % 3]},{group}")
            k += 1
    (root / "manifest.csv").write_text("\n".join(lines) + "\n")


def test_patients_are_never_split_across_splits(tmp_path) -> None:
    groups = {f"p{i:02d}": 1 + (i * 7) % 5 for i in range(40)}
    _grouped_manifest(tmp_path, groups)
    index = discover(tmp_path)
    split = assign_splits(index, val=0.15, test=0.15, seed=3)
    where: dict[str, set[str]] = {}
    for sample in split.samples:
        where.setdefault(sample.group, set()).add(sample.split)
    assert all(len(splits) == 1 for splits in where.values()), "a patient in two splits"
    n = len(split.samples)
    counts = {
        name: sum(s.split == name for s in split.samples) for name in ("train", "val", "test")
    }
    largest = max(groups.values())  # a group overshoots its split by less than its size
    for name, share in (("test", 0.15), ("val", 0.15)):
        assert round(n * share) <= counts[name] < round(n * share) + largest, (name, counts)
    assert split == assign_splits(index, val=0.15, test=0.15, seed=3)
    assert split != assign_splits(index, val=0.15, test=0.15, seed=4)
    # groups are part of the data's identity; without them the fingerprint is the old one
    plain = [
        line.rsplit(",", 1)[0] for line in (tmp_path / "manifest.csv").read_text().splitlines()
    ]
    other = tmp_path.parent / "plain"
    shutil.copytree(tmp_path, other)
    (other / "manifest.csv").write_text("\n".join(plain) + "\n")
    assert discover(other).fingerprint() != index.fingerprint()


def test_too_few_groups_is_a_clear_error(tmp_path) -> None:
    _grouped_manifest(tmp_path, {"p1": 3, "p2": 3})
    with pytest.raises(DatasetError, match="too few"):
        assign_splits(discover(tmp_path), val=0.3, test=0.3, seed=0)


def _nih_folder(root, patients: int, follow_ups: int, rename: str | None = None) -> None:
    """ChestX-ray14 names (<patient>_<follow-up>.png) in class folders, labels mixed within
    a patient, as in the real set."""
    from PIL import Image

    k = 0
    for p in range(1, patients + 1):
        for f in range(follow_ups):
            folder = root / ["effusion", "normal"][k % 2]
            folder.mkdir(parents=True, exist_ok=True)
            Image.new("L", (4, 4), color=k % 256).save(folder / f"{p:08d}_{f:03d}.png")
            k += 1
    if rename:
        next(root.rglob("*.png")).rename(root / "normal" / rename)


def test_nih_style_names_keep_each_patient_in_one_split(tmp_path) -> None:
    _nih_folder(tmp_path / "nih", patients=20, follow_ups=3)
    index = discover(tmp_path / "nih")
    assert index.groups_from == "file names"
    assert {s.group for s in index.samples} == {f"patient {p:08d}" for p in range(1, 21)}
    split = assign_splits(index, val=0.2, test=0.2, seed=1)
    where: dict[str, set[str]] = {}
    for sample in split.samples:
        where.setdefault(sample.path.name[:8], set()).add(sample.split)
    assert all(len(s) == 1 for s in where.values()) and len(where) == 20
    assert {s for v in where.values() for s in v} == {"train", "val", "test"}
    assert summary(index)["groups"] == 20
    # one file named otherwise, or no patient with two images: nothing is guessed
    _nih_folder(tmp_path / "mixed", patients=20, follow_ups=3, rename="scan.png")
    assert discover(tmp_path / "mixed").groups_from is None
    _nih_folder(tmp_path / "single", patients=20, follow_ups=1)
    assert not any(s.group for s in discover(tmp_path / "single").samples)
