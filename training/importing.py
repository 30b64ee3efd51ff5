"""Import a checkpoint trained elsewhere into a camdrift checkpoint.

Takes what teams have on disk: a plain ``torch.save`` state dict, a PyTorch Lightning
``.ckpt`` (weights under ``state_dict``, keys prefixed ``model.``), a DataParallel state dict
(``module.``), a dict with a ``state_dict`` / ``model_state_dict`` / ``model`` key, a
safetensors file without metadata, or a Hugging Face style folder (``config.json`` +
``model.safetensors`` / ``pytorch_model.bin``). Everything is read ``weights_only``; the key
prefix is found by matching the architecture's own names, and every mismatch is named.
"""

from __future__ import annotations

import difflib
import json
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from training.checkpoint_format import CheckpointError, sha256_file
from training.checkpoints import model_metadata, save_checkpoint
from training.import_request import ImportRequest
from training.weights import PLAIN_SUFFIXES, load_tensors
from training.zoo import ZooModel, create_model

WRAPPER_KEYS = ("state_dict", "model_state_dict", "model")
FOLDER_WEIGHTS = ("model.safetensors", "pytorch_model.bin", "model.pth", "model.pt")
MAX_LISTED = 5


@dataclass
class Imported:
    path: Path
    sha256: str
    meta: dict[str, Any]
    prefix: str  # the key prefix that was stripped ("" when none)
    source_keys: int = 0
    notes: list[str] = field(default_factory=list)


def import_checkpoint(
    source: Path, out: Path, request: ImportRequest, source_name: str | None = None
) -> Imported:
    """Read ``source``, fit it to the architecture, write a camdrift checkpoint to ``out``.
    ``source_name``: what the file is called where it came from (an upload's name; recorded
    in the metadata and said in errors instead of where it lies now)."""
    try:
        return _import(Path(source), Path(out), request, source_name)
    except CheckpointError as exc:
        if source_name is None:
            raise
        raise CheckpointError(str(exc).replace(str(source), source_name), exc.field) from None


def _import(source: Path, out: Path, request: ImportRequest, source_name: str | None) -> Imported:
    weights, request = _resolve_source(source, request)
    if request.arch is None:
        raise CheckpointError(
            f"{source}: name the architecture (arch), e.g. torchvision/densenet121"
        )
    if not request.class_names:
        raise CheckpointError(f"{source}: name the class names (class_names), in logit order")
    state = _unwrap(load_tensors(weights), weights)
    model = _build(request, state)
    prefix = _common_prefix(state, model.net.state_dict())
    state = {k.removeprefix(prefix): v for k, v in state.items() if k.startswith(prefix)}
    _check_fit(source, model, state, request)
    model.net.load_state_dict(state, strict=True)
    meta = model_metadata(
        model.eval(),
        list(request.class_names),
        phase=request.phase,
        **({"multi_label": True} if request.multi_label else {}),
        **({"resize": request.resize} if request.resize != "stretch" else {}),
        **({"window": list(request.window)} if request.window else {}),
        imported_from={"file": source_name or weights.name, "sha256": sha256_file(weights)},
    )
    sha = save_checkpoint(out, model, meta)
    notes = [f"feature layer {model.spec.feature_layer} (found automatically)"]
    if prefix:
        notes.append(f"stripped key prefix {prefix!r} from {len(state)} tensors")
    return Imported(Path(out), sha, meta, prefix, len(state), notes)


