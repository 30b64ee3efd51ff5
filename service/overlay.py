"""Overlay PNGs: the input image under the baseline and candidate maps, side by side.

Torch-free. Workers store maps at feature resolution (float16, each scaled to max 1); here they
are rebuilt as the engine does -- ReLU, bilinear upsampling to the image, min-max to [0, 1] --
and drawn with a jet-like colour ramp whose opacity follows the map.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MAX_SIDE = 512
LABEL_HEIGHT = 18
GAP = 4
_ROWS_FILE = re.compile(r"rows-(\d+)-(\d+)\.npz")


def find_maps(maps_dir: Path, row: int, method: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(baseline, candidate) raw maps of evaluated row ``row`` under ``method``, or None."""
    if not maps_dir.is_dir():
        return None
    keys = (f"baseline__{method}", f"candidate__{method}")
    for path in sorted(maps_dir.glob("rows-*.npz")):
        match = _ROWS_FILE.fullmatch(path.name)
        if match is not None and not int(match[1]) <= row <= int(match[2]):
            continue
        with np.load(path, allow_pickle=False) as data:
            if not all(k in data.files for k in keys) or "rows" not in data.files:
                continue
            hits = np.nonzero(data["rows"] == row)[0]
            if hits.size:
                k = int(hits[0])
                return data[keys[0]][k], data[keys[1]][k]
    return None


def full_size(raw: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """ReLU, bilinear upsample to (H, W), min-max to [0, 1]; a flat map stays zero."""
    height, width = size
    arr = np.maximum(np.asarray(raw, dtype=np.float32), 0.0)
    up = np.asarray(Image.fromarray(arr).resize((width, height), Image.Resampling.BILINEAR))
    lo, hi = float(up.min()), float(up.max())
    if not np.isfinite(hi) or hi - lo <= 1e-12:
        return np.zeros((height, width), dtype=np.float32)
    return ((up - lo) / (hi - lo)).astype(np.float32)


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """Jet-like RGB in [0, 1] for values in [0, 1] (blue -> cyan -> yellow -> red)."""
    v = values[..., None]
    centres = np.array([0.75, 0.5, 0.25], dtype=np.float32)  # r, g, b
    return np.clip(1.5 - np.abs(4.0 * (v - centres)), 0.0, 1.0)


def to_rgb(image: np.ndarray) -> np.ndarray:
    """``read_image`` output ([C, H, W] in [0, 1]) -> [H, W, 3] float32."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    arr = arr[:3] if arr.shape[0] >= 3 else np.repeat(arr[:1], 3, axis=0)
    return np.clip(arr.transpose(1, 2, 0), 0.0, 1.0)


def _display_size(height: int, width: int) -> tuple[int, int]:
    scale = min(1.0, MAX_SIDE / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def _panel(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    alpha = (0.6 * heat)[..., None]
    return rgb * (1.0 - alpha) + colour_ramp(heat) * alpha


def render_overlay(
    image: np.ndarray, baseline: np.ndarray, candidate: np.ndarray, labels: tuple[str, str]
) -> bytes:
    """PNG bytes: [baseline overlay | candidate overlay], each under a text label."""
    rgb = to_rgb(image)
    height, width = _display_size(*rgb.shape[:2])
    if (height, width) != rgb.shape[:2]:
        small = Image.fromarray((rgb * 255).round().astype(np.uint8))
        rgb = np.asarray(small.resize((width, height), Image.Resampling.BILINEAR)) / 255.0
    panels = [_panel(rgb, full_size(m, (height, width))) for m in (baseline, candidate)]
    canvas = Image.new("RGB", (2 * width + GAP, height + LABEL_HEIGHT), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, (panel, label) in enumerate(zip(panels, labels, strict=True)):
        x = i * (width + GAP)
        tile = Image.fromarray((np.clip(panel, 0, 1) * 255).round().astype(np.uint8))
        canvas.paste(tile, (x, LABEL_HEIGHT))
        draw.text((x + 2, 2), label, fill=(0, 0, 0), font=font)
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()
