"""The behavioural ground truth: re-rendered conditions equal the images the generator writes,
the numbers equal an independent numpy evaluation of those files, and the decision separates a
model that reads only the shortcut from one that never looks at it."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from training.datasets import discover
from training.image_dataset import ImageDataset
from training.phantoms import CLASSES, generate_dataset
from training.protocol import predict
from training.shortcut_probe import mcnemar_one_sided, probe_model
from training.zoo import create_model

SIZE = 32
TARGET = "covid"
NAMES = list(CLASSES)
OPTIONS = {
    "per_class": 30,
    "size": SIZE,
    "seed": 3,
    "shortcut": TARGET,
    "shortcut_confound": 0.5,
    "splits": (0.5, 0.1, 0.4),  # 12 test images per class: enough for the paired test
}
HALF = (0.5, 0.5, 0.5)


@pytest.fixture(scope="module")
def corner(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same seed three times: the folder under probe, and two whose test images are what
    the probe claims to re-render (shortcut absent, shortcut moved)."""
    root = tmp_path_factory.mktemp("corner")
    for mode in ("correlated", "absent", "moved"):
        generate_dataset(root / mode, shortcut_eval=mode, **OPTIONS)  # type: ignore[arg-type]
    return {mode: root / mode for mode in ("correlated", "absent", "moved")}


def _raw(x: torch.Tensor) -> torch.Tensor:
    """Undo the (x - 0.5) / 0.5 normalisation: pixels in [0, 1], first channel."""
    return x[:, 0] * 0.5 + 0.5


