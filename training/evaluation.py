"""Classification metrics for a checkpoint on an evaluated set, numpy and scipy
(docs/architecture.md, "Samples and statistics").

The report gives both checkpoints' accuracy, macro one-vs-rest AUC and per-class recall; this
module computes them without sklearn (kept out of the runtime) and returns plain Python
numbers, with None where a value is undefined (a class absent from the labels).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.stats import rankdata


def classification_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> dict[str, Any]:
    """Accuracy, one-vs-rest AUCs, recalls and confusion matrix of ``probs`` [N, C] vs ``labels``.

    Predictions are the first argmax of each row. A class with no positive or no negative
    sample has AUC None and is left out of ``macro_auc`` (None if no class has an AUC); a
    class with no sample has recall None. ``confusion_matrix[true][pred]`` counts samples.
    """
    labels, probs = _check_inputs(labels, probs, class_names)
    num_classes = len(class_names)
    n = int(labels.size)
    preds = probs.argmax(axis=1) if n else np.zeros(0, dtype=np.int64)
    confusion = np.bincount(labels * num_classes + preds, minlength=num_classes**2)
    confusion = confusion.reshape(num_classes, num_classes)
    aucs = [ovr_auc(labels == c, probs[:, c]) for c in range(num_classes)]
    defined = [auc for auc in aucs if auc is not None]
    support = confusion.sum(axis=1)
    return {
        "n": n,
        "accuracy": float(np.mean(preds == labels)) if n else None,
        "macro_auc": float(np.mean(defined)) if defined else None,
        "auc_per_class": dict(zip(class_names, aucs, strict=True)),
        "recall_per_class": {
            name: float(confusion[c, c] / support[c]) if support[c] else None
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": confusion.astype(int).tolist(),
    }


def _check_inputs(
    labels: np.ndarray, probs: np.ndarray, class_names: list[str]
) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(class_names)
    if labels.ndim != 1 or probs.ndim != 2 or probs.shape != (labels.size, num_classes):
        raise ValueError(
            f"need labels [N] and probs [N, {num_classes}], got {labels.shape} and {probs.shape}"
        )
    if labels.size and not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    labels = labels.astype(np.int64)
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )
    return labels, probs


def ovr_auc(positive: np.ndarray, scores: np.ndarray) -> float | None:
    """ROC AUC of ``scores`` for the boolean ``positive`` mask via Mann-Whitney U.

    AUC = (rank sum of positives - n_pos (n_pos + 1) / 2) / (n_pos n_neg) with average ranks,
    so a tied positive/negative pair counts 1/2, as in the ROC trapezoid. None if either class
    is empty.
    """
    n_pos = int(positive.sum())
    n_neg = positive.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return None
    rank_sum = rankdata(scores)[positive].sum()  # average ranks for ties
    return float((rank_sum - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


FINDING_THRESHOLD = 0.5  # a multi-label model "finds" a finding when its sigmoid exceeds this


def multilabel_metrics(
    truth: np.ndarray,
    probs: np.ndarray,
    class_names: list[str],
    threshold: float = FINDING_THRESHOLD,
) -> dict[str, Any]:
    """Per-finding AUC and sensitivity of sigmoid ``probs`` [N, C] against the boolean
    ``truth`` [N, C] (one row per image), the multi-label counterpart of
    :func:`classification_metrics`.

    ``accuracy`` is the label-wise (Hamming) accuracy at ``threshold``; ``recall_per_class``
    each finding's sensitivity at it; ``confusion_matrix`` one row [tn, fp, fn, tp] per finding
    (not C x C: findings are not exclusive). A finding absent from, or present in, every image
    has AUC None and is left out of ``macro_auc``.
    """
    truth = np.asarray(truth, dtype=bool)
    probs = np.asarray(probs, dtype=np.float64)
    if truth.shape != probs.shape or truth.ndim != 2 or truth.shape[1] != len(class_names):
        raise ValueError(
            f"need truth and probs [N, {len(class_names)}], got {truth.shape} and {probs.shape}"
        )
    found = probs > threshold
    n = int(truth.shape[0])
    aucs = [ovr_auc(truth[:, c], probs[:, c]) for c in range(len(class_names))]
    defined = [auc for auc in aucs if auc is not None]
    tp = (found & truth).sum(0)
    fp = (found & ~truth).sum(0)
    fn = (~found & truth).sum(0)
    tn = (~found & ~truth).sum(0)
    return {
        "n": n,
        "accuracy": float(np.mean(found == truth)) if n else None,
        "macro_auc": float(np.mean(defined)) if defined else None,
        "auc_per_class": dict(zip(class_names, aucs, strict=True)),
        "recall_per_class": {
            name: float(tp[c] / (tp[c] + fn[c])) if tp[c] + fn[c] else None
            for c, name in enumerate(class_names)
        },
        "confusion_matrix": np.stack([tn, fp, fn, tp], axis=1).astype(int).tolist(),
        "multi_label": True,
        "threshold": threshold,
    }
