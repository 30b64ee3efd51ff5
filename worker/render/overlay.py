"""Overlay PNGs: the input image under the baseline and candidate maps, side by side.

Torch-free (numpy + PIL), shared by the API's overlay route and the HTML report. Workers store
maps at feature resolution (float16, each scaled to max 1); here they are rebuilt as the engine
does -- ReLU, bilinear upsampling to the image, min-max to [0, 1] -- and drawn as a colour heat
layer (a turbo-like ramp: blue -> cyan -> green -> yellow -> red) over the input in grayscale,
with an opacity that grows with the map, so the hot region reads at a glance and the anatomy
stays visible where the map is cold.

Layout of one overlay (PAD around and between the panels)::

    baseline (TL) · layercam     candidate (FT) · layercam
    +------------------------+   +------------------------+
    |  gray input + heat     |   |  gray input + heat     |
    +------------------------+   +------------------------+
    [check] pred covid 0.93      [cross] pred normal 0.71
    label covid                               low [ramp] high
"""

from __future__ import annotations

import io
import re
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFont

Caption = str | tuple[str, bool]  # text, or (text, whether the prediction is right)

MAX_SIDE = 512  # panels are scaled down to fit this ...
MIN_SIDE = 224  # ... and small inputs scaled up to this, so titles and heat stay legible
PAD = 8
# the HTML report's narrowest sample card holds 504 px of image (report.css: 520 px columns,
# 8 px padding): two panels this wide fit it unscaled, so the captions show at FONT_SIZE
CARD_WIDTH = 504
MAX_PANEL_WIDTH = (CARD_WIDTH - 3 * PAD) // 2
TITLE_HEIGHT = 22
LINE_HEIGHT = 18
CAPTION_HEIGHT = 2 * LINE_HEIGHT + 4
FONT_SIZE = 13
HEAT_MAX_ALPHA = 0.72
MARK_WIDTH = 15
INK = (36, 41, 47)
MUTED = (87, 96, 106)
RIGHT = (26, 127, 55)
WRONG = (207, 34, 46)
_ROWS_FILE = re.compile(r"rows-(\d+)-(\d+)\.npz")

# Anchor colours of the heat ramp (value, r, g, b), chosen by eye to run from a dark blue
# through cyan, green and yellow to a deep red with monotonically rising lightness up to
# yellow; the 256-entry table interpolates linearly between them.
HEAT_ANCHORS: tuple[tuple[float, int, int, int], ...] = (
    (0.00, 48, 18, 59),
    (0.10, 65, 69, 171),
    (0.22, 57, 135, 240),
    (0.34, 27, 200, 218),
    (0.46, 47, 241, 146),
    (0.58, 145, 254, 74),
    (0.70, 221, 222, 55),
    (0.80, 253, 166, 42),
    (0.90, 232, 86, 16),
    (1.00, 170, 20, 3),
)


@lru_cache(maxsize=1)
def heat_lut() -> np.ndarray:
    """The heat ramp as a [256, 3] float32 table in [0, 1]."""
    anchors = np.asarray(HEAT_ANCHORS, dtype=np.float32)
    x = np.linspace(0.0, 1.0, 256, dtype=np.float32)
    lut = np.stack([np.interp(x, anchors[:, 0], anchors[:, c]) for c in (1, 2, 3)], axis=1)
    return (lut / 255.0).astype(np.float32)


def colour_ramp(values: np.ndarray) -> np.ndarray:
    """RGB in [0, 1] (shape ``values.shape + (3,)``) for values in [0, 1]."""
    v = np.nan_to_num(np.asarray(values, dtype=np.float32), nan=0.0)
    idx = np.clip(np.rint(v * 255.0), 0, 255).astype(np.intp)
    return heat_lut()[idx]


def heat_alpha(heat: np.ndarray) -> np.ndarray:
    """Opacity of the heat layer: transparent below ~0.15, rising to HEAT_MAX_ALPHA at 1."""
    t = np.clip((np.asarray(heat, dtype=np.float32) - 0.12) / 0.6, 0.0, 1.0)
    return HEAT_MAX_ALPHA * t * t * (3.0 - 2.0 * t)  # smoothstep


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


