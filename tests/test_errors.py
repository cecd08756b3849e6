"""TIDE error breakdown (hand-worked cases, tidecv's figures, COCO's AP50), RPN recall, recall by
size and the diagnosis of synthetic faults."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

from rcnnlab import api
from rcnnlab.cli import app
from rcnnlab.config import load_config
from rcnnlab.evaluation.coco import evaluate_detections
from rcnnlab.evaluation.diagnosis import (
    CAUSES,
    Diagnosis,
    diagnose,
    find_causes,
    recall_by_size,
    rpn_proposals,
    rpn_recall,
)
from rcnnlab.evaluation.errors import ERROR_TYPES, TideAnalysis, mean_ap, tide_errors
from rcnnlab.models.architecture import build_model
from rcnnlab.runs.checkpoint import save_checkpoint
from tests.conftest import write_coco

# ---------------------------------------------------------------------------------- builders


def coco(images, anns, cats):
    """COCO dict from image ids, (image_id, category_id, xywh) triples and category ids."""
    return {
        "images": [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 200}
                   for i in images],
        "annotations": [{"id": k + 1, "image_id": im, "category_id": c, "bbox": list(b)}
                        for k, (im, c, b) in enumerate(anns)],
        "categories": [{"id": c, "name": str(c)} for c in cats],
    }


def det(image_id, category_id, bbox, score):
    return {"image_id": image_id, "category_id": category_id, "bbox": list(bbox),
            "score": score}


def grid_gt(n_images=6, per_image=4):
    """6 images x 4 boxes 20x40 in a row, categories 0, 1, 2 in turn (8 boxes each)."""
    anns = [(i, (i + j) % 3, (10 + 40 * j, 10, 20, 40))
            for i in range(1, n_images + 1) for j in range(per_image)]
    return coco(range(1, n_images + 1), anns, [0, 1, 2])


def perfect(gt):
    """One exact detection per box, distinct scores 0.90, 0.89, ..."""
    return [det(a["image_id"], a["category_id"], a["bbox"], round(0.9 - 0.01 * k, 4))
            for k, a in enumerate(gt["annotations"])]


def shifted(gt, frac):
    """Every box moved right by `frac` of its width: IoU (1 - frac) / (1 + frac)."""
    return [dict(d, bbox=[d["bbox"][0] + frac * d["bbox"][2], *d["bbox"][1:]])
            for d in perfect(gt)]


def swapped(gt):
    return [dict(d, category_id=(d["category_id"] + 1) % 3) for d in perfect(gt)]


def dropped(gt, every=3):
    return [d for k, d in enumerate(perfect(gt)) if k % every != 0]


def duplicated(gt):
    """Each detection twice, the copy 1 px off and 0.155 lower, so copies interleave with TPs."""
    dets = perfect(gt)
    return dets + [dict(d, bbox=[d["bbox"][0] + 1, *d["bbox"][1:]],
                        score=round(d["score"] - 0.155, 4)) for d in dets]


def background(gt):
    """Perfect detections plus one confident box per image far from every object."""
    return perfect(gt) + [det(im["id"], im["id"] % 3, (150, 150, 20, 40),
                              round(0.95 - 0.01 * im["id"], 4)) for im in gt["images"]]


def mixed_case():
    """Every error type at least once, over 5 images and 3 classes (the tidecv cross-check)."""
    w, s = (20, 40), (30, 30)
    anns = [(1, 1, (10, 10, *w)), (1, 2, (40, 10, *w)), (1, 1, (70, 10, *w)),
            (2, 2, (10, 10, *w)), (2, 1, (40, 10, *w)),
            (3, 3, (10, 10, *s)), (3, 3, (60, 10, *s)), (3, 2, (100, 10, *w)),
            (5, 1, (10, 10, *w)), (5, 3, (60, 10, *s))]
    dets = [
        det(1, 1, (10, 10, *w), .95),   # tp
        det(1, 1, (12, 10, *w), .90),   # dupe
        det(1, 1, (40, 10, *w), .85),   # cls: on the class-2 box, which nobody took
        det(1, 2, (70, 10, *w), .60),   # cls on box 3, but the .70 loc error is its best fix
        det(1, 1, (80, 10, *w), .70),   # loc: IoU 1/3 with box 3
        det(2, 2, (10, 10, *w), .80),   # tp
        det(2, 2, (46, 10, *w), .75),   # cls: IoU 0.54 with the class-1 box
        det(2, 1, (150, 100, 20, 20), .88),  # bkg
        det(3, 3, (10, 10, *s), .92),   # tp
        det(3, 2, (75, 10, *s), .83),   # both: IoU 1/3 with a class-3 box
        det(3, 3, (22, 10, *s), .65),   # loc on a box already taken: removed by the oracle
        det(4, 1, (10, 10, 20, 20), .78),  # bkg: image without objects
        det(4, 3, (50, 50, 20, 20), .40),  # bkg
        det(5, 1, (10, 10, *w), .50),   # tp
        det(5, 3, (60, 10, *s), .45),   # tp
        det(3, 3, (11, 10, *s), .91),   # dupe, above the .45 tp of its class
        det(2, 1, (10, 10, *w), .55),   # cls on a box already taken: removed by the oracle
    ]
    return coco([1, 2, 3, 4, 5], anns, [1, 2, 3]), dets


def pct(breakdown):
    """tidecv's scale: AP and ΔAP x 100, keyed by tidecv's short names."""
    names = {"cls": "Cls", "loc": "Loc", "both": "Both", "dupe": "Dupe", "bkg": "Bkg",
             "miss": "Miss"}
    out = {names[k]: 100 * v for k, v in breakdown.delta_ap.items()}
    out.update(AP=100 * breakdown.ap, FalsePos=100 * breakdown.fp_delta_ap,
               FalseNeg=100 * breakdown.fn_delta_ap)
    return out


# ------------------------------------------------------------------------ hand-worked ΔAP
TWO_BOXES = coco([1], [(1, 1, (0, 0, 10, 10)), (1, 1, (20, 0, 10, 10))], [1])


def test_localisation_by_hand():
    # tp .9, loc .8 (IoU 60/140 with box 2), bkg .7: precision 1 up to recall 0.5 -> 51/101
    dets = [det(1, 1, (0, 0, 10, 10), .9), det(1, 1, (24, 0, 10, 10), .8),
            det(1, 1, (50, 50, 10, 10), .7)]
    b = tide_errors(TWO_BOXES, dets)
    assert b.ap == pytest.approx(51 / 101)
    assert b.delta_ap == pytest.approx({"cls": 0, "loc": 50 / 101, "both": 0, "dupe": 0,
                                        "bkg": 0, "miss": 0})
    # the bkg detection ranks after every tp: removing it changes nothing; box 2 is not missed
    assert b.counts == {"cls": 0, "loc": 1, "both": 0, "dupe": 0, "bkg": 1, "miss": 0}
    assert b.fp_delta_ap == pytest.approx(0) and b.fn_delta_ap == pytest.approx(50 / 101)
    assert b.lost_share() == pytest.approx({**dict.fromkeys(ERROR_TYPES, 0.0), "loc": 1.0})


def test_background_and_missed_by_hand():
    # bkg .9 above the tp .8; box 2 has nothing near it. Base: precision 1/2 up to recall 1/2
    b = tide_errors(TWO_BOXES, [det(1, 1, (50, 50, 10, 10), .9), det(1, 1, (0, 0, 10, 10), .8)])
    assert b.ap == pytest.approx(51 / 202)
    assert b.delta_ap["bkg"] == pytest.approx(51 / 202)  # tp alone: 51/101
    assert b.delta_ap["miss"] == pytest.approx(25 / 101)  # one box left: precision 1/2 -> 0.5
    assert b.fp_delta_ap == pytest.approx(51 / 202) and b.fn_delta_ap == pytest.approx(25 / 101)
    assert b.counts["bkg"] == 1 and b.counts["miss"] == 1
    assert b.lost_share()["bkg"] == pytest.approx(51 / 101)


def test_classification_by_hand():
    gt = coco([1], [(1, 1, (0, 0, 10, 10)), (1, 2, (20, 0, 10, 10))], [1, 2])
    b = tide_errors(gt, [det(1, 1, (0, 0, 10, 10), .9), det(1, 1, (20, 0, 10, 10), .8)])
    # class 1: AP 1; class 2: AP 0 -> 0.5; relabelling the .8 detection makes class 2 perfect
    assert b.ap == pytest.approx(0.5) and b.delta_ap["cls"] == pytest.approx(0.5)
    assert b.counts["cls"] == 1 and b.counts["miss"] == 0  # the cls error explains box 2


def test_duplicate_by_hand():
    gt = coco([1, 2], [(1, 1, (0, 0, 10, 10)), (2, 1, (0, 0, 10, 10))], [1])
    dets = [det(1, 1, (0, 0, 10, 10), .9), det(1, 1, (0, 0, 10, 10), .8),
            det(2, 1, (0, 0, 10, 10), .7)]
    b = tide_errors(gt, dets)
    # tp, dupe, tp: precision 1 to recall 1/2 (51 points), then 2/3 (50 points)
    assert b.ap == pytest.approx(253 / 303)
    assert b.delta_ap["dupe"] == pytest.approx(50 / 303)
    assert b.fp_delta_ap == pytest.approx(50 / 303)
    assert b.counts["dupe"] == 1


def test_both_by_hand():
    gt = coco([1], [(1, 1, (0, 0, 10, 10)), (1, 2, (50, 50, 10, 10))], [1, 2])
    # class 2 at IoU 0.43 with the class-1 box ("both"), then a class-2 tp at .5
    b = tide_errors(gt, [det(1, 2, (4, 0, 10, 10), .9), det(1, 2, (50, 50, 10, 10), .5)])
    assert b.ap == pytest.approx(0.25)  # class 1: 0, class 2: 0.5
    assert b.delta_ap["both"] == pytest.approx(0.25)
    assert b.delta_ap["miss"] == pytest.approx(0.25)  # a "both" error does not explain a box


def test_perfect_detections_have_no_error():
    gt = grid_gt()
    b = tide_errors(gt, perfect(gt))
    assert b.ap == 1.0 and b.n_tp == b.n_gt == 24
    assert all(v == 0 for v in b.delta_ap.values()) and all(v == 0 for v in b.counts.values())
    assert b.fp_delta_ap == 0 and b.fn_delta_ap == 0
    assert b.lost_share() == dict.fromkeys(ERROR_TYPES, 0.0) and b.dominant() is None


def test_types_per_detection_missed_boxes_and_confusions():
    gt, dets = mixed_case()
    a = TideAnalysis(gt, dets)
    assert a.types == ["tp", "dupe", "cls", "cls", "loc", "tp", "cls", "bkg", "tp", "both",
                       "loc", "bkg", "bkg", "tp", "tp", "dupe", "cls"]
    assert a.missed == [6, 7]  # the second class-3 box and the class-2 box of image 3
    # (detected, true): class 1 on class-2 boxes twice, class 2 on class-1 boxes twice
    assert a.confusions() == {(1, 2): 2, (2, 1): 2}


# ------------------------------------------------------------------- tidecv and COCO agree
# Figures printed by tidecv 1.0.1 (PyPI; numpy 2.4.6, pycocotools 2.0.11, installed in a
# throw-away venv) for these exact cases: TIDE().evaluate(gt, preds, mode=TIDE.BOX),
# get_main_errors() and get_special_errors(); AP and ΔAP x 100.
TIDECV = {
    "mixed": {"AP": 32.920792, "Cls": 17.880717, "Loc": 5.940594, "Both": 5.610561,
              "Dupe": 2.109854, "Bkg": 0.687569, "Miss": 11.221122, "FalsePos": 17.244224,
              "FalseNeg": 29.785479},
    "perfect": {"AP": 100.0},
    "shift04": {"AP": 0.0, "Loc": 100.0},
    "swap": {"AP": 0.0, "Cls": 100.0},
    "drop": {"AP": 66.666667, "Miss": 33.333333, "FalseNeg": 33.333333},
    "dupes": {"AP": 95.940594, "Dupe": 4.059406, "FalsePos": 4.059406},
    "background": {"AP": 80.0, "Bkg": 20.0, "FalsePos": 20.0},
}
TIDECV_COUNTS = {"Cls": 4, "Loc": 2, "Both": 1, "Dupe": 2, "Bkg": 3, "Miss": 2}


def synthetic_cases():
    gt = grid_gt()
    return {"mixed": mixed_case(), "perfect": (gt, perfect(gt)),
            "shift04": (gt, shifted(gt, 0.4)), "swap": (gt, swapped(gt)),
            "drop": (gt, dropped(gt)), "dupes": (gt, duplicated(gt)),
            "background": (gt, background(gt))}


@pytest.mark.parametrize("name", list(TIDECV))
def test_agrees_with_tidecv(name):
    gt, dets = synthetic_cases()[name]
    ours = pct(tide_errors(gt, dets))
    expected = {key: 0.0 for key in ours} | TIDECV[name]  # unlisted figures are 0 in tidecv
    assert ours == pytest.approx(expected, abs=1e-5)


def test_counts_agree_with_tidecv():
    b = tide_errors(*mixed_case())
    names = {"cls": "Cls", "loc": "Loc", "both": "Both", "dupe": "Dupe", "bkg": "Bkg",
             "miss": "Miss"}
    assert {names[k]: v for k, v in b.counts.items()} == TIDECV_COUNTS


@pytest.mark.parametrize("name", list(TIDECV))
def test_base_ap_is_coco_ap50(name):
    gt, dets = synthetic_cases()[name]
    assert tide_errors(gt, dets).ap == pytest.approx(evaluate_detections(gt, dets).AP50,
                                                     abs=1e-9)


def test_class_without_ground_truth_is_left_out_as_in_coco():
    # tidecv would average in class 2 (detections, no box) as AP 0 and report 0.5
    gt = coco([1], [(1, 1, (0, 0, 10, 10))], [1, 2])
    dets = [det(1, 1, (0, 0, 10, 10), .9), det(1, 2, (50, 50, 10, 10), .95)]
    b = tide_errors(gt, dets)
    assert b.ap == 1.0 == evaluate_detections(gt, dets).AP50
    assert b.counts["bkg"] == 1 and b.delta_ap["bkg"] == 0


def test_mean_ap_when_every_box_is_gone():
    none = np.zeros(0)
    assert mean_ap(none.astype(int), none, none.astype(bool), {1: 0}) == 1.0
    assert mean_ap(np.array([1]), np.array([0.5]), np.array([False]), {1: 0}) == 0.0


def test_crowd_regions_and_max_dets():
    gt = coco([1], [(1, 1, (0, 0, 10, 10))], [1])
    gt["annotations"].append({"id": 9, "image_id": 1, "category_id": 1,
                              "bbox": [100, 100, 50, 50], "iscrowd": 1})
    dets = [det(1, 1, (110, 110, 10, 10), .99),  # inside the crowd region: ignored
            det(1, 1, (0, 0, 10, 10), .5), det(1, 1, (60, 0, 10, 10), .4)]
    a = TideAnalysis(gt, dets, max_dets=2)
    assert a.types == ["ignored", "tp", "excess"]
    b = a.breakdown()
    assert b.ap == 1.0 and b.n_gt == 1 and b.n_detections == 1


def test_bad_input_is_an_error():
    gt = coco([1], [(1, 1, (0, 0, 10, 10))], [1])
    with pytest.raises(ValueError, match="image_id 7"):
        tide_errors(gt, [det(7, 1, (0, 0, 1, 1), .5)])
    with pytest.raises(ValueError, match="category_id 4"):
        tide_errors(gt, [det(1, 4, (0, 0, 1, 1), .5)])
    with pytest.raises(ValueError, match="no \\(non-crowd\\) box"):
        tide_errors(coco([1], [], [1]), [])
    with pytest.raises(ValueError, match="unknown error types"):
        TideAnalysis(gt, []).ap(["typo"])


# ------------------------------------------------------------ the judging cases
def test_shifted_boxes_make_localisation_dominant():
    gt = grid_gt()
    b = tide_errors(gt, shifted(gt, 0.4))  # IoU 0.6/1.4 = 0.43 each
    assert b.dominant() == "loc" and b.counts["loc"] == 24 and b.delta_ap["loc"] == 1.0
    assert b.lost_share()["loc"] == 1.0


def test_swapped_labels_make_classification_dominant():
    gt = grid_gt()
    b = tide_errors(gt, swapped(gt))
    assert b.dominant() == "cls" and b.counts["cls"] == 24 and b.delta_ap["cls"] == 1.0
    assert b.counts["miss"] == 0


def test_dropped_detections_raise_missed():
    gt = grid_gt()
    b = tide_errors(gt, dropped(gt))
    assert b.counts["miss"] == 8 and b.delta_ap["miss"] == pytest.approx(1 / 3)
    assert b.dominant() == "miss"


def test_duplicated_detections_raise_duplicate():
    gt = grid_gt()
    b = tide_errors(gt, duplicated(gt))
    assert b.counts["dupe"] == 24 and b.delta_ap["dupe"] == pytest.approx(0.04059406)
    assert b.dominant() == "dupe" and b.ap == pytest.approx(0.95940594)


def test_background_detections_raise_background():
    gt = grid_gt()
    b = tide_errors(gt, background(gt))
    assert b.counts["bkg"] == 6 and b.delta_ap["bkg"] == pytest.approx(0.2)
    assert b.dominant() == "bkg" and b.fp_delta_ap == pytest.approx(0.2)


# ---------------------------------------------------------------------------- diagnosis
def causes(gt, dets, **kwargs):
    return find_causes(TideAnalysis(gt, dets), evaluate_detections(gt, dets).per_iou, **kwargs)


@pytest.mark.parametrize(("fault", "cause", "loss"), [
    (lambda gt: shifted(gt, 0.4), "localisation", 1.0),  # under IoU 0.5
    (lambda gt: shifted(gt, 0.2), "localisation", 0.6),  # IoU 0.67: AP50 1, mAP 0.4
    (swapped, "class_confusion", 1.0),
    (dropped, "missed", 1 / 3),
    (duplicated, "nms", 0.04059406),
    (background, "scores", 0.2),
])
def test_diagnosis_names_the_fault(fault, cause, loss):
    gt = grid_gt()
    findings = causes(gt, fault(gt))
    assert findings[0].cause == cause and findings[0].loss == pytest.approx(loss)
    assert all(f.cause in CAUSES for f in findings)
    assert f"{loss:.3f}" in findings[0].text  # the figure behind the sentence


def test_diagnosis_of_perfect_detections():
    gt = grid_gt()
    assert diagnose(TideAnalysis(gt, perfect(gt)), evaluate_detections(gt, perfect(gt)).per_iou
                    ) == ["No cause costs 0.01 AP or more: AP50 1.000, mAP 1.000."]


def test_diagnosis_texts_name_the_figures():
    gt = grid_gt()
    text = causes(gt, swapped(gt))[0].text
    assert text.startswith("Classes are confused: 24 detections") and "'1' detected as '2'" in text
    text = causes(gt, shifted(gt, 0.2))[0].text
    assert "AP falls from 1.000 at IoU 0.50 to 0.000 at 0.75" in text and "0.600 under" in text
    text = causes(gt, duplicated(gt), nms_iou=0.5)[0].text
    assert text.startswith("Duplicates survive NMS: 24 duplicate") and "now 0.5" in text


def test_missed_small_objects_and_low_rpn_recall():
    # one small (20x40) and one medium (40x80) box per image; every small one is missed
    anns = [(i, 1, (10, 10, 20, 40)) for i in range(1, 5)]
    anns += [(i, 1, (60, 10, 40, 80)) for i in range(1, 5)]
    gt = coco(range(1, 5), anns, [1])
    dets = [det(i, 1, (60, 10, 40, 80), 0.9 - 0.01 * i) for i in range(1, 5)]
    sizes = recall_by_size(gt, dets, score_threshold=0.5)
    assert sizes.recall == {"small": 0.0, "medium": 1.0, "large": None}
    assert sizes.n_gt == {"small": 4, "medium": 4, "large": 0} and sizes.others() == 1.0
    rpn = rpn_fixture_recall(0.5)
    top = causes(gt, dets, size_recall=sizes, rpn=rpn)[0]
    assert top.cause == "missed" and top.loss == pytest.approx(50 / 101)  # AP50 51/101 -> 1
    assert top.text.startswith("Small objects are missed: 4 of 8 ground-truth boxes (50%)")
    assert "is 0.00 against 1.00 for larger ones" in top.text
    assert "the RPN covers only 50% of the boxes at IoU 0.5 (300 proposals per image)" in top.text
    # recall at a threshold above every score: nothing found
    assert recall_by_size(gt, dets, score_threshold=0.95).recall["medium"] == 0.0


def rpn_fixture_recall(recall):
    from rcnnlab.evaluation.diagnosis import RPNRecall

    return RPNRecall(recall={0.5: recall, 0.7: recall / 2}, recall_by_size={},
                     n_gt_by_size={}, n_gt=8, proposals_per_image=300.0, min_proposals=300,
                     max_proposals=300)


def test_background_next_to_a_detection_is_put_down_to_nms():
    gt = grid_gt()
    # per image a confident pair on background overlapping at IoU 0.67: the second is NMS's
    extra = []
    for im in gt["images"]:
        c = im["id"] % 3
        extra += [det(im["id"], c, (150, 150, 20, 40), 0.99 - 0.01 * im["id"]),
                  det(im["id"], c, (154, 150, 20, 40), 0.98 - 0.01 * im["id"])]
    found = {f.cause: f for f in causes(gt, perfect(gt) + extra)}
    assert "6 background ones overlapping" in found["nms"].text
    assert "6 confident detections on background" in found["scores"].text
    assert found["nms"].loss > 0 and found["scores"].loss > 0


# --------------------------------------------------------------------------- RPN recall
def tiny_model(**kwargs):
    torch.manual_seed(0)
    return build_model(arch="resnet18_fpn", num_classes=3, native_size=True,
                       load_weights=False, min_size=64, rpn_pre_nms_top_n_test=100,
                       rpn_post_nms_top_n_test=50, **kwargs)


class FixedRPN(nn.Module):
    """Proposes, per image, its whole transformed extent and the box of its second quarter."""

    def forward(self, images, features, targets=None):
        out = []
        for h, w in images.image_sizes:
            out.append(torch.tensor([[0.0, 0.0, w, h], [w / 4, h / 4, w / 2, h / 2]]))
        return out, {}


def test_proposals_are_mapped_back_to_the_original_size():
    model = tiny_model(max_size=100)  # a 200x80 image is transformed to 100x40
    model.rpn = FixedRPN()
    images = [torch.rand(3, 80, 200), torch.rand(3, 30, 60)]  # the second is left as it is
    model.train()  # proposals are taken in eval mode, then the mode is restored
    assert [tuple(s) for s in model.transform(images)[0].image_sizes] == [(40, 100), (30, 60)]
    props = rpn_proposals(model, images)
    assert torch.allclose(props[0], torch.tensor([[0, 0, 200, 80], [50, 20, 100, 40.]]))
    assert torch.allclose(props[1], torch.tensor([[0, 0, 60, 30], [15, 7.5, 30, 15]]))
    assert model.training


def test_rpn_recall_with_known_proposals():
    model = tiny_model(max_size=100)
    model.rpn = FixedRPN()
    dataset = [(torch.rand(3, 80, 200), {"boxes": torch.tensor(
        [[0, 0, 200, 80], [50, 20, 100, 40], [150, 0, 200, 20.]])})]
    r = rpn_recall(model, dataset, iou_thresholds=(0.5, 0.7))
    assert r.recall == {0.5: pytest.approx(2 / 3), 0.7: pytest.approx(2 / 3)}
    assert r.n_gt == 3 and r.proposals_per_image == 2.0
    # areas 16000 (large), 1000 and 1000 (small); the last box touches neither proposal
    assert r.n_gt_by_size == {"small": 2, "medium": 0, "large": 1}
    assert r.recall_by_size == {"small": 0.5, "medium": None, "large": 1.0}


def test_rpn_recall_of_a_real_tiny_model():
    model = tiny_model(max_size=100)
    dataset = [(torch.rand(3, 80, 200), {"boxes": torch.tensor([[10, 10, 60, 70.]])}),
               (torch.rand(3, 60, 90), {"boxes": torch.zeros(0, 4)}),
               (torch.rand(3, 50, 160), {"boxes": torch.tensor([[0, 0, 160, 50.]])})]
    r = rpn_recall(model, dataset, batch_size=2)
    assert r.n_gt == 2 and 0 < r.proposals_per_image <= 50 and r.max_proposals <= 50
    assert all(0.0 <= v <= 1.0 for v in r.recall.values())
    assert r.recall[0.7] <= r.recall[0.5]
    props = rpn_proposals(model, [dataset[0][0]])[0]
    # clipped to the 100x40 transformed image, then scaled by 2: the original's full extent
    assert props[:, 2].max() > 100 and props[:, 2].max() <= 200 and props[:, 3].max() <= 80


# ------------------------------------------------------------------- api.diagnose
def test_diagnose_writes_the_report(tmp_path):
    anns = [{"id": 1, "image_id": 1, "category_id": 0, "bbox": [5, 5, 10, 20]},
            {"id": 2, "image_id": 1, "category_id": 1, "bbox": [20, 5, 10, 20]},
            {"id": 3, "image_id": 2, "category_id": 1, "bbox": [30, 10, 12, 24]}]
    ann = write_coco(tmp_path / "data", annotations=anns)
    cfg = load_config(None, [
        "model.arch=resnet18_fpn", "model.native_size=true", "model.min_size=64",
        "model.max_size=256", "model.rpn_pre_nms_top_n_test=100",
        "model.rpn_post_nms_top_n_test=50", "model.box_score_thresh=0.0",
        f"data.train_json={ann}", f"data.valid_json={ann}", "eval.batch_size=2"])
    categories = [{"id": 0, "name": "0"}, {"id": 1, "name": "1"}]
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=3, load_weights=False)
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "best.pt", {
        "model": model.state_dict(), "config": cfg.model_dump(mode="json"),
        "categories": categories, "threshold": 0.3})
    (run / "metrics.csv").write_text("epoch,loss,loss_cls,loss_bbox,loss_anchor\n"
                                     "3,0.5,0.2,0.2,0.1\n")

    diagnosis = api.diagnose(run, split="valid", device="cpu")
    assert isinstance(diagnosis, Diagnosis)
    assert diagnosis.n_images == 2 and diagnosis.threshold == 0.3
    assert diagnosis.errors.n_gt == 3 and len(diagnosis.per_iou) == 10
    assert diagnosis.rpn.n_gt == 3 and 0 <= diagnosis.rpn.recall[0.5] <= 1
    assert diagnosis.training == {"epoch": 3.0, "loss": 0.5, "loss_cls": 0.2,
                                  "loss_bbox": 0.2, "loss_anchor": 0.1}
    assert diagnosis.findings and diagnosis.dominant_cause in (*CAUSES, None)

    saved = json.loads((run / "diagnosis.json").read_text())
    assert saved == json.loads(json.dumps(diagnosis.to_dict()))
    assert saved["errors"]["n_gt"] == 3 and set(saved["per_iou"]) == {
        f"{0.5 + 0.05 * i:.2f}" for i in range(10)}
    md = (run / "diagnosis.md").read_text()
    assert md == diagnosis.to_markdown()
    assert md.startswith("# Diagnosis: run (valid, 2 images)")
    for heading in ("## Findings", "## TIDE errors at IoU 0.5 (background 0.1)",
                    "## AP by IoU threshold", "## Recall by object size"):
        assert heading in md
    assert "last training epoch 3: loss 0.500 (cls 0.200, bbox 0.200, anchor 0.100)" in md
    assert f"1. {diagnosis.findings[0].text}" in md

    # the command prints the same analysis: TIDE table, AP per IoU, RPN recall, findings, cause
    out = CliRunner().invoke(app, ["diagnose", str(run), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    text = " ".join(out.output.split())  # rich wraps at the terminal's width
    assert "share of lost AP50" in text and "RPN recall:" in text
    per_iou = ", ".join(f"{t:.2f} {v:.3f}" for t, v in diagnosis.per_iou.items())
    assert f"AP by IoU threshold: {per_iou}" in text
    assert f"Dominant cause: {diagnosis.dominant_cause or 'none'}" in text
