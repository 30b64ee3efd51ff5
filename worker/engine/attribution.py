"""Attribution engine: every gradient CAM from one forward and one head-only backward.

For a batch and a checkpoint the backbone runs once under ``no_grad``; its feature map A
becomes a leaf that requires grad; the head runs with grad; one ``autograd.grad`` of the
per-sample target logits gives G = dS/dA. Each method is then a cheap function of (A, G)
(docs/architecture.md, "Attribution engine"), so five methods cost what one does, and none
needs a full backward pass.
A ``target_layer`` inside the network uses a forward hook that switches grad on at that
module: the part of the network before it still runs without building a graph.

Score-CAM (``scorecam``) and Integrated Gradients (``ig``) are not functions of (A, G): they
live in :mod:`worker.engine.perturbation` and run their own, expensive, extra passes (Score-CAM one
masked forward per feature channel per sample, IG ``ig_steps`` forwards and backwards per
sample), only when requested. Score-CAM reuses the pass's feature map A.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from worker.catalog import DEFAULT_METHODS, METHODS, validate_methods
from worker.engine.perturbation import IG_CHUNK, IG_STEPS, SCORECAM_CHUNK, ig_raw, scorecam_raw

GRADCAMPP_EPS = 1e-6
XGRADCAM_EPS = 1e-7
CamFn = Callable[[Tensor, Tensor], Tensor]
# the one-pass methods: name -> map before ReLU from activations and gradients [N, C, h, w]
CAMS: dict[str, CamFn] = {}


def one_pass(name: str) -> Callable[[CamFn], CamFn]:
    """Register a function of (A, G) as the catalog's one-pass method ``name``."""

    def register(fn: CamFn) -> CamFn:
        if METHODS.get(name) is None or METHODS[name].kind != "one_pass":
            raise ValueError(f"{name!r} is not a one-pass method of worker.catalog.METHODS")
        CAMS[name] = fn
        return fn

    return register


@dataclass
class Attribution:
    """One checkpoint's evidence for one batch.

    ``maps``: method -> [N, H, W] in [0, 1] at the output size; ``raw``: method -> the ReLU'd
    map at feature-map resolution (what :func:`finish_maps` turns into ``maps``; small enough
    to store; for ``ig`` it is at input resolution); ``degenerate``: method -> bool [N], maps
    with no positive evidence (all zero).
    """

    maps: dict[str, Tensor]
    raw: dict[str, Tensor]
    degenerate: dict[str, Tensor]
    logits: Tensor
    targets: Tensor


def attribute(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int] | None,
    methods: Sequence[str] = DEFAULT_METHODS,
    target_layer: str | None = None,
    *,
    output_size: tuple[int, int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    ig_steps: int = IG_STEPS,
    chunk: int | None = None,
) -> dict[str, Tensor]:
    """Maps in [0, 1] at the input's H x W (or ``output_size``), one per method.

    ``targets``: the class to explain for each sample; ``None`` explains each prediction.
    ``ig_steps``: Riemann midpoint steps for ``ig``; ``chunk``: images per forward in the
    extra passes of ``scorecam`` and ``ig`` (default 64 each). Both are expensive (see
    the catalog's ``extra_pass`` methods) and run only when requested.
    """
    return attribute_batch(
        model,
        images,
        targets,
        methods,
        target_layer,
        output_size=output_size,
        autocast_dtype=autocast_dtype,
        ig_steps=ig_steps,
        chunk=chunk,
    ).maps


def attribute_batch(
    model: nn.Module,
    images: Tensor,
    targets: Tensor | Sequence[int] | None,
    methods: Sequence[str] = DEFAULT_METHODS,
    target_layer: str | None = None,
    *,
    output_size: tuple[int, int] | None = None,
    autocast_dtype: torch.dtype | None = None,
    ig_steps: int = IG_STEPS,
    chunk: int | None = None,
) -> Attribution:
    """Like :func:`attribute`, keeping logits, targets, raw maps and degenerate flags.

    The gradient CAMs come from one forward and a head-only backward; ``scorecam`` reuses that
    forward's feature map and adds its masked forwards; ``ig`` adds its own path passes.
    """
    methods = validate_methods(methods)
    if images.ndim != 4:
        raise ValueError(f"images must be [N, C, H, W], got shape {tuple(images.shape)}")
    size = output_size or (images.shape[-2], images.shape[-1])
    activations, logits, grid = _forward(model, images, target_layer, autocast_dtype)
    chosen = _resolve_targets(targets, logits)
    a = grid(activations.detach()).float()
    raw: dict[str, Tensor] = {}
    gradient = [m for m in methods if m in CAMS]
    if gradient:
        with torch.enable_grad():  # callers may hold no_grad; the head's graph is all we need
            score = logits.gather(1, chosen[:, None]).sum()
            (grads,) = torch.autograd.grad(score, activations)
        g = grid(grads).float()
        raw.update({m: torch.relu(cam_from(m, a, g)) for m in gradient})
    logits = logits.detach()  # drops the head's graph before the extra passes
    if "scorecam" in methods:
        raw["scorecam"] = scorecam_raw(
            model,
            images,
            a,
            chosen,
            chunk=chunk or SCORECAM_CHUNK,
            autocast_dtype=autocast_dtype,
        )
    if "ig" in methods:
        raw["ig"] = ig_raw(
            model,
            images,
            chosen,
            steps=ig_steps,
            chunk=chunk or IG_CHUNK,
            autocast_dtype=autocast_dtype,
        )
    raw = {m: raw[m] for m in methods}
    maps, degenerate = {}, {}
    for m in methods:
        maps[m], degenerate[m] = finish_maps(raw[m], size)
    return Attribution(maps, raw, degenerate, logits.detach().float(), chosen)