def to_gray(image: np.ndarray) -> np.ndarray:
    """``read_image`` output ([C, H, W] or [H, W] in [0, 1]) -> [H, W] float32 luminance."""
    arr = np.asarray(image, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[None]
    weights = np.asarray([0.299, 0.587, 0.114], dtype=np.float32)
    gray = np.tensordot(weights, arr[:3], axes=1) if arr.shape[0] >= 3 else arr[0]
    return np.clip(np.nan_to_num(gray), 0.0, 1.0).astype(np.float32)


def display_size(height: int, width: int) -> tuple[int, int]:
    """(H, W) of one panel, aspect kept: longest side clamped into [MIN_SIDE, MAX_SIDE], and
    no wider than :data:`MAX_PANEL_WIDTH`, so a card shows the overlay at its own size."""
    longest = max(height, width, 1)
    scale = min(max(1.0, MIN_SIDE / longest), MAX_SIDE / longest, MAX_PANEL_WIDTH / max(width, 1))
    return max(1, round(height * scale)), max(1, round(width * scale))


def panel_origin(index: int, panel: tuple[int, int]) -> tuple[int, int]:
    """(x, y) of the top-left pixel of panel ``index`` (0 baseline, 1 candidate)."""
    return PAD + index * (panel[1] + PAD), PAD + TITLE_HEIGHT


def canvas_size(panel: tuple[int, int]) -> tuple[int, int]:
    """(width, height) of the whole overlay for panels of size ``panel`` (H, W)."""
    return 3 * PAD + 2 * panel[1], PAD + TITLE_HEIGHT + panel[0] + CAPTION_HEIGHT + PAD // 2


def blend(gray: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """[H, W, 3] in [0, 1]: ``gray`` with ``heat`` drawn on top as a colour layer."""
    alpha = heat_alpha(heat)[..., None]
    base = np.repeat(gray[..., None], 3, axis=2)
    return base * (1.0 - alpha) + colour_ramp(heat) * alpha


@lru_cache(maxsize=4)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (ImportError, OSError, TypeError):  # no FreeType: the small bitmap font
        return ImageFont.load_default()


def _fit(draw: ImageDraw.ImageDraw, text: str, font: Any, width: int) -> str:
    """``text`` cut with an ellipsis to fit ``width`` pixels."""
    if draw.textlength(text, font=font) <= width:
        return text
    while text and draw.textlength(text + "…", font=font) > width:
        text = text[:-1]
    return text + "…"


def _colour_bar(canvas: Image.Image, x: int, y: int, width: int, height: int) -> None:
    ramp = colour_ramp(np.linspace(0.0, 1.0, width, dtype=np.float32))
    strip = np.repeat((ramp * 255).round().astype(np.uint8)[None], height, axis=0)
    canvas.paste(Image.fromarray(strip), (x, y))


def _legend(draw: ImageDraw.ImageDraw, canvas: Image.Image, right: int, y: int) -> int:
    """Draw the heat legend (low, colour bar, high) ending at x = ``right``; return its
    left edge."""
    font = _font(FONT_SIZE - 2)
    high_w = round(draw.textlength("high", font=font))
    low_w = round(draw.textlength("low", font=font))
    bar_w = 56
    x_high = right - high_w
    x_bar = x_high - 4 - bar_w
    x_low = x_bar - 4 - low_w
    _colour_bar(canvas, x_bar, y + 5, bar_w, 7)
    draw.text((x_low, y + 1), "low", fill=MUTED, font=font)
    draw.text((x_high, y + 1), "high", fill=MUTED, font=font)
    return x_low


def _mark(draw: ImageDraw.ImageDraw, x: int, y: int, right: bool, colour: tuple) -> None:
    """A drawn check (right) or cross (wrong), 10 px, so no font needs the glyphs."""
    if right:
        draw.line([(x, y + 5), (x + 3, y + 9), (x + 10, y + 1)], fill=colour, width=2)
    else:
        draw.line([(x + 1, y + 1), (x + 9, y + 9)], fill=colour, width=2)
        draw.line([(x + 1, y + 9), (x + 9, y + 1)], fill=colour, width=2)


def render_overlay(
    image: np.ndarray,
    baseline: np.ndarray,
    candidate: np.ndarray,
    titles: Sequence[str],
    captions: Sequence[Caption] = ("", ""),
    footer: str = "",
) -> bytes:
    """PNG bytes: [baseline overlay | candidate overlay], each under its title and over its
    caption (text, or (text, correct): green after a check mark or red after a cross); below
    them ``footer`` and a small heat legend.

    ``image`` is the input as ``read_image`` returns it; ``baseline``/``candidate`` are raw
    maps at any resolution (rebuilt with :func:`full_size` at the panel size).
    """
    gray = to_gray(image)
    panel = display_size(*gray.shape)
    if panel != gray.shape:
        small = Image.fromarray(gray).resize((panel[1], panel[0]), Image.Resampling.BILINEAR)
        gray = np.clip(np.asarray(small, dtype=np.float32), 0.0, 1.0)
    width, height = canvas_size(panel)
    canvas = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(canvas)
    font = _font(FONT_SIZE)
    y_caption = PAD + TITLE_HEIGHT + panel[0] + 4
    y_footer = y_caption + LINE_HEIGHT
    maps = (baseline, candidate)
    for i, (raw, title, caption) in enumerate(zip(maps, titles, captions, strict=True)):
        x, y = panel_origin(i, panel)
        rgb = np.clip(blend(gray, full_size(raw, panel)), 0.0, 1.0)
        canvas.paste(Image.fromarray((rgb * 255).round().astype(np.uint8)), (x, y))
        draw.text((x, PAD + 3), _fit(draw, title, font, panel[1]), fill=INK, font=font)
        text, correct = (caption, None) if isinstance(caption, str) else caption
        colour = INK if correct is None else RIGHT if correct else WRONG
        if correct is not None:
            _mark(draw, x, y_caption + 3, correct, colour)
        if text:
            tx = x if correct is None else x + MARK_WIDTH
            room = panel[1] - (tx - x)
            draw.text((tx, y_caption), _fit(draw, text, font, room), fill=colour, font=font)
    legend_x = _legend(draw, canvas, width - PAD, y_footer)
    if footer:
        room = legend_x - 2 * PAD
        draw.text((PAD, y_footer), _fit(draw, footer, font, room), fill=MUTED, font=font)
    out = io.BytesIO()
    canvas.save(out, format="PNG")
    return out.getvalue()


def _class_name(names: Sequence[str], k: Any) -> str:
    try:
        k = int(k)
    except (TypeError, ValueError):
        return "?"
    return str(names[k]) if 0 <= k < len(names) else str(k)


def _prob(row: dict[str, Any], role: str, k: Any = None) -> str:
    probs = row.get(f"probs_{role}") or []
    k = row.get(f"pred_{role}") if k is None else k
    try:
        return f" {float(probs[int(k)]):.2f}"
    except (TypeError, ValueError, IndexError):
        return ""


def overlay_titles(method: str, phases: Sequence[str | None] = ("tl", "ft")) -> tuple[str, str]:
    """("baseline (TL) · layercam", "candidate (FT) · layercam")."""
    out = []
    for role, phase in zip(("baseline", "candidate"), phases, strict=True):
        tag = f" ({str(phase).upper()})" if phase else ""
        out.append(f"{role}{tag} · {method}")
    return out[0], out[1]


def overlay_captions(
    row: dict[str, Any], class_names: Sequence[str]
) -> tuple[tuple[Caption, Caption], str]:
    """((baseline caption, candidate caption), footer) of one per-sample row: each model's
    prediction and probability (green when right, red when wrong) and the true label."""
    label = row.get("label")
    captions = []
    for role in ("baseline", "candidate"):
        pred = row.get(f"pred_{role}")
        right = pred is not None and pred == label
        if isinstance(pred, int) and pred < 0:  # multi-label: the finding scored below threshold
            text = f"missed {_class_name(class_names, label)}{_prob(row, role, label)}"
        else:
            text = f"pred {_class_name(class_names, pred)}{_prob(row, role)}"
        captions.append((text, right))
    return (captions[0], captions[1]), f"label {_class_name(class_names, label)}"


def sample_overlay(
    image: np.ndarray,
    maps: tuple[np.ndarray, np.ndarray],
    row: dict[str, Any],
    method: str,
    class_names: Sequence[str],
    phases: Sequence[str | None] = ("tl", "ft"),
) -> bytes:
    """The overlay of one sample, titled by role and method, captioned with its predictions."""
    captions, footer = overlay_captions(row, class_names)
    return render_overlay(
        image,
        maps[0],
        maps[1],
        overlay_titles(method, phases),
        captions,
        footer,
    )


class OverlayUnavailable(LookupError):
    """A sample's overlay cannot be drawn; ``str()`` says why (for a 404 or a placeholder)."""


def overlay_for_sample(
    row: dict[str, Any],
    method: str,
    *,
    maps_dir: Path,
    image_root: Path,
    class_names: Sequence[str],
    phases: Sequence[str | None] = ("tl", "ft"),
    frame: tuple[str, Sequence[int]] | None = None,
) -> bytes:
    """The overlay PNG of one per-sample row: its stored maps under ``method`` (``maps_dir``)
    over its image (``row["path"]`` under ``image_root``, which it may not leave), drawn on
    the image's own aspect ratio. ``frame`` (resize policy, model input size): where a
    letterboxed or cropped input put the image, so the maps are cut back to it.

    Raises :class:`OverlayUnavailable` when the maps or the image are missing or unreadable.
    """
    from training.imageio import ImageReadError, read_image

    index = int(row["index"])
    maps = find_maps(Path(maps_dir), index, method)
    if maps is None:
        raise OverlayUnavailable(
            f"no {method} maps for sample {index} (samples outside the filter have none)"
        )
    root = Path(image_root).resolve()
    path = (root / str(row.get("path", ""))).resolve()
    if not path.is_relative_to(root):
        raise OverlayUnavailable("the sample's image is outside its dataset")
    try:
        image = read_image(path)
    except ImageReadError as exc:
        raise OverlayUnavailable(f"the input image cannot be read ({exc.reason})") from None
    if frame is not None and frame[0] != "stretch":
        image, maps = unframe(image, maps, frame[0], (int(frame[1][0]), int(frame[1][1])))
    return sample_overlay(image, maps, row, method, class_names, phases)


def unframe(
    image: np.ndarray, maps: Sequence[np.ndarray], policy: str, size: tuple[int, int]
) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
    """The maps of a letterboxed or cropped input cut to the part the image filled, and the
    image cut to the part the input showed (``crop``): both then cover the same pixels."""
    from training.resize import placement

    hw = (int(image.shape[-2]), int(image.shape[-1]))
    where = placement(hw, size, policy)
    top, left, bottom, right = where.window
    cut = tuple(full_size(m, size)[top:bottom, left:right] for m in maps)
    t, lft, b, r = (round(v) for v in where.source_window(hw))
    return image[..., max(t, 0) : min(b, hw[0]), max(lft, 0) : min(r, hw[1])], cut
