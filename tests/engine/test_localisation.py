"""Reference-based localisation (docs/architecture.md, "Drift metrics"; issue 13 items 2, 3b):
each model's share of map mass in a region and its pointing game, and their change TL -> FT,
against numpy on hand-made maps and masks; the NaN rules; the metric defaults resolved against
the data; and a whole ``camdrift drift`` whose rows, store and report carry them."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from service.cli import app
from tests.engine.test_metrics import make_maps
from training.checkpoints import load_checkpoint, model_metadata, save_checkpoint
from training.datasets import discover
from training.image_dataset import ImageDataset
from training.zoo import create_model
from worker.attribution import attribute
from worker.catalog import DEFAULT_METRICS, METRICS, REGIONS, default_metrics, pair_metrics
from worker.engine.audit import LoadedModel, stacked_metrics
from worker.engine.metrics import drift_metrics
from worker.job_config import JobConfig, resolve_metrics

REGION_METRICS = [name for name, info in METRICS.items() if info.requires is not None]
ATOL = 1e-6

# ----------------------------------------------------------------------------- oracles


def _degenerate(m: np.ndarray) -> bool:
    return not np.isfinite(m).all() or m.sum() == 0 or m.max() == m.min()


def _share(m: np.ndarray, region: np.ndarray) -> float:
    """Share of the map's mass inside ``region`` (float64 sums); NaN: no region or no mass."""
    m = m.astype(np.float64)
    if not region.any() or m.sum() == 0:
        return math.nan
    return float(m[region].sum() / m.sum())


def _hit(m: np.ndarray, region: np.ndarray) -> float:
    """Pointing game: 1.0 if the first maximum (numpy's argmax, row-major) is in ``region``."""
    if not region.any() or _degenerate(m):
        return math.nan
    return float(region.flat[int(np.argmax(m))])


def _levels(a: np.ndarray, b: np.ndarray, region: np.ndarray, fn) -> tuple[float, float, float]:
    tl, ft = fn(a, region), fn(b, region)
    return tl, ft, ft - tl


def oracle(a: np.ndarray, b: np.ndarray, masks: dict[str, np.ndarray]) -> dict[str, float]:
    """Every region metric of one pair of maps, from numpy alone."""
    out: dict[str, float] = {}
    concepts = {
        "lesion_mass": (masks["lesion"], _share),
        "pointing": (masks["lesion"], _hit),
        "shortcut_mass": (masks["shortcut"], _share),
        "outside_lung": (masks["lung"], lambda m, r: 1.0 - _share(m, r)),
    }
    for stem, (region, fn) in concepts.items():
        for end, value in zip(("tl", "ft", "change"), _levels(a, b, region, fn), strict=True):
            out[f"{stem}_{end}"] = value
    return out


def _same(got: float, want: float, atol: float = ATOL) -> bool:
    return (math.isnan(got) and math.isnan(want)) or abs(got - want) <= atol


def random_masks(n: int, shape: tuple[int, int], seed: int) -> dict[str, np.ndarray]:
    """Per region, one random rectangle per sample (and scattered pixels for the lungs)."""
    rng = np.random.default_rng(seed)
    h, w = shape
    out = {}
    for name in REGIONS:
        masks = np.zeros((n, h, w), dtype=bool)
        for i in range(n):
            y0, x0 = rng.integers(0, h - 2), rng.integers(0, w - 2)
            masks[i, y0 : rng.integers(y0 + 1, h), x0 : rng.integers(x0 + 1, w)] = True
        if name == "lung":
            masks |= rng.random((n, h, w)) < 0.2
        out[name] = masks
    return out


