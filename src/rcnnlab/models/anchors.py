"""Anchors fitted to the training boxes (``model.anchors: auto``), and how well anchors cover them.

Faster R-CNN's RPN learns from anchors: an anchor whose IoU with a ground-truth box is >= 0.7 is a
positive, and each box also claims its best anchor(s) whatever their IoU (torchvision's
``allow_low_quality_matches``). A box whose best anchor has a low IoU gets a single poor positive,
and the box regression has to travel far. Default anchors are sized for COCO at 800 px; objects
that are small at the scale the model sees them (digits at native size), or of an unusual shape,
fall between them. torchvision, detectron2 and MMDetection leave the choice to the user; YOLOv2/v5
cluster box shapes, but for single-scale heads with free anchor shapes. Here the constraints are
Faster R-CNN's: anchors are ``size`` x ``ratio`` products, one RPN head serves every FPN level (so
every level has the same number of anchors), and a level's anchors sit on a grid of its stride.

Measure. :func:`best_anchor_iou` and :func:`coverage` give, per box, the best IoU any anchor can
reach. The RPN matches anchors of every level to a box by IoU alone (the FPN level mapper only
routes RoIs of the second stage), so the best is taken over all levels. Two modes:

* ``strides=None``: shape only. The anchor is centred on the box, so
  ``IoU = min(w, aw) * min(h, ah) / union``. This is an upper bound: a real anchor centre lies on
  its level's grid, up to half a stride away from the box centre in each axis.
* ``strides`` given: the box centre is placed at a fixed set of positions spread evenly over the
  grid period (a 2-D low-discrepancy sequence, so every level's offsets are sampled evenly and
  the levels see *consistent* offsets of one box position), and each level's anchors sit on its
  nearest grid point. Per box the result is the mean over the placements; coverage is the share
  of (box, placement) pairs, i.e. the chance that a box dropped at a random position is covered.
  This is what makes small objects fail on coarse levels: a 30-px box half a stride (4 px) off a
  stride-8 anchor of its exact shape has IoU 0.6, below the 0.7 positive threshold.

Anchor shapes are computed exactly as torchvision's ``AnchorGenerator`` does (float32 half
extents, rounded to whole pixels), so a size-16 ratio-3 anchor is 10 x 28, not 9.24 x 27.7.
Edge effects (grid points beyond a small image) and augmentation (scale jitter, crops) are not
modelled.

Fit (:func:`fit_anchors`). Ratios (h/w) are shared by all levels: 1-D k-means of log(h/w).
Sizes start log-spaced over the 2nd..98th percentile of the boxes' sqrt(area), smallest on the
finest level. Then coordinate ascent maximises the mean best IoU: each size and each ratio in
turn is set to the best of a grid of multiples of its value (x0.5..x2), with the others fixed,
until a round brings no gain, followed by a finer pass. The search is exhaustive per coordinate,
so it is deterministic and does not need a seed except to subsample very large box sets. With
strides, the search also decides which level serves which boxes (fine levels for small boxes).
Levels that end up the best level of fewer than 1% of the boxes get sizes extrapolated from the
nearest used level (x2 per level up, /2 down): the RPN still runs on them, and they stay ready
for larger (or smaller) objects than the training set holds. Sizes are whole pixels because
that is what the model builder takes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rcnnlab.data.coco import CocoData
from rcnnlab.models.transform import native_scale

__all__ = [
    "RESNET_FPN_STRIDES",
    "AnchorFit",
    "anchor_shapes",
    "auto_anchors",
    "best_anchor_iou",
    "coverage",
    "fit_anchors",
    "training_box_sizes",
]

# Strides of torchvision's ResNet FPN levels P2..P5 and the max-pool level P6.
RESNET_FPN_STRIDES = (4, 8, 16, 32, 64)

_PLACEMENTS = 16  # box-centre positions per box when strides are modelled
_MAX_BOXES = 4000  # fit on a random subsample above this many boxes (speed)
_MIN_LEVEL_SHARE = 0.01  # a level that is best for fewer boxes than this gets extrapolated
_COARSE = 2.0 ** (np.arange(-8, 9) / 8)  # candidate multipliers, x0.5..x2 in 1/8 octaves
_FINE = 2.0 ** (np.arange(-4, 5) / 32)  # final polish, 1/32 octave steps
_MAX_ROUNDS = 8

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
    rows = []
    for img in data.images:
        anns = [a for a in data.annotations.get(img["id"], []) if not a.get("iscrowd", 0)]
        if not anns:
            continue
        h, w = img["height"], img["width"]
        if native_size:
            scale = native_scale(h, w, min_size, max_size)
        else:
            scale = min(min_size / min(h, w), max_size / max(h, w))
        if scale == 1.0:
            sx = sy = 1.0
        else:
            sx, sy = math.floor(w * scale) / w, math.floor(h * scale) / h
        rows += [(a["bbox"][2] * sx, a["bbox"][3] * sy) for a in anns]
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
    return _best_samples(np.asarray(wh, float), sizes, ratios, strides).mean(axis=1)


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
    offsets = _level_offsets(strides, len(sizes))
    best = np.zeros((len(wh), offsets.shape[1]))
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


def _level_offsets(strides: Sequence[int] | None, num_levels: int) -> np.ndarray:
    """(L, Q, 2) |x|, |y| distances from a box centre to each level's nearest anchor centre.

    Without strides a single zero offset (anchors centred on the box). With strides the box
    centre takes Q positions of the R2 low-discrepancy sequence (Roberts 2018) over one common
    period of all grids: unlike a regular lattice it does not alias with any power-of-2 stride.
    """
    if strides is None:
        return np.zeros((num_levels, 1, 2))
    if len(strides) != num_levels:
        raise ValueError(f"{len(strides)} strides for {num_levels} levels: {strides!r}")
    plastic = 1.324717957244746  # the R2 sequence's generator: x^3 = x + 1
    alpha = np.array([1 / plastic, 1 / plastic**2])
    unit = (0.5 + np.arange(_PLACEMENTS)[:, None] * alpha) % 1.0
    positions = unit * float(np.lcm.reduce([int(s) for s in strides]))
    return np.stack([np.abs(positions - s * np.round(positions / s)) for s in strides])


def _iou(wh: np.ndarray, shapes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(A, N, Q) IoU of N boxes with A anchor shapes whose centres are offset by Q (dx, dy)."""
    w, h = wh[None, :, 0, None], wh[None, :, 1, None]
    aw, ah = shapes[:, 0, None, None], shapes[:, 1, None, None]
    dx, dy = offsets[None, None, :, 0], offsets[None, None, :, 1]
    # Overlap of two intervals of lengths a, b whose centres are d apart: min(a, b) while one
    # contains the other, then (a + b) / 2 - d, down to 0.
    ix = np.clip(np.minimum(np.minimum(w, aw), (w + aw) / 2 - dx), 0, None)
    iy = np.clip(np.minimum(np.minimum(h, ah), (h + ah) / 2 - dy), 0, None)
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
    seed: int = 0,
) -> tuple[list[list[int]], list[list[float]]]:
    """Fit anchor sizes per level and shared aspect ratios to box shapes.

    Maximises the mean best IoU (:func:`best_anchor_iou`) by coordinate ascent from a k-means
    start; see the module doc for the method.

    Args:
        wh: (N, 2) box widths and heights at training scale (:func:`training_box_sizes`).
        num_levels: feature levels of the backbone (5 for the ResNet FPNs).
        sizes_per_level: anchor sizes on each level.
        num_ratios: aspect ratios, shared by all levels (one RPN head: same count everywhere).
        strides: the levels' strides, to model the grid offset; ``None`` fits shapes only
            (levels then only order the sizes).
        seed: picks the subsample when there are more than 4000 boxes; the fit is otherwise
            deterministic.

    Returns:
        (sizes, ratios): ``num_levels`` lists of ``sizes_per_level`` whole-pixel sizes
        (increasing within a level), and ``num_levels`` copies of the sorted ratio list, in the
        form :func:`~rcnnlab.models.build.build_model` takes.
    """
    wh = np.asarray(wh, dtype=float).reshape(-1, 2)
    if len(wh) == 0:
        raise ValueError("fit_anchors needs at least one box")
    if (wh <= 0).any():
        raise ValueError("box widths and heights must be positive")
    if len(wh) > _MAX_BOXES:
        wh = wh[np.random.default_rng(seed).choice(len(wh), _MAX_BOXES, replace=False)]
    search = _Search(wh, _level_offsets(strides, num_levels), sizes_per_level, num_ratios)
    search.run()
    sizes = search.sizes
    if strides is None:
        # Levels are interchangeable without strides: order the sizes over the levels.
        sizes = np.sort(sizes, axis=None).reshape(sizes.shape)
        search.set_sizes(sizes)
    sizes = _extrapolate_unused(sizes, search.level_shares())
    sizes = np.sort(sizes, axis=1)
    ratios = sorted(round(float(r), 3) for r in search.ratios)
    return [[int(s) for s in level] for level in sizes], [ratios] * num_levels


