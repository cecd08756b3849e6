"""Anchors fitted to the training boxes (``model.anchors: auto``), and how well anchors cover them.

Faster R-CNN's RPN learns from anchors: an anchor whose IoU with a ground-truth box is >= 0.7 is a
positive, and each box also claims its best anchor(s) whatever their IoU (torchvision's
``allow_low_quality_matches``). A box whose best anchor has a low IoU gets a single poor positive,
and the box regression has to travel far. Hand-picked anchors (torchvision's, sized for COCO at
800 px, or rcnnlab's small-object set) suit some datasets; objects that are small at the scale
the model sees them (digits at native size), or of an unusual shape, fall between them.
torchvision, detectron2 and MMDetection leave the choice to the user; YOLOv2/v5 cluster box
shapes, but for single-scale heads with free anchor shapes. Here the constraints are Faster
R-CNN's: anchors are ``size`` x ``ratio`` products, one RPN head serves every FPN level (so every
level has the same number of anchors), and a level's anchors sit on a grid of its stride.

Measure. :func:`best_anchor_iou` and :func:`coverage` give, per box, the best IoU any anchor can
reach. The RPN matches anchors of every level to a box by IoU alone (the FPN level mapper only
routes RoIs of the second stage), so the best is taken over all levels. Two modes:

* ``strides=None``: shape only. The anchor is centred on the box, so
  ``IoU = min(w, aw) * min(h, ah) / union``. This is an upper bound: a real anchor centre lies on
  its level's grid, up to half a stride away from the box centre in each axis.
* ``strides`` given: each level's anchors sit on a grid of its stride, and the best IoU is
  averaged over where the box centre falls on the grids. Box ``i`` is placed at 16 positions
  (points of a 2-D low-discrepancy sequence over one common period of all grids, so the offsets
  are sampled evenly for every stride and one position gives consistent offsets on all levels);
  each level's anchors sit on the grid point nearest to the box centre. Per box the result is
  the mean over its placements; coverage is the share of (box, placement) pairs, i.e. the chance
  that a box dropped at a random position is covered. This is what makes small objects fail on
  coarse levels: a 30-px box half a stride (4 px) off in x and y from a stride-8 anchor of its
  exact shape has IoU 0.6, below the 0.7 positive threshold.

Anchor shapes are computed exactly as torchvision's ``AnchorGenerator`` does (float32 half
extents, rounded to whole pixels), so a size-16 ratio-3 anchor is 10 x 28, not 9.24 x 27.7.
Edge effects (grid points beyond a small image) and augmentation (scale jitter, crops) are not
modelled.

Fit (:func:`fit_anchors`). The fitness is ``mean best IoU + share >= 0.5 + share >= 0.7``: the
mean rewards every box, the shares the two thresholds that decide what the RPN learns from.
Ratios (h/w) are shared by all levels (the count must be equal anyway, and box shapes rarely
depend on scale); they start as 1-D k-means centres of log(h/w). Sizes start log-spaced over the
2nd..98th percentile of the boxes' sqrt(area), smallest on the finest level. Coordinate ascent
then sets each size and each ratio in turn to the best of a grid of multiples of its value
(x0.5..x2 in 1/8 octaves) with the others fixed, and tries exchanging the sizes of each pair of
levels (one size alone cannot move past another without losing on the way), until a round
brings no gain; a 1/32-octave pass follows. Each coordinate is scanned exhaustively, so the fit
is deterministic. With strides the search also decides which level serves which boxes (fine
strides for small boxes); without them levels only order the sizes. Last, the sizes are sorted
to grow with the level unless that costs more than 0.01 of fitness (where strides hardly
matter the search leaves the order to chance).

When reference anchors are given (:func:`auto_anchors` passes the arch's defaults) the search
also starts from them, and a result that covers fewer boxes than they do at IoU 0.5 or 0.7 is
penalised out of contention: the fit never trades away boxes the defaults covered (on
orand-car-a at native size an unconstrained fit gains more at 0.7 but loses the smallest
digits at 0.5, the very objects the defaults were chosen for). Random perturbation of the
result, as YOLOv5's autoanchor does, was tried and gained under one point of coverage.

Levels that end up the best level of fewer than 1% of the boxes get sizes extrapolated from the
nearest used level (x2 per level up, /2 down): the RPN still runs on them, and they stay ready
for larger (or smaller) objects than the training set holds. Sizes are whole pixels because
that is what the model builder takes; ratios have 3 decimals.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rcnnlab.data.coco import CocoData
from rcnnlab.errors import DatasetError
from rcnnlab.models.transform import native_scale

__all__ = [
    "RESNET_FPN_STRIDES",
    "AnchorFit",
    "anchor_shapes",
    "auto_anchors",
    "best_anchor_iou",
    "box_sizes_at_scale",
    "coverage",
    "fit_anchors",
    "training_box_sizes",
]

# Strides of torchvision's ResNet FPN levels P2..P5 and the max-pool level P6.
RESNET_FPN_STRIDES = (4, 8, 16, 32, 64)

_PLACEMENTS = 16  # box-centre positions per box when strides are modelled
_MAX_BOXES = 8000  # fit on a random subsample above this many boxes (speed)
_MIN_SIZE = 2  # smallest anchor size tried, in pixels
_MIN_LEVEL_SHARE = 0.01  # a level that is best for fewer boxes than this gets extrapolated
_COARSE = 2.0 ** (np.arange(-8, 9) / 8)  # candidate multipliers, x0.5..x2 in 1/8 octaves
_FINE = 2.0 ** (np.arange(-4, 5) / 32)  # final polish, 1/32 octave steps
_MAX_ROUNDS = 8
_ORDER_TOLERANCE = 0.01  # fitness given up to keep sizes increasing over the levels

Sizes = Sequence[Sequence[float]]


# --------------------------------------------------------------------------- box sizes


def training_box_sizes(
    data: CocoData, *, min_size: int, max_size: int, native_size: bool
) -> np.ndarray:
    """Width and height of every non-crowd box at the scale the model sees it.

    Args:
        data: the training split.
        min_size, max_size: the model transform's limits (``model.min_size`` / ``max_size``).
        native_size: whether the model keeps images at native size (only shrinking oversized
            ones, :func:`~rcnnlab.models.transform.native_scale`) or uses torchvision's resize
            (short side to ``min_size``, long side capped at ``max_size``).

    Returns:
        A float array of shape (N, 2): w, h in pixels of the transformed image. Each axis is
        scaled by the ratio of the resized to the original image size, as torchvision rescales
        targets (the resized size is floored to whole pixels).
    """
    boxes = [(a["bbox"][2], a["bbox"][3], img["width"], img["height"]) for img in data.images
             for a in data.annotations.get(img["id"], []) if not a.get("iscrowd", 0)]
    table = np.asarray(boxes, dtype=float).reshape(-1, 4)
    return box_sizes_at_scale(table[:, :2], table[:, 2:], min_size=min_size, max_size=max_size,
                              native_size=native_size)


def box_sizes_at_scale(box_wh: np.ndarray, image_wh: np.ndarray, *, min_size: int,
                       max_size: int, native_size: bool) -> np.ndarray:
    """(N, 2) box widths and heights at the scale the model sees them, from the boxes' sizes and
    their images' sizes (both (N, 2), pixels); the transform as in :func:`training_box_sizes`."""
    rows = []
    for (bw, bh), (w, h) in zip(np.asarray(box_wh, float).reshape(-1, 2),
                                np.asarray(image_wh, float).reshape(-1, 2), strict=True):
        w, h = int(w), int(h)
        if native_size:
            scale = native_scale(h, w, min_size, max_size)
        else:
            scale = min(min_size / min(h, w), max_size / max(h, w))
        rows.append((bw * math.floor(w * scale) / w, bh * math.floor(h * scale) / h))
    return np.asarray(rows, dtype=float).reshape(-1, 2)


