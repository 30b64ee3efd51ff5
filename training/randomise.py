"""A checkpoint's copy with its top layers re-initialised: the randomisation ceiling of drift.

MPRT-style (Adebayo et al. 2018, "Sanity checks for saliency maps", cascading randomisation from
the logits down): the drift between a baseline and its own architecture with the classifier (and
optionally the last N weight layers below it) re-initialised is what "evidence unrelated to the
baseline's" reads as for this architecture, data and method. ``camdrift calibrate`` uses it as
the 1 of a floor (0) -> ceiling (1) scale for each threshold.

Layers (``--layers``): ``head`` re-initialises the classifier (``get_classifier()``, the module a
transfer-learning phase trains); ``head+N`` also the last N *weight layers* before it:
convolution / linear modules, in the order the model registers them (forward order for the
zoo's sequential nets; an Inception block's parallel branches in their declared order). Norm
layers keep their parameters and running statistics. Each module gets PyTorch's own
initialisation (``reset_parameters``) under a seeded RNG that leaves the global one untouched.

Binder et al. (2023) warn that top-layer randomisation leaves the lower layers' response to the
image intact, so maps of a randomised model still share structure with the baseline's: the
ceiling is an empirical level, not the metric's worst value. The metrics compare maps that the
engine has normalised to [0, 1] per sample, so the random model's different gradient scale
does not enter.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from torch import nn

from training.checkpoint_format import sha256_file
from training.checkpoints import load_checkpoint, save_checkpoint
from training.zoo import ZooModel

LAYERS = re.compile(r"head(?:\+([1-9][0-9]*))?")
LAYERS_HELP = "head (the classifier) or head+N (also the last N weight layers below it)"


def parse_layers(spec: str) -> int:
    """How many weight layers below the head ``spec`` (``head``, ``head+2``) re-initialises."""
    match = LAYERS.fullmatch(spec.strip())
    if match is None:
        raise ValueError(f"layers {spec!r} is not {LAYERS_HELP}")
    return int(match.group(1) or 0)


def _is_weight_layer(module: nn.Module) -> bool:
    weight = getattr(module, "weight", None)
    return (
        isinstance(weight, nn.Parameter)
        and weight.dim() >= 2
        and callable(getattr(module, "reset_parameters", None))
    )


def top_layers(model: ZooModel, blocks: int) -> list[str]:
    """Names (in ``model.net``) of the modules ``head+blocks`` re-initialises, head first."""
    classifier = model.classifier()
    names = {id(m): name for name, m in model.net.named_modules()}
    head = [
        name
        for name, m in classifier.named_modules(prefix=names[id(classifier)])
        if callable(getattr(m, "reset_parameters", None))
        and next(m.parameters(recurse=False), None) is not None
    ]
    inside = {id(m) for m in classifier.modules()}
    below = [
        name for name, m in model.net.named_modules() if id(m) not in inside and _is_weight_layer(m)
    ]
    if blocks > len(below):
        raise ValueError(
            f"layers head+{blocks}: {model.arch} has only {len(below)} weight layers below its head"
        )
    return head + list(reversed(below[len(below) - blocks :]))


def randomise(model: ZooModel, blocks: int = 0, seed: int = 0) -> list[str]:
    """Re-initialise ``model``'s head and last ``blocks`` weight layers in place; their names."""
    names = top_layers(model, blocks)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        with torch.no_grad():
            for name in names:
                model.net.get_submodule(name).reset_parameters()
    return names


def randomise_checkpoint(
    source: Path | str, out: Path | str, layers: str = "head", seed: int = 0
) -> dict[str, Any]:
    """Write ``out``: ``source`` with ``layers`` re-initialised (seeded); returns its metadata,
    which names the source (``parent_sha256``) and what was re-initialised (``randomised``)."""
    blocks = parse_layers(layers)
    model, meta = load_checkpoint(source)
    names = randomise(model, blocks, seed)
    meta = {k: v for k, v in meta.items() if k != "sha256"}  # the source's, not this file's
    meta.update(
        phase="other",
        parent_sha256=sha256_file(Path(source)),
        train_metrics=None,
        created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        randomised={"layers": layers, "modules": names, "seed": seed},
    )
    save_checkpoint(out, model, meta)
    return meta
