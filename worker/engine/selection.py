"""Which samples an audit explains, and which class each model's map explains
(docs/architecture.md, "Samples")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from worker.catalog import validate_filter


@dataclass(frozen=True)
class Targets:
    """Per-sample target class for each model's map, and whether the sample is kept."""

    baseline: Tensor
    candidate: Tensor
    included: Tensor


def choose_targets(
    sample_filter: str, labels: Tensor, pred_baseline: Tensor, pred_candidate: Tensor
) -> Targets:
    """Apply a sample filter.

    - ``true_positive`` (the paper's): label = both predictions; both maps explain the label.
    - ``all``: every sample; both maps explain the label.
    - ``predicted``: every sample; each map explains its own model's prediction.
    - ``disagreement``: the predictions differ; each map explains its own model's decision,
      which is what a reviewer of a changed decision wants to see.
    """
    validate_filter(sample_filter)
    if sample_filter == "true_positive":
        keep = (labels == pred_baseline) & (labels == pred_candidate)
        return Targets(labels, labels, keep)
    if sample_filter == "all":
        return Targets(labels, labels, torch.ones_like(labels, dtype=torch.bool))
    if sample_filter == "predicted":
        return Targets(pred_baseline, pred_candidate, torch.ones_like(labels, dtype=torch.bool))
    return Targets(pred_baseline, pred_candidate, pred_baseline != pred_candidate)