class MarkerReader(nn.Module):
    """Looks only at the top-left corner: the shortcut class iff something bright sits there."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = _raw(x)
        corner = raw[:, : raw.shape[1] // 6, : raw.shape[2] // 6].amax(dim=(1, 2))
        logits = torch.zeros(x.shape[0], len(NAMES))
        logits[:, NAMES.index(TARGET)] = 20.0 * (corner - 0.6)
        return logits


def marker_reader_numpy(pixels: np.ndarray) -> np.ndarray:
    """The same rule on the 8-bit files, written independently: softmax over five logits."""
    corner = pixels[: SIZE // 6, : SIZE // 6].max() / 255.0
    logits = np.zeros(len(NAMES))
    logits[NAMES.index(TARGET)] = 20.0 * (corner - 0.6)
    e = np.exp(logits - logits.max())
    return e / e.sum()


class LesionReader(nn.Module):
    """A linear read-out of the chest below the top quarter (never where a corner token
    goes), fitted in closed form (ridge) on the training images."""

    def __init__(self, weights: np.ndarray) -> None:
        super().__init__()
        self.weights = torch.tensor(weights, dtype=torch.float32)

    @staticmethod
    def features(raw: torch.Tensor) -> torch.Tensor:
        body = raw[:, raw.shape[1] // 4 :, :]
        pooled = nn.functional.avg_pool2d(body[:, None], 4).flatten(1)
        return torch.cat([pooled, torch.ones(raw.shape[0], 1)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 8.0 * self.features(_raw(x)) @ self.weights


def _rows(root: Path) -> list[dict[str, str]]:
    with (root / "manifest.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def _pixels(root: Path, rel: str) -> np.ndarray:
    return np.asarray(Image.open(root / rel))


def fit_lesion_reader(root: Path) -> LesionReader:
    rows = [r for r in _rows(root) if r["split"] == "train"]
    raw = torch.tensor(np.stack([_pixels(root, r["path"]) for r in rows]) / 255.0)
    x = LesionReader.features(raw.float()).double().numpy()
    y = np.eye(len(NAMES))[[NAMES.index(r["label"]) for r in rows]]
    w = np.linalg.solve(x.T @ x + 1e-2 * np.eye(x.shape[1]), x.T @ y)
    return LesionReader(w)


def _probe(model: nn.Module, data: Path, **kw: object):  # type: ignore[no-untyped-def]
    return probe_model(model, NAMES, data, input_size=(SIZE, SIZE), mean=HALF, std=HALF, **kw)


def _test_rows(root: Path, label: str) -> list[dict[str, str]]:
    return [r for r in _rows(root) if r["split"] == "test" and r["label"] == label]


# ------------------------------------------------------------------ statistics


@pytest.mark.parametrize(("lost", "gained"), [(0, 0), (5, 0), (9, 1), (3, 3), (1, 7), (12, 4)])
def test_mcnemar_equals_the_binomial_tail(lost: int, gained: int) -> None:
    n = lost + gained
    tail = sum(math.comb(n, k) for k in range(lost, n + 1)) / 2**n if n else 1.0
    assert mcnemar_one_sided(lost, gained) == pytest.approx(tail, rel=1e-9)


# ------------------------------------------------------------------ the marker reader


def test_marker_reader_relies_and_numbers_match_the_files(corner: dict[str, Path]) -> None:
    """Present / absent / moved equal the numpy rule applied to the files of the correlated,
    absent and moved folders: the re-render is those very images."""
    result = _probe(MarkerReader(), corner["correlated"])
    target = NAMES.index(TARGET)
    for mode, recall, score in (
        ("correlated", result.recall_present, result.score_present),
        ("absent", result.recall_absent, result.score_absent),
        ("moved", result.recall_moved, result.score_moved),
    ):
        probs = np.stack(
            [
                marker_reader_numpy(_pixels(corner[mode], r["path"]))
                for r in _test_rows(corner[mode], TARGET)
            ]
        )
        assert recall == pytest.approx(np.mean(probs.argmax(1) == target))
        assert score == pytest.approx(probs[:, target].mean(), abs=1e-5)
    assert (result.recall_present, result.recall_absent, result.recall_moved) == (1.0, 0.0, 0.0)
    n = len(_test_rows(corner["correlated"], TARGET))
    assert result.n_shortcut == n == 12 and result.n_images == 12 * len(NAMES)
    assert (result.lost_without, result.gained_without) == (n, 0)
    assert result.p_value == pytest.approx(0.5**n)
    assert result.recall_drop == 1.0 and result.score_drop > 0.9
    assert result.relies_on_shortcut
    # planted on every image, the marker pulls every other class over to the shortcut class
    assert result.conditions["planted"].pulled_rate == 1.0
    pulled = [
        marker_reader_numpy(_pixels(corner["absent"], r["path"])).argmax() == target
        for r in _rows(corner["absent"])
        if r["split"] == "test" and r["label"] != TARGET
    ]
    assert result.conditions["absent"].pulled_rate == pytest.approx(np.mean(pulled))
    others = [c for c in NAMES if c != TARGET]
    assert all(result.conditions["planted"].class_accuracy[c] == 0.0 for c in others)


def test_lesion_reader_does_not_rely(corner: dict[str, Path]) -> None:
    model = fit_lesion_reader(corner["correlated"])
    result = _probe(model, corner["correlated"])
    assert result.recall_present == result.recall_absent == result.recall_moved
    assert result.recall_drop == 0.0 and abs(result.score_drop) < 1e-6
    assert (result.lost_without, result.gained_without, result.p_value) == (0, 0, 1.0)
    assert not result.relies_on_shortcut
    assert result.recall_present >= 0.5  # it does read the finding, not nothing
    # per-class accuracy equals the model run on the absent folder's files, by numpy
    target = NAMES.index(TARGET)
    for k, name in enumerate(NAMES):
        rows = _test_rows(corner["absent"], name)
        raw = torch.tensor(np.stack([_pixels(corner["absent"], r["path"]) for r in rows]) / 255.0)
        logits = (LesionReader.features(raw.float()).double() @ model.weights.double()).numpy()
        acc = np.mean(logits.argmax(1) == k)
        assert result.conditions["absent"].class_accuracy[name] == pytest.approx(acc)
        if k == target:
            assert result.recall_absent == pytest.approx(acc)


def test_the_drop_threshold_is_part_of_the_rule(corner: dict[str, Path]) -> None:
    result = _probe(MarkerReader(), corner["correlated"], recall_drop_min=1.01)
    assert not result.relies_on_shortcut and "1.01" in result.rule
    result = _probe(MarkerReader(), corner["correlated"], alpha=0.5**12)
    assert not result.relies_on_shortcut  # p = 0.5**12 is not < 0.5**12


# ------------------------------------------------------------------ the other kinds


class StripeReader(nn.Module):
    """Detects a period-4 row pattern (the scanner kind): the shortcut class iff present."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = _raw(x)
        d = raw[:, :-2] - raw[:, 2:]
        m = torch.arange(d.shape[1])
        energy = torch.stack(
            [
                (torch.where((m + p) % 4 < 2, 1.0, -1.0)[None, :, None] * d).mean((1, 2))
                for p in range(4)
            ]
        ).amax(0)
        logits = torch.zeros(x.shape[0], len(NAMES))
        logits[:, NAMES.index(TARGET)] = 400.0 * (energy - 0.035)
        return logits