# --------------------------------------------------------------------------- coverage


def anchor_shapes(sizes: Sequence[float], ratios: Sequence[float]) -> np.ndarray:
    """(A, 2) widths and heights of one level's anchors, as torchvision's AnchorGenerator has them.

    For size s and ratio r: ``w = s / sqrt(r)``, ``h = s * sqrt(r)``, computed in float32 and with
    the half extents rounded to whole pixels, as ``AnchorGenerator.generate_anchors`` does.
    Order: ratio-major, like torchvision.
    """
    s = np.asarray(sizes, dtype=np.float32)
    h_ratios = np.sqrt(np.asarray(ratios, dtype=np.float32))
    w_ratios = np.float32(1) / h_ratios
    ws = (w_ratios[:, None] * s[None, :]).reshape(-1)
    hs = (h_ratios[:, None] * s[None, :]).reshape(-1)
    # generate_anchors returns round([-w, -h, w, h] / 2); the extent is twice the rounded half.
    return np.stack([2 * np.round(ws / 2), 2 * np.round(hs / 2)], axis=1).astype(np.float64)


def best_anchor_iou(
    wh: np.ndarray,
    sizes: Sizes,
    ratios: Sizes | Sequence[float],
    *,
    strides: Sequence[int] | None = None,
) -> np.ndarray:
    """Per box, the best IoU any anchor reaches.

    Args:
        wh: (N, 2) box widths and heights (e.g. from :func:`training_box_sizes`).
        sizes: anchor sizes, one list per level (sqrt(area) in pixels).
        ratios: h/w ratios, one list per level or one list for all levels.
        strides: the levels' strides. ``None``: shape only, each anchor centred on the box (an
            upper bound). Given: the mean over box positions relative to the anchor grids of the
            best IoU reachable there (see the module doc).

    Returns:
        (N,) best IoU per box.
    """
    return _best_samples(np.asarray(wh, float), sizes, ratios, strides).mean(axis=1, dtype=float)


