"""Phantom chest X-ray benchmark: seeded synthetic radiographs with ground-truth lesion masks.

Real chest X-ray data has no pixel truth for "where the evidence is", so camdrift cannot tell a
drift that follows the lesion from one that follows an artefact. These phantoms give both: a
radiograph-like image (body, lungs, ribs, spine, heart, diaphragm, texture), a lesion mask per
image, its lung fields, and an optional *shortcut* tied to one class in the training split: a
corner marker, a laterality letter, a collimation frame or a scanner texture, with the pixels it
owns recorded so that "the evidence sits on the shortcut" can be measured.

Every image comes from its own generator seeded by (seed, task, class, index), so a dataset is
byte-identical for a seed whatever order (or process) renders it.
"""

from __future__ import annotations

import copy
import csv
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

CLASSES: tuple[str, ...] = ("normal", "pneumonia", "covid", "tuberculosis", "effusion")
SOURCE_CLASSES: tuple[str, ...] = (
    "clear",
    "round_opacity",
    "diffuse_haze",
    "linear_streaks",
    "ring_shadow",
)
TASKS: dict[str, tuple[str, ...]] = {"target": CLASSES, "source": SOURCE_CLASSES}
SHORTCUT_KINDS: tuple[str, ...] = ("corner", "letter", "frame", "scanner")
POSITIONAL_KINDS: tuple[str, ...] = ("corner", "letter")  # can be drawn elsewhere: "moved"
GLOBAL_KINDS: tuple[str, ...] = ("scanner",)  # no region: shortcut_mask stays empty
PLACEMENTS: tuple[str, ...] = ("usual", "moved")
SHORTCUT_EVAL_MODES: tuple[str, ...] = ("correlated", "random", "absent", "moved")
SPLITS: tuple[str, ...] = ("train", "val", "test")
MANIFEST_HEADER: tuple[str, ...] = (
    "path",
    "label",
    "split",
    "mask",
    "marker",
    "lung_mask",
    "shortcut_mask",
)
PARAMS_FILE = "phantoms.json"
MANIFEST_FILE = "manifest.csv"
MASKS_DIR = "masks"
LUNGS_DIR = "lungs"  # masks/lungs/<class>/<file>.png
SHORTCUT_DIR = "shortcut"  # masks/shortcut/<class>/<file>.png
VERSION = 2  # 2: shortcut kinds, lung and shortcut masks
RANDOM_MARKER_RATE = 0.2

_TASK_IDS = {"target": 0, "source": 1}
_SPLIT_STREAM = 1_000_003  # SeedSequence key of the per-class split permutation
_CONFOUND_STREAM = 1_000_037  # ... of the shortcut class's confounded train images
_MARKER_STREAM = 1_000_033  # ... and of the per-class "random" marker draw
_OUR_FILE = re.compile(r"^(?P<cls>[a-z_]+)_\d{5}\.png$")

# Intensity model (before per-image jitter): air-filled lung is dark, tissue and bone bright.
_BACKGROUND = 0.04
_SOFT_TISSUE = 0.56
_AIR_DEPTH = 0.42
_ABDOMEN_EXTRA = 0.05
_RIB = 0.11
_SPINE = 0.16
_LUNG_THRESHOLD = 0.1  # air fraction that counts as lung field (every lesion mask lies above)


# --------------------------------------------------------------------------- geometry