class _Search:
    """Coordinate ascent on integer sizes (L, m) and shared ratios (R,) for mean best IoU.

    Keeps the IoU of every anchor with every (box, placement) sample, shape (L, m, R, N, Q), so a
    move of one coordinate only recomputes the anchors it changes.
    """

    def __init__(self, wh: np.ndarray, offsets: np.ndarray, per_level: int, num_ratios: int):
        self.wh, self.offsets = wh, offsets
        num_levels = len(offsets)
        self.ratios = np.exp(_kmeans_1d(np.log(wh[:, 1] / wh[:, 0]), num_ratios))
        root_area = np.sqrt(wh.prod(axis=1))
        lo, hi = np.percentile(root_area, [2, 98])
        count = num_levels * per_level
        self.sizes = np.maximum(np.round(np.geomspace(lo, hi, count)), 2).reshape(num_levels, -1)
        self.ious = np.stack([
            np.stack([self._anchor_iou(level, s, self.ratios) for s in self.sizes[level]])
            for level in range(num_levels)
        ])

    def _anchor_iou(self, level: int, size: float, ratios: np.ndarray) -> np.ndarray:
        """(R, N, Q) IoU of the anchors of one size and several ratios on one level."""
        return _iou(self.wh, anchor_shapes([size], ratios), self.offsets[level])

    def score(self) -> float:
        return float(self.ious.max(axis=(0, 1, 2)).mean())

    def run(self) -> None:
        for _ in range(_MAX_ROUNDS):
            if not self._sweep(_COARSE):
                break
        self._sweep(_FINE)

    def _sweep(self, factors: np.ndarray) -> bool:
        """Try each coordinate at its value times ``factors``; True if anything improved."""
        improved = False
        num_levels, per_level = self.sizes.shape
        for level in range(num_levels):
            for k in range(per_level):
                improved |= self._move_size(level, k, factors)
        for j in range(len(self.ratios)):
            improved |= self._move_ratio(j, factors)
        return improved

    def _move_size(self, level: int, k: int, factors: np.ndarray) -> bool:
        others = np.ones(self.sizes.shape, bool)
        others[level, k] = False
        rest = self.ious[others].max(axis=(0, 1)) if others.any() else 0.0
        current = self.sizes[level, k]
        best, best_score = None, _fitness(np.maximum(rest, self.ious[level, k].max(0)))
        for size in np.unique(np.maximum(np.round(current * factors), 2)):
            if size == current:
                continue
            iou = self._anchor_iou(level, size, self.ratios)
            score = _fitness(np.maximum(rest, iou.max(axis=0)))
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
        best, best_score = None, _fitness(np.maximum(rest, self.ious[:, :, j].max((0, 1))))
        for ratio in self.ratios[j] * factors:
            if ratio == self.ratios[j]:
                continue
            iou = np.stack([
                np.stack([self._anchor_iou(level, s, np.array([ratio]))[0] for s in row])
                for level, row in enumerate(self.sizes)
            ])
            score = _fitness(np.maximum(rest, iou.max(axis=(0, 1))))
            if score > best_score + 1e-9:
                best, best_score = (ratio, iou), score
        if best is None:
            return False
        self.ratios[j], self.ious[:, :, j] = best
        return True

    def set_sizes(self, sizes: np.ndarray) -> None:
        """Replace the sizes (recomputing the IoUs)."""
        self.sizes = sizes.copy()
        for level, row in enumerate(sizes):
            for k, size in enumerate(row):
                self.ious[level, k] = self._anchor_iou(level, size, self.ratios)

    def level_shares(self) -> np.ndarray:
        """(L,) share of (box, placement) samples whose best anchor lies on each level."""
        per_level = self.ious.max(axis=(1, 2))  # (L, N, Q)
        winners = per_level.argmax(axis=0)
        return np.bincount(winners.ravel(), minlength=len(per_level)) / winners.size


