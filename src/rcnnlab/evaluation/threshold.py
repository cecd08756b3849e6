"""Confidence-threshold sweep: mAP, AP50 and whole-number accuracy per score threshold.

COCO mAP rewards keeping low-score detections, whereas reading the number needs every spurious
digit gone, so the threshold for ``pred.csv`` is chosen on validation data with this sweep.

Each threshold is one COCO evaluation (of the detections scoring >= t) against a ground-truth
index built once; consecutive thresholds that keep the same detections reuse the previous result.
Because COCO matching is greedy in score order, the matches of a score-filtered set are a prefix of
the unfiltered ones, so a one-pass sweep is possible; it would mean reimplementing COCO's matching
outside the library, and with faster-coco-eval one evaluation per threshold is fast enough next to
running the detector (measured on 2 CPU cores: ~0.9 s for 46 thresholds on 100 images, ~5 s on
1,000).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from os import PathLike
from typing import Any

from rcnnlab.config import EvalConfig
from rcnnlab.data.categories import digit_names
from rcnnlab.evaluation.coco import CocoEvaluator, CocoMetrics
from rcnnlab.evaluation.sequence import (
    numbers_from_coco,
    numbers_from_detections,
    sequence_accuracy,
)
from rcnnlab.files import write_atomic


def default_thresholds() -> list[float]:
    """The default sweep of `eval.sweep_*` (0.45, 0.46, ..., 0.90)."""
    return EvalConfig().sweep_thresholds()


@dataclass(frozen=True)
class SweepRow:
    """Metrics of the detections scoring >= ``threshold``."""

    threshold: float
    num_detections: int  # detections kept at this threshold
    mAP: float | None  # AP @ IoU 0.50:0.95; None when the ground truth has no box
    AP50: float | None
    accuracy: float | None  # whole-number accuracy; None when the dataset is not digits


@dataclass(frozen=True)
class SweepResult:
    """All rows of a sweep (in threshold order) and the chosen threshold ``best``.

    ``best`` maximises sequence accuracy, ties broken by higher mAP then lower threshold; on a
    dataset that is not digits it maximises mAP, ties broken by lower threshold.
    """

    rows: list[SweepRow]
    best: float

    @property
    def best_row(self) -> SweepRow:
        """The row of the ``best`` threshold."""
        return next(row for row in self.rows if row.threshold == self.best)

    def edge_warning(self) -> str | None:
        """A sentence when the best sequence accuracy sits at an end of the sweep (a better
        threshold may lie beyond it, e.g. focal loss scores lower than cross-entropy), naming the
        ``eval.*`` key to widen; None otherwise, and for datasets that are not digits (their mAP
        always favours the lowest threshold)."""
        if len(self.rows) < 2 or self.best_row.accuracy is None:
            return None
        low, high = self.rows[0].threshold, self.rows[-1].threshold
        if self.best == low and low > 0:
            return (f"the best threshold is the lowest swept ({low:g}): better ones may lie "
                    f"below; widen the sweep with eval.sweep_min={max(round(low / 4, 2), 0.01):g}")
        if self.best == high and high < 1:
            return (f"the best threshold is the highest swept ({high:g}): better ones may lie "
                    "above; widen the sweep with eval.sweep_max=0.99")
        return None

    def to_csv(self, path: str | PathLike[str]) -> None:
        """Write the rows as CSV with a header; None is written as an empty cell."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=[fld.name for fld in fields(SweepRow)])
        writer.writeheader()
        writer.writerows(asdict(row) for row in self.rows)
        write_atomic(path, buffer.getvalue())


def _best_threshold(rows: Sequence[SweepRow]) -> float:
    """Highest accuracy, then highest mAP, then lowest threshold; None ranks below any value."""

    def key(row: SweepRow) -> tuple[float, float, float]:
        accuracy = -1.0 if row.accuracy is None else row.accuracy
        m_ap = -1.0 if row.mAP is None else row.mAP
        return (accuracy, m_ap, -row.threshold)

    return max(rows, key=key).threshold


def sweep_thresholds(
    gt: Mapping[str, Any],
    detections: Sequence[Mapping[str, Any]],
    thresholds: Sequence[float] | None = None,
    backend: str = "faster",
    read_iou: float | None = None,
) -> SweepResult:
    """Evaluate ``detections`` (COCO results) against ``gt`` at each score threshold.

    For every threshold t (default :func:`default_thresholds`) the detections with score >= t
    give one row: mAP, AP50 and, when :func:`~rcnnlab.evaluation.sequence.digit_names` finds a
    digit dataset, the whole-number accuracy over all ground-truth images (numbers read with
    ``read_iou``, see :func:`~rcnnlab.evaluation.sequence.read_number`).
    """
    thresholds = default_thresholds() if thresholds is None else sorted(thresholds)
    if not thresholds:
        raise ValueError("sweep_thresholds needs at least one threshold")
    evaluator = CocoEvaluator(gt, backend=backend)
    digits = digit_names(gt["categories"])
    gt_numbers = numbers_from_coco(gt, digits) if digits is not None else None

    rows = []
    previous: tuple[int, CocoMetrics] | None = None
    for t in thresholds:
        kept = [det for det in detections if det["score"] >= t]
        # Thresholds are ascending, so an unchanged count means an unchanged set of detections.
        if previous is None or previous[0] != len(kept):
            previous = (len(kept), evaluator.evaluate(kept))
        metrics = previous[1]
        accuracy = None
        if gt_numbers is not None:
            pred_numbers = numbers_from_detections(kept, digits, t, gt_numbers.keys(), read_iou)
            accuracy = sequence_accuracy(gt_numbers, pred_numbers)
        rows.append(SweepRow(t, len(kept), metrics.AP, metrics.AP50, accuracy))
    return SweepResult(rows=rows, best=_best_threshold(rows))
