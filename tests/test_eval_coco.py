"""COCO box evaluation: known answers on hand-made cases, faster-coco-eval vs pycocotools."""

import copy
import json
from pathlib import Path

import numpy as np
import pytest

from rcnnlab.evaluation.coco import (
    IOU_THRESHOLDS,
    STAT_NAMES,
    CocoEvaluator,
    CocoMetrics,
    evaluate_detections,
)

ORAND_TRAIN = Path("/work/shared/data/orand-car-a/instances_train.json")

# The two libraries agree to float rounding (differences seen: <= 1e-17); 1e-12 leaves room for
# summation order while still catching any real disagreement in matching or accumulation.
PARITY_TOL = 1e-12


@pytest.fixture(scope="module")
def orand_gt() -> dict:
    if not ORAND_TRAIN.is_file():
        pytest.skip(f"real data not found: {ORAND_TRAIN} (orand-car-a Roboflow COCO export)")
    return json.loads(ORAND_TRAIN.read_text())


def perturbed_detections(gt: dict, seed: int = 0) -> list[dict]:
    """Deterministic imperfect detector output built from the ground truth.

    Jittered boxes, ~10% of objects missed, ~10% with a wrong class, duplicates, false positives
    on random images, random scores (some repeated, so score ties are exercised too).
    """
    rng = np.random.default_rng(seed)
    cat_ids = [c["id"] for c in gt["categories"]]
    dets = []
    for ann in gt["annotations"]:
        if rng.random() < 0.1:
            continue
        x, y, w, h = ann["bbox"]
        for _ in range(1 + int(rng.random() < 0.2)):
            jx, jy, jw, jh = rng.normal(0.0, 0.12, 4) * [w, h, w, h]
            cat = ann["category_id"] if rng.random() > 0.1 else int(rng.choice(cat_ids))
            score = float(rng.random()) if rng.random() > 0.2 else 0.5
            box = [x + jx, y + jy, max(w + jw, 1.0), max(h + jh, 1.0)]
            dets.append(
                {"image_id": ann["image_id"], "category_id": cat, "bbox": box, "score": score}
            )
    for _ in range(len(gt["annotations"]) // 4):
        img = gt["images"][rng.integers(len(gt["images"]))]
        w, h = rng.uniform(0.05, 0.5, 2) * [img["width"], img["height"]]
        x, y = rng.uniform(0, img["width"] - w), rng.uniform(0, img["height"] - h)
        dets.append(
            {
                "image_id": img["id"],
                "category_id": int(rng.choice(cat_ids)),
                "bbox": [x, y, w, h],
                "score": float(rng.random()),
            }
        )
    return dets


def _values(m: CocoMetrics) -> np.ndarray:
    return np.array([np.nan if v is None else v for v in m.as_dict().values()], dtype=float)


def test_faster_matches_pycocotools_on_real_data(orand_gt):
    dets = perturbed_detections(orand_gt)
    fast = evaluate_detections(orand_gt, dets, backend="faster")
    ref = evaluate_detections(orand_gt, dets, backend="pycocotools")
    assert fast.as_dict().keys() == ref.as_dict().keys()
    # None (n/a) in the same places, values equal elsewhere.
    np.testing.assert_allclose(_values(fast), _values(ref), rtol=0, atol=PARITY_TOL)
    assert 0.0 < fast.AP < fast.AP50 < 1.0  # imperfect but far from useless: a real test case
    assert fast.APl is None  # the digit crops are at most ~60 px high: no large boxes


def test_stats_are_consistent_with_per_iou_and_per_class(orand_gt):
    m = evaluate_detections(orand_gt, perturbed_detections(orand_gt, seed=1))
    assert tuple(m.per_iou) == IOU_THRESHOLDS
    assert m.per_iou[0.5] == pytest.approx(m.AP50)
    assert m.per_iou[0.75] == pytest.approx(m.AP75)
    # Every category has instances, so AP is both the mean over IoUs and the mean over classes.
    assert np.mean(list(m.per_iou.values())) == pytest.approx(m.AP)
    assert np.mean(list(m.per_class.values())) == pytest.approx(m.AP)
    assert np.mean(list(m.per_class_ap50.values())) == pytest.approx(m.AP50)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_perfect_detections_on_real_data_score_one(orand_gt, backend):
    # The Roboflow export numbers annotations from 0; used as-is, both libraries count the
    # match with annotation 0 as a false positive (AP ~0.9989 instead of 1).
    dets = [
        {
            "image_id": a["image_id"],
            "category_id": a["category_id"],
            "bbox": a["bbox"],
            "score": 1.0,
        }
        for a in orand_gt["annotations"]
    ]
    m = evaluate_detections(orand_gt, dets, backend=backend)
    assert m.AP == pytest.approx(1.0)
    assert m.per_class == pytest.approx(dict.fromkeys(m.per_class, 1.0))


def _box(image_id, category_id, x, y, w=40.0, h=40.0, ann_id=None, score=None):
    rec = {"image_id": image_id, "category_id": category_id, "bbox": [x, y, w, h]}
    if ann_id is not None:
        rec["id"] = ann_id
    if score is not None:
        rec["score"] = score
    return rec


@pytest.fixture
def tiny_gt() -> dict:
    """Two images (ids 0 and 1), two classes (ids 0 and 1), medium boxes only; no info,
    licenses, iscrowd or area, annotation ids from 0."""
    return {
        "images": [{"id": 0, "width": 200, "height": 100}, {"id": 1, "width": 200, "height": 100}],
        "categories": [{"id": 0, "name": "zero"}, {"id": 1, "name": "one"}],
        "annotations": [
            _box(0, 0, 10, 10, ann_id=0),
            _box(0, 1, 100, 10, ann_id=1),
            _box(1, 0, 20, 30, ann_id=2),
        ],
    }


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_known_answers_on_tiny_case(tiny_gt, backend):
    perfect = [dict(a, score=0.9) for a in tiny_gt["annotations"]]
    m = evaluate_detections(tiny_gt, perfect, backend=backend)
    assert [m.AP, m.AP50, m.AP75, m.APm, m.AR100] == pytest.approx([1.0] * 5)
    # 40x40 boxes are all "medium": the small and large splits have nothing to score.
    assert m.APs is None and m.APl is None and m.ARs is None and m.ARl is None

    only_class_0 = [d for d in perfect if d["category_id"] == 0]
    m = evaluate_detections(tiny_gt, only_class_0, backend=backend)
    assert m.per_class == pytest.approx({0: 1.0, 1: 0.0})
    assert m.per_class_ap50 == pytest.approx({0: 1.0, 1: 0.0})
    assert m.AP == pytest.approx(0.5)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_detections_for_a_subset_of_images(tiny_gt, backend):
    # Only image 0 is detected: class 0 reaches recall 1/2 at precision 1, so its AP is the 51
    # recall thresholds 0.00..0.50 out of 101; class 1 is found fully.
    dets = [dict(a, score=0.9) for a in tiny_gt["annotations"] if a["image_id"] == 0]
    m = evaluate_detections(tiny_gt, dets, backend=backend)
    assert m.per_class[0] == pytest.approx(51 / 101)
    assert m.per_class[1] == pytest.approx(1.0)  # pycocotools: 1 - 2e-16 (tp / (tp + eps))
    assert m.AR100 == pytest.approx((0.5 + 1.0) / 2)


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
def test_empty_detections_give_zeros(tiny_gt, backend):
    m = evaluate_detections(tiny_gt, [], backend=backend)
    assert all(v == 0.0 for k, v in m.stats().items() if k not in ("APs", "APl", "ARs", "ARl"))
    assert m.APs is None and m.ARl is None
    assert m.per_class == {0: 0.0, 1: 0.0}


def test_a_category_without_instances_is_none(tiny_gt):
    tiny_gt["categories"].append({"id": 7, "name": "seven"})
    m = evaluate_detections(tiny_gt, [dict(a, score=0.9) for a in tiny_gt["annotations"]])
    assert m.per_class == pytest.approx({0: 1.0, 1: 1.0, 7: None})
    assert m.AP == pytest.approx(1.0)  # the empty category does not drag the mean down


def test_inputs_are_not_modified(tiny_gt):
    dets = [_box(0, 0, 11, 9, score=0.7), _box(1, 1, 50, 50, score=0.4)]
    gt_before, dets_before = copy.deepcopy(tiny_gt), copy.deepcopy(dets)
    evaluator = CocoEvaluator(tiny_gt)
    evaluator.evaluate(dets)
    evaluate_detections(tiny_gt, dets, backend="pycocotools")
    assert tiny_gt == gt_before
    assert dets == dets_before


def test_evaluator_reuse_gives_the_same_result(tiny_gt):
    evaluator = CocoEvaluator(tiny_gt)
    dets = [_box(0, 0, 12, 10, score=0.8), _box(0, 1, 90, 10, score=0.6)]
    first = evaluator.evaluate(dets)
    evaluator.evaluate([])
    assert evaluator.evaluate(dets) == first == evaluate_detections(tiny_gt, dets)


def test_numpy_scalars_are_accepted(tiny_gt):
    dets = [
        {
            "image_id": np.int64(0),
            "category_id": np.int64(0),
            "bbox": np.array([10.0, 10.0, 40.0, 40.0], dtype=np.float32),
            "score": np.float32(0.9),
        }
    ]
    assert evaluate_detections(tiny_gt, dets).per_class[0] == pytest.approx(51 / 101)


def test_bad_input_is_rejected_with_a_clear_message(tiny_gt):
    with pytest.raises(ValueError, match="image_id 5"):
        evaluate_detections(tiny_gt, [_box(5, 0, 0, 0, score=0.5)])
    with pytest.raises(ValueError, match="category_id 3"):
        evaluate_detections(tiny_gt, [_box(0, 3, 0, 0, score=0.5)])
    with pytest.raises(ValueError, match="backend"):
        evaluate_detections(tiny_gt, [], backend="detectron2")
    with pytest.raises(ValueError, match="iou_type"):
        evaluate_detections(tiny_gt, [], iou_type="segm")
    with pytest.raises(ValueError, match="images"):
        evaluate_detections({"annotations": []}, [])


def test_as_dict_and_table(tiny_gt):
    m = evaluate_detections(tiny_gt, [dict(a, score=0.9) for a in tiny_gt["annotations"]])
    flat = m.as_dict()
    assert list(flat)[:12] == list(STAT_NAMES)
    assert flat["APs"] is None  # None stays None for the logger to write as an empty cell
    assert flat["AP_iou50"] == flat["AP50"]
    assert [flat["AP_iou95"], flat["AP_class0"], flat["AP50_class1"]] == pytest.approx([1.0] * 3)
    json.dumps(flat)  # plain floats and None only

    table = m.format_table({0: "zero", 1: "one"})
    assert "-1" not in table
    assert table.count("n/a") == 4  # APs, APl, ARs, ARl
    assert "zero" in table and "one" in table
    assert "1.000" in table