def coverage(
    wh: np.ndarray,
    sizes: Sizes,
    ratios: Sizes | Sequence[float],
    *,
    strides: Sequence[int] | None = None,
) -> dict[str, float]:
    """How well anchors cover boxes: shares of boxes whose best anchor reaches IoU 0.5 and 0.7.

    Arguments as for :func:`best_anchor_iou`. With ``strides``, a share counts (box, position)
    pairs: the chance that a box placed at random on the anchor grid is covered.

    Returns:
        ``{"iou>=0.5": share, "iou>=0.7": share, "mean_best_iou": mean}``; shares in [0, 1].
        0.7 is the RPN's positive threshold; below 0.5 a box only gets its best anchor as a
        low-quality positive.
    """
    best = _best_samples(np.asarray(wh, float), sizes, ratios, strides)
    if best.size == 0:
        return {"iou>=0.5": 0.0, "iou>=0.7": 0.0, "mean_best_iou": 0.0}
    return {
        "iou>=0.5": float((best >= 0.5).mean()),
        "iou>=0.7": float((best >= 0.7).mean()),
        "mean_best_iou": float(best.mean()),
    }


def _best_samples(
    wh: np.ndarray, sizes: Sizes, ratios: Sizes | Sequence[float], strides: Sequence[int] | None
) -> np.ndarray:
    """(N, Q) best IoU per box and placement (Q = 1 without strides)."""
    per_level_ratios = _per_level(ratios, len(sizes))
    offsets = _level_offsets(strides, len(sizes), len(wh))
    best = np.zeros(offsets.shape[2:], np.float32)
    for level_sizes, level_ratios, level_offsets in zip(
        sizes, per_level_ratios, offsets, strict=True
    ):
        shapes = anchor_shapes(level_sizes, level_ratios)
        best = np.maximum(best, _iou(wh, shapes, level_offsets).max(axis=0))
    return best


def _per_level(ratios: Sizes | Sequence[float], num_levels: int) -> list[list[float]]:
    """Ratios as one list per level; a flat list (or a single list) applies to every level."""
    if all(isinstance(r, int | float) for r in ratios):
        return [list(ratios)] * num_levels
    if len(ratios) == 1:
        return [list(ratios[0])] * num_levels
    if len(ratios) != num_levels:
        raise ValueError(f"{len(ratios)} ratio lists for {num_levels} levels: {ratios!r}")
    return [list(r) for r in ratios]


