"""COCO box evaluation: mAP, the 12 standard stats, per-class and per-IoU AP.

faster-coco-eval (C++ matching and accumulation) is the default backend; pycocotools is kept as a
second backend so the two can be checked against each other (``tests/test_eval_coco.py``) and
timed (``benchmarks/bench_coco_eval.py``).

Both libraries share a quirk that this module works around: a ground-truth annotation matched by
a detection is recorded by its annotation id, and id 0 doubles as "unmatched". A dataset whose
annotation ids start at 0 (Roboflow exports do) would silently count one true positive as a false
positive. The evaluator therefore works on a copy of the ground truth with annotation ids
renumbered 1..N; the caller's dict is never modified.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

STAT_NAMES: tuple[str, ...] = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
)  # fmt: skip
"""The 12 standard COCO box stats, in the order both libraries report them."""

IOU_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
"""The IoU thresholds COCO averages over (0.50, 0.55, ..., 0.95)."""

BACKENDS: tuple[str, ...] = ("faster", "pycocotools")


def _quiet(*_args: Any, **_kwargs: Any) -> None:
    """Print function handed to faster-coco-eval so it logs nothing."""


def _or_none(value: float) -> float | None:
    """COCO's -1 ("no ground truth in this split") becomes None; anything else a Python float."""
    return None if value < 0 else float(value)


def _mean_valid(precision: np.ndarray) -> float | None:
    """Mean of the entries COCO filled in (it leaves -1 where a category has no ground truth)."""
    valid = precision[precision > -1]
    return float(valid.mean()) if valid.size else None


