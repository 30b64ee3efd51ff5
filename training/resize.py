"""How an image of any shape becomes the model's input: the resize policy, torch-free maths.

- ``stretch`` (the default, what camdrift always did): both sides scaled to the input, the
  aspect ratio lost; every pixel of the image is seen.
- ``letterbox``: scaled to fit inside the input with its aspect ratio, the rest padded with 0
  (black, as a radiograph's background); every pixel seen, none distorted.
- ``crop``: scaled to cover the input with its aspect ratio, the overhang cut evenly on both
  sides (a centre crop); nothing distorted, the image's edges unseen.

A :class:`Placement` says where the scaled image lands in the input; the image, its masks and
its boxes all go through the same one, and overlays map the maps back through it.
"""

from __future__ import annotations

from dataclasses import dataclass

RESIZE_POLICIES: tuple[str, ...] = ("stretch", "letterbox", "crop")
DEFAULT_RESIZE = "stretch"


@dataclass(frozen=True)
class Placement:
    """The image scaled to ``scaled`` (H, W) with its top-left corner at ``offset`` (top,
    left) of an input of ``size``; negative offsets cut the image (``crop``)."""

    size: tuple[int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int]

    @property
    def window(self) -> tuple[int, int, int, int]:
        """(top, left, bottom, right) of the input that the image covers."""
        (h, w), (sh, sw), (top, left) = self.size, self.scaled, self.offset
        return max(top, 0), max(left, 0), min(top + sh, h), min(left + sw, w)

    def source_window(self, image: tuple[int, int]) -> tuple[float, float, float, float]:
        """(top, left, bottom, right) of the image, in its pixels, that the input shows."""
        top, left, bottom, right = self.window
        (ih, iw), (sh, sw), (oy, ox) = image, self.scaled, self.offset
        ky, kx = ih / sh, iw / sw
        return (top - oy) * ky, (left - ox) * kx, (bottom - oy) * ky, (right - ox) * kx


def check_resize(policy: str) -> str:
    if policy not in RESIZE_POLICIES:
        raise ValueError(f"resize: {policy!r}; choose from {', '.join(RESIZE_POLICIES)}")
    return policy


def placement(image: tuple[int, int], size: tuple[int, int], policy: str) -> Placement:
    """Where an ``image`` of (H, W) pixels lands in an input of ``size`` under ``policy``."""
    check_resize(policy)
    (ih, iw), (h, w) = image, size
    if policy == "stretch" or (ih, iw) == (h, w):
        return Placement((h, w), (h, w), (0, 0))
    fit = min if policy == "letterbox" else max
    scale = fit(h / ih, w / iw)
    sh, sw = max(1, round(ih * scale)), max(1, round(iw * scale))
    if policy == "letterbox":
        sh, sw = min(sh, h), min(sw, w)
    else:
        sh, sw = max(sh, h), max(sw, w)
    return Placement((h, w), (sh, sw), ((h - sh) // 2, (w - sw) // 2))
