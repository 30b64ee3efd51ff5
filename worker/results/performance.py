"""A checkpoint's classification scores on the audited rows: one place for the report's
``performance`` and the trajectory's per-checkpoint accuracy and macro AUC.

Single-label rows are images (``classification_metrics``: argmax accuracy, one-vs-rest AUC).
Multi-label rows are (image, present finding) pairs: they are folded back into one row per
image whose findings are its rows' labels (an image's rows are evaluated together) and whose
sigmoid scores are any of its rows' (``multilabel_metrics``: per-finding AUC).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.evaluation import classification_metrics, multilabel_metrics
from worker.results.rows import RowTable


def performance(
    table: RowTable, probs: np.ndarray, class_names: list[str], multi_label: bool = False
) -> dict[str, Any]:
    """Scores of ``probs`` (one row per table row) against the table's labels."""
    probs = np.asarray(probs, dtype=np.float64).reshape(len(table), len(class_names))
    if multi_label:
        return multilabel_metrics(*_per_image(table, probs, len(class_names)), class_names)
    return classification_metrics(table.label, probs, class_names)


def _per_image(table: RowTable, probs: np.ndarray, classes: int) -> tuple[np.ndarray, np.ndarray]:
    images = sorted(set(table.path.tolist()))
    where = {path: i for i, path in enumerate(images)}
    truth = np.zeros((len(images), classes), dtype=bool)
    scores = np.zeros((len(images), classes))
    for k, (path, label) in enumerate(zip(table.path.tolist(), table.label.tolist(), strict=True)):
        truth[where[path], label] = True
        scores[where[path]] = probs[k]
    return truth, scores
