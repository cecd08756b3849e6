"""Reading the number left to right from digit detections, and whole-number accuracy."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from rcnnlab.data.categories import digit_names
from rcnnlab.evaluation.sequence import (
    numbers_from_coco,
    numbers_from_detections,
    read_number,
    sequence_accuracy,
)
from rcnnlab.evaluation.threshold import sweep_thresholds

ORAND_TRAIN = Path("/work/shared/data/orand-car-a/instances_train.json")

IDS_0_TO_9 = [{"id": d, "name": str(d)} for d in range(10)]  # Roboflow style
IDS_1_TO_10 = [{"id": d + 1, "name": str(d)} for d in range(10)]  # rcnnlab convention


def test_digit_names_come_from_names_not_ids():
    assert digit_names(IDS_0_TO_9) == {d: str(d) for d in range(10)}
    assert digit_names(IDS_1_TO_10) == {d + 1: str(d) for d in range(10)}
    shuffled = [{"id": 40 + d, "name": str((d * 7) % 10)} for d in range(10)]
    assert digit_names(shuffled) == {40 + d: str((d * 7) % 10) for d in range(10)}


@pytest.mark.parametrize(
    "categories",
    [
        [],
        [{"id": 1, "name": "cat"}, {"id": 2, "name": "dog"}],
        IDS_0_TO_9 + [{"id": 10, "name": "10"}],  # SVHN's raw label: converters map it to "0"
        [{"id": 1, "name": "1"}, {"id": 2, "name": "digit"}],
    ],
)
def test_digit_names_rejects_non_digit_datasets(categories):
    assert digit_names(categories) is None


def test_unsorted_input_is_read_left_to_right():
    # Boxes given right, left, middle; digits 1, 2, 3 from the left.
    boxes = [[60, 0, 70, 20], [0, 0, 10, 20], [30, 0, 40, 20]]
    digits = {1: "1", 2: "2", 3: "3"}
    assert read_number(boxes, [3, 1, 2], [0.9, 0.6, 0.7], digits, 0.5) == "123"


def test_nothing_above_threshold_reads_minus_one():
    digits = {1: "1"}
    assert read_number([[0, 0, 10, 20]], [1], [0.3], digits, 0.5) == "-1"
    assert read_number([], [], [], digits, 0.5) == "-1"
    assert read_number(np.zeros((0, 4)), np.zeros(0), np.zeros(0), digits, 0.0) == "-1"


def test_threshold_is_inclusive():
    boxes, cats, digits = [[0, 0, 10, 20], [20, 0, 30, 20]], [1, 2], {1: "1", 2: "2"}
    assert read_number(boxes, cats, [0.6, 0.59], digits, 0.6) == "1"
    assert read_number(boxes, cats, [0.6, 0.6], digits, 0.6) == "12"


def test_x_centre_ties_break_by_x1_then_score_then_input_order():
    digits = {1: "1", 2: "2", 3: "3"}
    # Same centre (10): the wider box (x1 = 0) comes first, whatever the input order.
    assert read_number([[5, 0, 15, 9], [0, 0, 20, 9]], [2, 1], [0.9, 0.9], digits, 0.5) == "12"
    # Same box: the higher score first.
    same = [[0, 0, 20, 9], [0, 0, 20, 9]]
    assert read_number(same, [2, 1], [0.7, 0.8], digits, 0.5) == "12"
    # Full tie: input order.
    assert read_number(same, [2, 1], [0.8, 0.8], digits, 0.5) == "21"
    assert read_number(same + [[0, 0, 20, 9]], [3, 1, 2], [0.8] * 3, digits, 0.5) == "312"


def test_tensors_numpy_and_lists_read_the_same():
    boxes = [[50.0, 2.0, 60.0, 30.0], [5.0, 1.0, 15.0, 29.0], [28.0, 0.0, 37.0, 31.0]]
    cats, scores, digits = [8, 3, 5], [0.9, 0.95, 0.4], {3: "3", 5: "5", 8: "8"}
    expected = "38"
    assert read_number(boxes, cats, scores, digits, 0.5) == expected
    assert read_number(np.array(boxes), np.array(cats), np.array(scores), digits, 0.5) == expected
    as_tensors = torch.tensor(boxes), torch.tensor(cats), torch.tensor(scores)
    assert read_number(*as_tensors, digits, 0.5) == expected
    assert read_number(*as_tensors, digits, 0.3) == "358"


def test_unknown_category_is_an_error():
    with pytest.raises(ValueError, match=r"category ids \[11\]"):
        read_number([[0, 0, 10, 20]], [11], [0.9], {1: "1"}, 0.5)
    with pytest.raises(ValueError, match="same length"):
        read_number([[0, 0, 10, 20]], [1, 2], [0.9], {1: "1"}, 0.5)


def _digit_dataset(categories: list[dict]) -> tuple[dict, list[dict]]:
    """Three images reading "407", "-1" (no digit) and "11", annotations unsorted, plus
    detections (xywh) of the same digits with scores 0.9 and one spurious digit at 0.55."""
    cat_of = {c["name"]: c["id"] for c in categories}

    def ann(image_id, digit, x, w=10.0):
        return {"image_id": image_id, "category_id": cat_of[digit], "bbox": [x, 5.0, w, 20.0]}

    gt = {
        "images": [{"id": 0}, {"id": 1}, {"id": 2}],
        "categories": categories,
        "annotations": [
            ann(0, "7", 40),
            ann(0, "4", 2),
            ann(0, "0", 21),
            ann(2, "1", 30),
            ann(2, "1", 3),
        ],
    }
    dets = [dict(a, score=0.9) for a in gt["annotations"]]
    dets.append(dict(ann(2, "5", 50), score=0.55))
    return gt, dets


@pytest.mark.parametrize("categories", [IDS_0_TO_9, IDS_1_TO_10], ids=["ids0-9", "ids1-10"])
def test_numbers_from_coco_and_detections(categories):
    gt, dets = _digit_dataset(categories)
    digits = digit_names(categories)
    assert numbers_from_coco(gt, digits) == {0: "407", 1: "-1", 2: "11"}
    assert numbers_from_detections(dets, digits, 0.5, [0, 1, 2]) == {0: "407", 1: "-1", 2: "115"}
    assert numbers_from_detections(dets, digits, 0.6, [0, 1, 2]) == {0: "407", 1: "-1", 2: "11"}
    # Only the requested images are read; images without any detection read "-1".
    assert numbers_from_detections(dets, digits, 0.5, [1, 0, 9]) == {1: "-1", 0: "407", 9: "-1"}


def test_detection_boxes_are_xywh():
    # A wide box starting left of a narrow one but centred to its right reads second.
    dets = [
        {"image_id": 1, "category_id": 1, "bbox": [0, 0, 100, 10], "score": 1.0},
        {"image_id": 1, "category_id": 2, "bbox": [20, 0, 10, 10], "score": 1.0},
    ]
    assert numbers_from_detections(dets, {1: "1", 2: "2"}, 0.5, [1]) == {1: "21"}


def test_crowd_regions_are_not_digits():
    gt = {
        "images": [{"id": 5}],
        "annotations": [
            {"image_id": 5, "category_id": 1, "bbox": [0, 0, 10, 10], "iscrowd": 0},
            {"image_id": 5, "category_id": 2, "bbox": [20, 0, 10, 10], "iscrowd": 1},
        ],
    }
    assert numbers_from_coco(gt, {1: "1", 2: "2"}) == {5: "1"}


def test_sequence_accuracy():
    gt = {0: "407", 1: "-1", 2: "11", 3: "9"}
    assert sequence_accuracy(gt, {0: "407", 1: "-1", 2: "11", 3: "9"}) == 1.0
    # Image 1 is missing from the predictions and counts as "-1" (right); "4077" and "1" are
    # wrong as whole numbers; predictions for unknown images are ignored.
    assert sequence_accuracy(gt, {0: "4077", 2: "1", 3: "9", 99: "5"}) == 0.5
    with pytest.raises(ValueError, match="at least one"):
        sequence_accuracy({}, {0: "1"})


def test_real_ground_truth_reads_as_numbers():
    if not ORAND_TRAIN.is_file():
        pytest.skip(f"real data not found: {ORAND_TRAIN} (orand-car-a Roboflow COCO export)")
    gt = json.loads(ORAND_TRAIN.read_text())
    digits = digit_names(gt["categories"])
    assert digits is not None
    numbers = numbers_from_coco(gt, digits)
    assert set(numbers) == {img["id"] for img in gt["images"]}
    assert all(n == "-1" or n.isdigit() for n in numbers.values())
    boxes_per_image = {img["id"]: 0 for img in gt["images"]}
    for ann in gt["annotations"]:
        boxes_per_image[ann["image_id"]] += 1
    for image_id, n in boxes_per_image.items():
        assert len(numbers[image_id]) == n if n else numbers[image_id] == "-1"
    # Its own boxes as detections read back perfectly.
    dets = [dict(a, score=1.0) for a in gt["annotations"]]
    pred = numbers_from_detections(dets, digits, 0.5, numbers.keys())
    assert sequence_accuracy(numbers, pred) == 1.0


def test_read_iou_drops_a_second_class_on_the_same_digit():
    digits = {i: str(i) for i in range(10)}
    # one handwritten "1" also seen as a "7" (NMS is per class), then a "4" beside it
    boxes = [[0, 0, 10, 20], [1, 0, 11, 20], [14, 0, 24, 20]]
    cats, scores = [1, 7, 4], [0.9, 0.8, 0.95]
    assert read_number(boxes, cats, scores, digits, 0.5) == "174"
    assert read_number(boxes, cats, scores, digits, 0.5, read_iou=0.4) == "14"
    # the higher score wins whatever the class: swap them and the "7" stays
    assert read_number(boxes, cats, [0.8, 0.9, 0.95], digits, 0.5, read_iou=0.4) == "74"


def test_read_iou_is_a_strict_bound_on_the_overlap():
    digits = {i: str(i) for i in range(10)}
    # [0,0,10,10] and [5,0,15,10]: intersection 50, union 150, IoU 1/3
    boxes, cats, scores = [[0, 0, 10, 10], [5, 0, 15, 10]], [2, 3], [0.9, 0.8]
    assert read_number(boxes, cats, scores, digits, 0.5, read_iou=0.4) == "23"
    assert read_number(boxes, cats, scores, digits, 0.5, read_iou=0.3) == "2"
    # only detections above the threshold suppress others
    assert read_number(boxes, cats, [0.4, 0.8], digits, 0.5, read_iou=0.3) == "3"


def test_numbers_and_the_sweep_read_with_read_iou():
    gt = {"images": [{"id": 1}], "categories": [{"id": i, "name": str(i)} for i in range(10)],
          "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 20]},
                          {"id": 2, "image_id": 1, "category_id": 4, "bbox": [14, 0, 10, 20]}]}
    dets = [{"image_id": 1, "category_id": c, "bbox": b, "score": s} for c, b, s in
            ((1, [0, 0, 10, 20], 0.9), (7, [1, 0, 10, 20], 0.8), (4, [14, 0, 10, 20], 0.95))]
    digits = {i: str(i) for i in range(10)}
    assert numbers_from_detections(dets, digits, 0.5, [1]) == {1: "174"}
    assert numbers_from_detections(dets, digits, 0.5, [1], read_iou=0.4) == {1: "14"}
    plain = sweep_thresholds(gt, dets, [0.5, 0.85])
    read = sweep_thresholds(gt, dets, [0.5, 0.85], read_iou=0.4)
    assert [r.accuracy for r in plain.rows] == [0.0, 1.0]  # only a high threshold reads it
    assert [r.accuracy for r in read.rows] == [1.0, 1.0]