def _torch(masks: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {name: torch.from_numpy(m) for name, m in masks.items()}


# ----------------------------------------------------------------------------- metrics


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("kind", ["uniform", "relu", "cam"])
def test_region_metrics_match_numpy(kind: str, seed: int) -> None:
    shape = (19, 23)
    a = make_maps(kind, 6, shape, seed)
    b = make_maps(kind, 6, shape, seed + 50)
    masks = random_masks(6, shape, seed)
    got = drift_metrics(torch.from_numpy(a), torch.from_numpy(b), REGION_METRICS, _torch(masks))
    assert list(got) == REGION_METRICS
    for i in range(6):
        want = oracle(a[i], b[i], {k: m[i] for k, m in masks.items()})
        for name in REGION_METRICS:
            value = got[name][i].item()
            assert not math.isnan(value), (name, i)  # every sample has every region here
            assert _same(value, want[name]), (name, i, value, want[name])


def test_mass_share_on_a_hand_made_map() -> None:
    a = torch.zeros(1, 4, 4)
    a[0, 0, 0], a[0, 1, 1], a[0, 3, 3] = 1.0, 0.5, 0.5  # mass 2
    b = torch.zeros(1, 4, 4)
    b[0, 3, 3] = 1.0
    lesion = torch.zeros(1, 4, 4, dtype=torch.bool)
    lesion[0, :2, :2] = True  # holds 1.5 of a's mass, none of b's
    got = drift_metrics(
        a, b, ["lesion_mass_tl", "lesion_mass_ft", "lesion_mass_change"], {"lesion": lesion}
    )
    assert got["lesion_mass_tl"].item() == pytest.approx(0.75)
    assert got["lesion_mass_ft"].item() == 0.0
    assert got["lesion_mass_change"].item() == pytest.approx(-0.75)  # moved off the pathology
    lungs = ~lesion  # outside the lungs = inside the lesion square here
    got = drift_metrics(
        a, b, ["outside_lung_tl", "outside_lung_ft", "outside_lung_change"], {"lung": lungs}
    )
    assert got["outside_lung_tl"].item() == pytest.approx(0.75)
    assert got["outside_lung_ft"].item() == pytest.approx(0.0, abs=1e-7)
    assert got["outside_lung_change"].item() == pytest.approx(-0.75)  # moved onto anatomy


def test_pointing_game_ties_go_to_the_first_maximum_in_row_major_order() -> None:
    maps = torch.zeros(2, 5, 4)
    maps[:, 1, 2] = 1.0  # two equal peaks: (1, 2) comes first row-major ...
    maps[:, 3, 0] = 1.0  # ... before (3, 0)
    maps[:, 2, 2] = 0.5
    first = torch.zeros(2, 5, 4, dtype=torch.bool)
    first[:, 1, 2] = True
    second = torch.zeros(2, 5, 4, dtype=torch.bool)
    second[:, 3:, :2] = True
    names = ["pointing_tl", "pointing_ft", "pointing_change"]
    hit = drift_metrics(maps, maps.clone(), names, {"lesion": first})
    miss = drift_metrics(maps, maps.clone(), names, {"lesion": second})
    assert hit["pointing_tl"].tolist() == [1.0, 1.0] == hit["pointing_ft"].tolist()
    assert miss["pointing_tl"].tolist() == [0.0, 0.0]  # the other peak does not count
    assert hit["pointing_change"].tolist() == [0.0, 0.0]
    for i in range(2):  # numpy's argmax breaks ties the same way
        assert _hit(maps[i].numpy(), first[i].numpy()) == 1.0
        assert _hit(maps[i].numpy(), second[i].numpy()) == 0.0
    moved = maps.clone()
    moved[:, 1, 2] = 0.9  # the FT's peak leaves the lesion: change -1
    got = drift_metrics(maps, moved, names, {"lesion": first})
    assert got["pointing_change"].tolist() == [-1.0, -1.0]


def test_nan_rules_empty_region_massless_and_constant_maps() -> None:
    shape = (12, 10)
    a = make_maps("cam", 4, shape, 3)
    b = make_maps("cam", 4, shape, 4)
    masks = random_masks(4, shape, 5)
    masks["lesion"][1] = False  # sample 1 has no lesion (a finding-free image)
    a[2] = 0.0  # the TL map of sample 2 has no mass
    b[3] = 0.4  # the FT map of sample 3 is constant (mass, but no peak)
    got = drift_metrics(torch.from_numpy(a), torch.from_numpy(b), REGION_METRICS, _torch(masks))
    for i in range(4):
        want = oracle(a[i], b[i], {k: m[i] for k, m in masks.items()})
        for name in REGION_METRICS:
            assert _same(got[name][i].item(), want[name]), (name, i)

    def nan(name: str) -> list[bool]:
        return [math.isnan(v) for v in got[name].tolist()]

    for name in ("lesion_mass_tl", "lesion_mass_ft", "pointing_tl", "pointing_change"):
        assert nan(name)[1], name  # no region: NaN, whatever the maps
    assert not nan("shortcut_mass_tl")[1] and not nan("outside_lung_change")[1]  # other regions
    assert nan("lesion_mass_tl")[2] and nan("lesion_mass_change")[2]  # TL map massless
    assert not nan("lesion_mass_ft")[2]  # the FT's own level does not need the TL map
    region = masks["lesion"][3]
    assert got["lesion_mass_ft"][3].item() == pytest.approx(region.mean())  # constant: the area
    assert nan("pointing_ft")[3] and not nan("pointing_tl")[3]  # constant: no peak


def test_region_metrics_refuse_missing_or_malformed_masks() -> None:
    a, b = torch.rand(2, 6, 6), torch.rand(2, 6, 6)
    with pytest.raises(ValueError, match="pointing_ft need the lesion region"):
        drift_metrics(a, b, ["pearson", "pointing_ft"])
    with pytest.raises(ValueError, match="region 'lung' must be a bool mask"):
        drift_metrics(a, b, ["outside_lung_tl"], {"lung": torch.ones(2, 6, 6)})
    with pytest.raises(ValueError, match="region 'lung' must be a bool mask"):
        drift_metrics(a, b, ["outside_lung_tl"], {"lung": torch.ones(2, 6, 5, dtype=torch.bool)})


def test_default_names_follow_the_regions_given() -> None:
    a, b = torch.rand(2, 6, 6), torch.rand(2, 6, 6)
    plain = drift_metrics(a, b)
    assert list(plain) == pair_metrics(DEFAULT_METRICS)  # audit-stage ones come later
    lung = torch.zeros(2, 6, 6, dtype=torch.bool)
    lung[:, 1:5, 1:5] = True
    got = drift_metrics(a, b, regions={"lung": lung})
    assert list(got) == pair_metrics(default_metrics(["lung"]))
    assert "outside_lung_change" in got and "lesion_mass_tl" not in got


def test_rows_are_independent_and_stacked_methods_agree() -> None:
    shape = (16, 14)
    masks = _torch(random_masks(5, shape, 9))
    maps = {
        m: (
            torch.from_numpy(make_maps("cam", 5, shape, s)),
            torch.from_numpy(make_maps("relu", 5, shape, s + 1)),
        )
        for m, s in (("layercam", 0), ("gradcam++", 2))
    }
    a = {m: pair[0] for m, pair in maps.items()}
    b = {m: pair[1] for m, pair in maps.items()}
    whole = drift_metrics(a["layercam"], b["layercam"], REGION_METRICS, masks)
    for i in (0, 4):
        one = {k: v[i : i + 1] for k, v in masks.items()}
        single = drift_metrics(
            a["layercam"][i : i + 1], b["layercam"][i : i + 1], REGION_METRICS, one
        )
        for name in REGION_METRICS:
            assert _same(whole[name][i].item(), single[name][0].item()), name
    stacked = stacked_metrics(a, b, list(maps), REGION_METRICS, masks)  # the GPU's one call
    for method in maps:
        own = drift_metrics(a[method], b[method], REGION_METRICS, masks)
        for name in REGION_METRICS:
            torch.testing.assert_close(stacked[method][name], own[name], equal_nan=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_region_metrics_on_cuda_match_cpu() -> None:
    shape = (56, 48)
    a = torch.from_numpy(make_maps("cam", 8, shape, 0))
    b = torch.from_numpy(make_maps("cam", 8, shape, 1))
    masks = _torch(random_masks(8, shape, 2))
    cpu = drift_metrics(a, b, REGION_METRICS, masks)
    gpu = drift_metrics(a.cuda(), b.cuda(), REGION_METRICS, {k: m.cuda() for k, m in masks.items()})
    for name in REGION_METRICS:
        assert gpu[name].device.type == "cuda"
        torch.testing.assert_close(gpu[name].cpu(), cpu[name], atol=1e-5, rtol=0, equal_nan=True)


# ----------------------------------------------------------------------------- defaults


def test_a_job_keeps_its_metrics_as_named_and_the_audit_resolves_them() -> None:
    assert JobConfig().metrics is None and JobConfig(metrics=[]).metrics is None
    assert JobConfig(metrics=["pearson", "pearson"]).metrics == ["pearson"]
    assert resolve_metrics(None, []) == list(DEFAULT_METRICS)
    lesion = resolve_metrics(None, ["lesion"])
    assert lesion == [
        *DEFAULT_METRICS,
        "lesion_mass_tl",
        "lesion_mass_ft",
        "lesion_mass_change",
        "pointing_tl",
        "pointing_ft",
        "pointing_change",
    ]
    assert resolve_metrics(["pointing_change", "pearson"], ["lesion"]) == [
        "pointing_change",
        "pearson",
    ]
    with pytest.raises(ValueError, match="metrics: shortcut_mass_ft needs a shortcut region"):
        resolve_metrics(["pearson", "shortcut_mass_ft"], ["lesion", "lung"])


# ----------------------------------------------------------------------------- boxes


def test_a_box_measures_like_the_same_rectangle_given_as_a_mask(tmp_path: Path) -> None:
    """The lesion as a manifest box or as a mask PNG of the same rectangle: the same region at
    the analysis size, hence the same metrics."""
    image = np.random.default_rng(0).integers(0, 255, (40, 60), dtype=np.uint8)
    Image.fromarray(image).save(tmp_path / "boxed.png")
    Image.fromarray(image).save(tmp_path / "masked.png")
    rect = np.zeros((40, 60), dtype=np.uint8)
    rect[8:28, 12:42] = 255  # rows y0..y1-1, columns x0..x1-1
    Image.fromarray(rect).save(tmp_path / "lesion.png")
    (tmp_path / "manifest.csv").write_text(
        "path,label,mask,bbox\nboxed.png,a,,12 8 42 28\nmasked.png,a,lesion.png,\n"
    )
    ds = ImageDataset(discover(tmp_path), (20, 15), [0.0], [1.0], regions=["lesion"])
    boxed, masked = ds[0][3], ds[1][3]
    assert boxed.shape == (1, 20, 15) and boxed.dtype == torch.bool
    assert boxed.any() and torch.equal(boxed, masked)
    maps = torch.from_numpy(make_maps("cam", 2, (20, 15), 1))
    names = ["lesion_mass_tl", "pointing_tl"]
    by_box = drift_metrics(maps, maps, names, {"lesion": boxed.expand(2, -1, -1)})
    by_mask = drift_metrics(maps, maps, names, {"lesion": masked.expand(2, -1, -1)})
    for name in names:
        torch.testing.assert_close(by_box[name], by_mask[name])


# ----------------------------------------------------------------------------- end to end

CLASSES = ["normal", "nodule"]
SIZE = 32  # the checkpoints' input size: the analysis grid
DISK = 64  # images and masks on disk: twice the analysis size, so both are resized


def _world(root: Path, *, with_masks: bool) -> Path:
    """``root/data``: 8 images per class (64 px, textured with a bright blob where the
    'nodule' is), a manifest with lesion masks (nodules 0-4), boxes (nodules 5-7) and lung
    masks (all), or none of those; ``root/{tl,ft}.safetensors``: random tinycnn at 32 px."""
    rng = np.random.default_rng(4)
    data = root / "data"
    (data / "img").mkdir(parents=True, exist_ok=True)
    (data / "masks").mkdir(exist_ok=True)
    lungs = np.zeros((DISK, DISK), dtype=np.uint8)
    lungs[8:56, 6:30] = lungs[8:56, 34:58] = 255
    Image.fromarray(lungs).save(data / "masks" / "lungs.png")
    lines = ["path,label,split,mask,bbox,lung_mask" if with_masks else "path,label,split"]
    for label in CLASSES:
        for k in range(8):
            pixels = rng.normal(90, 25, (DISK, DISK))
            box = None
            if label == "nodule":
                y, x = rng.integers(12, 44, size=2)
                pixels[y : y + 10, x : x + 10] += 120
                box = (int(x), int(y), int(x) + 10, int(y) + 10)
            name = f"img/{label}_{k}.png"
            Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(data / name)
            if not with_masks:
                lines.append(f"{name},{label},test")
                continue
            mask = bbox = ""
            if box is not None and k < 5:
                rect = np.zeros((DISK, DISK), dtype=np.uint8)
                rect[box[1] : box[3], box[0] : box[2]] = 255
                mask = f"masks/{label}_{k}.png"
                Image.fromarray(rect).save(data / mask)
            elif box is not None:
                bbox = " ".join(map(str, box))
            lines.append(f"{name},{label},test,{mask},{bbox},masks/lungs.png")
    (data / "manifest.csv").write_text("\n".join(lines) + "\n")
    for seed, phase in ((0, "tl"), (1, "ft")):
        torch.manual_seed(seed)
        model = create_model("tinycnn", len(CLASSES))
        meta = model_metadata(model, CLASSES, phase=phase, input_size=[SIZE, SIZE])
        save_checkpoint(root / f"{phase}.safetensors", model, meta)
    return root


def _drift(root: Path, out: Path, *extra: str):
    args = ["drift", "--baseline", str(root / "tl.safetensors")]
    args += ["--candidate", str(root / "ft.safetensors"), "--data", str(root / "data")]
    args += ["--out", str(out), "--sample-filter", "all", "--split", "all", "--methods"]
    return CliRunner().invoke(app, [*args, "layercam,gradcam", *extra])


def _region_oracle(root: Path) -> dict[str, dict[str, dict[str, float]]]:
    """path -> method -> region metric, from the public attribution API, PIL and numpy: the
    masks read and sampled at the pixel centres here, the boxes drawn here."""
    data = root / "data"
    index = discover(data, class_names=CLASSES)
    images = ImageDataset(index, (SIZE, SIZE), [0.0] * 3, [1.0] * 3)  # no regions: images only
    x = torch.stack([images[i][0] for i in range(len(images))])
    labels = torch.tensor([s.label for s in index.samples])
    centre = (np.arange(SIZE) + 0.5) * DISK / SIZE  # nearest sample of each analysis pixel
    pick = np.floor(centre).astype(int)
    maps = {}
    for phase in ("tl", "ft"):
        model, meta = load_checkpoint(root / f"{phase}.safetensors")
        prepared = LoadedModel(model, meta).prepare(x)
        maps[phase] = attribute(model.eval(), prepared, labels, ("layercam", "gradcam"))
    out: dict[str, dict[str, dict[str, float]]] = {}
    for i, sample in enumerate(index.samples):
        lung = np.asarray(Image.open(sample.lung_mask))[np.ix_(pick, pick)] > 0
        lesion = np.zeros((SIZE, SIZE), dtype=bool)
        if sample.mask is not None:
            lesion = np.asarray(Image.open(sample.mask))[np.ix_(pick, pick)] > 0
        for x0, y0, x1, y1 in sample.bbox or ():
            inside_y = (centre >= y0) & (centre < y1)
            inside_x = (centre >= x0) & (centre < x1)
            lesion |= inside_y[:, None] & inside_x[None, :]
        masks = {"lesion": lesion, "lung": lung, "shortcut": np.zeros_like(lung)}
        out[index.relative(sample)] = {
            method: oracle(maps["tl"][method][i].numpy(), maps["ft"][method][i].numpy(), masks)
            for method in ("layercam", "gradcam")
        }
    return out


@pytest.fixture(scope="module")
def masked_run(tmp_path_factory) -> tuple[Path, dict, list[dict]]:
    root = _world(tmp_path_factory.mktemp("masked"), with_masks=True)
    out = root / "report.json"
    result = _drift(root, out)
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in (root / "report.samples.jsonl").read_text().splitlines()]
    return root, json.loads(out.read_text()), rows


def test_drift_on_masked_data_reports_localisation(masked_run) -> None:
    root, report, rows = masked_run
    wanted = default_metrics(["lesion", "lung"])
    assert report["config"]["metrics"] == wanted  # the job named none: resolved for the data
    assert not any(m.startswith("shortcut") for m in wanted)  # no shortcut masks, no metric
    oracle_values = _region_oracle(root)
    assert len(rows) == 16
    for row in rows:
        assert row["included"]
        for method in ("layercam", "gradcam"):
            values = row["metrics"][method]
            assert list(values) == wanted
            want = oracle_values[row["path"]][method]
            for name in wanted:
                if name not in want:
                    continue
                got = math.nan if values[name] is None else values[name]
                assert _same(got, want[name], atol=1e-4), (row["path"], method, name)
    for method in ("layercam", "gradcam"):
        summaries = report["summaries"][method]
        for name in ("lesion_mass_change", "pointing_ft", "outside_lung_change"):
            assert set(summaries[name]) == {"overall", *CLASSES}
        normal = summaries["lesion_mass_tl"]["normal"]
        assert (normal["n"], normal["n_nan"]) == (0, 8)  # no lesion: counted, not dropped
        nodule = summaries["lesion_mass_change"]["nodule"]
        values = [r["metrics"][method]["lesion_mass_change"] for r in rows if r["label"] == 1]
        assert nodule["n"] == 8 and nodule["mean"] == pytest.approx(np.mean(values))
        overall = summaries["outside_lung_ft"]["overall"]
        assert overall["n"] == 16 and overall["n_nan"] == 0


def test_region_values_round_trip_through_the_sql_store(masked_run, tmp_path: Path) -> None:
    """The series table is generic: the rows the audit wrote come back from ``sample_series``
    unchanged, and a report built from them summarises the region metrics the same way."""
    from worker.results.report import build_report
    from worker.store import rows as stored_rows
    from worker.store.db import make_engine, session_factory
    from worker.store.models import Base, Checkpoint, Dataset, Job

    _, report, rows = masked_run
    engine = make_engine(f"sqlite:///{tmp_path / 'store.db'}")
    Base.metadata.create_all(engine)
    names = report["config"]["metrics"]
    with session_factory(engine)() as db:
        for ident in ("tl", "ft"):
            db.add(
                Checkpoint(
                    id=ident,
                    sha256=ident * 32,
                    name=ident,
                    arch="tinycnn",
                    num_classes=2,
                    class_names=CLASSES,
                    phase=ident,
                    input_size=[SIZE, SIZE],
                    meta={},
                    size_bytes=1,
                    storage_path=ident,
                )
            )
        db.add(
            Dataset(
                id="d",
                name="d",
                source="path",
                root_path="d",
                num_samples=16,
                class_names=CLASSES,
                class_counts={},
                fingerprint="f",
                skipped=[],
            )
        )
        db.add(
            Job(
                id="j",
                baseline_id="tl",
                candidate_id="ft",
                dataset_id="d",
                config=report["config"],
                request_hash="h",
            )
        )
        db.flush()
        stored_rows.write_rows(db, "j", rows)
        db.commit()
        back = stored_rows.load_rows(db, "j", names)
    engine.dispose()
    assert [r["metrics"] for r in back] == [r["metrics"] for r in rows]
    again = build_report(
        back,
        models=report["models"],
        dataset=report["dataset"],
        config=report["config"],
        samples_location=None,
    )
    for method in ("layercam", "gradcam"):
        for name in ("lesion_mass_change", "pointing_tl", "outside_lung_ft"):
            assert again["summaries"][method][name] == report["summaries"][method][name]


def test_drift_without_masks_has_no_localisation_and_refuses_to_invent_it(tmp_path) -> None:
    root = _world(tmp_path, with_masks=False)
    out = root / "plain.json"
    result = _drift(root, out)
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["config"]["metrics"] == list(DEFAULT_METRICS)
    for method in ("layercam", "gradcam"):
        assert set(report["summaries"][method]) == set(DEFAULT_METRICS)
    row = json.loads((root / "plain.samples.jsonl").read_text().splitlines()[0])
    assert not set(row["metrics"]["layercam"]) & set(REGION_METRICS)
    named = _drift(root, root / "named.json", "--metrics", "pearson,lesion_mass_change")
    assert named.exit_code == 2, named.output
    assert "lesion_mass_change needs a lesion region" in " ".join(named.output.split())


def test_defaults_are_resolved_against_the_evaluated_samples(masked_run, tmp_path) -> None:
    """Masks only on samples the audit does not evaluate add no region metric."""
    from worker.engine.audit import Audit, AuditConfig

    root, _, _ = masked_run
    manifest = (root / "data" / "manifest.csv").read_text().splitlines()
    lines = [manifest[0]]
    for line in manifest[1:]:
        path, label, _, mask, bbox, lung = line.split(",")
        if mask or bbox:  # the lesions in train, and the test split without lung masks
            lines.append(",".join([path, label, "train", mask, bbox, lung]))
        else:
            lines.append(",".join([path, label, "test", "", "", ""]))
    (root / "data" / "manifest.csv").write_text("\n".join(lines) + "\n")
    try:
        args = (root / "tl.safetensors", root / "ft.safetensors", root / "data")
        on_test = Audit(*args, AuditConfig(device="cpu"))
        assert on_test.config.metrics == list(DEFAULT_METRICS) and on_test.regions == []
        everything = Audit(*args, AuditConfig(device="cpu", split=None))
        assert everything.config.metrics == default_metrics(["lesion", "lung"])
        assert everything.regions == ["lesion", "lung"]
    finally:
        (root / "data" / "manifest.csv").write_text("\n".join(manifest) + "\n")


def test_masks_follow_the_kept_samples_into_floors(masked_run, monkeypatch) -> None:
    """A sample filter that drops samples must drop their masks too: with every other sample
    kept, each kept sample's region values equal the all-samples run's, and the noise floor's
    TL level (the same baseline map and mask) equals the drift's."""
    from worker.engine import audit as audit_module
    from worker.engine.selection import Targets

    def every_other(_filter, labels, pred_b, pred_c, multi_label=False):
        keep = torch.arange(len(labels), device=labels.device) % 2 == 1
        return Targets(labels, labels, keep)

    root, _, rows = masked_run
    by_path = {r["path"]: r["metrics"] for r in rows}
    monkeypatch.setattr(audit_module, "choose_targets", every_other)
    cfg = audit_module.AuditConfig(
        device="cpu", split=None, methods=["layercam"], noise_floor=True, batch_size=4
    )
    audit = audit_module.Audit(root / "tl.safetensors", root / "ft.safetensors", root / "data", cfg)
    kept = [r for r in audit.compute() if r["included"]]
    assert len(kept) == 8
    for row in kept:
        values, floor = row["metrics"]["layercam"], row["floor"]["layercam"]
        for name in ("lesion_mass_tl", "pointing_ft", "outside_lung_change"):
            want = by_path[row["path"]]["layercam"][name]
            if want is None:  # a normal image: no lesion
                assert values[name] is None, (row["path"], name)
            else:
                assert values[name] == pytest.approx(want, abs=1e-5), (row["path"], name)
        for name in ("lesion_mass_tl", "outside_lung_tl", "pointing_tl"):
            assert floor[name] == values[name], (row["path"], name)
