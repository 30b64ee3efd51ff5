"""Small real inputs the tests share: phantom data and two checkpoints of different weights."""

from __future__ import annotations

from pathlib import Path

import torch

from training.checkpoints import model_metadata, save_checkpoint
from training.phantoms import CLASSES, generate_dataset
from training.zoo import create_model


def tiny_audit_inputs(root: Path, per_class: int = 6, size: int = 48, seed: int = 1) -> Path:
    """``root/data`` (phantoms), ``root/tl.safetensors`` and ``root/ft.safetensors``: two
    random tinycnn checkpoints (seeds 0 and 1) at ``size`` px. Returns ``root``."""
    generate_dataset(root / "data", per_class=per_class, size=size, seed=seed)
    for weights_seed, phase in ((0, "tl"), (1, "ft")):
        torch.manual_seed(weights_seed)
        model = create_model("tinycnn", len(CLASSES))
        meta = model_metadata(model, list(CLASSES), phase=phase, input_size=[size, size])
        save_checkpoint(root / f"{phase}.safetensors", model, meta)
    return root


# Filters need two models that really disagree. Each sample of ``disagreeing_audit_inputs`` is
# given, by its position in the dataset, one of these outcomes: which class the baseline and the
# candidate predict, as an offset from its label (0 = correct).
OUTCOMES: dict[str, tuple[int, int]] = {
    "both_right": (0, 0),
    "baseline_right": (0, 1),
    "candidate_right": (1, 0),
    "both_wrong_agree": (2, 2),
    "both_wrong_differ": (1, 2),
}


def disagreeing_audit_inputs(
    root: Path, per_class: int = 3, size: int = 32, seed: int = 3
) -> dict[str, tuple[int, int, int, str]]:
    """``root/data`` (phantoms), ``root/tl.safetensors`` and ``root/ft.safetensors``: two tinycnn
    checkpoints with one random backbone (seed 0) and hand-set heads that predict a designed
    class for every image, so that they disagree on a known subset.

    Sample k (dataset order) gets outcome ``list(OUTCOMES)[k % 5]``. The heads are solved by
    least squares on the pooled features of the images as an audit reads them (min-norm, exact
    for <= 128 images), with logit margins of ~8. Returns, per sample's path relative to the
    data root, ``(label, designed baseline prediction, designed candidate prediction, outcome)``.
    """
    import numpy as np

    from training.datasets import discover
    from training.image_dataset import ImageDataset
    from worker.engine.audit import LoadedModel

    generate_dataset(root / "data", per_class=per_class, size=size, seed=seed)
    index = discover(root / "data", class_names=list(CLASSES))
    dataset = ImageDataset(index, (size, size), (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    images = torch.stack([dataset[i][0] for i in range(len(dataset))])
    torch.manual_seed(0)
    backbone = create_model("tinycnn", len(CLASSES)).eval()
    meta = model_metadata(backbone, list(CLASSES), phase="tl", input_size=[size, size])
    with torch.no_grad():
        pooled = backbone.forward_features(LoadedModel(backbone, meta).prepare(images))
    features = pooled.mean(dim=(2, 3)).double().numpy()
    if len(features) > features.shape[1]:
        raise ValueError(f"at most {features.shape[1]} images, got {len(features)}")
    k = len(CLASSES)
    names = list(OUTCOMES)
    expected: dict[str, tuple[int, int, int, str]] = {}
    designed = {"tl": [], "ft": []}
    for pos, sample in enumerate(index.samples):
        outcome = names[pos % len(names)]
        off_b, off_c = OUTCOMES[outcome]
        pb, pc = (sample.label + off_b) % k, (sample.label + off_c) % k
        designed["tl"].append(pb)
        designed["ft"].append(pc)
        expected[index.relative(sample)] = (sample.label, pb, pc, outcome)
    centre = features.mean(axis=0)
    for phase, preds in designed.items():
        target = 8.0 * (np.eye(k)[preds] - 1.0 / k)  # logits: +6.4 for the designed class
        solution, *_ = np.linalg.lstsq(features - centre, target, rcond=None)
        model = create_model("tinycnn", k)
        model.load_state_dict(backbone.state_dict())
        with torch.no_grad():
            model.net.fc.weight.copy_(torch.from_numpy(solution.T))
            model.net.fc.bias.copy_(torch.from_numpy(-centre @ solution))
        model.eval()
        with torch.no_grad():
            got = model(LoadedModel(model, meta).prepare(images)).argmax(1).tolist()
        if got != preds:
            raise AssertionError(f"{phase}: the hand-set head does not give the designed classes")
        meta_phase = model_metadata(model, list(CLASSES), phase=phase, input_size=[size, size])
        save_checkpoint(root / f"{phase}.safetensors", model, meta_phase)
    return expected


def seeded_model(arch: str, seed: int):
    """A zoo model with seeded random weights, in eval mode (5 classes)."""
    import torch

    from training.zoo import create_model

    torch.manual_seed(seed)
    return create_model(arch, num_classes=5).eval()


def random_batch(seed: int, n: int, h: int, w: int):
    """(images [n, 3, h, w], targets [n]) from a seeded generator."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, h, w, generator=gen)
    targets = torch.randint(0, 5, (n,), generator=gen)
    return images, targets


EVERY_SAMPLE = ("--sample-filter", "all", "--split", "all")  # drift options: audit everything


def drift_args(root: Path, *extra: str) -> list[str]:
    """``camdrift drift`` arguments auditing a :func:`tiny_audit_inputs` world's TL vs FT."""
    return [
        "drift",
        "--baseline",
        str(root / "tl.safetensors"),
        "--candidate",
        str(root / "ft.safetensors"),
        "--data",
        str(root / "data"),
        *extra,
    ]
