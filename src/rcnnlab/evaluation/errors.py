"""TIDE error breakdown: how much AP each kind of detection error costs.

Bolya, Foley, Hays, Hoffman, "TIDE: A General Toolbox for Identifying Object Detection Errors",
ECCV 2020 (https://arxiv.org/abs/2008.08115); reference implementation
https://github.com/dbolya/tide (``tidecv/quantify.py``, ``tidecv/errors/main_errors.py``,
``tidecv/errors/error.py``, ``tidecv/ap.py``), released on PyPI as ``tidecv`` 1.0.1.

Detections are matched to ground truth as COCO does at one IoU, the foreground threshold
``t_f`` (0.5): per image, in descending score order, each detection takes the unmatched
ground-truth box of its own class with the highest IoU if that IoU is >= t_f. Every detection
left unmatched is a false positive of exactly one type, tested in the reference's order:

* ``loc``  localisation: right class, t_b <= IoU <= t_f with a box of its class;
* ``cls``  classification: IoU >= t_f with a box of another class;
* ``dupe`` duplicate: IoU >= t_f with a box of its class that a higher-scoring detection took;
* ``bkg``  background: IoU <= t_b (0.1) with every box (or the image has none);
* ``both`` the rest: mostly a wrong class with t_b <= IoU < t_f.

A ground-truth box that no detection matched is ``miss`` unless a ``cls`` or ``loc`` error
targets it (that error explains it). Each type's ΔAP is the AP after applying that type's oracle
minus the AP before, clamped at 0 as the reference does (only binning makes it negative):

* ``cls`` / ``loc``: the highest-scoring cls-or-loc error aimed at an unmatched box becomes a
  true positive (of the box's class for ``cls``); the other errors of the type are removed (they
  would be duplicates of the fixed one). An error aimed at a box already matched is removed.
* ``both``, ``dupe``, ``bkg``: the detections are removed.
* ``miss``: the missed boxes are removed from the ground truth.

The two "special" errors are oracles over all false positives / negatives: ``fp_delta_ap``
ranks every true positive above every false positive (perfect precision at the same recall:
"oracle rescoring"), ``fn_delta_ap`` drops every unmatched box (perfect recall at the same
precision). Errors are fixed one type at a time (the reference's default, not "progressive"),
so the ΔAPs overlap and need not add up to 1 - AP.

AP is computed here with numpy, because the oracles change true/false-positive flags, classes
and the ground-truth count, which no COCO library takes as input. It is COCO's: per class,
101-point interpolated precision at recall 0, 0.01, ..., 1 (``np.linspace``, as pycocotools),
averaged over classes with ground truth, on a 0-1 scale (tidecv reports 0-100). Differences
from tidecv, all deliberate:

* a class with detections but no ground-truth box is left out of the mean, as COCO does;
  tidecv counts it as AP 0, so its ``bkg`` oracle gains by removing such classes entirely;
* recall thresholds are ``np.linspace(0, 1, 101)`` (COCO) rather than ``i / 100``; they differ in
  the last bit at 10 of the 101 points, which matters only when a recall lands exactly there;
* crowd boxes (``iscrowd``) are ignore regions: an unmatched detection covering more than t_f of
  its own area with a crowd box of its class is left out of AP and errors (tidecv 1.0.1 still
  gives such detections an error; its later sources skip them, as here);
* the localisation test needs a box of the detection's own class.

The base AP equals COCO's AP at IoU t_f (``tests/test_errors.py`` checks it against
faster-coco-eval) as long as no image has more than ``max_dets`` detections of one class.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from rcnnlab.errors import DatasetError

T_F = 0.5
"""TIDE's foreground IoU: a detection is correct at IoU >= t_f (COCO's AP50)."""
T_B = 0.1
"""TIDE's background IoU: a detection with IoU <= t_b with every box is on background."""
MAX_DETS = 100
"""Detections kept per image, highest scores first (TIDE and COCO's default)."""

ERROR_TYPES: tuple[str, ...] = ("cls", "loc", "both", "dupe", "bkg", "miss")
"""TIDE's six main error types, in the reference's order."""

ERROR_NAMES: dict[str, str] = {
    "cls": "classification",
    "loc": "localisation",
    "both": "both (class and box)",
    "dupe": "duplicate",
    "bkg": "background",
    "miss": "missed",
}

_REC_THRS = np.linspace(0.0, 1.0, 101)  # COCO's recall thresholds (pycocotools' params)