def _fitness(best: np.ndarray) -> float:
    return float(best.mean() + W5 * (best >= 0.5).mean() + W7 * (best >= 0.7).mean())


W5 = W7 = 1.0


def _kmeans_1d(values: np.ndarray, k: int, iterations: int = 100) -> np.ndarray:
    """Sorted 1-D k-means centres, started at evenly spaced quantiles (deterministic)."""
    centres = np.quantile(values, (np.arange(k) + 0.5) / k)
    for _ in range(iterations):
        nearest = np.abs(values[:, None] - centres[None, :]).argmin(axis=1)
        # An empty cluster keeps its centre.
        new = np.array([
            values[nearest == i].mean() if (nearest == i).any() else centres[i] for i in range(k)
        ])
        if np.allclose(new, centres):
            break
        centres = new
    return np.sort(centres)


def _extrapolate_unused(sizes: np.ndarray, shares: np.ndarray) -> np.ndarray:
    """Sizes of levels serving < 1% of the boxes, scaled x2 per level from the nearest used one."""
    used = np.flatnonzero(shares >= _MIN_LEVEL_SHARE)
    if len(used) == 0:  # cannot happen with boxes: some level is best for at least 1/L of them
        return sizes
    out = sizes.copy()
    for level in range(len(sizes)):
        if level in used:
            continue
        source = used[np.abs(used - level).argmin()]  # nearest, the finer one on ties
        out[level] = np.maximum(np.round(sizes[source] * 2.0 ** (level - source)), 2)
    return out


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

    Note that the ``fasterrcnn_*`` archs' COCO RPN heads were trained for their default anchors:
    fitted anchors change what each pretrained RPN output channel stands for.

    Args:
        data: the training split.
        num_levels: feature levels of the backbone.
        min_size, max_size, native_size: the model transform (see :func:`training_box_sizes`).
        default_sizes, default_ratios: the arch's default anchors, to compare against; their
            layout (sizes per level, ratio count) is kept unless overridden below.
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
        raise ValueError(
            f"{data.json_path}: no (non-crowd) boxes to fit anchors to. Fix: train on a split "
            "with annotations, or set model.anchors to explicit sizes instead of 'auto'"
        )
    sizes, ratios = fit_anchors(
        wh,
        num_levels=num_levels,
        sizes_per_level=sizes_per_level or len(default_sizes[0]),
        num_ratios=num_ratios or len(default_ratios[0]),
        strides=strides,
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
