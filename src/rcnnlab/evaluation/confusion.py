"""Which class each ground-truth box was detected as: a confusion matrix with background.

Detections below the score threshold are dropped; the rest are matched to ground-truth boxes of
the same image at an IoU threshold (0.5 by default), in two greedy passes in score order:

1. a detection takes the unmatched ground-truth box *of its own class* with the highest IoU at or
   above the threshold (COCO's matching, so the diagonal counts COCO's true positives);
2. a detection left over takes the unmatched box *of another class* with the highest IoU at or
   above the threshold: a confusion (the box was found but given the wrong class).

Doing the same-class pass first means a wrong-class detection only counts as a confusion of a box
that no right-class detection found: a "3" detected as both 3 (score 0.85) and 8 (score 0.9) is a
true positive plus a spurious detection, not a confusion plus a duplicate.

Rows are the true classes plus "background" (detections left unmatched: nothing there, or a
duplicate of a box already taken); columns are the predicted classes plus "missed" (ground-truth
boxes no detection matched). Row k sums to the ground-truth boxes of class k; column j (a class)
to the detections of class j kept at the threshold. Crowd annotations are regions, not instances,
and are left out (as in :mod:`rcnnlab.evaluation.sequence`).

Boxes are xyxy in absolute pixels inside this module; the COCO entry points convert from xywh.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rcnnlab.evaluation.errors import box_iou


@dataclass(frozen=True)
class ImageMatch:
    """The matching of one image: its boxes and which detection took which ground-truth box.

    Detections are those kept at the score threshold, in descending score order. Pairs are
    (detection index, ground-truth index).
    """

    gt_boxes: np.ndarray  # [G, 4] xyxy
    gt_labels: np.ndarray  # [G] category ids
    det_boxes: np.ndarray  # [D, 4] xyxy
    det_labels: np.ndarray  # [D] category ids
    det_scores: np.ndarray  # [D], descending
    true_positives: tuple[tuple[int, int], ...]  # same class
    confusions: tuple[tuple[int, int], ...]  # another class
    false_positives: tuple[int, ...]  # detections left unmatched (background)
    missed: tuple[int, ...]  # ground-truth boxes left unmatched

    @property
    def num_errors(self) -> int:
        """Confusions + false positives + missed boxes."""
        return len(self.confusions) + len(self.false_positives) + len(self.missed)


def match_image(
    gt_boxes: Any,
    gt_labels: Any,
    det_boxes: Any,
    det_labels: Any,
    det_scores: Any,
    *,
    score_threshold: float,
    iou_threshold: float = 0.5,
) -> ImageMatch:
    """Match one image's detections (xyxy) to its ground truth (xyxy) as the module docstring
    describes: same class first, then other classes, each greedy in score order."""
    gt_boxes = np.asarray(gt_boxes, dtype=float).reshape(-1, 4)
    gt_labels = np.asarray(gt_labels, dtype=np.int64).reshape(-1)
    scores = np.asarray(det_scores, dtype=float).reshape(-1)
    keep = np.flatnonzero(scores >= score_threshold)
    # stable sort: equal scores keep input order, so the matching is deterministic
    keep = keep[np.argsort(-scores[keep], kind="stable")]
    det_boxes = np.asarray(det_boxes, dtype=float).reshape(-1, 4)[keep]
    det_labels = np.asarray(det_labels, dtype=np.int64).reshape(-1)[keep]
    scores = scores[keep]
    iou = box_iou(det_boxes, gt_boxes)
    same = det_labels[:, None] == gt_labels[None, :]
    gt_taken = np.zeros(len(gt_boxes), dtype=bool)
    det_taken = np.zeros(len(det_boxes), dtype=bool)
    passes: list[list[tuple[int, int]]] = [[], []]
    for p, allowed in enumerate((same, ~same)):
        for d in range(len(det_boxes)):
            if det_taken[d]:
                continue
            cand = np.where(allowed[d] & ~gt_taken & (iou[d] >= iou_threshold), iou[d], -1.0)
            g = int(np.argmax(cand)) if len(cand) else -1
            if g >= 0 and cand[g] >= 0:
                gt_taken[g] = det_taken[d] = True
                passes[p].append((d, g))
    return ImageMatch(
        gt_boxes=gt_boxes, gt_labels=gt_labels, det_boxes=det_boxes, det_labels=det_labels,
        det_scores=scores, true_positives=tuple(passes[0]), confusions=tuple(passes[1]),
        false_positives=tuple(int(d) for d in np.flatnonzero(~det_taken)),
        missed=tuple(int(g) for g in np.flatnonzero(~gt_taken)),
    )


def _xyxy(boxes_xywh: Sequence[Sequence[float]]) -> np.ndarray:
    boxes = np.asarray(boxes_xywh, dtype=float).reshape(-1, 4)
    return np.concatenate([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], axis=1)


def match_coco(
    gt: Mapping[str, Any],
    detections: Iterable[Mapping[str, Any]],
    *,
    score_threshold: float,
    iou_threshold: float = 0.5,
) -> dict[int, ImageMatch]:
    """:func:`match_image` on every image of a COCO dataset dict, from COCO results (bbox
    xywh); image id -> ImageMatch, in the order of ``gt["images"]``. Detections on images not
    in ``gt`` are ignored."""
    gts: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for ann in gt.get("annotations", []):
        if not ann.get("iscrowd", 0):
            gts[ann["image_id"]].append(ann)
    dets: dict[int, list[Mapping[str, Any]]] = defaultdict(list)
    for det in detections:
        dets[det["image_id"]].append(det)
    out = {}
    for img in gt["images"]:
        g, d = gts.get(img["id"], []), dets.get(img["id"], [])
        out[img["id"]] = match_image(
            _xyxy([a["bbox"] for a in g]), [a["category_id"] for a in g],
            _xyxy([x["bbox"] for x in d]), [x["category_id"] for x in d],
            [x["score"] for x in d],
            score_threshold=score_threshold, iou_threshold=iou_threshold)
    return out


@dataclass(frozen=True)
class ConfusionMatrix:
    """Counts [K+1, K+1]: rows the K true classes then "background", columns the K predicted
    classes then "missed" (see the module docstring). ``counts[K, K]`` is always 0."""

    category_ids: tuple[int, ...]
    counts: np.ndarray
    iou_threshold: float
    score_threshold: float

    def labels(self, names: Mapping[int, str] | None = None) -> tuple[list[str], list[str]]:
        """Row and column labels: class names (or ids), then "background" / "missed"."""
        names = names or {}
        classes = [str(names.get(c, c)) for c in self.category_ids]
        return classes + ["background"], classes + ["missed"]


def confusion_from_matches(
    matches: Iterable[ImageMatch],
    category_ids: Sequence[int],
    *,
    score_threshold: float,
    iou_threshold: float = 0.5,
) -> ConfusionMatrix:
    """Accumulate per-image matches into a ConfusionMatrix over ``category_ids`` (its order)."""
    index = {int(c): k for k, c in enumerate(category_ids)}
    k = len(index)
    counts = np.zeros((k + 1, k + 1), dtype=np.int64)
    for m in matches:
        for d, g in (*m.true_positives, *m.confusions):
            counts[index[int(m.gt_labels[g])], index[int(m.det_labels[d])]] += 1
        for d in m.false_positives:
            counts[k, index[int(m.det_labels[d])]] += 1
        for g in m.missed:
            counts[index[int(m.gt_labels[g])], k] += 1
    return ConfusionMatrix(tuple(int(c) for c in category_ids), counts, iou_threshold,
                           score_threshold)


def confusion_matrix(
    gt: Mapping[str, Any],
    detections: Iterable[Mapping[str, Any]],
    *,
    score_threshold: float,
    iou_threshold: float = 0.5,
) -> ConfusionMatrix:
    """The confusion matrix with background of COCO results against a COCO dataset dict, over
    ``gt["categories"]`` in id order."""
    category_ids = sorted(int(c["id"]) for c in gt["categories"])
    matches = match_coco(gt, detections, score_threshold=score_threshold,
                         iou_threshold=iou_threshold)
    return confusion_from_matches(matches.values(), category_ids,
                                  score_threshold=score_threshold, iou_threshold=iou_threshold)