def xyxy(bbox: Sequence[float]) -> list[float]:
    """COCO xywh -> xyxy."""
    x, y, w, h = (float(v) for v in bbox)
    return [x, y, x + w, y + h]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU matrix [len(a), len(b)] of two xyxy box arrays (pixels, no +1 as in COCO)."""
    inter = _intersection(a, b)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    union = area_a[:, None] + area_b[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def _intersection(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    wh = np.minimum(a[:, None, 2:], b[None, :, 2:]) - np.maximum(a[:, None, :2], b[None, :, :2])
    wh = np.clip(wh, 0, None)
    return wh[..., 0] * wh[..., 1]


def _class_ap(scores: np.ndarray, tp: np.ndarray, n_gt: int) -> float:
    """COCO's 101-point interpolated AP of one class's detections (score order is stable)."""
    if len(scores) == 0:
        return 0.0
    order = np.argsort(-scores, kind="stable")
    hits = tp[order]
    ctp = np.cumsum(hits)
    cfp = np.cumsum(~hits)
    recall = ctp / n_gt
    precision = ctp / (ctp + cfp)
    # precision envelope: at each rank the best precision at this recall or beyond
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    idx = np.searchsorted(recall, _REC_THRS, side="left")
    q = np.zeros(len(_REC_THRS))
    reached = idx < len(recall)
    q[reached] = precision[idx[reached]]
    return float(q.mean())


def mean_ap(classes: np.ndarray, scores: np.ndarray, tp: np.ndarray,
            n_gt: Mapping[int, int]) -> float:
    """Mean over classes with ground truth of :func:`_class_ap` (COCO's AP at one IoU).

    ``classes``, ``scores``, ``tp`` describe the detections (in the order ties are broken);
    ``n_gt`` maps class -> number of ground-truth boxes. Detections of classes without ground
    truth are ignored, as COCO does. When an oracle has removed every box, COCO's AP is
    undefined; it is taken as 0 if any detection is left (all are false positives, as tidecv
    scores them) and 1 if none is (nothing is wrong any more).
    """
    aps = [_class_ap(scores[classes == c], tp[classes == c], n) for c, n in n_gt.items() if n > 0]
    if not aps:
        return 0.0 if len(classes) else 1.0
    return float(np.mean(aps))


@dataclass(frozen=True)
class ErrorBreakdown:
    """TIDE's summary of one set of detections: base AP, ΔAP and count per error type.

    All APs are on a 0-1 scale at IoU ``pos_thresh``. ``delta_ap`` maps each of
    :data:`ERROR_TYPES` to the AP gained by fixing that type alone; ``counts`` to the number of
    false positives of the type (for ``miss``, of ground-truth boxes).
    """

    ap: float  # base AP at pos_thresh (AP50 by default)
    delta_ap: dict[str, float]
    counts: dict[str, int]
    fp_delta_ap: float  # special error: oracle rescoring (every TP above every FP)
    fn_delta_ap: float  # special error: every unmatched ground-truth box removed
    n_gt: int  # ground-truth boxes (crowd boxes excluded)
    n_detections: int  # detections evaluated (ignored and beyond max_dets excluded)
    n_tp: int
    pos_thresh: float = T_F
    bg_thresh: float = T_B

    def lost_share(self) -> dict[str, float]:
        """Each type's share of the AP lost to errors: ΔAP_type / sum of the six ΔAPs.

        This is the normalisation of TIDE's summary pie chart. The ΔAPs overlap (each type is
        fixed alone), so a share is a type's weight among the errors, not an exact slice of
        1 - AP. All zeros when nothing is lost.
        """
        total = sum(self.delta_ap.values())
        return {k: (v / total if total > 0 else 0.0) for k, v in self.delta_ap.items()}

    def dominant(self) -> str | None:
        """The error type with the largest ΔAP, None when every ΔAP is 0."""
        best = max(ERROR_TYPES, key=lambda k: self.delta_ap[k])
        return best if self.delta_ap[best] > 0 else None

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (types keyed by their short names, plus the shares)."""
        return {
            "ap": self.ap,
            "pos_thresh": self.pos_thresh,
            "bg_thresh": self.bg_thresh,
            "delta_ap": dict(self.delta_ap),
            "lost_share": self.lost_share(),
            "counts": dict(self.counts),
            "fp_delta_ap": self.fp_delta_ap,
            "fn_delta_ap": self.fn_delta_ap,
            "n_gt": self.n_gt,
            "n_detections": self.n_detections,
            "n_tp": self.n_tp,
        }


