"""Per-sample drift metrics between a baseline and a candidate attribution map
(docs/architecture.md, "Drift metrics").

Everything is batched in torch on the maps' own device. The expensive part, ordering the
pixels, is done once (``worker.engine.ordering``): one stable ascending order of the baseline
and candidate maps together serves Spearman ranks (average ranks for ties), the Gini
coefficient and every ``iou_topQ`` set (k = round(Q/100 * H * W) pixels; ties at the cut go to
the lowest row-major index, the same on every device, where ``torch.topk`` leaves the choice
unspecified).
Sums that lose precision in float32 (means, correlations, entropies over ~50k pixels) are
accumulated in float64 (float32 on MPS, which has no float64).

NaN policy (a sample is never dropped; NaN marks what the pair cannot define). A map is
*degenerate* when it has no mass (sum 0) or is constant (or holds NaN/inf), see
:func:`degenerate`.

- ``displacement``, ``peak_displacement``, ``iou_topQ``, ``pearson``, ``spearman``: NaN when
  either map is degenerate (no centroid, peak, ordering or variance to compare).
- ``concentration_change``, ``entropy_change``: NaN when either map has zero mass (a constant
  non-zero map is well defined: Gini 0, normalised entropy 1).
- ``iou_t50``: NaN only when both ``{a >= 0.5}`` and ``{b >= 0.5}`` are empty.
- region metrics (``lesion_mass_*``, ``pointing_*``, ``shortcut_mass_*``, ``outside_lung_*``;
  a bool mask per sample and region, passed as ``regions``): NaN where the sample's region is
  empty (it has none) or the map concerned has no mass; ``pointing_*`` also where that map is
  degenerate (no peak). A level (``_tl`` / ``_ft``) needs only its own map; a ``_change``
  both. ``outside_lung_*`` is 1 − the mass share inside the lung mask.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import Tensor

from worker.catalog import (
    METRICS,
    default_metrics,
    is_audit_metric,
    pair_metrics,
    required_regions,
    topq,
    validate_metrics,
)
from worker.engine.ordering import ascending_order, average_ranks

THRESHOLD = 0.5


validate_metric_names = validate_metrics  # the name users' scripts know


def topq_k(q: int, num_pixels: int) -> int:
    """Pixels in a top-Q% set: round(Q/100 * pixels), halves up, at least 1.

    Integer arithmetic, so the count never depends on float rounding of Q/100.
    """
    return min(num_pixels, max(1, (q * num_pixels + 50) // 100))


def degenerate(maps: Tensor) -> Tensor:
    """Bool [N]: the map has no mass (sum 0), is constant, or holds NaN/inf.

    Such a map carries no spatial evidence to compare. [N, H, W] or [N, P].
    """
    flat = maps.flatten(1)
    if flat.shape[1] == 0:
        return torch.ones(flat.shape[0], dtype=torch.bool, device=maps.device)
    # amax/amin: much faster than aminmax on CPU
    total = flat.sum(dim=1)  # NaN/inf in the map (values in [0, 1] cannot overflow) -> not finite
    constant = flat.amax(dim=1) == flat.amin(dim=1)
    return constant | (total == 0) | ~torch.isfinite(total)


Regions = Mapping[str, Tensor]  # region name -> bool [N, H, W] (all False: the sample has none)


def drift_metrics(
    a: Tensor,
    b: Tensor,
    names: Sequence[str] | None = None,
    regions: Regions | None = None,
) -> dict[str, Tensor]:
    """Drift of each candidate map ``b`` from its baseline map ``a``.

    a, b: [N, H, W] maps in [0, 1] (baseline, candidate) on one device; ``regions``: the
    samples' reference masks, bool [N, H, W] per region name (``worker.catalog.REGIONS``),
    which the region metrics need. Returns name -> float32 Tensor[N] on that device, in the
    order of ``names`` (default: the catalog's defaults for the regions given). NaN marks
    undefined values as the module docstring lists. Audit-stage names (``consistency_*``,
    computed across samples after the audit by ``worker.results.consistency``) are skipped:
    a job's resolved metric list can be passed as it is.
    """
    regions = dict(regions or {})
    names = pair_metrics(default_metrics(regions) if names is None else validate_metrics(names))
    _check_pair(a, b)
    _check_regions(a, regions, names)
    with torch.no_grad():
        ctx = _Context(a, b, regions)
        out = {name: _compute(ctx, name) for name in names}
    return {name: value.to(torch.float32) for name, value in out.items()}


def _check_pair(a: Tensor, b: Tensor) -> None:
    if a.dim() != 3 or a.shape != b.shape:
        raise ValueError(
            f"maps must both be [N, H, W] of one shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if a.device != b.device:
        raise ValueError(f"maps are on different devices: {a.device} and {b.device}")
    if a.shape[1] * a.shape[2] == 0:
        raise ValueError(f"maps must have at least one pixel, got {tuple(a.shape)}")


def _check_regions(a: Tensor, regions: dict[str, Tensor], names: Sequence[str]) -> None:
    missing = [r for r in required_regions(names) if r not in regions]
    if missing:
        needs = [n for n in names if n in METRICS and METRICS[n].requires in missing]
        raise ValueError(
            f"{', '.join(needs)} need the {', '.join(missing)} region(s): pass regions"
        )
    for name, mask in regions.items():
        if mask.shape != a.shape or mask.dtype != torch.bool:
            raise ValueError(
                f"region {name!r} must be a bool mask of the maps' shape {tuple(a.shape)}, "
                f"got {mask.dtype} {tuple(mask.shape)}"
            )


def _acc_dtype(device: torch.device) -> torch.dtype:
    """Accumulation dtype: float64 wherever the backend has it."""
    return torch.float32 if device.type == "mps" else torch.float64


class _Context:
    """Lazily computed pieces shared by several metrics (one sort, one float64 copy, ...)."""

    def __init__(self, a: Tensor, b: Tensor, regions: dict[str, Tensor] | None = None) -> None:
        self.n, self.h, self.w = a.shape
        self.regions = regions or {}
        self.p = self.h * self.w
        self.device = a.device
        self.acc = _acc_dtype(a.device)
        # baseline rows 0..N-1, candidate rows N..2N-1: one kernel call per operation
        self.maps = torch.cat([a, b]).reshape(2 * self.n, self.p).to(torch.float32)
        self._cache: dict[str, Tensor | tuple[Tensor, Tensor]] = {}

    def get(self, key: str, fn: Callable[[], Tensor | tuple[Tensor, Tensor]]) -> Any:
        """Compute once per call of :func:`drift_metrics`, however many metrics need it."""
        if key not in self._cache:
            self._cache[key] = fn()
        return self._cache[key]

    def split(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return x[: self.n], x[self.n :]

    def wide(self) -> Tensor:
        return self.get("wide", lambda: self.maps.to(self.acc))

    def mass(self) -> Tensor:
        return self.get("mass", lambda: self.wide().sum(dim=1))

    def degenerate_pair(self) -> Tensor:
        deg = self.split(self.get("deg", lambda: degenerate(self.maps)))
        return deg[0] | deg[1]

    def massless_pair(self) -> Tensor:
        zero = self.split(self.mass() == 0)
        return zero[0] | zero[1]

    def region(self, name: str) -> Tensor:
        """Bool [2N, P]: each sample's region mask, for its baseline and its candidate row."""

        def run() -> Tensor:
            mask = self.regions[name].to(self.device).reshape(self.n, self.p)
            return torch.cat([mask, mask])

        return self.get(f"region:{name}", run)

    def mass_share(self, name: str) -> Tensor:
        """[2N]: the share of each map's mass inside region ``name``; NaN where the region is
        empty or the map has no mass."""

        def run() -> Tensor:
            region = self.region(name)
            inside = torch.where(region, self.wide(), 0.0).sum(dim=1)
            mass = self.mass()
            undefined = (mass == 0) | ~region.any(dim=1)
            return torch.where(undefined, torch.full_like(mass, math.nan), inside / mass)

        return self.get(f"share:{name}", run)

    def pointing(self, name: str) -> Tensor:
        """[2N]: 1 where the map's first maximum (row-major) lies in region ``name``, else 0;
        NaN where the region is empty or the map is degenerate (no peak)."""

        def run() -> Tensor:
            region = self.region(name)
            peak = torch.argmax(self.maps, dim=1, keepdim=True)
            hit = region.gather(1, peak).squeeze(1).to(self.acc)
            undefined = self.get("deg", lambda: degenerate(self.maps)) | ~region.any(dim=1)
            return torch.where(undefined, torch.full_like(hit, math.nan), hit)

        return self.get(f"pointing:{name}", run)

    def order(self) -> tuple[Tensor, Tensor]:
        """Ascending order of each row: (permutation, sorted values); ties keep row-major
        order. One ordering serves Spearman, Gini and every top-Q set."""
        return self.get("order", lambda: ascending_order(self.maps))

    def ranks(self) -> Tensor:
        """[2N, P]: each pixel's average rank (1-based, ascending), exact halves."""
        return self.get("ranks", lambda: average_ranks(*self.order()))


MetricFn = Callable[["_Context"], Tensor]
# name -> (value of every pair, which pairs it cannot define); NaN where undefined
REGISTRY: dict[str, tuple[MetricFn, MetricFn | None]] = {}


def metric(name: str, undefined: MetricFn | None) -> Callable[[MetricFn], MetricFn]:
    """Register a function over the shared :class:`_Context` as catalog metric ``name``;
    ``undefined`` gives the pairs that are NaN (None: the function places its own NaN)."""

    def register(fn: MetricFn) -> MetricFn:
        if name not in METRICS:
            raise ValueError(f"{name!r} has no line in worker.catalog.METRICS")
        if is_audit_metric(name):
            raise ValueError(f"{name!r} is an audit-stage metric: not computed per pair")
        REGISTRY[name] = (fn, undefined)
        return fn

    return register


def _compute(ctx: _Context, name: str) -> Tensor:
    q = topq(name)
    if q is not None:  # the iou_topQ family: one function, any Q
        fn, undefined = (lambda c: _iou_top(c, q)), _Context.degenerate_pair
    else:
        fn, undefined = REGISTRY[name]
    value = fn(ctx)
    if undefined is None:
        return value
    return torch.where(undefined(ctx), torch.full_like(value, math.nan), value)


@metric("displacement", _Context.degenerate_pair)
def _displacement(ctx: _Context) -> Tensor:
    """Distance between intensity-weighted centroids in unit coordinates, over sqrt(2)."""
    grid = ctx.wide().reshape(2 * ctx.n, ctx.h, ctx.w)
    xs = _unit_coords(ctx.w, ctx.acc, ctx.device)
    ys = _unit_coords(ctx.h, ctx.acc, ctx.device)
    mass = ctx.mass()
    cx = grid.sum(dim=1) @ xs / mass
    cy = grid.sum(dim=2) @ ys / mass
    return _pair_distance(ctx, cx, cy)


@metric("peak_displacement", _Context.degenerate_pair)
def _peak_displacement(ctx: _Context) -> Tensor:
    """Distance between the first argmax (row-major) of each map, in unit coordinates."""
    peak = torch.argmax(ctx.maps, dim=1)
    px = (peak % ctx.w).to(ctx.acc) * _unit_step(ctx.w)
    py = torch.div(peak, ctx.w, rounding_mode="floor").to(ctx.acc) * _unit_step(ctx.h)
    return _pair_distance(ctx, px, py)


def _unit_step(size: int) -> float:
    """Pixel spacing in [0, 1] coordinates; a 1-pixel axis has only coordinate 0."""
    return 1.0 / (size - 1) if size > 1 else 0.0


def _unit_coords(size: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    return torch.arange(size, dtype=dtype, device=device) * _unit_step(size)


def _pair_distance(ctx: _Context, x: Tensor, y: Tensor) -> Tensor:
    (xa, xb), (ya, yb) = ctx.split(x), ctx.split(y)
    return torch.hypot(xb - xa, yb - ya) / math.sqrt(2.0)


def _iou_top(ctx: _Context, q: int) -> Tensor:
    """IoU of the k highest pixels of each map; ties at the cut go to the lowest index.

    The cut value v = sorted[P - k] (ascending) spans positions [lo, hi): the set is every
    pixel above v plus the first k - (P - hi) pixels equal to v in row-major order; a
    running count of v's pixels is needed only in rows where v's run is cut.
    """
    k = topq_k(q, ctx.p)
    _, values = ctx.order()
    cut = values[:, ctx.p - k].unsqueeze(1).contiguous()
    lo = torch.searchsorted(values, cut, right=False)
    hi = torch.searchsorted(values, cut, right=True)
    member = ctx.maps >= cut
    split_rows = torch.nonzero((ctx.p - lo).squeeze(1) > k).squeeze(1)
    if split_rows.numel():  # drop the surplus ties: keep the first `wanted` of each run
        rows = ctx.maps.index_select(0, split_rows)
        tied = rows == cut.index_select(0, split_rows)
        wanted = (k - (ctx.p - hi)).index_select(0, split_rows)
        keep = (rows > cut.index_select(0, split_rows)) | (
            tied & (torch.cumsum(tied, dim=1, dtype=torch.int32) <= wanted)
        )
        member = member.index_copy(0, split_rows, keep)
    ma, mb = ctx.split(member)
    inter = (ma & mb).sum(dim=1).to(ctx.acc)
    return inter / (2 * k - inter)


@metric("iou_t50", None)
def _iou_threshold(ctx: _Context) -> Tensor:
    """IoU of the {map >= 0.5} sets; NaN only when both sets are empty."""
    ta, tb = ctx.split(ctx.maps >= THRESHOLD)
    inter = (ta & tb).sum(dim=1).to(ctx.acc)
    union = (ta | tb).sum(dim=1).to(ctx.acc)
    return torch.where(union > 0, inter / union.clamp_min(1), torch.full_like(union, math.nan))


@metric("pearson", _Context.degenerate_pair)
def _pearson(ctx: _Context) -> Tensor:
    return _correlation(*ctx.split(ctx.wide()))


@metric("spearman", _Context.degenerate_pair)
def _spearman(ctx: _Context) -> Tensor:
    """Pearson r of the average ranks: Spearman's rho with ties.

    Ranks centred by their known mean (P + 1) / 2 are exact in float32 (halves below 2^23);
    their products round once (relative 6e-8) and are summed in float64.
    """
    centred = ctx.ranks() - (ctx.p + 1) / 2
    ca, cb = ctx.split(centred)
    cov = (ca * cb).sum(dim=1, dtype=ctx.acc)
    den = torch.sqrt((ca * ca).sum(dim=1, dtype=ctx.acc) * (cb * cb).sum(dim=1, dtype=ctx.acc))
    return (cov / den).clamp(-1.0, 1.0)


def _correlation(x: Tensor, y: Tensor) -> Tensor:
    """Row-wise Pearson r from centred float64 sums, clamped to [-1, 1] against rounding."""
    xc = x - x.mean(dim=1, keepdim=True)
    yc = y - y.mean(dim=1, keepdim=True)
    cov = (xc * yc).sum(dim=1)
    den = torch.sqrt((xc * xc).sum(dim=1) * (yc * yc).sum(dim=1))
    return (cov / den).clamp(-1.0, 1.0)


@metric("concentration_change", _Context.massless_pair)
def _concentration_change(ctx: _Context) -> Tensor:
    """Gini(b) - Gini(a); Gini from the ascending order: 2 sum(i x_(i)) / (n sum x) - (n+1)/n."""
    _, values = ctx.order()
    p = ctx.p
    weights = torch.arange(1, p + 1, dtype=ctx.acc, device=ctx.device)
    weighted = values.to(ctx.acc) @ weights
    gini = 2.0 * weighted / (p * ctx.mass()) - (p + 1) / p
    ga, gb = ctx.split(gini)
    return gb - ga


@metric("entropy_change", _Context.massless_pair)
def _entropy_change(ctx: _Context) -> Tensor:
    """H(b) - H(a), H = Shannon entropy of map/sum(map) over log(pixels); 0 log 0 = 0."""
    # sum m log m / S: float32 terms are accurate enough; only their sum needs float64
    plogp = torch.special.xlogy(ctx.maps, ctx.maps).sum(dim=1, dtype=ctx.acc)
    mass = ctx.mass()
    entropy = torch.log(mass) - plogp / mass
    if ctx.p > 1:
        entropy = entropy / math.log(ctx.p)
    ea, eb = ctx.split(entropy)
    return eb - ea


SSIM_WINDOW = 7  # scikit-image's default window: uniform 7 x 7, sample covariance
SSIM_K1, SSIM_K2 = 0.01, 0.03


@metric("ssim", _Context.degenerate_pair)
def _ssim(ctx: _Context) -> Tensor:
    """Mean structural similarity (Wang et al. 2004) over the windows that fit inside the map,
    data range 1: the maps are in [0, 1]. NaN for maps smaller than the window."""
    win = SSIM_WINDOW
    if ctx.h < win or ctx.w < win:
        return torch.full((ctx.n,), math.nan, dtype=ctx.acc, device=ctx.device)
    a, b = (x.reshape(ctx.n, 1, ctx.h, ctx.w) for x in ctx.split(ctx.wide()))
    # local means of a, b, a², b², ab over every window: one pooling call
    moments = torch.nn.functional.avg_pool2d(
        torch.cat([a, b, a * a, b * b, a * b], dim=1), win, stride=1
    )
    ua, ub, uaa, ubb, uab = moments.unbind(dim=1)
    unbiased = win * win / (win * win - 1.0)
    va, vb, vab = unbiased * (uaa - ua * ua), unbiased * (ubb - ub * ub), unbiased * (uab - ua * ub)
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    s = ((2 * ua * ub + c1) * (2 * vab + c2)) / ((ua * ua + ub * ub + c1) * (va + vb + c2))
    return s.mean(dim=(1, 2))


# ----------------------------------------------------------------- reference regions
# Each model's level on a region (``_tl`` = the baseline map, ``_ft`` = the candidate map) and
# its change FT − TL; NaN where the sample has no such region (see the module docstring).


def _baseline(x: Tensor, ctx: _Context) -> Tensor:
    return ctx.split(x)[0]


def _candidate(x: Tensor, ctx: _Context) -> Tensor:
    return ctx.split(x)[1]


def _change(x: Tensor, ctx: _Context) -> Tensor:
    base, cand = ctx.split(x)
    return cand - base


@metric("lesion_mass_tl", None)
def _lesion_mass_tl(ctx: _Context) -> Tensor:
    return _baseline(ctx.mass_share("lesion"), ctx)


@metric("lesion_mass_ft", None)
def _lesion_mass_ft(ctx: _Context) -> Tensor:
    return _candidate(ctx.mass_share("lesion"), ctx)


@metric("lesion_mass_change", None)
def _lesion_mass_change(ctx: _Context) -> Tensor:
    return _change(ctx.mass_share("lesion"), ctx)


@metric("pointing_tl", None)
def _pointing_tl(ctx: _Context) -> Tensor:
    return _baseline(ctx.pointing("lesion"), ctx)


@metric("pointing_ft", None)
def _pointing_ft(ctx: _Context) -> Tensor:
    return _candidate(ctx.pointing("lesion"), ctx)


@metric("pointing_change", None)
def _pointing_change(ctx: _Context) -> Tensor:
    return _change(ctx.pointing("lesion"), ctx)


@metric("shortcut_mass_tl", None)
def _shortcut_mass_tl(ctx: _Context) -> Tensor:
    return _baseline(ctx.mass_share("shortcut"), ctx)


@metric("shortcut_mass_ft", None)
def _shortcut_mass_ft(ctx: _Context) -> Tensor:
    return _candidate(ctx.mass_share("shortcut"), ctx)


@metric("shortcut_mass_change", None)
def _shortcut_mass_change(ctx: _Context) -> Tensor:
    return _change(ctx.mass_share("shortcut"), ctx)


def _outside_lung(ctx: _Context) -> Tensor:
    return 1.0 - ctx.mass_share("lung")


@metric("outside_lung_tl", None)
def _outside_lung_tl(ctx: _Context) -> Tensor:
    return _baseline(_outside_lung(ctx), ctx)


@metric("outside_lung_ft", None)
def _outside_lung_ft(ctx: _Context) -> Tensor:
    return _candidate(_outside_lung(ctx), ctx)


@metric("outside_lung_change", None)
def _outside_lung_change(ctx: _Context) -> Tensor:
    return _change(_outside_lung(ctx), ctx)
