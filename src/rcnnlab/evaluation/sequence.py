"""Reading the house number: digit detections left to right, and whole-number accuracy.

The number of an image is its digit detections (score >= threshold) ordered by box x-centre and
concatenated; an image where none survive reads "-1" (the convention of ``pred.csv``). Which digit
a category stands for is read from the category *name*, never from its id, so datasets with ids
0..9, 1..10 or anything else read the same; label conversions such as SVHN's "10 means 0" belong
to the data converters.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from rcnnlab.evaluation.errors import box_iou

NO_NUMBER = "-1"
"""What an image with no digit reads as, in ground truth and predictions alike."""


def _as_numpy(values: Any, dtype: type) -> np.ndarray:
    """numpy copy of a list, numpy array or torch tensor (any device) without importing torch."""
    if hasattr(values, "detach"):
        values = values.detach().cpu().numpy()
    return np.asarray(values, dtype=dtype)


def read_number(
    boxes_xyxy: Any,
    category_ids: Any,
    scores: Any,
    digits: Mapping[int, str],
    threshold: float,
    read_iou: float | None = None,
) -> str:
    """The number read left to right from one image's digit detections.

    Keeps detections with ``score >= threshold``; with ``read_iou``, also drops any that
    overlaps a higher-scored kept one (of any class) by more than that IoU, since two digits
    do not sit on one another: the detector's NMS is per class, so one handwritten digit often
    comes back as two classes. Orders the rest by box x-centre and concatenates their digits;
    returns "-1" when none is kept. Boxes are xyxy, shape (N, 4); inputs may be lists, numpy
    arrays or torch tensors. Ties are broken deterministically: equal x-centres are ordered by
    x1 (the wider box first), then by higher score, then by input order.
    Raises ValueError for a kept detection whose category is not in ``digits``.
    """
    boxes = _as_numpy(boxes_xyxy, float).reshape(-1, 4)
    cats = _as_numpy(category_ids, np.int64).reshape(-1)
    conf = _as_numpy(scores, float).reshape(-1)
    if not len(boxes) == len(cats) == len(conf):
        raise ValueError(
            f"read_number got {len(boxes)} boxes, {len(cats)} category ids and {len(conf)} scores;"
            " they must be the same length"
        )
    keep = conf >= threshold
    boxes, cats, conf = boxes[keep], cats[keep], conf[keep]
    if read_iou is not None and len(cats) > 1:
        keep = _not_overlapping(boxes, conf, read_iou)
        boxes, cats, conf = boxes[keep], cats[keep], conf[keep]
    if not len(cats):
        return NO_NUMBER
    x_centre = (boxes[:, 0] + boxes[:, 2]) / 2
    # lexsort sorts by the last key first and is stable, so full ties keep input order.
    order = np.lexsort((-conf, boxes[:, 0], x_centre))
    unknown = sorted({int(c) for c in cats} - set(digits))
    if unknown:
        raise ValueError(
            f"category ids {unknown} are not digits (digit categories: {sorted(digits)}); "
            "map model labels back to dataset category ids first"
        )
    return "".join(digits[int(c)] for c in cats[order])


def _not_overlapping(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Greedy class-agnostic NMS: the indices, in input order, of the boxes kept when each one
    (highest score first; ties in input order) drops the later ones it overlaps by > `iou`."""
    overlaps = box_iou(boxes, boxes) > iou
    kept: list[int] = []
    for i in np.argsort(-scores, kind="stable"):
        if not overlaps[i, kept].any():
            kept.append(int(i))
    return np.sort(np.asarray(kept, dtype=np.int64))


def _xywh_to_xyxy(boxes_xywh: list[Sequence[float]]) -> np.ndarray:
    boxes = np.asarray(boxes_xywh, dtype=float).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def numbers_from_coco(gt: Mapping[str, Any], digits: Mapping[int, str]) -> dict[int, str]:
    """Ground-truth number of every image of a COCO dataset dict: image id -> digit string.

    Boxes are ordered as in :func:`read_number`; an image without boxes reads "-1". Crowd
    annotations (``iscrowd`` = 1) are regions, not digits, and are left out.
    """
    per_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for ann in gt.get("annotations", []):
        if not ann.get("iscrowd", 0):
            per_image[ann["image_id"]].append(ann)
    numbers = {}
    for img in gt["images"]:
        anns = per_image.get(img["id"], [])
        numbers[img["id"]] = read_number(
            _xywh_to_xyxy([a["bbox"] for a in anns]),
            [a["category_id"] for a in anns],
            np.ones(len(anns)),
            digits,
            threshold=0.0,
        )
    return numbers


def numbers_from_detections(
    detections: Iterable[Mapping[str, Any]],
    digits: Mapping[int, str],
    threshold: float,
    image_ids: Iterable[int],
    read_iou: float | None = None,
) -> dict[int, str]:
    """Predicted number of every image in ``image_ids`` from COCO results (bbox xywh), read
    as :func:`read_number` does (``read_iou`` too).

    Images without a detection at or above ``threshold`` read "-1"; detections on images not
    in ``image_ids`` are not read.
    """
    per_image: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for det in detections:
        per_image[det["image_id"]].append(det)
    numbers = {}
    for image_id in image_ids:
        dets = per_image.get(image_id, [])
        numbers[image_id] = read_number(
            _xywh_to_xyxy([d["bbox"] for d in dets]),
            [d["category_id"] for d in dets],
            [d["score"] for d in dets],
            digits,
            threshold,
            read_iou,
        )
    return numbers


def sequence_accuracy(gt_numbers: Mapping[int, str], pred_numbers: Mapping[int, str]) -> float:
    """Share of ground-truth images whose predicted number equals the true one exactly.

    An image missing from ``pred_numbers`` counts as predicted "-1"; predictions for images
    not in ``gt_numbers`` are ignored. Raises ValueError when ``gt_numbers`` is empty.
    """
    if not gt_numbers:
        raise ValueError("sequence_accuracy needs at least one ground-truth image")
    hits = sum(pred_numbers.get(i, NO_NUMBER) == number for i, number in gt_numbers.items())
    return hits / len(gt_numbers)
