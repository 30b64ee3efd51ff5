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
