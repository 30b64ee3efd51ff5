"""``--bit-depth``: 12-bit detector data in 16-bit PNGs without an sBIT chunk reads by its real
depth once told, training records the depth in its checkpoints, and an audit (local or a job)
then reads the images the same way without being told again."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from service.schemas import JobIn, request_hash
from training.checkpoint_format import CheckpointError, read_metadata, validate_metadata
from training.datasets import discover
from training.image_dataset import ImageDataset
from training.protocol import PhaseConfig, TrainConfig, finetune, train_two_phase
from worker.engine.audit import Audit, AuditConfig

CLASSES = ("effusion", "normal")
SIZE = 16


@pytest.fixture(scope="module")
def twelve_bit(tmp_path_factory) -> tuple[Path, dict[str, np.ndarray]]:
    """12-bit values (0..4095) in 16-bit PNGs, no sBIT: read as 16 bits they are ~1/16."""
    root = tmp_path_factory.mktemp("twelve") / "data"
    rng = np.random.default_rng(0)
    pixels = {}
    for k, name in enumerate(CLASSES):
        (root / name).mkdir(parents=True)
        for i in range(10):
            values = rng.integers(0, 2048, (SIZE, SIZE)) + 2047 * k  # the classes differ
            values[0, 0] = 4095
            rel = f"{name}/{i:02d}.png"
            Image.fromarray(values.astype(np.uint16)).save(root / rel)
            pixels[rel] = values
    return root, pixels


def _first(dataset: ImageDataset) -> tuple[str, torch.Tensor]:
    image, _, i = dataset[0]
    return dataset.index.relative(dataset.index.samples[i]), image


def test_the_reader_scales_by_the_given_depth(twelve_bit) -> None:
    root, pixels = twelve_bit
    index = discover(root)
    with warnings.catch_warnings(record=True):
        dim = ImageDataset(index, (SIZE, SIZE), [0.0], [1.0], channels=1)
        rel, image = _first(dim)
    np.testing.assert_allclose(image[0].numpy(), pixels[rel] / 65535.0, atol=1e-6)
    rel, image = _first(ImageDataset(index, (SIZE, SIZE), [0.0], [1.0], channels=1, bit_depth=12))
    np.testing.assert_allclose(image[0].numpy(), pixels[rel] / 4095.0, atol=1e-6)
    with pytest.raises(ValueError, match="bit_depth"):
        ImageDataset(index, (SIZE, SIZE), [0.0], [1.0], bit_depth=17)


def test_training_records_the_depth_and_audits_reuse_it(twelve_bit, tmp_path) -> None:
    root, pixels = twelve_bit
    cfg = TrainConfig(
        arch="tinycnn",
        input_size=(SIZE, SIZE),
        progress=False,
        augment=False,
        bit_depth=12,
        tl=PhaseConfig(epochs=1, batch_size=8),
        ft=PhaseConfig(epochs=1, batch_size=8),
    )
    train_two_phase(root, tmp_path / "run", cfg)
    tl, ft = tmp_path / "run" / "tl.safetensors", tmp_path / "run" / "ft.safetensors"
    assert read_metadata(tl)["bit_depth"] == read_metadata(ft)["bit_depth"] == 12
    again = TrainConfig(arch="tinycnn", progress=False, ft=PhaseConfig(epochs=1, batch_size=8))
    finetune(root, tl, tmp_path / "again", again)  # not told: the parent's depth
    assert read_metadata(tmp_path / "again" / "ft.safetensors")["bit_depth"] == 12

    audit = Audit(tl, ft, root, AuditConfig(split=None, sample_filter="all"))
    assert audit.config.bit_depth == 12 and audit.config.results_dict()["bit_depth"] == 12
    loader = audit._loader([0])
    image, *_ = next(iter(loader))
    rel = audit.index.relative(audit.index.samples[audit.positions[0]])
    np.testing.assert_allclose(image[0, 0].numpy(), pixels[rel] / 4095.0, atol=1e-6)
    told = Audit(tl, ft, root, AuditConfig(split=None, bit_depth=16))  # an explicit depth wins
    assert told.config.bit_depth == 16


def test_the_job_body_and_the_metadata_bound_the_depth() -> None:
    ids = {"baseline_id": "a", "candidate_id": "b", "dataset_id": "c"}
    assert JobIn(**ids, bit_depth=12).normalised()["bit_depth"] == 12
    unset = JobIn(**ids).normalised()
    assert unset["bit_depth"] is None
    before = {k: v for k, v in unset.items() if k != "bit_depth"}  # a body stored before
    assert request_hash(unset) == request_hash(before) != request_hash({**unset, "bit_depth": 12})
    with pytest.raises(ValueError):
        JobIn(**ids, bit_depth=0)
    meta = {"arch": "tinycnn", "num_classes": 2, "class_names": list(CLASSES)}
    with pytest.raises(CheckpointError, match="bit_depth"):
        validate_metadata({**meta, "input_size": [16, 16], "bit_depth": 24})
