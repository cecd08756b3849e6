"""How well anchors cover the training boxes: the boxes' sizes at the scale the model sees them,
anchor shapes as torchvision makes them, and the best IoU any anchor reaches per box (fitting
anchors to the boxes, ``model.anchors: auto``, is :mod:`rcnnlab.models.anchor_fit`).

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
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rcnnlab.data.coco import CocoData
from rcnnlab.models.transform import native_scale

__all__ = [
    "RESNET_FPN_STRIDES",
    "Sizes",
    "anchor_shapes",
    "best_anchor_iou",
    "best_iou_samples",
    "box_sizes_at_scale",
    "coverage",
    "grid_offsets",
    "offset_iou",
    "ratios_per_level",
    "training_box_sizes",
]

# Strides of torchvision's ResNet FPN levels P2..P5 and the max-pool level P6.
RESNET_FPN_STRIDES = (4, 8, 16, 32, 64)

_PLACEMENTS = 16  # box-centre positions per box when strides are modelled

Sizes = Sequence[Sequence[float]]  # anchor sizes (or ratios): one list per level


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
    best = best_iou_samples(np.asarray(wh, float), sizes, ratios, strides)
    return best.mean(axis=1, dtype=float)


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
    best = best_iou_samples(np.asarray(wh, float), sizes, ratios, strides)
    if best.size == 0:
        return {"iou>=0.5": 0.0, "iou>=0.7": 0.0, "mean_best_iou": 0.0}
    return {
        "iou>=0.5": float((best >= 0.5).mean()),
        "iou>=0.7": float((best >= 0.7).mean()),
        "mean_best_iou": float(best.mean()),
    }


def best_iou_samples(
    wh: np.ndarray, sizes: Sizes, ratios: Sizes | Sequence[float], strides: Sequence[int] | None
) -> np.ndarray:
    """(N, Q) best IoU per box and placement (Q = 1 without strides)."""
    per_level_ratios = ratios_per_level(ratios, len(sizes))
    offsets = grid_offsets(strides, len(sizes), len(wh))
    best = np.zeros(offsets.shape[2:], np.float32)
    for level_sizes, level_ratios, level_offsets in zip(
        sizes, per_level_ratios, offsets, strict=True
    ):
        shapes = anchor_shapes(level_sizes, level_ratios)
        best = np.maximum(best, offset_iou(wh, shapes, level_offsets).max(axis=0))
    return best


def ratios_per_level(ratios: Sizes | Sequence[float], num_levels: int) -> list[list[float]]:
    """Ratios as one list per level; a flat list (or a single list) applies to every level."""
    if all(isinstance(r, int | float) for r in ratios):
        return [list(ratios)] * num_levels
    if len(ratios) == 1:
        return [list(ratios[0])] * num_levels
    if len(ratios) != num_levels:
        raise ValueError(f"{len(ratios)} ratio lists for {num_levels} levels: {ratios!r}")
    return [list(r) for r in ratios]


def grid_offsets(strides: Sequence[int] | None, num_levels: int, num_boxes: int) -> np.ndarray:
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


def offset_iou(wh: np.ndarray, shapes: np.ndarray, offsets: np.ndarray) -> np.ndarray:
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
