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
    sample_filter: str,
    labels: Tensor,
    pred_baseline: Tensor,
    pred_candidate: Tensor,
    multi_label: bool = False,
) -> Targets:
    """Apply a sample filter.

    - ``true_positive`` (the paper's): label = both predictions; both maps explain the label.
    - ``all``: every sample; both maps explain the label.
    - ``predicted``: every sample; each map explains its own model's prediction.
    - ``disagreement``: the predictions differ; each map explains its own model's decision,
      which is what a reviewer of a changed decision wants to see.

    Multi-label, a sample is one present finding of an image and both maps always explain
    that finding; ``pred`` is the finding when the model scores it above threshold, else -1
    (:func:`worker.engine.audit.decisions`). ``true_positive``: both models find it; ``all``
    and ``predicted``: every sample; ``disagreement``: one model finds it, the other not.
    """
    validate_filter(sample_filter)
    if multi_label:
        every = torch.ones_like(labels, dtype=torch.bool)
        keep = {
            "true_positive": (labels == pred_baseline) & (labels == pred_candidate),
            "disagreement": pred_baseline != pred_candidate,
        }.get(sample_filter, every)
        return Targets(labels, labels, keep)
    if sample_filter == "true_positive":
        keep = (labels == pred_baseline) & (labels == pred_candidate)
        return Targets(labels, labels, keep)
    if sample_filter == "all":
        return Targets(labels, labels, torch.ones_like(labels, dtype=torch.bool))
    if sample_filter == "predicted":
        return Targets(pred_baseline, pred_candidate, torch.ones_like(labels, dtype=torch.bool))
    return Targets(pred_baseline, pred_candidate, pred_baseline != pred_candidate)
