"""Perturbation and path attributions: Score-CAM and Integrated Gradients.

Both cost many extra forwards per sample (Score-CAM: one per feature channel; IG: one forward
and backward per step), so :func:`worker.engine.attribution.attribute_batch` runs them only when
asked for, after the single pass that serves the gradient CAMs. Each is batched: masked inputs (or
path points) of several channels, steps and samples go through the network together, in chunks
of ``chunk`` images, so memory stays bounded whatever the channel count or step count.

Score-CAM conventions (those of pytorch-grad-cam's ``ScoreCAM``, its test oracle, used with
``ClassifierOutputSoftmaxTarget``):

* each channel A_k of the target feature map is upsampled bilinearly to the input's H x W with
  ``align_corners=True`` (``nn.UpsamplingBilinear2d``, unlike the ``align_corners=False`` used
  for finished maps) and min-max scaled per channel as (A_k - min) / (max - min + 1e-8), so a
  constant channel becomes an all-zero mask (its score is that of an all-zero input);
* the mask multiplies the input *as given*, i.e. already normalised: masked-out pixels become 0
  in normalised space (the dataset mean colour), not black;
* the score of channel k is the softmax probability of the sample's target class on the masked
  input; the channel weights are a softmax over channels of those scores;
* map = ReLU(sum_k w_k A_k) at feature resolution, finished like every other map.

With ``autocast_dtype`` the extra forwards run under autocast like the main pass (scores and
gradients are gathered in fp32). Score-CAM's softmax scores barely move under bf16; IG's input
gradients do (on tinycnn, bf16 moves finished IG maps by up to ~0.2), so prefer fp32 for IG.

The model must be in eval mode (batch statistics would make a channel's score depend on the
other images in its chunk); the chunking then changes results only at float rounding.

Integrated Gradients conventions:

* baseline = the all-zeros input in the model's normalised space (the dataset mean colour);
* the straight path is sampled at the ``steps`` Riemann midpoints alpha = (i + 1/2) / steps;
  attribution = x * mean_i dS/dx(alpha_i x) with S the target class's logit (not its
  probability), so completeness reads sum(attribution) ~= S(x) - S(0);
* map = sum over colour channels of |attribution|: the magnitude of each pixel's influence,
  whatever its sign and without a pixel's colour channels cancelling each other (a pixel whose
  red raises and whose blue lowers the score is still one the model relies on). CAM maps are
  ReLU'd positive evidence, but IG's signs depend on the baseline (a pixel darker than the mean
  colour gets the opposite sign for the same feature), so magnitude is the comparable quantity.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import Tensor, nn

SCORECAM_CHUNK = 64  # masked images per forward
SCORECAM_EPS = 1e-8  # pytorch-grad-cam's per-channel min-max epsilon
IG_STEPS = 32
IG_CHUNK = 64  # path points per forward and backward


def _autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def scorecam_weights(
    model: nn.Module,
    images: Tensor,
    activations: Tensor,
    targets: Tensor,
    *,
    chunk: int = SCORECAM_CHUNK,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Score-CAM channel weights [N, C] for feature maps ``activations`` [N, C, h, w].

    ``images`` [N, 3, H, W] are the (normalised) model inputs; ``targets`` [N] the classes.
    """
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    n, c = activations.shape[:2]
    size = images.shape[-2:]
    flat = activations.detach().float().flatten(0, 1)[:, None]  # [N*C, 1, h, w]
    targets = targets.to(images.device)
    scores = torch.empty(n * c, device=images.device, dtype=torch.float32)
    with torch.no_grad():
        for start in range(0, n * c, chunk):
            stop = min(start + chunk, n * c)
            sample = torch.arange(start, stop, device=images.device) // c
            up = F.interpolate(flat[start:stop], size=size, mode="bilinear", align_corners=True)
            low = up.amin(dim=(2, 3), keepdim=True)
            high = up.amax(dim=(2, 3), keepdim=True)
            mask = (up - low) / (high - low + SCORECAM_EPS)
            masked = images[sample] * mask.to(images.dtype)
            with _autocast(images.device, autocast_dtype):
                logits = model(masked)
            probs = torch.softmax(logits.float(), dim=1)
            scores[start:stop] = probs.gather(1, targets[sample][:, None])[:, 0]
    return torch.softmax(scores.view(n, c), dim=1)


def scorecam_raw(
    model: nn.Module,
    images: Tensor,
    activations: Tensor,
    targets: Tensor,
    *,
    chunk: int = SCORECAM_CHUNK,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """ReLU(sum_k w_k A_k) [N, h, w] at feature resolution (see the module docstring)."""
    weights = scorecam_weights(
        model, images, activations, targets, chunk=chunk, autocast_dtype=autocast_dtype
    )
    a = activations.detach().float()
    return torch.relu(torch.einsum("nc,nchw->nhw", weights, a))


def integrated_gradients(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    steps: int = IG_STEPS,
    chunk: int = IG_CHUNK,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """Signed IG attributions [N, C, H, W] of the target logits, zero baseline, midpoint rule.

    The N x ``steps`` path points go through the network ``chunk`` at a time, one backward per
    chunk (sample-major, so a chunk holds consecutive steps of one or a few samples).
    """
    if steps < 1 or chunk < 1:
        raise ValueError("steps and chunk must be at least 1")
    n = images.shape[0]
    x = images.detach().float()
    targets = targets.to(images.device)
    alphas = (torch.arange(steps, device=x.device, dtype=torch.float32) + 0.5) / steps
    total = torch.zeros_like(x)
    with torch.enable_grad():
        for start in range(0, n * steps, chunk):
            index = torch.arange(start, min(start + chunk, n * steps), device=x.device)
            sample, step = index // steps, index % steps
            points = (alphas[step][:, None, None, None] * x[sample]).requires_grad_(True)
            with _autocast(x.device, autocast_dtype):
                logits = model(points.to(images.dtype))
            score = logits.float().gather(1, targets[sample][:, None]).sum()
            (grad,) = torch.autograd.grad(score, points)
            total.index_add_(0, sample, grad.float())
    return x * total / steps


def ig_raw(
    model: nn.Module,
    images: Tensor,
    targets: Tensor,
    *,
    steps: int = IG_STEPS,
    chunk: int = IG_CHUNK,
    autocast_dtype: torch.dtype | None = None,
) -> Tensor:
    """sum_c |IG_c| [N, H, W] at input resolution (see the module docstring)."""
    attr = integrated_gradients(
        model, images, targets, steps=steps, chunk=chunk, autocast_dtype=autocast_dtype
    )
    return attr.abs().sum(dim=1)
