"""Confidence-threshold sweep: rows, best threshold, CSV, and agreement with one-off evaluation."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from rcnnlab.evaluation.coco import evaluate_detections
from rcnnlab.evaluation.threshold import (
    SweepResult,
    SweepRow,
    default_thresholds,
    sweep_thresholds,
)

ORAND_TRAIN = Path("/work/shared/data/orand-car-a/instances_train.json")


def test_default_thresholds():
    thresholds = default_thresholds()
    assert len(thresholds) == 46
    assert thresholds[0] == 0.45 and thresholds[-1] == 0.9
    assert 0.9 in thresholds and 0.6 in thresholds and 0.8 in thresholds
    assert np.allclose(np.diff(thresholds), 0.01)


def _digits_case(names: list[str]) -> tuple[dict, list[dict]]:
    """Ten images with 2-4 digits each, detected exactly at score 0.8; six of them also get a
    spurious extra digit at score 0.6 far from any true box. Two more images have no digit and
    no detection (they read "-1" at every threshold)."""
    rng = np.random.default_rng(3)
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(names)]
    images = [{"id": i, "width": 200, "height": 60} for i in range(12)]
    annotations, detections = [], []
    for image_id in range(10):
        for k in range(int(rng.integers(2, 5))):
            box = [10.0 + 35 * k, 10.0, 30.0, 40.0]
            cat = int(rng.integers(1, len(names) + 1))
            annotations.append(
                {"id": len(annotations), "image_id": image_id, "category_id": cat, "bbox": box}
            )
            detections.append({"image_id": image_id, "category_id": cat, "bbox": box, "score": 0.8})
        if image_id < 6:
            detections.append(
                {
                    "image_id": image_id,
                    "category_id": 1,
                    "bbox": [170.0, 5.0, 25.0, 50.0],
                    "score": 0.6,
                }
            )
    gt = {"images": images, "categories": categories, "annotations": annotations}
    return gt, detections


def test_best_threshold_drops_spurious_digits():
    gt, dets = _digits_case([str(d) for d in range(10)])
    result = sweep_thresholds(gt, dets)
    assert len(result.rows) == 46
    assert [row.threshold for row in result.rows] == default_thresholds()
    by_t = {row.threshold: row for row in result.rows}
    assert by_t[0.5].accuracy < by_t[0.7].accuracy
    assert by_t[0.7].accuracy == 1.0
    assert 0.6 < result.best <= 0.8
    # The spurious digits score below every true one, so mAP is flat up to 0.8 and the tie on
    # accuracy and mAP goes to the lowest threshold.
    assert result.best == 0.61
    assert result.best_row.accuracy == 1.0 and result.best_row.mAP == pytest.approx(1.0)
    assert by_t[0.85].mAP == 0.0 and by_t[0.85].num_detections == 0
    assert by_t[0.85].accuracy == pytest.approx(2 / 12)  # only the two digit-less images


def test_non_digit_dataset_picks_best_by_map():
    gt, dets = _digits_case(["car", "bus", "van"])
    # Make the detections differ in score so mAP changes across the sweep.
    dets = [dict(d, score=0.5 + 0.4 * (i % 5) / 4) for i, d in enumerate(dets)]
    result = sweep_thresholds(gt, dets)
    assert all(row.accuracy is None for row in result.rows)
    best_map = max(row.mAP for row in result.rows)
    assert result.best_row.mAP == best_map
    assert result.best == min(row.threshold for row in result.rows if row.mAP == best_map)
    assert result.rows[-1].mAP < best_map


def test_custom_thresholds_are_sorted_and_empty_is_rejected():
    gt, dets = _digits_case([str(d) for d in range(10)])
    result = sweep_thresholds(gt, dets, thresholds=[0.7, 0.5, 0.9])
    assert [row.threshold for row in result.rows] == [0.5, 0.7, 0.9]
    assert result.best == 0.7
    with pytest.raises(ValueError, match="at least one threshold"):
        sweep_thresholds(gt, dets, thresholds=[])


def test_to_csv(tmp_path):
    gt, dets = _digits_case(["car", "bus", "van"])
    path = tmp_path / "sweep.csv"
    sweep_thresholds(gt, dets).to_csv(path)
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 46
    assert list(rows[0]) == ["threshold", "num_detections", "mAP", "AP50", "accuracy"]
    assert float(rows[-1]["threshold"]) == 0.9
    assert rows[0]["accuracy"] == ""  # None: not a digit dataset


def test_sweep_on_real_data_matches_direct_evaluation():
    if not ORAND_TRAIN.is_file():
        pytest.skip(f"real data not found: {ORAND_TRAIN} (orand-car-a Roboflow COCO export)")
    full = json.loads(ORAND_TRAIN.read_text())
    images = full["images"][:100]
    ids = {img["id"] for img in images}
    gt = dict(
        full, images=images, annotations=[a for a in full["annotations"] if a["image_id"] in ids]
    )
    rng = np.random.default_rng(0)
    dets = []
    for ann in gt["annotations"]:
        x, y, w, h = ann["bbox"]
        jitter = rng.normal(0.0, 0.1, 4) * [w, h, w, h]
        dets.append(
            {
                "image_id": ann["image_id"],
                "category_id": ann["category_id"],
                "bbox": [x + jitter[0], y + jitter[1], w + jitter[2], h + jitter[3]],
                "score": float(rng.uniform(0.7, 1.0)),
            }
        )
        if rng.random() < 0.3:  # a spurious low-score digit beside it
            dets.append(
                {
                    "image_id": ann["image_id"],
                    "category_id": int(rng.integers(10)),
                    "bbox": [x + w, y, w, h],
                    "score": float(rng.uniform(0.4, 0.7)),
                }
            )

    result = sweep_thresholds(gt, dets)
    maps = [row.mAP for row in result.rows]
    # Raising the threshold only cuts the tail of each precision-recall curve: never a gain.
    assert all(a >= b - 1e-12 for a, b in zip(maps, maps[1:], strict=False))
    assert [row.num_detections for row in result.rows] == [
        sum(d["score"] >= t for d in dets) for t in default_thresholds()
    ]
    for row in result.rows[::9]:
        direct = evaluate_detections(gt, [d for d in dets if d["score"] >= row.threshold])
        assert (row.mAP, row.AP50) == (direct.AP, direct.AP50)
    # Spurious digits score below 0.7 and true ones above: reading is best from 0.7 on.
    by_t = {row.threshold: row for row in result.rows}
    assert by_t[0.45].accuracy < by_t[0.7].accuracy
    assert 0.45 < result.best


def test_edge_warning_names_the_key_to_widen():
    def rows(accuracies, start=0.45):
        return [SweepRow(round(start + 0.01 * i, 2), 10, 0.5, 0.8, acc)
                for i, acc in enumerate(accuracies)]

    low = SweepResult(rows([0.6, 0.5, 0.4]), best=0.45)
    assert low.edge_warning() == ("the best threshold is the lowest swept (0.45): better ones "
                                  "may lie below; widen the sweep with eval.sweep_min=0.11")
    high = SweepResult(rows([0.4, 0.5, 0.6]), best=0.47)
    assert "highest swept (0.47)" in high.edge_warning()
    assert high.edge_warning().endswith("eval.sweep_max=0.99")
    assert SweepResult(rows([0.4, 0.6, 0.5]), best=0.46).edge_warning() is None
    # not digits: mAP always prefers the lowest threshold, no warning
    not_digits = [SweepRow(0.45, 10, 0.5, 0.8, None), SweepRow(0.46, 9, 0.4, 0.7, None)]
    assert SweepResult(not_digits, best=0.45).edge_warning() is None
    # a sweep starting at 0 cannot go lower
    assert SweepResult(rows([0.6, 0.5], start=0.0), best=0.0).edge_warning() is None