def _resolve_source(source: Path, request: ImportRequest) -> tuple[Path, ImportRequest]:
    """The weights file, and the request completed from a folder's ``config.json``."""
    if not source.exists():
        raise CheckpointError(f"{source}: no such file or folder")
    if source.is_file():
        if source.suffix not in (".safetensors", *PLAIN_SUFFIXES):
            raise CheckpointError(
                f"{source}: unknown weights file; use .safetensors, .pt, .pth, .bin or .ckpt"
            )
        return source, request
    weights = next((source / n for n in FOLDER_WEIGHTS if (source / n).is_file()), None)
    if weights is None:
        raise CheckpointError(f"{source}: the folder has none of {', '.join(FOLDER_WEIGHTS)}")
    config = source / "config.json"
    if not config.is_file():
        return weights, request
    try:
        cfg = json.loads(config.read_text())
    except (ValueError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{config}: not JSON ({exc})") from None
    return weights, _from_config(cfg, request)


def _from_config(cfg: dict, request: ImportRequest) -> ImportRequest:
    """timm's hub config (``architecture``, ``label_names``, ``pretrained_cfg``) or a
    transformers one (``id2label``); what the caller gave wins."""
    pre = cfg.get("pretrained_cfg") or {}
    arch = request.arch
    if arch is None and isinstance(cfg.get("architecture"), str):
        arch = f"timm/{cfg['architecture']}"
    names = request.class_names or cfg.get("label_names")
    if not names and isinstance(cfg.get("id2label"), dict):
        pairs = sorted(cfg["id2label"].items(), key=lambda kv: int(kv[0]))
        names = [str(label) for _, label in pairs]
    size = request.input_size
    if size is None and len(pre.get("input_size") or ()) == 3:
        size = tuple(int(v) for v in pre["input_size"][1:])
    return ImportRequest(
        arch=arch,
        class_names=list(names) if names else None,
        input_size=size,
        mean=request.mean or (tuple(pre["mean"]) if pre.get("mean") else None),
        std=request.std or (tuple(pre["std"]) if pre.get("std") else None),
        in_chans=request.in_chans or (int(pre["input_size"][0]) if pre.get("input_size") else None),
        phase=request.phase,
        multi_label=request.multi_label or cfg.get("problem_type") == "multi_label_classification",
        resize=request.resize,
        window=request.window,
    )


def _unwrap(obj: Any, path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a state dict, or of one inside a training checkpoint's dict."""
    if isinstance(obj, dict):
        for key in WRAPPER_KEYS:
            inner = obj.get(key)
            if (
                isinstance(inner, dict)
                and inner
                and all(isinstance(v, torch.Tensor) for v in inner.values())
            ):
                return inner
    if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise CheckpointError(
        f"{path}: no state dict (name -> tensor) in it, nor under "
        f"{', '.join(repr(k) for k in WRAPPER_KEYS)}"
    )


def _build(request: ImportRequest, state: dict[str, torch.Tensor]) -> ZooModel:
    """The architecture with the request's head, built for the checkpoint's channel count."""
    in_chans = request.in_chans or 3
    model = create_model(
        request.arch,
        len(request.class_names),
        in_chans=in_chans,
        input_size=request.input_size,
        mean=request.mean,
        std=request.std,
    )
    if request.in_chans is None:
        stem = _stem_key(model)
        found = [v for k, v in state.items() if k.endswith(stem) and v.ndim == 4]
        if found and found[0].shape[1] != in_chans and 1 <= found[0].shape[1] <= 4:
            return _build(_with(request, in_chans=int(found[0].shape[1])), state)
    return model


def _with(request: ImportRequest, **changes: Any) -> ImportRequest:
    return replace(request, **changes)


def _stem_key(model: ZooModel) -> str:
    """The first 4-D weight of the net (its stem conv): where the input channels show."""
    return next(k for k, v in model.net.state_dict().items() if v.ndim == 4)


def _common_prefix(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]) -> str:
    """The prefix (``model.``, ``module.``, ``model.net.`` ...) that turns the most source
    keys into the architecture's own names."""
    votes: Counter[str] = Counter()
    for key in state:
        for name in own:
            if key.endswith(name) and (len(key) == len(name) or key[-len(name) - 1] == "."):
                votes[key[: len(key) - len(name)]] += 1
                break
    if not votes:
        return ""
    return votes.most_common(1)[0][0]


def _check_fit(source: Path, model: ZooModel, state: dict, request: ImportRequest) -> None:
    own = model.net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if len(missing) > len(own) / 2:
        raise CheckpointError(
            f"{source}: not a {request.arch} checkpoint: {len(own) - len(missing)} of "
            f"{len(own)} tensor names match (another architecture?); missing "
            f"{_listed(missing, unexpected)}"
        )
    head = _head_keys(model)
    for key in own:
        if key in state and tuple(state[key].shape) != tuple(own[key].shape):
            if key in head:
                raise CheckpointError(
                    f"{source}: the checkpoint's head {key!r} has {state[key].shape[0]} outputs; "
                    f"{len(request.class_names)} class names were given, so "
                    f"{request.arch} expects {own[key].shape[0]}"
                )
            raise CheckpointError(
                f"{source}: tensor {key!r} has shape {tuple(state[key].shape)}; {request.arch} "
                f"needs {tuple(own[key].shape)} (another architecture or width?)"
            )
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)}: {_listed(missing, unexpected)}")
        if unexpected:
            parts.append(f"unexpected {len(unexpected)}: {_listed(unexpected, missing)}")
        raise CheckpointError(f"{source}: weights do not fit {request.arch}; " + "; ".join(parts))


def _head_keys(model: ZooModel) -> set[str]:
    head = {id(p) for p in model.classifier_parameters()}
    return {k for k, p in model.net.named_parameters() if id(p) in head}


def _listed(names: list[str], others: list[str]) -> str:
    """A few names, each with its nearest match among ``others`` (a renamed layer shows)."""
    shown = []
    for name in names[:MAX_LISTED]:
        near = difflib.get_close_matches(name, others, n=1, cutoff=0.6)
        shown.append(f"{name!r} (nearest: {near[0]!r})" if near else repr(name))
    more = f" and {len(names) - MAX_LISTED} more" if len(names) > MAX_LISTED else ""
    return ", ".join(shown) + more