def cam_from(method: str, a: Tensor, g: Tensor) -> Tensor:
    """The map before ReLU for one-pass ``method`` from activations and gradients [N, C, h, w]."""
    fn = CAMS.get(method)
    if fn is None:
        raise ValueError(f"unknown method {method!r}")
    return fn(a, g)


@one_pass("gradcam")
def _gradcam(a: Tensor, g: Tensor) -> Tensor:
    return torch.einsum("nc,nchw->nhw", g.mean(dim=(2, 3)), a)


@one_pass("gradcam++")
def _gradcam_pp(a: Tensor, g: Tensor) -> Tensor:
    g2 = g * g
    g3 = g2 * g
    sum_a = a.sum(dim=(2, 3), keepdim=True)
    alpha = g2 / (2 * g2 + sum_a * g3 + GRADCAMPP_EPS)
    alpha = torch.where(g != 0, alpha, torch.zeros_like(alpha))
    weights = (torch.relu(g) * alpha).sum(dim=(2, 3))
    return torch.einsum("nc,nchw->nhw", weights, a)


@one_pass("layercam")
def _layercam(a: Tensor, g: Tensor) -> Tensor:
    return (torch.relu(g) * a).sum(dim=1)


@one_pass("xgradcam")
def _xgradcam(a: Tensor, g: Tensor) -> Tensor:
    weights = (g * a).sum(dim=(2, 3)) / (a.sum(dim=(2, 3)) + XGRADCAM_EPS)
    return torch.einsum("nc,nchw->nhw", weights, a)


@one_pass("hirescam")
def _hirescam(a: Tensor, g: Tensor) -> Tensor:
    return (g * a).sum(dim=1)


def finish_maps(raw: Tensor, size: tuple[int, int]) -> tuple[Tensor, Tensor]:
    """Upsample ReLU'd maps [N, h, w] to ``size`` and min-max each to [0, 1].

    A map with no range (all zero) stays zero and is flagged degenerate.
    """
    up = F.interpolate(raw[:, None].float(), size=size, mode="bilinear", align_corners=False)[:, 0]
    flat = up.flatten(1)
    low = flat.min(dim=1).values[:, None, None]
    span = flat.max(dim=1).values[:, None, None] - low
    degenerate = span[:, 0, 0] <= 0
    scaled = (up - low) / torch.where(span > 0, span, torch.ones_like(span))
    return torch.where(degenerate[:, None, None], torch.zeros_like(scaled), scaled), degenerate


def _resolve_targets(targets: Tensor | Sequence[int] | None, logits: Tensor) -> Tensor:
    if targets is None:
        return logits.detach().argmax(dim=1)
    chosen = torch.as_tensor(targets, dtype=torch.long, device=logits.device).reshape(-1)
    if chosen.numel() != logits.shape[0]:
        raise ValueError(f"targets: {chosen.numel()} given for a batch of {logits.shape[0]}")
    if chosen.numel() and (chosen.min() < 0 or chosen.max() >= logits.shape[1]):
        raise ValueError(f"targets: class indices must lie in [0, {logits.shape[1] - 1}]")
    return chosen


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


GridFn = Callable[[Tensor], Tensor]


def _forward(
    model: nn.Module, images: Tensor, target_layer: str | None, dtype: torch.dtype | None
) -> tuple[Tensor, Tensor, GridFn]:
    """(feature-map leaf, logits with a graph from that leaf, tokens -> grid function)."""
    default_layer = getattr(getattr(model, "spec", None), "feature_layer", None)
    to_grid: GridFn = getattr(model, "to_grid", _require_grid)
    if target_layer is None or target_layer == default_layer:
        if not hasattr(model, "forward_features"):
            raise ValueError("target_layer: this model has no feature-map split; name a module")
        with torch.no_grad(), _autocast(images.device, dtype):
            features = model.forward_features(images)
        leaf = features.detach().float().requires_grad_(True)
        with torch.enable_grad():
            logits = model.forward_head(leaf).float()
        return leaf, logits, to_grid
    return _forward_hooked(model, images, target_layer, dtype, to_grid)


def _forward_hooked(
    model: nn.Module,
    images: Tensor,
    target_layer: str,
    dtype: torch.dtype | None,
    to_grid: GridFn,
) -> tuple[Tensor, Tensor, GridFn]:
    try:
        module = model.get_submodule(target_layer)
    except AttributeError:
        raise ValueError(f"target_layer {target_layer!r} is not a module of this model") from None
    captured: list[Tensor] = []

    def hook(_module: nn.Module, _inputs: tuple, output: Tensor) -> Tensor:
        if not isinstance(output, Tensor):
            raise ValueError(f"target_layer {target_layer!r} does not output a single tensor")
        if captured:
            raise ValueError(f"target_layer {target_layer!r} runs more than once per forward")
        leaf = output.detach().float().requires_grad_(True)
        captured.append(leaf)
        torch.set_grad_enabled(True)  # from here on, until the no_grad block below exits
        return leaf.clone().to(output.dtype)

    handle = module.register_forward_hook(hook)
    try:
        with torch.no_grad(), _autocast(images.device, dtype):
            logits = model(images)
            if not captured:
                raise ValueError(f"target_layer {target_layer!r} did not run in the forward")
            logits = logits.float()
    finally:
        handle.remove()
    # tokens, or a channels-last model's stage output, read the way the model's own map is
    layout = getattr(getattr(model, "split", None), "layout", "NCHW")
    grid = to_grid if captured[0].ndim == 3 or layout == "NHWC" else _require_grid
    return captured[0], logits, grid


def _require_grid(t: Tensor) -> Tensor:
    if t.ndim != 4:
        raise ValueError(f"target layer output must be [N, C, h, w], got {tuple(t.shape)}")
    return t