def _level_offsets(strides: Sequence[int] | None, num_levels: int, num_boxes: int) -> np.ndarray:
    """(L, 2, N, Q) |x|, |y| distances from each box centre to each level's nearest anchor centre.

    Without strides a single zero offset (anchors centred on the box). With strides box ``i``
    is placed at points ``i*Q .. i*Q + Q - 1`` of the R2 low-discrepancy sequence (Roberts 2018)
    over one common period of all grids: the N x Q placements together cover the offsets
    evenly, and unlike a regular lattice they do not alias with any power-of-2 stride.
    """
    if strides is None:
        return np.zeros((num_levels, 2, num_boxes, 1), np.float32)
    if len(strides) != num_levels:
        raise ValueError(f"{len(strides)} strides for {num_levels} levels: {strides!r}")
    plastic = 1.324717957244746  # the R2 sequence's generator: x^3 = x + 1
    alpha = np.array([1 / plastic, 1 / plastic**2])
    index = np.arange(num_boxes * _PLACEMENTS).reshape(1, num_boxes, _PLACEMENTS)
    positions = (0.5 + index * alpha[:, None, None]) % 1.0 * np.lcm.reduce(np.int64(strides))
    offsets = [np.abs(positions - s * np.round(positions / s)) for s in strides]
    return np.stack(offsets).astype(np.float32)


