"""Anchors fitted to the training boxes (``model.anchors: auto``): :func:`fit_anchors` searches
sizes per level and shared ratios for box shapes, :func:`auto_anchors` fits them to a training
split and compares their coverage (:mod:`rcnnlab.models.anchors`, whose docstring says how it
is measured) with the arch's defaults in an :class:`AnchorFit`.

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
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from rcnnlab.data.coco import CocoData
from rcnnlab.errors import DatasetError
from rcnnlab.models.anchors import (
    RESNET_FPN_STRIDES,
    Sizes,
    anchor_shapes,
    best_iou_samples,
    coverage,
    grid_offsets,
    offset_iou,
    ratios_per_level,
    training_box_sizes,
)

__all__ = ["AnchorFit", "auto_anchors", "fit_anchors"]

_MAX_BOXES = 8000  # fit on a random subsample above this many boxes (speed)
_MIN_SIZE = 2  # smallest anchor size tried, in pixels
_MIN_LEVEL_SHARE = 0.01  # a level that is best for fewer boxes than this gets extrapolated
_COARSE = 2.0 ** (np.arange(-8, 9) / 8)  # candidate multipliers, x0.5..x2 in 1/8 octaves
_FINE = 2.0 ** (np.arange(-4, 5) / 32)  # final polish, 1/32 octave steps
_MAX_ROUNDS = 8
_ORDER_TOLERANCE = 0.01  # fitness given up to keep sizes increasing over the levels

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
        (3 decimals), in the form :func:`~rcnnlab.models.architecture.build_model` takes.

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
    offsets = grid_offsets(strides, num_levels, len(wh))
    starts = [_kmeans_start(wh, num_levels, sizes_per_level, num_ratios)]
    floors = None
    if reference is not None:
        ref_sizes, ref_ratios = reference
        ref_best = best_iou_samples(wh, ref_sizes, ref_ratios, strides)
        floors = ((ref_best >= 0.5).mean(), (ref_best >= 0.7).mean())
        start = _as_start(
            ref_sizes, ratios_per_level(ref_ratios, num_levels), sizes_per_level, num_ratios
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
        return offset_iou(self.wh, anchor_shapes([size], ratios), self.offsets[level])

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
        strides: the levels' strides (:func:`~rcnnlab.models.architecture.level_strides`
            tells them for a model config). Default: :data:`RESNET_FPN_STRIDES`, for 5 levels
            only; MobileNetV3's three levels have strides 32, 32, 64.
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
    default_ratios = ratios_per_level(default_ratios, num_levels)
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
