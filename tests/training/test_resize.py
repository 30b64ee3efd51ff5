"""Resize policies (stretch, letterbox, centre crop): where an image lands in the input, that
its masks and boxes land in the same place, that training records the policy and audits and
overlays follow it."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from training.datasets import discover
from training.image_dataset import ImageDataset, box_mask, read_mask
from training.resize import placement

H, W = 30, 60  # a wide image
SIZE = (32, 32)


def test_placements_by_hand() -> None:
    assert placement((H, W), SIZE, "stretch").scaled == SIZE
    box = placement((H, W), SIZE, "letterbox")  # 0.533 x: 16 x 32, centred vertically
    assert (box.scaled, box.offset, box.window) == ((16, 32), (8, 0), (8, 0, 24, 32))
    crop = placement((H, W), SIZE, "crop")  # 1.067 x: 32 x 64, 16 columns cut each side
    assert (crop.scaled, crop.offset, crop.window) == ((32, 64), (0, -16), (0, 0, 32, 32))
    assert crop.source_window((H, W)) == pytest.approx((0, 15, 30, 45))
    with pytest.raises(ValueError, match="resize"):
        placement((H, W), SIZE, "squash")


@pytest.fixture
def wide(tmp_path):
    """One wide image (a gradient) with a mask file of its right half and the same half as a
    box, in an ImageFolder with a manifest."""
    pixels = np.tile(np.linspace(0, 255, W), (H, 1)).astype(np.uint8)
    (tmp_path / "a").mkdir()
    Image.fromarray(pixels).save(tmp_path / "a" / "x.png")
    half = np.zeros((H, W), np.uint8)
    half[:, W // 2 :] = 255
    Image.fromarray(half).save(tmp_path / "half.png")
    (tmp_path / "manifest.csv").write_text("path,label,mask\na/x.png,a,half.png\n")
    return tmp_path, pixels


@pytest.mark.parametrize("policy", ["stretch", "letterbox", "crop"])
def test_image_masks_and_boxes_share_the_placement(wide, policy) -> None:
    root, pixels = wide
    ds = ImageDataset(discover(root), SIZE, [0.0], [1.0], channels=1, resize=policy)
    image = ds.load(0)[0]
    where = placement((H, W), SIZE, policy)
    top, left, bottom, right = where.window
    # independently: torch's resize of the image to the scaled size, pasted at the offset
    scaled = F.interpolate(
        torch.from_numpy(pixels / 255.0).float()[None, None],
        size=where.scaled,
        mode="bilinear",
        antialias=True,
        align_corners=False,
    )[0, 0]
    oy, ox = where.offset
    inside = scaled[top - oy : bottom - oy, left - ox : right - ox]
    np.testing.assert_allclose(image[top:bottom, left:right].numpy(), inside.numpy(), atol=1e-6)
    outside = torch.ones(SIZE, dtype=torch.bool)
    outside[top:bottom, left:right] = False
    assert float(image[outside].abs().sum()) == 0.0  # padding is black
    mask = read_mask(root / "half.png", (H, W), SIZE, policy)
    boxes = box_mask([(W / 2, 0, W, H)], (H, W), SIZE, root / "a" / "x.png", policy)
    assert torch.equal(mask, boxes)  # the mask file and the box: the same pixels
    cols = mask.any(0).nonzero()[:, 0]
    assert int(cols.min()) == 16  # the image's middle column lands mid-input under each policy
    assert not mask[outside].any()


def test_training_records_the_policy_audits_and_overlays_follow(tmp_path) -> None:
    from training.checkpoint_format import read_metadata
    from training.phantoms import generate_dataset
    from training.protocol import PhaseConfig, TrainConfig, train_two_phase
    from worker.engine.audit import Audit, AuditConfig
    from worker.render.overlay import overlay_for_sample
    from worker.runtime.local_run import run_audit

    data = tmp_path / "data"
    generate_dataset(data, per_class=4, size=32, seed=1)
    for png in data.rglob("*.png"):  # make every image (and mask) wide: 32 x 64
        Image.open(png).resize((64, 32)).save(png)
    cfg = TrainConfig(
        arch="tinycnn",
        input_size=(32, 32),
        progress=False,
        resize="letterbox",
        tl=PhaseConfig(epochs=1, batch_size=8),
        ft=PhaseConfig(epochs=1, batch_size=8),
    )
    train_two_phase(data, tmp_path / "run", cfg)
    tl, ft = tmp_path / "run" / "tl.safetensors", tmp_path / "run" / "ft.safetensors"
    assert read_metadata(tl)["resize"] == "letterbox"
    audit = Audit(tl, ft, data, AuditConfig(split=None))
    assert audit.resize == "letterbox" and audit._loader([0]).dataset.dataset.resize == "letterbox"
    out = tmp_path / "report.json"
    report = run_audit(tl, ft, data, AuditConfig(split=None, sample_filter="all"), out)
    assert report["models"]["baseline"]["resize"] == "letterbox"
    row = json.loads(out.with_suffix(".samples.jsonl").read_text().splitlines()[0])
    kw = {"maps_dir": out.with_suffix(".maps"), "image_root": data, "class_names": ["a"] * 5}
    framed = overlay_for_sample(row, "layercam", frame=("letterbox", [32, 32]), **kw)
    plain = overlay_for_sample(row, "layercam", **kw)
    a, b = (np.asarray(Image.open(io.BytesIO(png)).convert("RGB")) for png in (framed, plain))
    assert a.shape == b.shape  # the panel keeps the image's 2:1 aspect either way
    assert not np.array_equal(a, b)  # but the framed one shows the map cut to the image


def test_a_fixed_intensity_window_is_applied_recorded_and_reused(wide, tmp_path) -> None:
    from training.checkpoint_format import CheckpointError, read_metadata, validate_metadata
    from training.import_request import ImportFieldError, request_from_form
    from training.phantoms import generate_dataset
    from training.protocol import PhaseConfig, TrainConfig, train_two_phase
    from worker.engine.audit import Audit, AuditConfig

    root, pixels = wide
    ds = ImageDataset(discover(root), (H, W), [0.0], [1.0], channels=1, window=(0.25, 0.75))
    expected = np.clip((pixels / 255.0 - 0.25) / 0.5, 0.0, 1.0)
    np.testing.assert_allclose(ds.load(0)[0].numpy(), expected, atol=1e-6)
    with pytest.raises(ValueError, match="window"):
        ImageDataset(discover(root), SIZE, [0.0], [1.0], window=(0.8, 0.2))

    data = tmp_path / "data"
    generate_dataset(data, per_class=4, size=32, seed=2)
    cfg = TrainConfig(
        arch="tinycnn",
        input_size=(32, 32),
        progress=False,
        window=(0.1, 0.9),
        tl=PhaseConfig(epochs=1, batch_size=8),
        ft=PhaseConfig(epochs=1, batch_size=8),
    )
    train_two_phase(data, tmp_path / "run", cfg)
    tl, ft = tmp_path / "run" / "tl.safetensors", tmp_path / "run" / "ft.safetensors"
    assert read_metadata(tl)["window"] == [0.1, 0.9]
    assert Audit(tl, ft, data, AuditConfig(split=None))._loader([0]).dataset.dataset.window == (
        0.1,
        0.9,
    )
    meta = {"arch": "tinycnn", "num_classes": 2, "class_names": ["a", "b"], "input_size": [8, 8]}
    with pytest.raises(CheckpointError, match="window"):
        validate_metadata({**meta, "window": [0.5, 0.5]})
    form = {"arch": "tinycnn", "class_names": "a,b"}
    assert request_from_form({**form, "window": "0.2,0.8"}).window == (0.2, 0.8)
    with pytest.raises(ImportFieldError, match="window"):
        request_from_form({**form, "window": "0.9,0.1"})
