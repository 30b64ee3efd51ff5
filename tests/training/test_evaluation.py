"""training.evaluation against sklearn (test-only oracle), ties and absent classes."""

from __future__ import annotations

import json

import numpy as np
import pytest
from sklearn.metrics import confusion_matrix, recall_score, roc_auc_score

from training.evaluation import classification_metrics, ovr_auc

NAMES = ["normal", "pneumonia", "covid", "tuberculosis", "effusion"]


def _random_case(seed: int, n: int = 300) -> tuple[np.ndarray, np.ndarray]:
    """Labels over all classes; probabilities rounded so scores tie often."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(NAMES), n)
    logits = rng.normal(size=(n, len(NAMES)))
    logits[np.arange(n), labels] += 1.0
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    return labels, np.round(probs, 1)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_matches_sklearn(seed: int) -> None:
    labels, probs = _random_case(seed)
    out = classification_metrics(labels, probs, NAMES)
    json.dumps(out, allow_nan=False)
    preds = probs.argmax(axis=1)
    assert out["n"] == labels.size
    assert out["accuracy"] == pytest.approx(np.mean(preds == labels))
    for c, name in enumerate(NAMES):
        want = roc_auc_score(labels == c, probs[:, c])
        assert out["auc_per_class"][name] == pytest.approx(want, abs=1e-12)
    recalls = recall_score(labels, preds, labels=range(len(NAMES)), average=None)
    assert list(out["recall_per_class"].values()) == pytest.approx(list(recalls))
    assert out["confusion_matrix"] == confusion_matrix(labels, preds).tolist()
    macro = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in range(len(NAMES))])
    assert out["macro_auc"] == pytest.approx(macro, abs=1e-12)


def test_absent_class_is_none_and_left_out_of_macro() -> None:
    labels, probs = _random_case(4)
    keep = labels != 2
    labels, probs = labels[keep], probs[keep]
    out = classification_metrics(labels, probs, NAMES)
    assert out["auc_per_class"]["covid"] is None
    assert out["recall_per_class"]["covid"] is None
    present = [c for c in range(len(NAMES)) if c != 2]
    macro = np.mean([roc_auc_score(labels == c, probs[:, c]) for c in present])
    assert out["macro_auc"] == pytest.approx(macro, abs=1e-12)
    assert sum(map(sum, out["confusion_matrix"])) == labels.size


def test_single_class_labels_and_empty_set() -> None:
    probs = np.full((4, 2), 0.5)
    out = classification_metrics(np.zeros(4, dtype=int), probs, ["a", "b"])
    assert out["macro_auc"] is None
    assert out["auc_per_class"] == {"a": None, "b": None}
    assert out["recall_per_class"] == {"a": 1.0, "b": None}  # first argmax on a tie
    empty = classification_metrics(np.zeros(0, dtype=int), np.zeros((0, 2)), ["a", "b"])
    assert empty["n"] == 0 and empty["accuracy"] is None and empty["macro_auc"] is None
    assert empty["confusion_matrix"] == [[0, 0], [0, 0]]


def test_rejects_bad_inputs() -> None:
    with pytest.raises(ValueError):
        classification_metrics(np.zeros(3, dtype=int), np.zeros((3, 4)), ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics(np.array([0, 2]), np.zeros((2, 2)), ["a", "b"])
    with pytest.raises(ValueError):
        classification_metrics(np.array([0.0, 1.0]), np.zeros((2, 2)), ["a", "b"])


def test_auc_ties_count_half() -> None:
    assert ovr_auc(np.array([True, False]), np.array([0.5, 0.5])) == 0.5
    assert ovr_auc(np.array([True, False, False]), np.array([0.9, 0.9, 0.1])) == 0.75
