"""Reading weights files: the tensors of a safetensors file or of a plain state dict, never
unpickled code. The model zoo (pretrained backbones) and the checkpoint loader both read here."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path
from typing import Any

import safetensors.torch
import torch

from training.checkpoint_format import CheckpointError, read_header
from training.import_request import WEIGHT_SUFFIXES

PLAIN_SUFFIXES = tuple(s for s in WEIGHT_SUFFIXES if s != ".safetensors")


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a safetensors file or a plain state dict; pickled code is refused."""
    path = Path(path)
    obj = load_tensors(path)
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path}: not a state dict (name -> tensor)")
    return {k.removeprefix("module."): v for k, v in obj.items()}


def load_tensors(path: Path) -> Any:
    """What the file holds, read without running code: a safetensors file's tensors, or the
    ``torch.load(weights_only=True)`` object (tensors inside plain containers)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint file")
    if path.suffix == ".safetensors":
        read_header(path)
        return safetensors.torch.load_file(str(path))
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused; the file would unpickle code or objects other than tensors "
            f"({str(exc).splitlines()[0][:200]}). Convert it to safetensors in a trusted "
            "environment."
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: not a readable checkpoint ({exc})") from None