def format_score(value: float | None, digits: int = 4) -> str:
    """A score as shown in tables and reports: `digits` decimals; "n/a" for an undefined one
    (None, or NaN)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


@dataclass(frozen=True)
class CocoMetrics:
    """COCO box metrics of one set of detections against one ground truth.

    A stat is None where COCO reports -1, i.e. the split has no ground-truth box it applies to
    (``APs`` on a dataset without small boxes, a category without instances).
    """

    AP: float | None  # AP @ IoU 0.50:0.95, all areas, 100 dets per image: "mAP"
    AP50: float | None
    AP75: float | None
    APs: float | None  # area < 32**2
    APm: float | None  # 32**2 <= area < 96**2
    APl: float | None  # area >= 96**2
    AR1: float | None  # AR @ 0.50:0.95 with at most 1, 10, 100 detections per image
    AR10: float | None
    AR100: float | None
    ARs: float | None
    ARm: float | None
    ARl: float | None
    per_class: dict[int, float | None]  # category id -> AP @ 0.50:0.95
    per_class_ap50: dict[int, float | None]  # category id -> AP @ 0.50
    per_iou: dict[float, float | None]  # IoU threshold (0.50..0.95) -> AP over all categories

    def stats(self) -> dict[str, float | None]:
        """The 12 standard stats by name, in COCO order."""
        return {name: getattr(self, name) for name in STAT_NAMES}

    def as_dict(self) -> dict[str, float | None]:
        """Flat dict for CSV/JSON logging; None (COCO's -1) stays None.

        Keys: the 12 stat names, ``AP_iou50`` .. ``AP_iou95``, ``AP_class<id>`` and
        ``AP50_class<id>`` for every category id.
        """
        flat = self.stats()
        flat.update({f"AP_iou{round(t * 100)}": ap for t, ap in self.per_iou.items()})
        flat.update({f"AP_class{cid}": ap for cid, ap in self.per_class.items()})
        flat.update({f"AP50_class{cid}": ap for cid, ap in self.per_class_ap50.items()})
        return flat

    def format_table(self, category_names: Mapping[int, str] | None = None) -> str:
        """Plain-text table: the 12 stats, then AP and AP50 per class; "n/a" where COCO says -1.

        ``category_names`` maps category id to a display name; ids without one are shown bare.
        """
        names = category_names or {}
        lines = [f"{name:<6} {format_score(value, 3):>6}" for name, value in self.stats().items()]
        width = max([5] + [len(str(names.get(cid, cid))) for cid in self.per_class])
        lines += ["", f"{'id':>4}  {'class':<{width}}  {'AP':>6}  {'AP50':>6}"]
        for cid, ap in self.per_class.items():
            name = str(names.get(cid, cid))
            ap50 = self.per_class_ap50.get(cid)
            lines.append(f"{cid:>4}  {name:<{width}}  {format_score(ap, 3):>6}  "
                         f"{format_score(ap50, 3):>6}")
        return "\n".join(lines)


@dataclass(frozen=True)
class PrecisionCurves:
    """COCO's interpolated precision-recall curves: area "all", at most 100 detections an image.

    ``precision[t, r, k]`` is the precision at recall ``recall[r]`` for IoU threshold
    ``iou_thresholds[t]`` and category ``category_ids[k]``: the highest precision reached at
    that recall or beyond (COCO's interpolation), 0 for a recall never reached, and -1 for a
    category without ground truth. ``scores[t, r, k]`` is the score of the detection at which
    that recall is first reached (0 where it is never reached), which places a confidence
    threshold on the curve. COCO's AP is the mean of ``precision`` over ``recall``.
    """

    recall: np.ndarray  # [R] the 101 recall thresholds 0.00, 0.01, ..., 1.00
    iou_thresholds: tuple[float, ...]  # [T]
    category_ids: tuple[int, ...]  # [K]
    precision: np.ndarray  # [T, R, K]
    scores: np.ndarray  # [T, R, K]

    def at_iou(self, iou: float) -> tuple[np.ndarray, np.ndarray]:
        """(precision, scores), each [R, K], at one of ``iou_thresholds`` (e.g. 0.5, 0.75)."""
        t = self.iou_thresholds.index(round(float(iou), 2))
        return self.precision[t], self.scores[t]


def _prepare_gt(gt: Mapping[str, Any]) -> dict[str, Any]:
    """Copy of a COCO dataset dict with what the evaluators need filled in.

    Adds ``info``/``licenses`` when absent, ``iscrowd`` = 0 and ``area`` = w*h per annotation when
    absent, renumbers annotation ids 1..N (see the module docstring) and makes image ids plain
    ints, as the detections' are. Only the copied records are touched.
    """
    for key in ("images", "categories"):
        if key not in gt:
            raise ValueError(f"ground truth has no '{key}' list; it is not a COCO dataset dict")
    annotations = []
    for new_id, ann in enumerate(gt.get("annotations", []), start=1):
        ann = dict(ann, id=new_id, image_id=int(ann["image_id"]), bbox=list(ann["bbox"]))
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2]) * float(ann["bbox"][3])
        annotations.append(ann)
    return {
        "info": gt.get("info", {}),
        "licenses": gt.get("licenses", []),
        "images": [dict(img, id=int(img["id"])) for img in gt["images"]],
        "annotations": annotations,
        "categories": [dict(cat) for cat in gt["categories"]],
    }


def _prepare_detections(
    detections: Iterable[Mapping[str, Any]], image_ids: set[int], category_ids: set[int]
) -> list[dict[str, Any]]:
    """Detection records as the evaluators expect them (what ``COCO.loadRes`` would add).

    Values are cast to plain int/float so numpy or torch scalars from a model are accepted.
    A detection on an unknown image or with an unknown category is an error rather than being
    dropped: it almost always means a label-mapping bug upstream.
    """
    prepared = []
    for det_id, det in enumerate(detections, start=1):
        x, y, w, h = (float(v) for v in det["bbox"])
        image_id, category_id = int(det["image_id"]), int(det["category_id"])
        if image_id not in image_ids:
            raise ValueError(
                f"detection #{det_id} has image_id {image_id}, which is not in the ground truth; "
                "write detections with the image ids of the evaluated json"
            )
        if category_id not in category_ids:
            raise ValueError(
                f"detection #{det_id} has category_id {category_id}, not one of the ground-truth "
                f"categories {sorted(category_ids)}; map model labels back to category ids first"
            )
        prepared.append(
            {
                "id": det_id,
                "image_id": image_id,
                "category_id": category_id,
                "bbox": [x, y, w, h],
                "score": float(det["score"]),
                "area": w * h,
                "iscrowd": 0,
            }
        )
    return prepared


class CocoEvaluator:
    """Evaluates detections against one ground truth, loading the ground truth only once.

    Use it when the same ground truth is scored many times (threshold sweeps, per-epoch
    validation); :func:`evaluate_detections` is the one-shot form.
    """

    def __init__(self, gt: Mapping[str, Any], backend: str = "faster", iou_type: str = "bbox"):
        """Index ``gt`` (a COCO dataset dict, left unmodified) for ``backend``.

        ``backend`` is "faster" (faster-coco-eval) or "pycocotools"; only ``iou_type="bbox"`` is
        supported.
        """
        if backend not in BACKENDS:
            raise ValueError(f"unknown backend {backend!r}; choose one of {BACKENDS}")
        if iou_type != "bbox":
            raise ValueError(f"iou_type {iou_type!r} not supported; rcnnlab evaluates boxes only")
        self.backend = backend
        self.iou_type = iou_type
        self._gt = _prepare_gt(gt)
        self.image_ids = {int(img["id"]) for img in self._gt["images"]}
        self.category_ids = sorted(int(cat["id"]) for cat in self._gt["categories"])
        self._coco_gt = self._make_coco(self._gt)

    def _make_coco(self, dataset: dict[str, Any]) -> Any:
        """A COCO index of ``dataset`` for the chosen backend (it keeps references into it)."""
        if self.backend == "faster":
            from faster_coco_eval import COCO

            return COCO(dataset, print_function=_quiet)
        from pycocotools.coco import COCO

        coco = COCO()
        coco.dataset = dataset
        with contextlib.redirect_stdout(io.StringIO()):  # pycocotools print()s progress
            coco.createIndex()
        return coco

    def evaluate(self, detections: Sequence[Mapping[str, Any]]) -> CocoMetrics:
        """Score COCO results (image_id, category_id, bbox xywh, score) on all ground-truth images.

        Images without detections count as misses; an empty list gives zeros (None where the
        ground truth has no box of a size or category).
        """
        return _metrics_from(self._run(detections))

    def curves(self, detections: Sequence[Mapping[str, Any]]) -> PrecisionCurves:
        """COCO's precision-recall curves of ``detections`` (area "all", 100 detections per
        image), per IoU threshold and category; see :class:`PrecisionCurves`."""
        return _curves_from(self._run(detections))

    def _run(self, detections: Sequence[Mapping[str, Any]]) -> Any:
        """A COCOeval of the chosen backend, evaluated, accumulated and summarized."""
        dets = _prepare_detections(detections, self.image_ids, set(self.category_ids))
        # Building the results index directly (not via loadRes) keeps the caller's records
        # untouched and works for an empty list, on which pycocotools' loadRes crashes.
        coco_dt = self._make_coco(
            {
                "images": self._gt["images"],
                "categories": self._gt["categories"],
                "annotations": dets,
            }
        )
        if self.backend == "faster":
            from faster_coco_eval import COCOeval_faster

            cocoeval = COCOeval_faster(
                self._coco_gt, coco_dt, iouType=self.iou_type, print_function=_quiet
            )
            cocoeval.run()
        else:
            from pycocotools.cocoeval import COCOeval

            cocoeval = COCOeval(self._coco_gt, coco_dt, iouType=self.iou_type)
            with contextlib.redirect_stdout(io.StringIO()):
                cocoeval.evaluate()
                cocoeval.accumulate()
                cocoeval.summarize()
        return cocoeval


def _metrics_from(cocoeval: Any) -> CocoMetrics:
    """CocoMetrics from a summarized COCOeval of either library (same params and array layout)."""
    params = cocoeval.params
    stats = [_or_none(v) for v in np.asarray(cocoeval.stats, dtype=float)[: len(STAT_NAMES)]]
    # precision is [IoU thr, recall thr, category, area range, max dets]; area "all" is index 0,
    # maxDets=100 the last: the slice every headline AP is computed from.
    precision = np.asarray(cocoeval.eval["precision"], dtype=float)[:, :, :, 0, -1]
    iou_thrs = [round(float(t), 2) for t in params.iouThrs]
    i50 = iou_thrs.index(0.5)
    cat_ids = [int(c) for c in params.catIds]
    return CocoMetrics(
        **dict(zip(STAT_NAMES, stats, strict=True)),
        per_class={cid: _mean_valid(precision[:, :, k]) for k, cid in enumerate(cat_ids)},
        per_class_ap50={cid: _mean_valid(precision[i50, :, k]) for k, cid in enumerate(cat_ids)},
        per_iou={t: _mean_valid(precision[i]) for i, t in enumerate(iou_thrs)},
    )


def _curves_from(cocoeval: Any) -> PrecisionCurves:
    """PrecisionCurves from an accumulated COCOeval of either library (area "all", maxDets 100:
    the slice the headline AP is computed from, as in :func:`_metrics_from`)."""
    params = cocoeval.params
    return PrecisionCurves(
        recall=np.asarray(params.recThrs, dtype=float),
        iou_thresholds=tuple(round(float(t), 2) for t in params.iouThrs),
        category_ids=tuple(int(c) for c in params.catIds),
        precision=np.asarray(cocoeval.eval["precision"], dtype=float)[:, :, :, 0, -1],
        scores=np.asarray(cocoeval.eval["scores"], dtype=float)[:, :, :, 0, -1],
    )


def precision_curves(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    backend: str = "faster",
) -> PrecisionCurves:
    """COCO's precision-recall curves of ``detections`` against ``gt`` (one-shot form of
    :meth:`CocoEvaluator.curves`; same inputs as :func:`evaluate_detections`)."""
    return CocoEvaluator(gt, backend=backend).curves(detections)


def evaluate_detections(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    backend: str = "faster",
    iou_type: str = "bbox",
) -> CocoMetrics:
    """COCO box metrics of ``detections`` (COCO results list) against ``gt`` (COCO dataset dict).

    Evaluates on every image of ``gt``; detections may cover any subset of them. Category and
    image ids may take any value, 0 included. ``gt`` may lack ``info``, ``licenses``,
    ``iscrowd`` and ``area`` (area defaults to the box's w*h); neither argument is modified.
    ``backend`` is "faster" (faster-coco-eval) or "pycocotools".
    """
    return CocoEvaluator(gt, backend=backend, iou_type=iou_type).evaluate(detections)