class TideAnalysis:
    """Matches detections to ground truth once, types every error, and scores oracles.

    Args:
        gt: COCO dataset dict (images, annotations, categories); not modified.
        detections: COCO results (image_id, category_id, bbox xywh, score); not modified.
        pos_thresh: foreground IoU t_f.
        bg_thresh: background IoU t_b.
        max_dets: detections kept per image, highest scores first.

    After construction, ``types[i]`` is the outcome of ``detections[i]``: ``"tp"``, one of the
    five false-positive types, ``"ignored"`` (on a crowd region) or ``"excess"`` (beyond
    ``max_dets``); ``missed`` lists the indexes (into ``gt["annotations"]``) of missed boxes;
    ``gt_matched`` and ``gt_area`` describe the non-crowd boxes in annotation order.
    """

    def __init__(self, gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], *,
                 pos_thresh: float = T_F, bg_thresh: float = T_B, max_dets: int = MAX_DETS):
        """Match and type everything (see the class docstring)."""
        if not 0 <= bg_thresh <= pos_thresh <= 1:
            raise ValueError(f"need 0 <= bg_thresh ({bg_thresh}) <= pos_thresh ({pos_thresh}) <= 1")
        self.pos_thresh, self.bg_thresh, self.max_dets = pos_thresh, bg_thresh, max_dets
        self.detections = detections
        self._breakdown: ErrorBreakdown | None = None
        self.types: list[str] = ["excess"] * len(detections)
        self._group(gt, detections)
        # (input index, class, score, tp, type, gt its fix matches or -1, fixable, class of the
        # box a classification error sits on or -1)
        det_rows: list[tuple] = []
        for image_id in self._image_ids:
            det_rows += self._match_image(image_id, detections)
        self._d_index = np.array([r[0] for r in det_rows], dtype=int)
        self._d_cls = np.array([r[1] for r in det_rows], dtype=int)
        self._d_score = np.array([r[2] for r in det_rows], dtype=float)
        self._d_tp = np.array([r[3] for r in det_rows], dtype=bool)
        self._d_type = np.array([r[4] for r in det_rows], dtype=object)
        self._d_target = np.array([r[5] for r in det_rows], dtype=int)
        self._d_best = np.array([r[6] for r in det_rows], dtype=bool)
        self._d_true = np.array([r[7] for r in det_rows], dtype=int)
        for row in det_rows:
            self.types[row[0]] = row[4]
        self.missed: list[int] = [int(self._g_ann[g]) for g in np.flatnonzero(self._g_missed)]

    # -------------------------------------------------------------------- matching and typing
    def _group(self, gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]]) -> None:
        """Index ground truth and detections by image; check ids as the COCO evaluator does."""
        self._image_ids = sorted(int(img["id"]) for img in gt["images"])  # COCO's image order
        images = set(self._image_ids)
        categories = {int(c["id"]) for c in gt["categories"]}
        self._gt_by_image: dict[int, list[int]] = {i: [] for i in self._image_ids}
        self._crowd_by_image: dict[int, list[int]] = {i: [] for i in self._image_ids}
        boxes, classes, areas, ann_index = [], [], [], []
        self._crowd: list[tuple[list[float], int]] = []
        for k, ann in enumerate(gt.get("annotations", [])):
            image_id = int(ann["image_id"])
            if image_id not in images:
                raise ValueError(f"annotation #{k} has image_id {image_id}, not in the images")
            if ann.get("iscrowd", 0):
                self._crowd_by_image[image_id].append(len(self._crowd))
                self._crowd.append((xyxy(ann["bbox"]), int(ann["category_id"])))
                continue
            self._gt_by_image[image_id].append(len(boxes))
            boxes.append(xyxy(ann["bbox"]))
            classes.append(int(ann["category_id"]))
            w, h = float(ann["bbox"][2]), float(ann["bbox"][3])
            areas.append(float(ann.get("area", w * h)))  # COCO sizes boxes by "area"
            ann_index.append(k)
        if not boxes:
            raise DatasetError("the ground truth has no (non-crowd) box: there is nothing to miss "
                             "or match, so no AP to break down")
        self._g_box = np.array(boxes, dtype=float).reshape(-1, 4)
        self._g_cls = np.array(classes, dtype=int)
        self.gt_area = np.array(areas, dtype=float)
        self._g_ann = np.array(ann_index, dtype=int)
        self.gt_matched = np.zeros(len(boxes), dtype=bool)
        self._g_usable = np.zeros(len(boxes), dtype=bool)  # targeted by a cls/loc error
        self._g_best = np.full(len(boxes), -1)  # input index of that error's best detection
        self._dets_by_image: dict[int, list[int]] = {i: [] for i in self._image_ids}
        for k, det in enumerate(detections):
            image_id, category_id = int(det["image_id"]), int(det["category_id"])
            if image_id not in images:
                raise ValueError(f"detection #{k} has image_id {image_id}, which is not in the "
                                 "ground truth; write detections with the evaluated json's ids")
            if category_id not in categories:
                raise ValueError(f"detection #{k} has category_id {category_id}, not one of the "
                                 f"ground-truth categories {sorted(categories)}")
            self._dets_by_image[image_id].append(k)

    def _match_image(self, image_id: int, detections: Sequence[Mapping[str, Any]]) -> list[tuple]:
        """Greedy matching of one image at t_f, then the type of each unmatched detection."""
        order = sorted(self._dets_by_image[image_id], key=lambda k: -float(detections[k]["score"]))
        order = order[: self.max_dets]  # the rest stay "excess"
        if not order:
            return []
        p_box = np.array([xyxy(detections[k]["bbox"]) for k in order], dtype=float)
        p_cls = np.array([int(detections[k]["category_id"]) for k in order], dtype=int)
        g_idx = np.array(self._gt_by_image[image_id], dtype=int)
        g_cls = self._g_cls[g_idx]
        iou = box_iou(p_box, self._g_box[g_idx])
        same = p_cls[:, None] == g_cls[None, :]
        cls_iou = iou * same
        buffer = cls_iou.copy()  # matched columns are zeroed, as in the reference
        match = np.full(len(order), -1)
        used = np.zeros(len(g_idx), dtype=bool)
        for i in range(len(order)):
            if len(g_idx) == 0:
                break
            j = int(buffer[i].argmax())
            if buffer[i, j] >= self.pos_thresh:
                match[i], used[j] = j, True
                buffer[:, j] = 0
        self.gt_matched[g_idx[used]] = True
        ignored = self._on_crowd(image_id, p_box, p_cls) & (match < 0)

        rows = []
        for i, k in enumerate(order):
            score = float(detections[k]["score"])
            if match[i] >= 0:
                rows.append((k, p_cls[i], score, True, "tp", -1, False, -1))
            elif ignored[i]:
                self.types[k] = "ignored"
            else:
                kind, target = self._error_type(i, iou, cls_iou, same, used)
                true_cls = int(g_cls[target]) if kind == "cls" else -1
                fixable = False
                if kind in ("cls", "loc") and not used[target]:
                    g = int(g_idx[target])
                    self._g_usable[g] = True
                    if self._g_best[g] < 0:  # scores descend: the first is the best
                        self._g_best[g] = k
                    fixable = self._g_best[g] == k
                    target = g
                else:
                    target = -1
                rows.append((k, p_cls[i], score, False, kind, target, fixable, true_cls))
        return rows

    def _error_type(self, i: int, iou: np.ndarray, cls_iou: np.ndarray, same: np.ndarray,
                    used: np.ndarray) -> tuple[str, int]:
        """TIDE's tests in the reference's order; returns (type, column of the targeted box)."""
        if iou.shape[1] == 0:
            return "bkg", -1
        if same[i].any():
            j = int(cls_iou[i].argmax())
            if self.bg_thresh <= cls_iou[i, j] <= self.pos_thresh:
                return "loc", j
        other = iou[i] * ~same[i]
        j = int(other.argmax())
        if other[j] >= self.pos_thresh:
            return "cls", j
        taken = cls_iou[i] * used
        if taken.max() >= self.pos_thresh:
            return "dupe", -1
        if iou[i].max() <= self.bg_thresh:
            return "bkg", -1
        return "both", -1

    def _on_crowd(self, image_id: int, p_box: np.ndarray, p_cls: np.ndarray) -> np.ndarray:
        """Detections covering > t_f of their own area with a crowd box of their class."""
        crowd = [self._crowd[c] for c in self._crowd_by_image[image_id]]
        if not crowd:
            return np.zeros(len(p_box), dtype=bool)
        c_box = np.array([c[0] for c in crowd], dtype=float)
        c_cls = np.array([c[1] for c in crowd], dtype=int)
        area = (p_box[:, 2] - p_box[:, 0]) * (p_box[:, 3] - p_box[:, 1])
        inter = _intersection(p_box, c_box)
        ioa = np.divide(inter, area[:, None], out=np.zeros_like(inter), where=area[:, None] > 0)
        return ((ioa > self.pos_thresh) & (p_cls[:, None] == c_cls[None, :])).any(axis=1)

    @property
    def _g_missed(self) -> np.ndarray:
        return ~self.gt_matched & ~self._g_usable

    # ------------------------------------------------------------------------------ oracles
    def _n_gt(self) -> dict[int, int]:
        return dict(Counter(self._g_cls.tolist()))

    def ap(self, fix: Iterable[str] = (), *, drop: Sequence[int] = (), rescore: bool = False,
           perfect_recall: bool = False) -> float:
        """AP at t_f after the oracles of the error types in ``fix`` (see the module docstring).

        ``drop`` removes the detections at those indexes (of the input list), e.g. a subset
        of one error type; ``rescore`` is the false-positive oracle (true positives score 1,
        false positives 0), ``perfect_recall`` the false-negative oracle.
        """
        fix = set(fix)
        unknown = fix - set(ERROR_TYPES)
        if unknown:
            raise ValueError(f"unknown error types {sorted(unknown)}; choose from {ERROR_TYPES}")
        classes, tp = self._d_cls.copy(), self._d_tp.copy()
        keep = ~np.isin(self._d_index, np.asarray(drop, dtype=int))
        n_gt = self._n_gt()
        for kind in fix:
            sel = self._d_type == kind
            if kind in ("cls", "loc"):
                best = sel & self._d_best
                tp[best] = True
                if kind == "cls":
                    classes[best] = self._g_cls[self._d_target[best]]
                keep &= ~(sel & ~best)  # the others would duplicate the fixed detection
            elif kind == "miss":
                for c in self._g_cls[self._g_missed].tolist():
                    n_gt[c] -= 1
            else:
                keep &= ~sel
        scores = tp.astype(float) if rescore else self._d_score
        if perfect_recall:
            n_gt = dict(Counter(self._g_cls[self.gt_matched].tolist()))
        return mean_ap(classes[keep], scores[keep], tp[keep], n_gt)

    def detections_of(self, kind: str) -> list[int]:
        """Indexes (into the input detections) of the detections of one outcome type."""
        return [k for k, t in enumerate(self.types) if t == kind]

    def confusions(self) -> Counter:
        """(detected category, true category) -> number of classification errors."""
        sel = self._d_type == "cls"
        return Counter(zip(self._d_cls[sel].tolist(), self._d_true[sel].tolist(), strict=True))

    def breakdown(self) -> ErrorBreakdown:
        """ΔAP, counts and the two special errors (see :class:`ErrorBreakdown`); computed once."""
        if self._breakdown is None:
            self._breakdown = self._compute_breakdown()
        return self._breakdown

    def _compute_breakdown(self) -> ErrorBreakdown:
        base = self.ap()
        delta = {kind: max(self.ap([kind]) - base, 0.0) for kind in ERROR_TYPES}
        counts = {kind: int((self._d_type == kind).sum()) for kind in ERROR_TYPES[:-1]}
        counts["miss"] = int(self._g_missed.sum())
        return ErrorBreakdown(
            ap=base,
            delta_ap=delta,
            counts=counts,
            fp_delta_ap=self.ap(rescore=True) - base,
            fn_delta_ap=self.ap(perfect_recall=True) - base,
            n_gt=len(self._g_cls),
            n_detections=len(self._d_index),
            n_tp=int(self._d_tp.sum()),
            pos_thresh=self.pos_thresh,
            bg_thresh=self.bg_thresh,
        )


def tide_errors(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], *,
                pos_thresh: float = T_F, bg_thresh: float = T_B,
                max_dets: int = MAX_DETS) -> ErrorBreakdown:
    """TIDE error breakdown of ``detections`` (COCO results) against ``gt`` (COCO dataset dict).

    One-shot form of :class:`TideAnalysis`; see the module docstring for the definitions.
    """
    return TideAnalysis(gt, detections, pos_thresh=pos_thresh, bg_thresh=bg_thresh,
                        max_dets=max_dets).breakdown()