class BorderReader(nn.Module):
    """Reads the outermost pixel ring (the frame kind)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = _raw(x)
        ring = torch.cat([raw[:, 0], raw[:, -1], raw[:, :, 0], raw[:, :, -1]], dim=1).mean(1)
        logits = torch.zeros(x.shape[0], len(NAMES))
        logits[:, NAMES.index(TARGET)] = 20.0 * (ring - 0.55)
        return logits


class TopBandReader(nn.Module):
    """Reads the upper half's border band (where letters go in training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = _raw(x)
        h, w = raw.shape[1:]
        band = torch.ones(h, w, dtype=torch.bool)
        band[h // 6 : h // 2, w // 6 : w - w // 6] = False
        band[h // 2 :] = False
        brightest = raw[:, band].amax(1)
        logits = torch.zeros(x.shape[0], len(NAMES))
        logits[:, NAMES.index(TARGET)] = 20.0 * (brightest - 0.9)
        return logits


@pytest.mark.parametrize(
    ("kind", "reader"),
    [("scanner", StripeReader), ("frame", BorderReader), ("letter", TopBandReader)],
)
def test_each_kind_probes_and_a_reader_of_it_relies(
    tmp_path: Path, kind: str, reader: type
) -> None:
    generate_dataset(tmp_path / "d", shortcut_kind=kind, **OPTIONS)  # type: ignore[arg-type]
    result = _probe(reader(), tmp_path / "d")
    assert result.shortcut_kind == kind
    assert result.recall_present >= 0.9 and result.recall_absent <= 0.1
    assert result.relies_on_shortcut
    if kind == "letter":  # moved to the lower border: out of the reader's sight
        assert result.recall_moved is not None and result.recall_moved <= 0.1
    else:
        assert result.recall_moved is None and "moved" not in result.conditions


# ------------------------------------------------------------------ the training pipeline


def test_preprocessing_equals_training_evaluation(corner: dict[str, Path]) -> None:
    """With a real network and a resize (32 -> 48 px) the probe's present condition gives
    the probabilities training's own loader and predict() give on the files."""
    torch.manual_seed(0)
    model = create_model("tinycnn", len(NAMES)).eval()
    index = discover(corner["correlated"], class_names=NAMES).subset("test")
    dataset = ImageDataset(index, (48, 48), HALF, HALF)
    labels, probs = predict(
        model, torch.utils.data.DataLoader(dataset, batch_size=16), torch.device("cpu")
    )
    result = probe_model(
        model, NAMES, corner["correlated"], input_size=(48, 48), mean=HALF, std=HALF
    )
    target = NAMES.index(TARGET)
    mine = labels == target
    assert result.score_present == pytest.approx(probs[mine, target].mean(), abs=1e-6)
    assert result.recall_present == pytest.approx(np.mean(probs[mine].argmax(1) == target))
    accuracy = np.mean(probs.argmax(1) == labels)
    assert result.conditions["present"].accuracy == pytest.approx(accuracy)


def test_class_order_of_the_model_is_respected(corner: dict[str, Path]) -> None:
    """Checkpoints list classes alphabetically; the probe maps outputs by name."""
    order = sorted(NAMES)

    class Permuted(nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            logits = MarkerReader()(x)
            return logits[:, [NAMES.index(c) for c in order]]

    result = probe_model(
        Permuted(), order, corner["correlated"], input_size=(SIZE, SIZE), mean=HALF, std=HALF
    )
    assert result.recall_present == 1.0 and result.relies_on_shortcut


# ------------------------------------------------------------------ refusals


def test_refusals_name_the_problem(tmp_path: Path, corner: dict[str, Path]) -> None:
    with pytest.raises(ValueError, match="split"):
        _probe(MarkerReader(), corner["correlated"], split="holdout")
    with pytest.raises(ValueError, match="phantom classes"):
        probe_model(
            MarkerReader(),
            ["a", "b"],
            corner["correlated"],
            input_size=(SIZE, SIZE),
            mean=HALF,
            std=HALF,
        )
    generate_dataset(tmp_path / "clean", 3, SIZE, 0)
    with pytest.raises(ValueError, match="without a shortcut"):
        _probe(MarkerReader(), tmp_path / "clean")
    with pytest.raises(ValueError, match="phantoms"):
        _probe(MarkerReader(), tmp_path)
    generate_dataset(tmp_path / "edited", 3, SIZE, 0, shortcut=TARGET)
    test_row = next(r for r in _rows(tmp_path / "edited") if r["split"] == "test")
    pixels = _pixels(tmp_path / "edited", test_row["path"]).copy()
    pixels[10, 10] ^= 1
    Image.fromarray(pixels).save(tmp_path / "edited" / test_row["path"])
    with pytest.raises(ValueError, match="differs from its re-render"):
        _probe(MarkerReader(), tmp_path / "edited")