@lru_cache(maxsize=16)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [-1, 1] (y down, x right); cached since every image reuses it."""
    axis = (np.arange(size, dtype=np.float32) + 0.5) * (2.0 / size) - 1.0
    yy, xx = np.meshgrid(axis, axis, indexing="ij")
    yy.setflags(write=False)
    xx.setflags(write=False)
    return yy, xx


def _ramp(x: np.ndarray, width: float) -> np.ndarray:
    """Soft step 0 -> 1 across ``width`` around 0: anti-aliased edges at any size, cheaply."""
    return np.clip(x / width + 0.5, 0.0, 1.0)


@dataclass(frozen=True)
class _Frame:
    """Body coordinates of every pixel after a random pose (u right, v down, ~[-1, 1])."""

    u: np.ndarray
    v: np.ndarray
    px: float  # one pixel in body units: edge softness and minimum feature sizes scale with it
    size: int
    pose: tuple[float, float, float, float]  # scale, dx, dy, theta: to map body -> pixel

    def to_pixel(self, u: float, v: float) -> tuple[int, int]:
        """(row, col) of the pixel nearest to body point (u, v), clamped to the image."""
        scale, dx, dy, theta = self.pose
        c, s = np.cos(theta), np.sin(theta)
        x = scale * (c * u - s * v) + dx
        y = scale * (s * u + c * v) + dy
        col = int(np.clip(np.floor((x + 1.0) * self.size / 2.0), 0, self.size - 1))
        row = int(np.clip(np.floor((y + 1.0) * self.size / 2.0), 0, self.size - 1))
        return row, col


def _pose(size: int, rng: np.random.Generator) -> _Frame:
    """Random small shift / scale / rotation, so anatomy is never pixel-aligned across images."""
    yy, xx = _grid(size)
    scale = rng.uniform(0.86, 1.0)
    dx, dy = rng.uniform(-0.05, 0.05, size=2)
    theta = np.deg2rad(rng.uniform(-4.0, 4.0))
    c, s = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    x0, y0 = xx - np.float32(dx), yy - np.float32(dy)
    u = (c * x0 + s * y0) / np.float32(scale)
    v = (-s * x0 + c * y0) / np.float32(scale)
    return _Frame(u=u, v=v, px=2.0 / size / scale, size=size, pose=(scale, dx, dy, theta))


@dataclass(frozen=True)
class _Lung:
    """One lung field: apex arc, lateral rib-cage wall, straight mediastinal border, dome below.

    ``side`` is -1 for the image-left (patient-right) lung; ``a = side * u`` runs outwards.
    """

    side: int
    medial: float  # a of the mediastinal border
    apex_a: float
    apex_v: float
    width: float  # widest lateral reach (a)
    dome: float  # v of the top of the hemidiaphragm
    dome_a: float
    dome_curve: float

    def inside(self, u: np.ndarray | float, v: np.ndarray | float) -> np.ndarray | float:
        """Approximate signed distance into the lung (positive inside), in body units."""
        a = self.side * u
        t_lat = np.clip((v - self.apex_v) / (0.3 - self.apex_v), 0.0, 1.0)
        t_med = np.clip((v - self.apex_v) / 0.4, 0.0, 1.0)
        lateral = self.apex_a + (self.width - self.apex_a) * np.sqrt(1.0 - (1.0 - t_lat) ** 2)
        medial = self.apex_a - (self.apex_a - self.medial) * np.sqrt(1.0 - (1.0 - t_med) ** 2)
        d = np.minimum(lateral - a, a - medial)
        return np.minimum(d, self.dome_at(a) - v)

    def dome_at(self, a: np.ndarray | float) -> np.ndarray | float:
        """v of the hemidiaphragm at lateral offset ``a`` (deepest at the costophrenic angle)."""
        return self.dome + self.dome_curve * (a - self.dome_a) ** 2

    @property
    def lateral_edge(self) -> float:
        return self.width


@dataclass(frozen=True)
class _Anatomy:
    lungs: tuple[_Lung, _Lung]
    lung_field: np.ndarray  # 0..1 air fraction (heart, hila, lung thinning at edges applied)
    body: np.ndarray
    bone: np.ndarray
    extra: np.ndarray  # abdomen density on top of soft tissue (below the domes)


def _make_lungs(rng: np.random.Generator) -> tuple[_Lung, _Lung]:
    """Two lungs with jittered shapes; the image-left (patient-right) dome sits a little higher."""
    right_dome = rng.uniform(0.28, 0.38)
    lungs = []
    for side in (-1, 1):
        lungs.append(
            _Lung(
                side=side,
                medial=rng.uniform(0.08, 0.11),
                apex_a=rng.uniform(0.26, 0.32),
                apex_v=rng.uniform(-0.86, -0.76),
                width=rng.uniform(0.69, 0.76) + (0.02 if side == -1 else 0.0),
                dome=right_dome if side == -1 else right_dome + rng.uniform(0.03, 0.08),
                dome_a=rng.uniform(0.36, 0.44),
                dome_curve=rng.uniform(1.3, 2.0),
            )
        )
    return lungs[0], lungs[1]


def _ribs(f: _Frame, rng: np.random.Generator) -> np.ndarray:
    """Posterior ribs as one periodic field along a curved coordinate: all ribs in a few ops."""
    a = np.abs(f.u)
    curve = f.v - 0.25 * a + 0.75 * a * a  # rises off the spine, then sweeps down laterally
    period = rng.uniform(0.14, 0.16)
    phase = rng.uniform(0.0, 1.0)
    warped = curve + 0.1 * curve * curve  # lower ribs spaced a little wider
    wave = np.cos(2.0 * np.pi * (warped / period + phase))
    duty = max(0.32, 2.2 * f.px / period)  # band fraction; keeps ribs >= ~2 px when small
    cut = np.cos(np.pi * duty)
    band = np.clip((wave - cut) / (1.0 - cut) * 2.5, 0.0, 1.0)
    cage = _ramp(0.84 - a, 4 * f.px) * _ramp(curve + 0.9, 4 * f.px) * _ramp(0.42 - curve, 0.12)
    return band * cage * _ramp(a - 0.08, 2 * f.px)


def _spine(f: _Frame) -> np.ndarray:
    """A vertical column with faint vertebral segmentation."""
    column = _ramp(0.07 - np.abs(f.u), 2.5 * f.px)
    segments = 0.8 + 0.2 * np.cos(2.0 * np.pi * f.v / 0.13)
    return column * segments


def _clavicles(f: _Frame) -> np.ndarray:
    """Two S-ish bands across the apices, rising laterally."""
    a = np.abs(f.u)
    centre = -0.74 - 0.16 * a + 0.12 * a * a
    band = _ramp(0.03 + f.px - np.abs(f.v - centre), 2 * f.px)
    return band * _ramp(0.7 - a, 0.08) * _ramp(a - 0.08, 0.04)


def _body(f: _Frame, rng: np.random.Generator) -> np.ndarray:
    """Thorax with sloping shoulders and a neck; keeps the top-left corner dark for the marker."""
    half_w = rng.uniform(0.86, 0.92)
    trunk = 1.0 - (f.u / half_w) ** 4 - ((f.v - 0.3) / 1.3) ** 4
    shoulder = f.v - (-0.9 + 0.28 * f.u * f.u)
    neck = 0.24 - np.abs(f.u)
    return _ramp(np.minimum(trunk, np.maximum(shoulder, neck)), 0.08)


def _anatomy(f: _Frame, rng: np.random.Generator) -> _Anatomy:
    """Body, lungs, bones and heart in the posed frame."""
    edge = 2.5 * f.px
    body = _body(f, rng)
    lungs = _make_lungs(rng)
    inside = np.maximum(lungs[0].inside(f.u, f.v), lungs[1].inside(f.u, f.v))
    heart_params = (
        rng.uniform(0.1, 0.16),
        rng.uniform(0.2, 0.26),
        rng.uniform(0.32, 0.38),
        rng.uniform(0.25, 0.3),
    )
    heart = _heart(f, heart_params, np.deg2rad(rng.uniform(-30.0, -18.0)), edge)
    heart = np.maximum(heart, _mediastinum(f, rng, heart_params[1], edge))
    hila = sum(
        _gauss(f, s * rng.uniform(0.17, 0.21), rng.uniform(-0.1, 0.0), 0.07, 0.12) for s in (-1, 1)
    )
    thickness = 0.55 + 0.45 * np.sqrt(np.clip(inside / 0.14, 0.0, 1.0))  # thin lung at edges
    lung_field = _ramp(inside, edge) * thickness * (1.0 - heart) * (1.0 - 0.4 * hila)
    dome = np.where(f.u < 0, lungs[0].dome_at(-f.u), lungs[1].dome_at(f.u))
    abdomen = _ramp(f.v - dome, 0.2) * body
    ribs = _ribs(f, rng) * (0.3 + 0.7 * _ramp(inside, edge))  # rib contrast is highest over air
    bone = (_RIB * ribs + _SPINE * _spine(f) + 0.1 * _clavicles(f)) * body
    return _Anatomy(
        lungs=lungs, lung_field=lung_field, body=body, bone=bone, extra=_ABDOMEN_EXTRA * abdomen
    )


def _mediastinum(f: _Frame, rng: np.random.Generator, heart_v: float, edge: float) -> np.ndarray:
    """Vascular pedicle joining the heart to the neck, plus the aortic knob on the image right.

    Without it the top of the heart shows as a pasted-on disc against the lung.
    """
    centre, half = rng.uniform(0.0, 0.04), rng.uniform(0.12, 0.15)
    pedicle = _ramp(half - np.abs(f.u - centre), edge) * _ramp(heart_v - f.v, edge)
    ku, kv, kr = rng.uniform(0.11, 0.15), rng.uniform(-0.4, -0.3), rng.uniform(0.07, 0.09)
    knob = _ramp(kr - np.sqrt((f.u - ku) ** 2 + (f.v - kv) ** 2), edge)
    return np.maximum(pedicle, knob)


def _heart(
    f: _Frame, params: tuple[float, float, float, float], tilt: float, edge: float
) -> np.ndarray:
    """Tilted ellipse, apex down and to the image right, base hidden in the mediastinum."""
    cu, cv, ru, rv = params
    c, s = np.cos(tilt), np.sin(tilt)
    du, dv = f.u - cu, f.v - cv
    e = ((c * du + s * dv) / ru) ** 2 + ((-s * du + c * dv) / rv) ** 2
    return _ramp((1.0 - np.sqrt(e)) * rv, edge)


def _gauss(f: _Frame, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    return np.exp(-(((f.u - cu) / ru) ** 2 + ((f.v - cv) / rv) ** 2))


# --------------------------------------------------------------------------- texture


def _low_freq(size: int, rng: np.random.Generator, cells: int = 6) -> np.ndarray:
    """Smooth zero-mean noise (~unit std) by cubic upsampling of a coarse random grid."""
    coarse = rng.standard_normal((cells, cells)).astype(np.float32)
    field = ndimage.zoom(coarse, size / cells, order=3, mode="nearest", grid_mode=True)
    return field[:size, :size]


def _fine_texture(size: int, rng: np.random.Generator, sigma_px: float) -> np.ndarray:
    """Blurred white noise, renormalised: lung markings / ground-glass graininess."""
    noise = rng.standard_normal((size, size)).astype(np.float32)
    field = ndimage.gaussian_filter(noise, sigma=sigma_px, mode="reflect")
    return field / (field.std() + 1e-6)


# --------------------------------------------------------------------------- lesions


def _blob(f: _Frame, cu: float, cv: float, ru: float, rv: float) -> np.ndarray:
    """Gaussian blob; radii floored at ~1.2 px so small findings survive small images."""
    ru, rv = max(ru, 1.2 * f.px), max(rv, 1.2 * f.px)
    return np.exp(-(((f.u - cu) / ru) ** 2 + ((f.v - cv) / rv) ** 2))


def _point_in_lung(
    f: _Frame,
    anat: _Anatomy,
    lung: _Lung,
    rng: np.random.Generator,
    v_range: tuple[float, float],
    a_range: tuple[float, float],
    margin: float,
) -> tuple[float, float]:
    """Rejection-sample a (u, v) well inside ``lung`` and over air (not heart) within a zone."""
    for _ in range(64):
        v = rng.uniform(*v_range)
        a = lung.medial + rng.uniform(*a_range) * (lung.width - lung.medial)
        u = lung.side * a
        probes = ((u, v), (u - margin, v), (u + margin, v), (u, v - margin), (u, v + margin))
        over_air = all(anat.lung_field[f.to_pixel(pu, pv)] > 0.3 for pu, pv in probes)
        if over_air and lung.inside(u, v) > margin:
            return u, v
    return lung.side * 0.5 * (lung.medial + lung.width), 0.0


def _pneumonia(f: _Frame, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Lobar consolidation: one dense, lumpy but well-bounded opacity, middle/lower zone."""
    lung = anat.lungs[rng.integers(2)]
    cu, cv = _point_in_lung(f, anat, lung, rng, (-0.15, 0.25), (0.25, 0.8), margin=0.12)
    ru, rv = rng.uniform(0.15, 0.22), rng.uniform(0.14, 0.22)
    r = np.sqrt(((f.u - cu) / ru) ** 2 + ((f.v - cv) / rv) ** 2)
    r = r + 0.22 * _low_freq(f.size, rng, cells=8)
    opacity = rng.uniform(0.88, 1.0) * _ramp(1.0 - r, 0.25)
    if rng.random() < 0.5:  # upper edge cut by a fissure: straight, sharp border
        fissure = cv - rng.uniform(0.3, 0.7) * rv
        opacity *= _ramp(f.v - fissure, 2 * f.px)
    return opacity * (0.9 + 0.1 * _fine_texture(f.size, rng, sigma_px=1.5))


