"""The training/evaluation ``ImageDataset``: decoded, resized, normalised images of a
:class:`~training.datasets.DatasetIndex` (torch; discovery and splits are torch-free), and, when
asked, each image's reference-region masks at the same size (what localisation metrics need)."""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from training.datasets import (
    REGION_COLUMNS,
    Box,
    DatasetError,
    DatasetIndex,
    Sample,
    _check_on_error,
)
from training.imageio import ImageReadError, check_bit_depth, read_image
from training.resize import DEFAULT_RESIZE, Placement, check_resize, placement

Decoded = tuple[torch.Tensor, tuple[int, int]]  # image at input_size, its size on disk (H, W)


class ImageDataset(Dataset):
    """Decoded, resized, normalised images for training and evaluation.

    ``__getitem__(i)`` returns ``(image [channels, H, W] float32, label, i)``.

    Skip mode: with ``on_error="skip"`` the constructor calls :meth:`validate`, which decodes
    every file once (threaded), drops the unreadable ones from ``self.index`` and records
    them in ``read_failures`` -- before any DataLoader worker exists, so the record is
    visible to the caller and every index the sampler draws is readable. If a file breaks
    after that, ``__getitem__`` records it (in that worker's copy only), warns and returns
    the next readable sample with *that* sample's label and index.

    ``cache=True`` keeps decoded, resized float16 images (before augmentation) in memory,
    filled eagerly in the constructor so that forked DataLoader workers share it.

    ``bit_depth``: the significant bits of 16-bit grayscale files without an ``sBIT`` chunk
    (12 for most detectors' exports), as :func:`training.imageio.read_image` takes it.

    ``window`` (low, high): a fixed intensity window on the read [0, 1] values, stretched
    to [0, 1] and clipped (a radiograph's soft-tissue or bone window), before resizing.

    ``multi_hot`` (multi-label training): the label is the image's findings as a 0/1 vector;
    give it an index with one sample per image (:meth:`DatasetIndex.per_image`).

    ``regions`` (names of :data:`training.datasets.REGION_COLUMNS`): ``__getitem__`` also
    returns a bool ``[len(regions), H, W]`` tensor, each sample's masks at input_size (all
    False where it has none); nothing is read for them otherwise. Use it without ``augment``:
    the masks follow the image on disk, not an augmented copy.
    """

    def __init__(
        self,
        index: DatasetIndex,
        input_size: tuple[int, int],
        mean: Sequence[float],
        std: Sequence[float],
        *,
        channels: int = 3,
        augment: bool = False,
        on_error: str = "raise",
        cache: bool = False,
        num_threads: int | None = None,
        regions: Sequence[str] = (),
        multi_hot: bool = False,
        bit_depth: int | None = None,
        resize: str = DEFAULT_RESIZE,
        window: Sequence[float] | None = None,
    ) -> None:
        _check_on_error(on_error)
        unknown = [r for r in regions if r not in REGION_COLUMNS]
        if unknown:
            raise ValueError(f"regions: unknown {unknown}; choose from {list(REGION_COLUMNS)}")
        if regions and augment:
            raise ValueError("regions: masks do not follow augmentation; use augment=False")
        if channels not in (1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        height, width = (int(v) for v in input_size)
        if height < 1 or width < 1:
            raise ValueError(f"input_size must be positive, got {input_size}")
        self.index = replace(index, samples=list(index.samples), skipped=list(index.skipped))
        self.input_size = (height, width)
        self.channels = channels
        self.augment = augment
        self.on_error = on_error
        self.num_threads = num_threads
        self.regions = tuple(dict.fromkeys(regions))
        # multi-label training: the label is the image's findings as a 0/1 vector
        self.multi_hot = multi_hot
        check_bit_depth(bit_depth)
        self.bit_depth = bit_depth  # 16-bit files without sBIT: their significant bits
        self.resize = check_resize(resize)  # stretch, letterbox or crop (training.resize)
        self.window = check_window(window)  # (low, high) of [0, 1] intensities: stretched to 0..1
        self.mean = _stat_tensor(mean, channels, "mean")
        self.std = _stat_tensor(std, channels, "std")
        if bool((self.std <= 0).any()):
            raise ValueError(f"std must be positive, got {list(std)}")
        self.read_failures: list[tuple[str, str]] = []
        self._cache: list[torch.Tensor] | None = None
        self._cache_sizes: list[tuple[int, int]] = []
        if on_error == "skip" or cache:
            self._preload(keep=cache)

    @property
    def samples(self) -> list[Sample]:
        return self.index.samples

    def __len__(self) -> int:
        return len(self.index.samples)

    def __getitem__(self, i: int) -> tuple:
        """``(image, label, i)``; with ``regions``, ``(image, label, i, masks)``."""
        try:
            base, size = self._base(i)
        except ImageReadError as exc:
            if self.on_error == "raise":
                raise
            i, (base, size) = self._substitute(i, exc)
        if self.augment:
            base = _augment(base)
        image = base.expand(self.channels, -1, -1) if base.shape[0] != self.channels else base
        item = ((image - self.mean) / self.std, self.target(i), i)
        if self.regions:
            return (*item, self.region_masks(i, size))
        return item

    def target(self, i: int) -> int | torch.Tensor:
        """Sample ``i``'s label: its class index, or (``multi_hot``) a float 0/1 vector of
        the image's findings."""
        sample = self.index.samples[i]
        if not self.multi_hot:
            return sample.label
        out = torch.zeros(len(self.index.class_names))
        out[list(sample.findings if sample.findings is not None else (sample.label,))] = 1.0
        return out

    def region_masks(self, i: int, image_size: tuple[int, int] | None = None) -> torch.Tensor:
        """Bool ``[len(regions), H, W]`` at input_size: each region's mask file resized
        (nearest, centre-sampled), the lesion's boxes where it has no mask file, all False
        where the sample has neither. ``image_size``: the image's (H, W) on disk, which boxes
        and the mask-shape check need (read from the image when not given)."""
        sample = self.index.samples[i]
        out = torch.zeros(len(self.regions), *self.input_size, dtype=torch.bool)
        for k, kind in enumerate(self.regions):
            path = sample.region_mask(kind)
            if path is None and not (kind == "lesion" and sample.bbox):
                continue
            if image_size is None:
                image_size = self._base(i)[1]
            if path is not None:
                out[k] = read_mask(path, image_size, self.input_size, self.resize)
            else:
                out[k] = box_mask(
                    sample.bbox or (), image_size, self.input_size, sample.path, self.resize
                )
        return out

    def validate(self) -> list[tuple[str, str]]:
        """Decode every file once, drop unreadable ones, record and return them."""
        return self._preload(keep=self._cache is not None)

    def load(self, i: int) -> torch.Tensor:
        """The sample's image resized to input_size in [0, 1], before augmentation."""
        return self._base(i)[0].float().expand(self.channels, -1, -1).clone()

    # -- internals

    def _base(self, i: int) -> Decoded:
        if self._cache is not None:
            return self._cache[i].float(), self._cache_sizes[i]
        return self._decode(self.index.samples[i].path)

    def _decode(self, path: Path) -> Decoded:
        """read_image -> [1 or channels, H, W] float32 at input_size (antialiased bilinear),
        and the image's size on disk."""

        image = torch.from_numpy(read_image(path, self.bit_depth))
        if self.window is not None:
            low, high = self.window
            image = ((image - low) / (high - low)).clamp_(0.0, 1.0)
        size = (int(image.shape[-2]), int(image.shape[-1]))
        if image.shape[0] == 3 and self.channels == 1:
            image = image.mean(dim=0, keepdim=True)
        image = place(image, placement(size, self.input_size, self.resize), "bilinear")
        return image.contiguous(), size

    def _preload(self, *, keep: bool) -> list[tuple[str, str]]:
        """Threaded decode of all samples (PIL and zlib release the GIL)."""
        paths = [s.path for s in self.index.samples]
        threads = self.num_threads or min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(max_workers=threads) as pool:
            results = list(pool.map(self._try_decode, paths))
        failures = [(str(p), err) for p, (_, err) in zip(paths, results, strict=True) if err]
        if failures and self.on_error == "raise":
            raise ImageReadError(failures[0][0], failures[0][1])
        good = [i for i, (img, _) in enumerate(results) if img is not None]
        self.index.samples = [self.index.samples[i] for i in good]
        self.index.skipped.extend(failures)
        self.read_failures.extend(failures)
        if keep:
            self._cache = [results[i][0][0].half() for i in good]  # type: ignore[index]
            self._cache_sizes = [results[i][0][1] for i in good]  # type: ignore[index]
        return failures

    def _try_decode(self, path: Path) -> tuple[Decoded | None, str | None]:
        try:
            return self._decode(path), None
        except ImageReadError as exc:
            return None, exc.reason or str(exc)

    def _substitute(self, i: int, exc: ImageReadError) -> tuple[int, Decoded]:
        """Skip mode after validation: the next readable sample stands in for a broken one."""
        self.read_failures.append((str(exc.path), exc.reason or str(exc)))
        warnings.warn(f"skipping unreadable image: {exc}", stacklevel=3)
        n = len(self)
        for step in range(1, min(n, 16)):
            j = (i + step) % n
            try:
                return j, self._base(j)
            except ImageReadError as other:
                self.read_failures.append((str(other.path), other.reason or str(other)))
        raise exc


def check_window(window: Sequence[float] | None) -> tuple[float, float] | None:
    """A window is two numbers 0 <= low < high <= 1 (fractions of the read intensity range)."""
    if window is None:
        return None
    values = tuple(float(v) for v in window)
    if len(values) != 2 or not 0.0 <= values[0] < values[1] <= 1.0:
        raise ValueError(f"window: two numbers 0 <= low < high <= 1, got {list(window)}")
    return values


def place(image: torch.Tensor, where: Placement, mode: str) -> torch.Tensor:
    """``image`` [C, h, w] scaled and placed as ``where`` says, the rest 0: ``bilinear``
    (antialiased) for images, ``nearest-exact`` for masks."""
    kw = {"antialias": True, "align_corners": False} if mode == "bilinear" else {}
    if where.scaled == where.size and where.offset == (0, 0):  # stretch, or the input's size
        if tuple(image.shape[-2:]) == where.size:
            return image
        return F.interpolate(image[None], size=where.size, mode=mode, **kw)[0]
    scaled = F.interpolate(image[None], size=where.scaled, mode=mode, **kw)[0]
    out = torch.zeros(image.shape[0], *where.size, dtype=image.dtype)
    top, left, bottom, right = where.window
    oy, ox = where.offset
    out[:, top:bottom, left:right] = scaled[:, top - oy : bottom - oy, left - ox : right - ox]
    return out


def read_mask(
    path: Path, image_size: tuple[int, int], size: tuple[int, int], resize: str = DEFAULT_RESIZE
) -> torch.Tensor:
    """A mask file (any image format; non-zero in any channel = inside) as bool ``size``,
    nearest-neighbour resized with centre sampling (``nearest-exact``: no half-pixel shift),
    placed as its image is (``resize``).

    Any resolution is accepted, but it must cover the image's field of view: a mask whose
    aspect ratio differs from the image's by more than a pixel is refused.
    """
    inside = torch.from_numpy(read_image(path) > 0).any(dim=0)
    mh, mw = inside.shape
    ih, iw = image_size
    if abs(mh * iw - mw * ih) > max(ih, iw):
        raise DatasetError(
            f"{path}: mask is {mw}x{mh} px, its image {iw}x{ih} px: not the same field of view"
        )
    where = placement(image_size, tuple(size), resize)
    if (mh, mw) == tuple(size) and where.scaled == where.size:
        return inside
    return place(inside[None].float(), where, "nearest-exact")[0] > 0.5


def box_mask(
    boxes: Sequence[Box],
    image_size: tuple[int, int],
    size: tuple[int, int],
    image: Path,
    resize: str = DEFAULT_RESIZE,
) -> torch.Tensor:
    """Bool ``size``: the pixels whose centre, in the image's pixel coordinates, lies in a box
    (x0 <= x < x1, y0 <= y < y1): the box drawn at the image's size, then placed as its image
    is (``resize``; padding lies in no box)."""
    ih, iw = image_size
    h, w = size
    where = placement(image_size, (h, w), resize)
    (sh, sw), (oy, ox) = where.scaled, where.offset
    ys = (torch.arange(h, dtype=torch.float64) + 0.5 - oy) * (ih / sh)
    xs = (torch.arange(w, dtype=torch.float64) + 0.5 - ox) * (iw / sw)
    out = torch.zeros(h, w, dtype=torch.bool)
    for x0, y0, x1, y1 in boxes:
        if x1 > iw or y1 > ih:
            raise DatasetError(
                f"{image}: bbox '{x0:g} {y0:g} {x1:g} {y1:g}' reaches beyond the "
                f"{iw}x{ih} px image (x1 <= width, y1 <= height)"
            )
        rows = (ys >= y0) & (ys < y1)
        cols = (xs >= x0) & (xs < x1)
        out |= rows[:, None] & cols[None, :]
    return out


def _stat_tensor(values: Sequence[float] | float, channels: int, what: str) -> torch.Tensor:
    """Per-channel mean/std as [channels, 1, 1]; one value, or equal values, broadcast."""

    items = [float(values)] if isinstance(values, int | float) else [float(v) for v in values]
    if len(items) != channels:
        if len(set(items)) != 1:
            raise ValueError(f"{what} has {len(items)} values for {channels} channel(s)")
        items = items[:1] * channels
    return torch.tensor(items, dtype=torch.float32).view(channels, 1, 1)


def _augment(image: torch.Tensor) -> torch.Tensor:
    """Small affine (+-5 deg, +-4 % shift, 0.95-1.05 zoom) and +-10 % brightness/contrast.

    No flips: laterality is diagnostic in chest X-rays. Uses torch's RNG, which the
    DataLoader seeds differently in every worker.
    """

    channels, height, width = image.shape
    r = torch.rand(6).tolist()
    angle = math.radians((r[0] * 2 - 1) * 5.0)
    scale = 0.95 + 0.10 * r[1]
    shift_x, shift_y = (r[2] * 2 - 1) * 0.08, (r[3] * 2 - 1) * 0.08  # 4 % of [-1, 1]
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor(
        [[cos, -sin * height / width, shift_x], [sin * width / height, cos, shift_y]],
        dtype=image.dtype,
    )
    grid = F.affine_grid(theta[None], [1, channels, height, width], align_corners=False)
    out = F.grid_sample(
        image[None], grid, mode="bilinear", padding_mode="zeros", align_corners=False
    )[0]
    contrast, brightness = 0.9 + 0.2 * r[4], 0.9 + 0.2 * r[5]
    mean = out.mean()
    return (((out - mean) * contrast + mean) * brightness).clamp_(0.0, 1.0)
