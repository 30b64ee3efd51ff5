"""Save and load checkpoints: safetensors + camdrift metadata, never unpickled code."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import timm
import torch

import training
from training.checkpoint_format import (
    META_KEY,
    CheckpointError,
    metadata_from_header,
    read_header,
    sha256_file,
    validate_metadata,
)
from training.weights import PLAIN_SUFFIXES, read_state_dict
from training.zoo import ZooModel, arch_spec, create_model


def model_metadata(model: ZooModel, class_names: list[str], **extra: Any) -> dict[str, Any]:
    """The metadata a checkpoint of ``model`` carries (docs/architecture.md, "Checkpoints")."""
    spec = model.spec
    meta: dict[str, Any] = {
        "arch": spec.name,
        "num_classes": len(class_names),
        "class_names": list(class_names),
        "input_size": list(spec.input_size),
        "in_chans": model.in_chans,
        "mean": list(spec.mean),
        "std": list(spec.std),
        "phase": "other",
        "target_layer": None,
        "parent_sha256": None,
        "train_metrics": None,
        "dataset_fingerprint": None,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "versions": {
            "camdrift": training.__version__,
            "torch": torch.__version__,
            "timm": timm.__version__,
        },
    }
    meta.update(extra)
    return meta


def save_checkpoint(path: str | Path, model: ZooModel, meta: dict[str, Any]) -> str:
    """Write ``model``'s weights and ``meta``; returns the file's sha256."""
    path = Path(path)
    validate_metadata(meta, str(path))
    if meta["num_classes"] != model.num_classes:
        raise CheckpointError(
            f"{path}: metadata names {meta['num_classes']} classes, the model has "
            f"{model.num_classes}"
        )
    state = {k: v.detach().cpu().contiguous() for k, v in model.net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    safetensors.torch.save_file(state, str(tmp), metadata={META_KEY: json.dumps(meta)})
    tmp.replace(path)
    return sha256_file(path)


def load_checkpoint(
    path: str | Path,
    arch: str | None = None,
    class_names: list[str] | None = None,
    map_location: str | torch.device = "cpu",
) -> tuple[ZooModel, dict[str, Any]]:
    """Load ``(model in eval mode, metadata)``.

    A camdrift safetensors file describes itself. A plain state dict (``.pt``/``.pth``) or a
    safetensors file without metadata needs ``arch`` and ``class_names`` from the caller.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    meta: dict[str, Any] | None = None
    if path.suffix == ".safetensors":
        header = read_header(path)
        if META_KEY in (header.get("__metadata__") or {}):
            meta = metadata_from_header(header, str(path))
    elif path.suffix not in PLAIN_SUFFIXES:
        raise CheckpointError(
            f"{path}: unknown checkpoint type; use .safetensors or a state dict in .pt/.pth"
        )
    if meta is None:
        if arch is None or not class_names:
            raise CheckpointError(f"{path}: has no camdrift metadata; name the arch and classes")
        spec = arch_spec(arch)
        meta = {
            "arch": arch,
            "num_classes": len(class_names),
            "class_names": list(class_names),
            "input_size": list(spec.input_size),
            "mean": list(spec.mean),
            "std": list(spec.std),
            "phase": "other",
        }
    state = read_state_dict(path)
    model = create_model(
        meta["arch"],
        meta["num_classes"],
        pretrained="none",
        in_chans=int(meta.get("in_chans") or 3),
        input_size=tuple(meta["input_size"]),
        mean=meta.get("mean"),
        std=meta.get("std"),
    )
    try:
        model.net.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise CheckpointError(f"{path}: weights do not fit {meta['arch']}: {first}") from None
    meta.setdefault("sha256", sha256_file(path))
    return model.to(map_location).eval(), meta