def _iou(wh: np.ndarray, shapes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(A, N, Q) IoU of N boxes with A anchor shapes, centres offset by (2, N, Q) (dx, dy).

    In float32, which halves the time of the fit and is ample for IoU thresholds.
    """
    wh, shapes = wh.astype(np.float32), shapes.astype(np.float32)
    w, h = wh[None, :, 0, None], wh[None, :, 1, None]
    aw, ah = shapes[:, 0, None, None], shapes[:, 1, None, None]
    dx, dy = offsets[0][None], offsets[1][None]
    # Overlap of two intervals of lengths a, b whose centres are d apart: min(a, b) while one
    # contains the other, then (a + b) / 2 - d, down to 0.
    ix = np.maximum(np.minimum(np.minimum(w, aw), (w + aw) / 2 - dx), 0)
    iy = np.maximum(np.minimum(np.minimum(h, ah), (h + ah) / 2 - dy), 0)
    inter = ix * iy
    return inter / (w * h + aw * ah - inter)


# --------------------------------------------------------------------------- fitting


def fit_anchors(
    wh: np.ndarray,
    *,
    num_levels: int,
    sizes_per_level: int = 1,
    num_ratios: int = 3,
    strides: Sequence[int] | None = None,
    reference: tuple[Sizes, Sizes | Sequence[float]] | None = None,
    seed: int = 0,
) -> tuple[list[list[int]], list[list[float]]]:
    """Fit anchor sizes per level and shared aspect ratios to box shapes.

    Coordinate ascent from a k-means start (and from ``reference``) on the fitness
    ``mean best IoU + share >= 0.5 + share >= 0.7`` (:func:`coverage`); see the module doc.

    Args:
        wh: (N, 2) box widths and heights at training scale (:func:`training_box_sizes`).
        num_levels: feature levels of the backbone (5 for the ResNet FPNs).
        sizes_per_level: anchor sizes on each level.
        num_ratios: aspect ratios, shared by all levels (one RPN head: same count everywhere).
        strides: the levels' strides, to model the grid offset; ``None`` fits shapes only
            (levels then only order the sizes).
        reference: anchors (sizes per level, ratios) the fit must not do worse than, typically
            the model's defaults: a result covering fewer boxes than they do at IoU 0.5 or 0.7
            is penalised so heavily that it is never chosen over a feasible one. When their
            layout matches (``sizes_per_level`` sizes per level, one shared list of
            ``num_ratios`` ratios) the search also starts from them, and the result is then
            guaranteed to be at least as good at both thresholds.
        seed: picks the subsample when there are more than 8000 boxes (the guarantee above
            then holds on the subsample); the fit is otherwise deterministic.

    Returns:
        (sizes, ratios): ``num_levels`` lists of ``sizes_per_level`` whole-pixel sizes
        (increasing within a level), and ``num_levels`` copies of the sorted ratio list
        (3 decimals), in the form :func:`~rcnnlab.models.build.build_model` takes.

    Raises:
        ValueError: no boxes, a non-positive width or height, or bad ``strides``.
    """
    wh = np.asarray(wh, dtype=float).reshape(-1, 2)
    if len(wh) == 0:
        raise ValueError("fit_anchors needs at least one box")
    if (wh <= 0).any():
        raise ValueError("box widths and heights must be positive")
    if len(wh) > _MAX_BOXES:
        wh = wh[np.random.default_rng(seed).choice(len(wh), _MAX_BOXES, replace=False)]
    offsets = _level_offsets(strides, num_levels, len(wh))
    starts = [_kmeans_start(wh, num_levels, sizes_per_level, num_ratios)]
    floors = None
    if reference is not None:
        ref_sizes, ref_ratios = reference
        ref_best = _best_samples(wh, ref_sizes, ref_ratios, strides)
        floors = ((ref_best >= 0.5).mean(), (ref_best >= 0.7).mean())
        start = _as_start(
            ref_sizes, _per_level(ref_ratios, num_levels), sizes_per_level, num_ratios
        )
        if start is not None:
            starts.append(start)
    searches = [_Search(wh, offsets, sizes, ratios, floors) for sizes, ratios in starts]
    for search in searches:
        search.run()
    best = max(searches, key=_Search.fitness)  # the first (k-means) start wins ties
    sizes = np.sort(best.sizes, axis=1).astype(int)
    ratios = sorted(float(r) for r in best.ratios)
    return sizes.tolist(), [ratios] * num_levels


def _kmeans_start(
    wh: np.ndarray, num_levels: int, per_level: int, num_ratios: int
) -> tuple[np.ndarray, np.ndarray]:
    """Ratios: 1-D k-means of log(h/w). Sizes: log-spaced over the 2..98th sqrt(area) percentile,
    smallest on the finest level."""
    ratios = np.round(np.exp(_kmeans_1d(np.log(wh[:, 1] / wh[:, 0]), num_ratios)), 3)
    lo, hi = np.percentile(np.sqrt(wh.prod(axis=1)), [2, 98])
    sizes = np.round(np.geomspace(lo, hi, num_levels * per_level))
    return np.maximum(sizes, _MIN_SIZE).reshape(num_levels, per_level), ratios


def _as_start(
    sizes: Sizes, ratios: list[list[float]], per_level: int, num_ratios: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """``reference`` anchors as a starting point, or None when their layout differs."""
    if any(len(level) != per_level for level in sizes) or any(r != ratios[0] for r in ratios):
        return None
    if len(ratios[0]) != num_ratios:
        return None
    return np.array(sizes, dtype=float), np.array(ratios[0], dtype=float)


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 100) -> np.ndarray:
    """Sorted 1-D k-means centres, started at evenly spaced quantiles (deterministic)."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        nearest = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        # An empty cluster keeps its centre.
        new = np.array(
            [values[nearest == i].mean() if (nearest == i).any() else centres[i] for i in range(k)]
        )
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


class _Search:
    """Coordinate ascent on whole-pixel sizes (L, m) and shared ratios (R,) of one start.

    Keeps the IoU of every anchor with every (box, placement) sample, shape (L, m, R, N, Q), so a
    move of one coordinate only recomputes the anchors it changes.
    """

    def __init__(
        self,
        wh: np.ndarray,
        offsets: np.ndarray,
        sizes: np.ndarray,
        ratios: np.ndarray,
        floors: tuple[float, float] | None,
    ):
        self.wh, self.offsets, self.floors = wh, offsets, floors
        self.shape_only = not offsets.any()  # levels are then interchangeable
        self.ratios = ratios.astype(float)
        self.sizes = sizes.astype(float)
        self.ious = np.empty((*sizes.shape, len(ratios), *offsets.shape[2:]), np.float32)
        self._set_sizes(self.sizes)

    def run(self) -> None:
        """Coarse sweeps until none helps; tidy unused levels; a fine sweep; order the sizes."""
        for _ in range(_MAX_ROUNDS):
            if not self._sweep(_COARSE, swaps=True):
                break
        self._extrapolate_unused()
        self._sweep(_FINE, swaps=False)
        self._prefer_increasing_sizes()

    def fitness(self) -> float:
        """The fitness of the current anchors."""
        return self._fitness(self.ious.max(axis=(0, 1, 2)))

    def _fitness(self, best: np.ndarray) -> float:
        """Mean best IoU + coverage at 0.5 and 0.7, minus a prohibitive penalty for falling
        below the reference's coverage (one sample short outweighs any possible gain)."""
        coverage_05, coverage_07 = (best >= 0.5).mean(), (best >= 0.7).mean()
        penalty = 1e3 * best.size * self._shortfall(best)
        return float(best.mean() + coverage_05 + coverage_07 - penalty)

    def _shortfall(self, best: np.ndarray) -> float:
        """How far the coverage at 0.5 and 0.7 falls below the reference's (0 if no reference)."""
        if self.floors is None:
            return 0.0
        shares = (best >= 0.5).mean(), (best >= 0.7).mean()
        return float(
            sum(max(0.0, floor - share) for floor, share in zip(self.floors, shares, strict=True))
        )

    def _anchor_iou(self, level: int, size: float, ratios: np.ndarray) -> np.ndarray:
        """(R, N, Q) IoU of the anchors of one size and several ratios on one level."""
        return _iou(self.wh, anchor_shapes([size], ratios), self.offsets[level])

    def _set_sizes(self, sizes: np.ndarray) -> None:
        """Replace all sizes and recompute every IoU."""
        self.sizes = sizes.copy()
        for level, row in enumerate(sizes):
            for k, size in enumerate(row):
                self.ious[level, k] = self._anchor_iou(level, size, self.ratios)

    def _sweep(self, factors: np.ndarray, *, swaps: bool) -> bool:
        """Try each coordinate at its value times ``factors``, then (if ``swaps``) exchanging
        the sizes of each pair of levels; True if anything improved."""
        improved = False
        num_levels, per_level = self.sizes.shape
        for level in range(num_levels):
            for k in range(per_level):
                improved |= self._move_size(level, k, factors)
        for j in range(len(self.ratios)):
            improved |= self._move_ratio(j, factors)
        if swaps:
            for first, second in itertools.combinations(range(num_levels), 2):
                improved |= self._swap_levels(first, second)
        return improved

    def _swap_levels(self, first: int, second: int) -> bool:
        """Exchange the sizes of two levels if that helps: single-size moves cannot get past a
        level order such as (large on the fine stride, small on the coarse one), since moving
        either size alone through the other one's value loses on the way."""
        if self.shape_only:
            return False
        sizes = self.sizes.copy()
        sizes[[first, second]] = sizes[[second, first]]
        ious = self.ious.copy()
        for level in (first, second):
            for k, size in enumerate(sizes[level]):
                ious[level, k] = self._anchor_iou(level, size, self.ratios)
        if self._fitness(ious.max(axis=(0, 1, 2))) <= self.fitness() + 1e-9:
            return False
        self.sizes, self.ious = sizes, ious
        return True

    def _move_size(self, level: int, k: int, factors: np.ndarray) -> bool:
        others = np.ones(self.sizes.shape, bool)
        others[level, k] = False
        rest = self.ious[others].max(axis=(0, 1)) if others.any() else 0.0
        current = self.sizes[level, k]
        best, best_score = None, self._fitness(np.maximum(rest, self.ious[level, k].max(0)))
        for size in np.unique(np.maximum(np.round(current * factors), _MIN_SIZE)):
            if size == current:
                continue
            iou = self._anchor_iou(level, size, self.ratios)
            score = self._fitness(np.maximum(rest, iou.max(axis=0)))
            if score > best_score + 1e-9:
                best, best_score = (size, iou), score
        if best is None:
            return False
        self.sizes[level, k], self.ious[level, k] = best
        return True

    def _move_ratio(self, j: int, factors: np.ndarray) -> bool:
        others = np.ones(len(self.ratios), bool)
        others[j] = False
        rest = self.ious[:, :, others].max(axis=(0, 1, 2)) if others.any() else 0.0
        current = self.ratios[j]
        best, best_score = None, self._fitness(np.maximum(rest, self.ious[:, :, j].max((0, 1))))
        # Ratios move on a 3-decimal grid: what is evaluated is exactly what is returned.
        for ratio in np.unique(np.round(current * factors, 3)):
            if ratio == current or ratio <= 0:
                continue
            iou = np.stack(
                [
                    np.stack([self._anchor_iou(level, size, np.array([ratio]))[0] for size in row])
                    for level, row in enumerate(self.sizes)
                ]
            )
            score = self._fitness(np.maximum(rest, iou.max(axis=(0, 1))))
            if score > best_score + 1e-9:
                best, best_score = (ratio, iou), score
        if best is None:
            return False
        self.ratios[j], self.ious[:, :, j] = best
        return True

    def _prefer_increasing_sizes(self) -> None:
        """Order the sizes over the levels (finest level smallest) unless that costs more than
        _ORDER_TOLERANCE of fitness: where strides hardly matter (objects much larger than
        them) the search leaves the order to chance, and readers expect sizes to grow with
        the stride, as the RPN's levels are meant to serve growing objects."""
        before = (self.sizes.copy(), self.ious.copy())
        fitness = self.fitness()
        self._set_sizes(np.sort(self.sizes, axis=None).reshape(self.sizes.shape))
        if self.fitness() < fitness - _ORDER_TOLERANCE:
            self.sizes, self.ious = before

    def _extrapolate_unused(self) -> None:
        """Give each level that is the best level of < 1% of the samples sizes x2 per level from
        the nearest used level, unless that breaks the reference floors."""
        per_level = self.ious.max(axis=(1, 2))  # (L, N, Q)
        winners = per_level.argmax(axis=0).ravel()
        shares = np.bincount(winners, minlength=len(per_level)) / winners.size
        used = np.flatnonzero(shares >= _MIN_LEVEL_SHARE)  # never empty: some level has >= 1/L
        if self.shape_only:
            # Levels are interchangeable: put the used ones first, extrapolate upwards.
            unused = np.setdiff1d(np.arange(len(shares)), used)
            self._set_sizes(self.sizes[np.r_[used, unused]])
            used = np.arange(len(used))
        for level in np.setdiff1d(np.arange(len(shares)), used):
            source = used[np.abs(used - level).argmin()]  # nearest; the finer one on ties
            scaled = np.round(self.sizes[source] * 2.0 ** (level - source))
            sizes = self.sizes.copy()
            sizes[level] = np.maximum(scaled, _MIN_SIZE)
            before = (self.sizes.copy(), self.ious.copy())
            shortfall = self._shortfall(self.ious.max(axis=(0, 1, 2)))
            self._set_sizes(sizes)
            if self._shortfall(self.ious.max(axis=(0, 1, 2))) > shortfall:
                self.sizes, self.ious = before


# --------------------------------------------------------------------------- from a dataset


@dataclass
class AnchorFit:
    """Fitted anchors and how they cover the training boxes compared with the defaults.

    Attributes:
        sizes: sizes per level (``model.anchor_sizes``).
        ratios: h/w ratios per level (``model.aspect_ratios``).
        coverage_before: :func:`coverage` of the default anchors.
        coverage_after: :func:`coverage` of the fitted anchors.
        n_boxes: training boxes measured.
        strides: the level strides the coverage and the fit modelled.
    """

    sizes: list[list[int]]
    ratios: list[list[float]]
    coverage_before: dict[str, float]
    coverage_after: dict[str, float]
    n_boxes: int
    strides: list[int]

    def summary(self) -> str:
        """Three lines: the anchors, then the coverage before -> after at IoU 0.5 and 0.7."""
        before, after = self.coverage_before, self.coverage_after

        def change(key: str, pct: bool = True) -> str:
            if pct:
                return f"{100 * before[key]:.1f}% -> {100 * after[key]:.1f}%"
            return f"{before[key]:.3f} -> {after[key]:.3f}"

        return (
            f"auto anchors from {self.n_boxes} boxes (strides {self.strides}): "
            f"sizes {self.sizes}, ratios {self.ratios[0]}\n"
            f"  boxes with an anchor at IoU>=0.5: {change('iou>=0.5')}, "
            f"IoU>=0.7: {change('iou>=0.7')}\n"
            f"  mean best IoU: {change('mean_best_iou', pct=False)}"
        )

    def as_dict(self) -> dict:
        """JSON-friendly, for run records."""
        return asdict(self)


def auto_anchors(
    data: CocoData,
    *,
    num_levels: int,
    min_size: int,
    max_size: int,
    native_size: bool,
    default_sizes: Sizes,
    default_ratios: Sizes | Sequence[float],
    strides: Sequence[int] | None = None,
    sizes_per_level: int | None = None,
    num_ratios: int | None = None,
    seed: int = 0,
) -> AnchorFit:
    """Fit anchors to a training split at the scale the model sees it, and compare coverage.

    The defaults are the fit's reference (see :func:`fit_anchors`): the fitted anchors cover at
    least as many boxes as the defaults at IoU 0.5 and 0.7 whenever the layout is the default
    one. About 2 s on a CPU for 5000 boxes and 5 levels of 1 size x 4 ratios.

    Note that the ``fasterrcnn_*`` archs' COCO RPN heads were trained for their default anchors:
    fitted anchors change what each pretrained RPN output channel stands for.

    Args:
        data: the training split.
        num_levels: feature levels of the backbone.
        min_size, max_size, native_size: the model transform (see :func:`training_box_sizes`).
        default_sizes, default_ratios: the arch's default anchors, to compare against and not
            to fall below; their layout (sizes per level, ratio count) is kept unless
            overridden below.
        strides: the levels' strides (``rcnnlab.models.build._probe_levels`` reads them off a
            backbone). Default: :data:`RESNET_FPN_STRIDES`, for 5 levels only; MobileNetV3's
            three levels have strides 32, 32, 64.
        sizes_per_level: default: as many as ``default_sizes`` has per level.
        num_ratios: default: as many as ``default_ratios`` has per level.
        seed: see :func:`fit_anchors`.

    Raises:
        ValueError: the split has no boxes, or the strides are missing / do not fit the levels.
    """
    if strides is None:
        if num_levels != len(RESNET_FPN_STRIDES):
            raise ValueError(
                f"auto anchors: pass the strides of the {num_levels} feature levels (only the "
                f"5-level ResNet FPN strides {RESNET_FPN_STRIDES} are assumed)"
            )
        strides = RESNET_FPN_STRIDES
    strides = [int(s) for s in strides]
    default_ratios = _per_level(default_ratios, num_levels)
    wh = training_box_sizes(data, min_size=min_size, max_size=max_size, native_size=native_size)
    if len(wh) == 0:
        raise DatasetError(
            f"{data.json_path}: no (non-crowd) boxes to fit anchors to. Fix: train on a split "
            "with annotations, or set model.anchors to explicit sizes instead of 'auto'"
        )
    sizes, ratios = fit_anchors(
        wh,
        num_levels=num_levels,
        sizes_per_level=sizes_per_level or len(default_sizes[0]),
        num_ratios=num_ratios or len(default_ratios[0]),
        strides=strides,
        reference=(default_sizes, default_ratios),
        seed=seed,
    )
    return AnchorFit(
        sizes=sizes,
        ratios=ratios,
        coverage_before=coverage(wh, default_sizes, default_ratios, strides=strides),
        coverage_after=coverage(wh, sizes, ratios, strides=strides),
        n_boxes=len(wh),
        strides=strides,
    )