def _covid(f: _Frame, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Bilateral peripheral ground-glass: several faint patches hugging both lateral walls."""
    opacity = np.zeros_like(f.u)
    for lung in anat.lungs:
        for _ in range(rng.integers(3, 6)):
            cu, cv = _point_in_lung(f, anat, lung, rng, (-0.35, 0.35), (0.72, 0.95), margin=0.03)
            ru, rv = rng.uniform(0.06, 0.1), rng.uniform(0.08, 0.15)
            opacity = np.maximum(opacity, rng.uniform(0.58, 0.72) * _blob(f, cu, cv, ru, rv))
    grain = 0.85 + 0.15 * _fine_texture(f.size, rng, sigma_px=1.0)
    return opacity * grain


def _tuberculosis(f: _Frame, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Apical infiltrate with a nodule cluster and/or a thick-walled cavity.

    The cavity centre gets negative opacity: extra air, darker than the surrounding lung.
    """
    kind = rng.choice(["nodules", "cavity", "both"], p=[0.4, 0.3, 0.3])
    sides = [anat.lungs[rng.integers(2)]] if rng.random() < 0.7 else list(anat.lungs)
    opacity = np.zeros_like(f.u)
    for lung in sides:
        cu, cv = _point_in_lung(f, anat, lung, rng, (-0.72, -0.45), (0.15, 0.75), margin=0.07)
        haze = rng.uniform(0.25, 0.35) * _blob(f, cu, cv, rng.uniform(0.1, 0.14), 0.1)
        opacity = np.maximum(opacity, haze)
        if kind in ("nodules", "both"):
            for _ in range(rng.integers(6, 12)):
                nu = cu + rng.normal(0.0, 0.065)
                nv = cv + rng.normal(0.0, 0.05)
                r = rng.uniform(0.032, 0.052)
                opacity = np.maximum(opacity, rng.uniform(0.75, 0.95) * _blob(f, nu, nv, r, r))
        if kind in ("cavity", "both"):
            radius = max(rng.uniform(0.07, 0.1), 3.0 * f.px)
            wall = max(0.03, 1.6 * f.px)
            dist = np.sqrt((f.u - cu) ** 2 + (f.v - cv) ** 2)
            ring = np.exp(-(((dist - radius) / wall) ** 2))
            hole = _ramp(radius - wall - dist, 2 * f.px)
            opacity = np.maximum(opacity, 0.95 * ring) * (1.0 - hole) - 0.35 * hole
    return opacity


def _effusion(f: _Frame, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    """Meniscus of fluid filling the lower lateral corner: blunts the costophrenic angle."""
    lung = anat.lungs[rng.integers(2)]
    a = lung.side * f.u
    corner_v = lung.dome_at(lung.lateral_edge)
    top = corner_v - rng.uniform(0.5, 0.8)
    depth_in = np.clip(lung.lateral_edge - a, 0.0, None)
    level = top + rng.uniform(0.35, 0.55) * np.sqrt(depth_in)  # rises steeply at the lateral wall
    fluid = _ramp(f.v - level, 3 * f.px) * (a > 0)
    return rng.uniform(0.85, 0.95) * fluid


def _round_opacity(f: _Frame, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    opacity = np.zeros_like(f.u)
    for _ in range(rng.integers(1, 3)):
        lung = anat.lungs[rng.integers(2)]
        cu, cv = _point_in_lung(f, anat, lung, rng, (-0.65, 0.35), (0.1, 0.9), margin=0.06)
        r = max(rng.uniform(0.05, 0.12), 2 * f.px)
        dist = np.sqrt((f.u - cu) ** 2 + (f.v - cv) ** 2)
        opacity = np.maximum(opacity, rng.uniform(0.6, 0.85) * _ramp(r - dist, 2 * f.px))
    return opacity


def _diffuse_haze(f: _Frame, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    opacity = np.zeros_like(f.u)
    chosen = list(anat.lungs) if rng.random() < 0.4 else [anat.lungs[rng.integers(2)]]
    for lung in chosen:
        cu, cv = _point_in_lung(f, anat, lung, rng, (-0.5, 0.3), (0.2, 0.8), margin=0.05)
        ru, rv = rng.uniform(0.18, 0.3), rng.uniform(0.25, 0.45)
        opacity = np.maximum(opacity, rng.uniform(0.42, 0.55) * _blob(f, cu, cv, ru, rv))
    return opacity


def _linear_streaks(f: _Frame, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    opacity = np.zeros_like(f.u)
    half_width = max(0.014, 0.8 * f.px)
    for _ in range(rng.integers(3, 7)):
        lung = anat.lungs[rng.integers(2)]
        cu, cv = _point_in_lung(f, anat, lung, rng, (-0.65, 0.35), (0.1, 0.9), margin=0.05)
        angle = rng.uniform(0.0, np.pi)
        du, dv = np.cos(angle), np.sin(angle)
        along = (f.u - cu) * du + (f.v - cv) * dv
        across = -(f.u - cu) * dv + (f.v - cv) * du
        length = rng.uniform(0.1, 0.2)
        line = _ramp(half_width - np.abs(across), 1.5 * f.px) * _ramp(length - np.abs(along), 0.03)
        opacity = np.maximum(opacity, rng.uniform(0.6, 0.85) * line)
    return opacity


def _ring_shadow(f: _Frame, anat: _Anatomy, rng: np.random.Generator) -> np.ndarray:
    opacity = np.zeros_like(f.u)
    for _ in range(rng.integers(1, 4)):
        lung = anat.lungs[rng.integers(2)]
        cu, cv = _point_in_lung(f, anat, lung, rng, (-0.65, 0.35), (0.1, 0.9), margin=0.08)
        radius = max(rng.uniform(0.045, 0.085), 3.0 * f.px)
        wall = max(0.02, 1.3 * f.px)
        dist = np.sqrt((f.u - cu) ** 2 + (f.v - cv) ** 2)
        ring = np.exp(-(((dist - radius) / wall) ** 2))
        opacity = np.maximum(opacity, 0.85 * ring) - 0.3 * _ramp(radius - wall - dist, 2 * f.px)
    return opacity


_LesionFn = Callable[[_Frame, _Anatomy, np.random.Generator], np.ndarray]
_LESIONS: dict[str, _LesionFn | None] = {
    "normal": None,
    "pneumonia": _pneumonia,
    "covid": _covid,
    "tuberculosis": _tuberculosis,
    "effusion": _effusion,
    "clear": None,
    "round_opacity": _round_opacity,
    "diffuse_haze": _diffuse_haze,
    "linear_streaks": _linear_streaks,
    "ring_shadow": _ring_shadow,
}
_MASK_THRESHOLD = {"covid": 0.15, "diffuse_haze": 0.15}  # faint findings: lower cut


# --------------------------------------------------------------------------- rendering


def _classes_for(task: str) -> tuple[str, ...]:
    if task not in TASKS:
        raise ValueError(f"unknown task {task!r}; expected one of {sorted(TASKS)}")
    return TASKS[task]


def _compose(
    f: _Frame, anat: _Anatomy, opacity: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """Attenuation model: opacities replace lung air; bone, texture and exposure jitter on top."""
    markings = 0.06 * _fine_texture(f.size, rng, sigma_px=max(0.7, 1.1 * f.size / 96))
    air = anat.lung_field * np.clip(1.0 - opacity, 0.0, 1.4) * (1.0 + markings)
    tissue = _BACKGROUND + (_SOFT_TISSUE - _BACKGROUND) * anat.body + anat.extra
    img = tissue - _AIR_DEPTH * air + anat.bone
    img = img + 0.035 * _low_freq(f.size, rng) * anat.body
    contrast, brightness = rng.uniform(0.8, 1.2), rng.uniform(-0.08, 0.08)
    img = (img - 0.35) * contrast + 0.35 + brightness
    img = np.clip(img, 0.0, 1.0) ** rng.uniform(0.85, 1.18)
    img = img + rng.normal(0.0, rng.uniform(0.008, 0.02), size=img.shape)
    return np.clip(img, 0.0, 1.0).astype(np.float32)


# --------------------------------------------------------------------------- shortcuts
# Each drawer paints on the finished image with the image's own generator (drawn last, so the
# anatomy and the lesion never depend on it) and returns the pixels it owns, or None for a
# global kind. ``moved`` puts a positional token somewhere training never showed it.


def _box(size: int, r0: int, c0: int, height: int, width: int) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[r0 : r0 + height, c0 : c0 + width] = True
    return mask


def _draw_corner(img: np.ndarray, rng: np.random.Generator, moved: bool) -> np.ndarray:
    """A bright square token near the top-left corner, jittered a bit (moved: top-right)."""
    size = img.shape[0]
    side = max(3, round(size / 12))
    jitter = max(1, size // 32)
    r0 = round(0.04 * size) + int(rng.integers(0, jitter + 1))
    c0 = round(0.04 * size) + int(rng.integers(0, jitter + 1))
    if moved:
        c0 = size - c0 - side  # mirrored: the other dark upper corner
    img[r0 : r0 + side, c0 : c0 + side] = rng.uniform(0.92, 1.0)
    return _box(size, r0, c0, side, side)


_GLYPHS: dict[str, np.ndarray] = {
    letter: np.array([[c == "#" for c in row] for row in rows], dtype=bool)
    for letter, rows in {
        "L": ("#....", "#....", "#....", "#....", "#....", "#....", "#####"),
        "R": ("####.", "#...#", "#...#", "####.", "#.#..", "#..#.", "#...#"),
    }.items()
}


def _draw_letter(img: np.ndarray, rng: np.random.Generator, moved: bool) -> np.ndarray:
    """A laterality-style "L" or "R" burned in near the top or upper side borders (moved: the
    bottom or lower side borders, the same offsets mirrored top to bottom). The mask is the
    token's box, the region a reader would circle."""
    size = img.shape[0]
    glyph = _GLYPHS["LR"[int(rng.integers(2))]]
    scale = max(1, round(size / 40))
    bitmap = np.kron(glyph, np.ones((scale, scale), dtype=bool))
    height, width = bitmap.shape
    margin, band = max(1, round(0.03 * size)), max(1, size // 16)
    edge = int(rng.integers(3))  # 0 top, 1 left, 2 right
    if edge == 0:
        r0 = margin + int(rng.integers(0, band + 1))
        c0 = int(rng.integers(margin, size - margin - width + 1))
    else:
        r0 = int(rng.integers(margin, size // 2 - height + 1))
        c0 = margin + int(rng.integers(0, band + 1))
        if edge == 2:
            c0 = size - c0 - width
    if moved:
        r0 = size - r0 - height
    region = img[r0 : r0 + height, c0 : c0 + width]
    region[bitmap] = rng.uniform(0.92, 1.0)
    return _box(size, r0, c0, height, width)


def _draw_frame(img: np.ndarray, rng: np.random.Generator, moved: bool) -> np.ndarray:
    """Collimation: bright, nearly flat bands of jittered width along all four borders."""
    if moved:
        raise ValueError("a frame sits on the border by definition; it cannot be moved")
    size = img.shape[0]
    top, bottom, left, right = (max(2, round(size * rng.uniform(0.04, 0.08))) for _ in range(4))
    mask = np.zeros((size, size), dtype=bool)
    mask[:top], mask[size - bottom :] = True, True
    mask[:, :left], mask[:, size - right :] = True, True
    value = rng.uniform(0.86, 0.96)
    img[mask] = np.clip(value + rng.normal(0.0, 0.01, size=int(mask.sum())), 0.0, 1.0)
    return mask


def _draw_scanner(img: np.ndarray, rng: np.random.Generator, moved: bool) -> None:
    """Another detector: a fixed line pattern (2 rows up, 2 down) and extra grain everywhere."""
    if moved:
        raise ValueError("a scanner texture covers the whole image; it cannot be moved")
    size = img.shape[0]
    phase = int(rng.integers(4))
    amplitude = rng.uniform(0.03, 0.045)
    rows = np.where((np.arange(size) + phase) % 4 < 2, amplitude, -amplitude)
    grain = rng.normal(0.0, 0.015, size=img.shape)
    img[:] = np.clip(img + rows[:, None] + grain, 0.0, 1.0)


_ShortcutFn = Callable[[np.ndarray, np.random.Generator, bool], np.ndarray | None]
_SHORTCUTS: dict[str, _ShortcutFn] = {
    "corner": _draw_corner,
    "letter": _draw_letter,
    "frame": _draw_frame,
    "scanner": _draw_scanner,
}


@dataclass(frozen=True)
class Phantom:
    """One rendered phantom and its regions (all [size, size]; masks bool)."""

    image: np.ndarray  # float32 in [0, 1]
    lesion: np.ndarray  # the finding; empty for the finding-free class
    lungs: np.ndarray  # the aerated lung fields (heart and hila excluded)
    shortcut: np.ndarray | None  # pixels the shortcut owns; None: none drawn, or a global kind
    placement: str | None  # None (no shortcut), "usual" or "moved"


def render_variants(
    label: str,
    size: int,
    rng: np.random.Generator,
    *,
    placements: Sequence[str | None] = (None,),
    kind: str = "corner",
    task: str = "target",
) -> list[Phantom]:
    """One anatomy and lesion drawn once, then one phantom per shortcut ``placement``.

    Each variant draws its shortcut with its own copy of the generator as it stands after the
    anatomy, so variant k is bit-identical to a single render with that placement: the probe
    removes or moves a shortcut on exactly the images a model was tested on.
    """
    classes = _classes_for(task)
    if label not in classes:
        raise ValueError(f"unknown {task} label {label!r}; expected one of {classes}")
    if size < 32:
        raise ValueError(f"size must be >= 32 px, got {size}")
    if kind not in SHORTCUT_KINDS:
        raise ValueError(f"unknown shortcut_kind {kind!r}; expected one of {SHORTCUT_KINDS}")
    for placement in placements:
        if placement is not None and placement not in PLACEMENTS:
            raise ValueError(f"unknown placement {placement!r}; expected None or {PLACEMENTS}")
        if placement == "moved" and kind not in POSITIONAL_KINDS:
            raise ValueError(f"a {kind} shortcut cannot be moved; movable: {POSITIONAL_KINDS}")
    frame = _pose(size, rng)
    anat = _anatomy(frame, rng)
    lesion_fn = _LESIONS[label]
    if lesion_fn is None:
        opacity = np.zeros_like(frame.u)
        mask = np.zeros((size, size), dtype=bool)
    else:
        opacity = lesion_fn(frame, anat, rng).astype(np.float32)
        seen = opacity * anat.lung_field
        mask = seen >= _MASK_THRESHOLD.get(label, 0.3)
        if not mask.any() and seen.max() > 0:  # clipped by the lung edge: keep its core
            mask = seen >= seen.max() * 0.9
    base = _compose(frame, anat, opacity, rng)
    lungs = anat.lung_field >= _LUNG_THRESHOLD
    out = []
    for k, placement in enumerate(placements):
        img = base if k == len(placements) - 1 else base.copy()
        own = rng if k == len(placements) - 1 else copy.deepcopy(rng)
        region = None
        if placement is not None:
            region = _SHORTCUTS[kind](img, own, placement == "moved")
        out.append(Phantom(img, mask, lungs, region, placement))
    return out


def render_phantom(
    label: str,
    size: int,
    rng: np.random.Generator,
    *,
    shortcut: bool = False,
    task: str = "target",
    kind: str = "corner",
) -> tuple[np.ndarray, np.ndarray]:
    """Render one phantom -> (image float32 [size, size] in [0, 1], lesion mask bool).

    The mask marks where the finding is (never the shortcut); it is empty for the
    finding-free class. The shortcut is drawn last so it never changes the anatomy's draws.
    """
    (phantom,) = render_variants(
        label, size, rng, placements=("usual" if shortcut else None,), kind=kind, task=task
    )
    return phantom.image, phantom.lesion


# --------------------------------------------------------------------------- dataset plan


@dataclass(frozen=True)
class PhantomParams:
    """A dataset's generation options: what ``phantoms.json`` records, and all the probe needs
    to render the same images again."""

    per_class: int
    size: int = 96
    seed: int = 0
    shortcut: str | None = None
    shortcut_kind: str = "corner"
    shortcut_eval: str = "correlated"
    shortcut_confound: float = 0.0
    task: str = "target"
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15)

    @property
    def classes(self) -> tuple[str, ...]:
        return _classes_for(self.task)

    def validate(self) -> None:
        """Every bad option -> ValueError naming the field."""
        classes = self.classes
        for name in ("per_class", "size", "seed"):
            value = getattr(self, name)
            if not isinstance(value, int | np.integer) or isinstance(value, bool):
                raise ValueError(f"{name} must be an integer, got {value!r}")
        if self.per_class < 1:
            raise ValueError(f"per_class must be an integer >= 1, got {self.per_class!r}")
        if self.size < 32:
            raise ValueError(f"size must be an integer >= 32 px, got {self.size!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if self.shortcut is not None and self.shortcut not in classes:
            raise ValueError(f"unknown shortcut class {self.shortcut!r}; expected one of {classes}")
        if self.shortcut_kind not in SHORTCUT_KINDS:
            raise ValueError(
                f"shortcut_kind must be one of {SHORTCUT_KINDS}, got {self.shortcut_kind!r}"
            )
        if self.shortcut is None and self.shortcut_kind != "corner":
            raise ValueError(
                f"shortcut_kind {self.shortcut_kind!r} needs a shortcut class (the class "
                "that carries it)"
            )
        if self.shortcut_eval not in SHORTCUT_EVAL_MODES:
            raise ValueError(
                f"shortcut_eval must be one of {SHORTCUT_EVAL_MODES}, got {self.shortcut_eval!r}"
            )
        if self.shortcut_eval == "moved" and self.shortcut_kind not in POSITIONAL_KINDS:
            raise ValueError(
                f"shortcut_eval 'moved' needs a positional shortcut_kind {POSITIONAL_KINDS}; "
                f"a {self.shortcut_kind} shortcut has no other place to go"
            )
        if not 0.0 <= self.shortcut_confound < 1.0:
            raise ValueError(f"shortcut_confound must lie in [0, 1), got {self.shortcut_confound}")
        s = self.splits
        if len(s) != 3 or min(s) < 0 or s[0] <= 0 or abs(sum(s) - 1.0) > 1e-6:
            raise ValueError(
                f"splits must be 3 non-negative fractions summing to 1 (train > 0): {s}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "version": VERSION,
            "task": self.task,
            "classes": list(self.classes),
            "per_class": self.per_class,
            "size": self.size,
            "seed": self.seed,
            "shortcut": self.shortcut,
            "shortcut_kind": self.shortcut_kind if self.shortcut else None,
            "shortcut_eval": self.shortcut_eval,
            "shortcut_confound": self.shortcut_confound if self.shortcut else 0.0,
            "random_marker_rate": RANDOM_MARKER_RATE,
            "splits": list(self.splits),
        }


def read_params(folder: Path) -> PhantomParams:
    """The options a phantom folder was generated with (``phantoms.json``), checked.

    Version-1 files predate shortcut kinds: their shortcut is the corner marker.
    """
    path = Path(folder) / PARAMS_FILE
    if not path.is_file():
        raise ValueError(f"data {folder}: no {PARAMS_FILE}; not a `camdrift phantoms` folder")
    try:
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict):
            raise TypeError("not a JSON object")
        version = raw.get("version")
        if not isinstance(version, int) or not 1 <= version <= VERSION:
            raise ValueError(f"version {version!r} (this camdrift reads 1..{VERSION})")
        params = PhantomParams(
            per_class=raw["per_class"],
            size=raw["size"],
            seed=raw["seed"],
            shortcut=raw.get("shortcut"),
            shortcut_kind=raw.get("shortcut_kind") or "corner",
            shortcut_eval=raw.get("shortcut_eval", "correlated"),
            shortcut_confound=float(raw.get("shortcut_confound", 0.0)),
            task=raw.get("task", "target"),
            splits=tuple(float(s) for s in raw.get("splits", (0.7, 0.15, 0.15))),  # type: ignore[arg-type]
        )
        params.validate()
    except (KeyError, TypeError, ValueError, json.JSONDecodeError) as exc:
        detail = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
        raise ValueError(f"data {folder}: bad {PARAMS_FILE}: {detail}") from None
    return params


@dataclass(frozen=True)
class PlannedImage:
    """One image of a dataset before it is rendered: where it goes and what it shows."""

    label: str
    class_index: int
    index: int
    split: str
    placement: str | None  # the shortcut as this dataset shows it
    confounded: bool  # a train image of the shortcut class showing another class's finding

    @property
    def relative(self) -> str:
        return f"{self.label}/{self.label}_{self.index:05d}.png"


def plan_dataset(params: PhantomParams) -> list[PlannedImage]:
    """Every image of the dataset in rendering order, from the seeds alone (no pixels)."""
    params.validate()
    fractions = tuple(float(s) for s in params.splits)
    task, seed = params.task, params.seed
    planned = []
    for ci, label in enumerate(params.classes):
        split_of = _assign_splits(params.per_class, seed, task, ci, fractions)
        placements: list[str | None] = [None] * params.per_class
        if params.shortcut is not None:
            placements = _assign_placements(
                split_of, seed, task, ci, label == params.shortcut, params.shortcut_eval
            )
        confounded = set()
        if label == params.shortcut:
            confounded = _confounded(split_of, seed, task, ci, params.shortcut_confound)
        for i, (split, placement) in enumerate(zip(split_of, placements, strict=True)):
            planned.append(PlannedImage(label, ci, i, split, placement, i in confounded))
    return planned


def render_planned(
    params: PhantomParams,
    item: PlannedImage,
    placements: Sequence[str | None] | None = None,
) -> list[Phantom]:
    """Render a planned image (as the dataset shows it, or under other ``placements``)."""
    rng = np.random.default_rng(
        _seed_sequence(params.seed, params.task, item.class_index, item.index)
    )
    shown = item.label
    if item.confounded:
        others = [c for c in params.classes if c != item.label and _LESIONS[c] is not None]
        shown = others[int(rng.integers(len(others)))]
    return render_variants(
        shown,
        params.size,
        rng,
        placements=(item.placement,) if placements is None else placements,
        kind=params.shortcut_kind,
        task=params.task,
    )


def _seed_sequence(seed: int, task: str, *keys: int) -> np.random.SeedSequence:
    return np.random.SeedSequence([seed, _TASK_IDS[task], *keys])


def _split_counts(n: int, splits: tuple[float, ...]) -> tuple[int, int, int]:
    """Rounded counts; from 3 images a class on, a split with a share > 0 gets at least one
    (taken from train), so a tiny dataset still has something to validate and test on."""
    n_train = min(n, round(splits[0] * n))
    n_val = min(n - n_train, round(splits[1] * n))
    counts = [n_train, n_val, n - n_train - n_val]
    if n >= 3:
        for k in (1, 2):
            if splits[k] > 0 and counts[k] == 0:
                counts[0] -= 1
                counts[k] = 1
    return counts[0], counts[1], counts[2]


def _assign_splits(
    n: int, seed: int, task: str, class_index: int, splits: tuple[float, ...]
) -> list[str]:
    """Stratified counts, but which image lands where follows a seeded permutation."""
    n_train, n_val, _ = _split_counts(n, splits)
    rng = np.random.default_rng(_seed_sequence(seed, task, class_index, _SPLIT_STREAM))
    split_of = [SPLITS[2]] * n
    for rank, i in enumerate(rng.permutation(n)):
        if rank < n_train:
            split_of[i] = SPLITS[0]
        elif rank < n_train + n_val:
            split_of[i] = SPLITS[1]
    return split_of


def _assign_placements(
    split_of: list[str], seed: int, task: str, class_index: int, marked: bool, shortcut_eval: str
) -> list[str | None]:
    """Train: the shortcut (usual place) iff this is the shortcut class. Val/test: per
    ``shortcut_eval`` -- correlated (as in train), moved (the shortcut class, elsewhere),
    random (~20 % of every class, usual place) or absent."""
    is_train = [s == SPLITS[0] for s in split_of]
    if shortcut_eval == "correlated":
        return ["usual" if marked else None] * len(split_of)
    placements: list[str | None] = ["usual" if marked and t else None for t in is_train]
    eval_idx = [i for i, t in enumerate(is_train) if not t]
    if shortcut_eval == "moved" and marked:
        for i in eval_idx:
            placements[i] = "moved"
    if shortcut_eval == "random" and eval_idx:
        rng = np.random.default_rng(_seed_sequence(seed, task, class_index, _MARKER_STREAM))
        for i in rng.permutation(eval_idx)[: round(RANDOM_MARKER_RATE * len(eval_idx))]:
            placements[int(i)] = "usual"
    return placements


def _confounded(
    split_of: list[str], seed: int, task: str, class_index: int, fraction: float
) -> set[int]:
    """Which train images of a class show another class's finding (seeded, exact count)."""
    train = [i for i, s in enumerate(split_of) if s == SPLITS[0]]
    if fraction <= 0 or not train:
        return set()
    rng = np.random.default_rng(_seed_sequence(seed, task, class_index, _CONFOUND_STREAM))
    return {int(i) for i in rng.permutation(train)[: round(fraction * len(train))]}


# --------------------------------------------------------------------------- writing


def _prepare_out(out: Path) -> None:
    """Refuse foreign non-empty dirs; clear a previous phantom run's own files (only those)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {out} exists and is not a directory")
    if not out.exists():
        out.mkdir(parents=True)
        return
    if not any(out.iterdir()):
        return
    params = out / PARAMS_FILE
    if not params.is_file():
        raise ValueError(
            f"refusing to write phantoms into {out}: it is a non-empty directory without "
            f"{PARAMS_FILE} (not a previous phantom output); choose an empty or new directory"
        )
    masks = out / MASKS_DIR
    for root in (masks / LUNGS_DIR, masks / SHORTCUT_DIR, masks, out):  # deepest first
        for class_dir in (p for p in root.iterdir() if p.is_dir()) if root.is_dir() else ():
            for png in class_dir.glob("*.png"):
                m = _OUR_FILE.match(png.name)
                if m and m.group("cls") == class_dir.name:
                    png.unlink()
            if not any(class_dir.iterdir()):
                class_dir.rmdir()
    for name in (MANIFEST_FILE, PARAMS_FILE):
        (out / name).unlink(missing_ok=True)


def _save_png(path: Path, pixels: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path, format="PNG")  # 2-D uint8 -> 8-bit grayscale


def to_uint8(image: np.ndarray) -> np.ndarray:
    """The 8-bit pixels a phantom is stored as (and that models therefore see)."""
    return np.round(image * 255.0).astype(np.uint8)


def generate_dataset(
    out: Path,
    per_class: int,
    size: int = 96,
    seed: int = 0,
    *,
    shortcut: str | None = None,
    shortcut_kind: str = "corner",
    shortcut_eval: str = "correlated",
    shortcut_confound: float = 0.0,
    task: str = "target",
    splits: tuple[float, float, float] = (0.7, 0.15, 0.15),
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write an ImageFolder tree + masks + manifest.csv + phantoms.json; return the manifest.

    The shortcut (``shortcut_kind``: corner marker, laterality letter, collimation frame or a
    scanner texture) is on every train image of ``shortcut`` and no other train image; val
    and test follow ``shortcut_eval`` (correlated / random ~20% of every class / absent /
    moved: the shortcut class's token drawn where training never showed it).
    ``shortcut_confound``: the fraction of the shortcut class's *train* images that also show
    another class's finding, so that the shortcut is the only cue that explains every training
    label — the situation in which real models learn a shortcut (a site token that predicts
    the label better than the anatomy does).

    Masks: ``masks/<rel>`` the lesion, ``masks/lungs/<rel>`` the lung fields and, where an image
    shows a local shortcut, ``masks/shortcut/<rel>`` its pixels (manifest columns ``mask``,
    ``lung_mask``, ``shortcut_mask``; the last is empty without one or for ``scanner``).
    """
    params = PhantomParams(
        per_class=per_class,
        size=size,
        seed=seed,
        shortcut=shortcut,
        shortcut_kind=shortcut_kind,
        shortcut_eval=shortcut_eval,
        shortcut_confound=shortcut_confound,
        task=task,
        splits=tuple(float(s) for s in splits),  # type: ignore[arg-type]
    )
    _classes_for(task)
    planned = plan_dataset(params)
    out = Path(out)
    _prepare_out(out)
    (out / PARAMS_FILE).write_text(json.dumps(params.to_json(), indent=2, sort_keys=True) + "\n")
    rows: list[tuple[str, str, str, str, int, str, str]] = []
    for done, item in enumerate(planned, start=1):
        (phantom,) = render_planned(params, item)
        rel = item.relative
        _save_png(out / rel, to_uint8(phantom.image))
        _save_png(out / MASKS_DIR / rel, phantom.lesion.astype(np.uint8) * 255)
        lungs = f"{MASKS_DIR}/{LUNGS_DIR}/{rel}"
        _save_png(out / lungs, phantom.lungs.astype(np.uint8) * 255)
        shortcut_mask = ""
        if phantom.shortcut is not None:
            shortcut_mask = f"{MASKS_DIR}/{SHORTCUT_DIR}/{rel}"
            _save_png(out / shortcut_mask, phantom.shortcut.astype(np.uint8) * 255)
        marker = int(item.placement is not None)
        rows.append(
            (rel, item.label, item.split, f"{MASKS_DIR}/{rel}", marker, lungs, shortcut_mask)
        )
        if progress is not None:
            progress(done, len(planned))
    manifest = out / MANIFEST_FILE
    with manifest.open("w", newline="") as fh:
        writer = csv.writer(fh, lineterminator="\n")
        writer.writerow(MANIFEST_HEADER)
        writer.writerows(rows)
    return manifest
