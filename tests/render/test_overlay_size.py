"""Overlays fit the report's sample card at their own size (captions stay at the font size
they were drawn with) and keep the image's aspect ratio, for wide, tall and tiny images."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worker.render import overlay

CSS = Path(overlay.__file__).with_name("report.css")


def test_the_card_width_is_the_css_column_less_its_padding() -> None:
    css = CSS.read_text()
    column = int(re.search(r"\.samples\{[^}]*minmax\((\d+)px", css).group(1))
    padding = int(re.search(r"figure\.sample\{[^}]*padding:(\d+)px", css).group(1))
    assert column - 2 * padding == overlay.CARD_WIDTH


@pytest.mark.parametrize("shape", [(1024, 2048), (2048, 1024), (1024, 1024), (32, 48), (3000, 300)])
def test_overlays_fit_the_card_and_keep_the_aspect(shape) -> None:
    h, w = shape
    image = np.random.default_rng(0).random((1, h, w)).astype(np.float32)
    raw = np.random.default_rng(1).random((7, 7)).astype(np.float32)
    png = overlay.render_overlay(image, raw, raw, ("baseline", "candidate"), ("a", "b"), "c")
    width, _ = Image.open(io.BytesIO(png)).size
    assert width <= overlay.CARD_WIDTH
    ph, pw = overlay.display_size(h, w)
    assert abs((ph / pw) / (h / w) - 1) <= 1 / min(ph, pw)  # the aspect, to a pixel's rounding
    assert max(ph, pw) >= min(overlay.MIN_SIDE, overlay.MAX_SIDE) or pw == overlay.MAX_PANEL_WIDTH
