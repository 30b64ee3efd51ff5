"""The four sample filters, on hand-made tensors and through a real Audit of two checkpoints
that really disagree (tests/builders.py ``disagreeing_audit_inputs``): which samples each
filter keeps, and which class each model's map explains."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.builders import OUTCOMES, disagreeing_audit_inputs
from worker.engine.audit import Audit, AuditConfig
from worker.engine.selection import choose_targets

FILTERS = ("true_positive", "all", "predicted", "disagreement")

# label, baseline prediction, candidate prediction: every combination that tells filters apart
LABELS = torch.tensor([0, 1, 2, 3, 4, 0, 1, 2])
PRED_B = torch.tensor([0, 1, 0, 4, 1, 0, 3, 4])
PRED_C = torch.tensor([0, 2, 2, 4, 3, 0, 1, 2])
# ...kept by each filter (oracle written out by hand):
#          0 TP, 1 base right, 2 cand right, 3 both wrong agree, 4 both wrong differ, 5 TP,
#          6 cand right, 7 cand right
KEPT = {
    "true_positive": [True, False, False, False, False, True, False, False],
    "all": [True] * 8,
    "predicted": [True] * 8,
    "disagreement": [False, True, True, False, True, False, True, True],
}


@pytest.mark.parametrize("name", FILTERS)
def test_choose_targets_keeps_and_explains_the_right_classes(name: str) -> None:
    chosen = choose_targets(name, LABELS, PRED_B, PRED_C)
    assert chosen.included.dtype == torch.bool
    assert chosen.included.tolist() == KEPT[name]
    if name in ("true_positive", "all"):  # both maps explain the label
        assert chosen.baseline.tolist() == LABELS.tolist()
        assert chosen.candidate.tolist() == LABELS.tolist()
    else:  # each map explains its own model's prediction
        assert chosen.baseline.tolist() == PRED_B.tolist()
        assert chosen.candidate.tolist() == PRED_C.tolist()


def test_the_hand_made_predictions_tell_the_filters_apart() -> None:
    """Guard for the cases above: each filter's kept set differs from every other's, and the
    disagreeing samples' predictions differ from their labels on both sides."""
    kept = {name: tuple(v) for name, v in KEPT.items()}
    assert len({kept["true_positive"], kept["all"], kept["disagreement"]}) == 3
    differ = (PRED_B != PRED_C).tolist()
    assert differ == KEPT["disagreement"]
    assert bool(((PRED_B != LABELS) & (PRED_C != LABELS) & (PRED_B != PRED_C)).any())
    assert bool(((PRED_B == LABELS) & (PRED_C != LABELS)).any())
    assert bool(((PRED_B != LABELS) & (PRED_C == LABELS)).any())


# --------------------------------------------------------------------------- a real Audit

METHODS = ["layercam", "gradcam"]
METRICS = ["pearson", "iou_top20", "displacement"]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("disagree")
    expected = disagreeing_audit_inputs(root)
    return root, expected


@pytest.fixture(scope="module")
def audited(world) -> dict[str, dict[str, dict]]:
    """filter -> path -> row, for every filter, one real Audit each (CPU, 32 px)."""
    root, _ = world
    out = {}
    for name in FILTERS:
        cfg = AuditConfig(
            sample_filter=name, split=None, methods=METHODS, metrics=METRICS, device="cpu"
        )
        audit = Audit(root / "tl.safetensors", root / "ft.safetensors", root / "data", cfg)
        rows = audit.compute()
        assert len(rows) == len(world[1])
        out[name] = {r["path"]: r for r in rows}
    return out


def test_the_two_checkpoints_really_disagree(world, audited) -> None:
    """Before judging filters: the predictions are the designed ones, they differ on a known,
    proper subset, and every outcome (both right, one right, both wrong alike/unlike) occurs."""
    _, expected = world
    rows = audited["all"]
    assert set(rows) == set(expected)
    for path, (label, pb, pc, _) in expected.items():
        assert (rows[path]["label"], rows[path]["pred_baseline"], rows[path]["pred_candidate"]) == (
            label,
            pb,
            pc,
        ), path
    differ = [p for p, r in rows.items() if r["pred_baseline"] != r["pred_candidate"]]
    assert 0 < len(differ) < len(rows)
    outcomes = {v[3] for v in expected.values()}
    assert outcomes == set(OUTCOMES)
    # the predictions do not depend on the filter
    for name in FILTERS:
        for path, row in audited[name].items():
            assert (row["pred_baseline"], row["pred_candidate"]) == expected[path][1:3]


def _oracle_kept(name: str, label: int, pb: int, pc: int) -> bool:
    return {
        "true_positive": label == pb == pc,
        "all": True,
        "predicted": True,
        "disagreement": pb != pc,
    }[name]


@pytest.mark.parametrize("name", FILTERS)
def test_audit_keeps_the_filters_samples_and_explains_the_right_class(
    name: str, world, audited
) -> None:
    _, expected = world
    rows = audited[name]
    kept = {p for p, r in rows.items() if r["included"]}
    oracle = {p for p, (label, pb, pc, _) in expected.items() if _oracle_kept(name, label, pb, pc)}
    assert kept == oracle
    assert len(kept) > 0
    for path, row in rows.items():
        label, pb, pc, _ = expected[path]
        if name in ("true_positive", "all"):
            assert (row["target_baseline"], row["target_candidate"]) == (label, label), path
        else:
            assert (row["target_baseline"], row["target_candidate"]) == (pb, pc), path
        assert bool(row["metrics"]) == (path in kept)
        if path in kept:
            assert set(row["metrics"]) == set(METHODS)


def test_disagreement_maps_explain_the_predictions_not_the_labels(audited) -> None:
    """The same sample under 'disagreement' and 'predicted' is the same pair of maps (both
    explain each model's prediction); under 'all' (the label) it is another pair wherever a
    prediction differs from the label -- every disagreeing sample."""
    disagreement, predicted = audited["disagreement"], audited["predicted"]
    by_label = audited["all"]
    kept = [p for p, r in disagreement.items() if r["included"]]
    assert kept
    moved = 0
    for path in kept:
        for method in METHODS:
            got = disagreement[path]["metrics"][method]
            assert got == predicted[path]["metrics"][method], (path, method)
            other = by_label[path]["metrics"][method]
            same = all(
                (got[m] is None and other[m] is None)
                or (got[m] is not None and other[m] is not None and np.isclose(got[m], other[m]))
                for m in METRICS
            )
            moved += not same
    assert moved >= len(kept)  # at least one method per disagreeing sample differs


def test_a_kept_samples_metrics_are_its_own(audited) -> None:
    """A sample kept by 'true_positive' has the metrics it has under 'all' (both explain the
    label): values belong to their own row, whichever subset the filter keeps."""
    rows, reference = audited["true_positive"], audited["all"]
    kept = [p for p, r in rows.items() if r["included"]]
    assert 0 < len(kept) < len(rows)
    for path in kept:
        assert rows[path]["metrics"] == reference[path]["metrics"], path
