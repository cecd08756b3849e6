"""Soft-NMS, NMS, weighted boxes fusion, TTA merging and box mapping, on hand-worked cases."""

from __future__ import annotations

import math

import pytest
import torch
from torchvision.ops import batched_nms

from rcnnlab.inference.nms import (
    hflip_boxes,
    merge_detections,
    nms,
    scale_boxes,
    soft_nms,
    suppress,
    weighted_box_fusion,
)

# Three boxes of one label (areas 100, 50, 100):
#   A = [0, 0, 10, 10] score 0.9, B = [0, 0, 10, 5] score 0.8, C = [5, 0, 15, 10] score 0.7
#   IoU(A, B) = 50 / 100 = 0.5
#   IoU(A, C) = (5 * 10) / (100 + 100 - 50) = 1/3
#   IoU(B, C) = (5 * 5) / (50 + 100 - 25) = 0.2
ABC_BOXES = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [5, 0, 15, 10]])
ABC_SCORES = torch.tensor([0.9, 0.8, 0.7])
ABC_LABELS = torch.tensor([1, 1, 1])


def test_soft_nms_linear_worked_example():
    keep, scores = soft_nms(ABC_BOXES, ABC_SCORES, ABC_LABELS, method="linear", iou_threshold=0.3)
    # Step 1: M = A (0.9). B: IoU 0.5 >= 0.3 -> 0.8 * (1 - 0.5) = 0.4;
    #         C: IoU 1/3 >= 0.3 -> 0.7 * (1 - 1/3) = 0.46667.
    # Step 2: M = C (0.46667), now ahead of B. B: IoU(C, B) = 0.2 < 0.3 -> stays 0.4.
    # Step 3: M = B (0.4).
    assert keep.tolist() == [0, 2, 1]
    assert keep.dtype == torch.int64
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7 * 2 / 3, 0.4]))


def test_soft_nms_gaussian_worked_example():
    keep, scores = soft_nms(ABC_BOXES, ABC_SCORES, ABC_LABELS, method="gaussian", sigma=0.5)
    # Step 1: M = A. B: 0.8 * exp(-0.5^2 / 0.5) = 0.8 * exp(-0.5) = 0.48522;
    #         C: 0.7 * exp(-(1/3)^2 / 0.5) = 0.7 * exp(-2/9) = 0.56052.
    # Step 2: M = C. B: 0.48522 * exp(-0.2^2 / 0.5) = 0.48522 * exp(-0.08) = 0.44792.
    # Step 3: M = B.
    expected = [0.9, 0.7 * math.exp(-2 / 9), 0.8 * math.exp(-0.5) * math.exp(-0.08)]
    assert keep.tolist() == [0, 2, 1]
    torch.testing.assert_close(scores, torch.tensor(expected))
    assert scores.tolist() == pytest.approx([0.9, 0.56052, 0.44792], abs=1e-5)


def test_soft_nms_labels_are_independent():
    # Box 1 is A again under another label: A does not decay it. Box 2 is A under A's label
    # (IoU 1): linear decay gives 0.6 * (1 - 1) = 0, below 0.001, so it is removed.
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 5]])
    scores = torch.tensor([0.9, 0.7, 0.6, 0.8])
    labels = torch.tensor([1, 2, 1, 1])
    keep, new_scores = soft_nms(boxes, scores, labels, method="linear")
    # Box 3 (B) decays to 0.8 * (1 - 0.5) = 0.4 under A.
    assert keep.tolist() == [0, 1, 3]
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.7, 0.4]))
    keep, new_scores = soft_nms(boxes, scores, labels, method="gaussian")
    # Gaussian: box 2 -> 0.6 * exp(-1 / 0.5) = 0.08120 (kept), box 3 -> 0.8 * exp(-0.5) = 0.48522;
    # box 1 (label 2) untouched at 0.7. Box 2 vs box 3 (IoU 0.5) then: 0.08120 * exp(-0.5).
    assert keep.tolist() == [0, 1, 3, 2]
    expected = [0.9, 0.7, 0.8 * math.exp(-0.5), 0.6 * math.exp(-2) * math.exp(-0.5)]
    torch.testing.assert_close(new_scores, torch.tensor(expected))


def test_soft_nms_score_threshold_removes_boxes():
    # Box 1 coincides with box 0, so Gaussian decay gives 0.5 * exp(-1 / 0.5) = 0.06767 < 0.1;
    # box 2 is far away but starts below the threshold (0.05 < 0.1).
    boxes = torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 10], [50, 50, 60, 60], [50, 0, 60, 10]])
    scores = torch.tensor([0.9, 0.5, 0.05, 0.3])
    labels = torch.zeros(4, dtype=torch.int64)
    keep, new_scores = soft_nms(boxes, scores, labels, method="gaussian", score_threshold=0.1)
    assert keep.tolist() == [0, 3]
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.3]))
    keep, new_scores = soft_nms(boxes, scores, labels, method="gaussian", score_threshold=0.06)
    assert keep.tolist() == [0, 3, 1]
    torch.testing.assert_close(new_scores, torch.tensor([0.9, 0.3, 0.5 * math.exp(-2)]))


def test_soft_nms_without_overlap_matches_hard_nms():
    # A 4 x 5 grid of disjoint 8 x 8 boxes: no IoU > 0, so nothing decays, and both soft-NMS
    # variants keep every box in the descending-score order that hard NMS gives.
    generator = torch.Generator().manual_seed(0)
    xs, ys = torch.meshgrid(torch.arange(5) * 10.0, torch.arange(4) * 10.0, indexing="xy")
    corners = torch.stack((xs.flatten(), ys.flatten()), dim=1)
    boxes = torch.cat((corners, corners + 8), dim=1)
    scores = torch.rand(20, generator=generator) * 0.9 + 0.05
    labels = torch.randint(0, 3, (20,), generator=generator)
    expected = batched_nms(boxes, scores, labels, 0.3)
    assert len(expected) == 20
    for method in ("linear", "gaussian"):
        keep, new_scores = soft_nms(boxes, scores, labels, method=method)
        assert torch.equal(keep, expected)
        assert torch.equal(new_scores, scores[expected])
    keep, new_scores = nms(boxes, scores, labels)
    assert torch.equal(keep, expected)


def _reference_soft_nms(boxes, scores, method, nt, sigma, threshold):
    """One label, ported from cpu_soft_nms (bharatsingh430/soft-nms, lib/nms/cpu_nms.pyx): swap the
    maximum into place i, decay every later box, drop a box under `threshold` by moving the last
    box into its slot. IoU is continuous and linear decays at `>= nt`, as rcnnlab's soft_nms.
    Returns [(input index, new score)] in selection order."""
    dets = [[*box, score, index]
            for index, (box, score) in enumerate(zip(boxes, scores, strict=True))]
    n, i = len(dets), 0
    while i < n:
        best = max(range(i, n), key=lambda p: (dets[p][4], -p))
        dets[i], dets[best] = dets[best], dets[i]
        tx1, ty1, tx2, ty2 = dets[i][:4]
        pos = i + 1
        while pos < n:
            x1, y1, x2, y2 = dets[pos][:4]
            inter = max(0.0, min(tx2, x2) - max(tx1, x1)) * max(0.0, min(ty2, y2) - max(ty1, y1))
            ov = inter / ((tx2 - tx1) * (ty2 - ty1) + (x2 - x1) * (y2 - y1) - inter)
            if method == "linear":
                weight = 1 - ov if ov >= nt else 1.0
            else:
                weight = math.exp(-(ov * ov) / sigma)
            dets[pos][4] *= weight
            if dets[pos][4] < threshold:
                dets[pos] = dets[n - 1]
                n -= 1
                pos -= 1
            pos += 1
        i += 1
    return [(det[5], det[4]) for det in dets[:n]]


@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_reference_loop_on_random_boxes(method):
    generator = torch.Generator().manual_seed(1)
    corners = torch.rand(60, 2, generator=generator, dtype=torch.float64) * 80
    sizes = torch.rand(60, 2, generator=generator, dtype=torch.float64) * 30 + 5
    boxes = torch.cat((corners, corners + sizes), dim=1)
    scores = torch.rand(60, generator=generator, dtype=torch.float64) * 0.85 + 0.15
    labels = torch.randint(0, 2, (60,), generator=generator)
    keep, new_scores = soft_nms(boxes, scores, labels, method=method, iou_threshold=0.3,
                                sigma=0.5, score_threshold=0.1)
    expected = []
    for label in (0, 1):
        index = torch.nonzero(labels == label).flatten()
        found = _reference_soft_nms(boxes[index].tolist(), scores[index].tolist(), method,
                                    0.3, 0.5, 0.1)
        expected += [(int(index[k]), score) for k, score in found]
    expected.sort(key=lambda pair: -pair[1])
    # Every box starts above the 0.1 threshold (the reference port does not pre-filter), and a
    # few decay below it: 57 kept with linear, 58 with Gaussian.
    assert len(expected) == {"linear": 57, "gaussian": 58}[method]
    assert keep.tolist() == [k for k, _ in expected]
    torch.testing.assert_close(new_scores, torch.tensor([s for _, s in expected],
                                                        dtype=torch.float64))


def test_soft_nms_max_detections_and_empty_input():
    keep, scores = soft_nms(ABC_BOXES, ABC_SCORES, ABC_LABELS, method="linear", max_detections=2)
    assert keep.tolist() == [0, 2]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7 * 2 / 3]))
    keep, scores = soft_nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.int64),
                            method="gaussian")
    assert keep.shape == (0,) and scores.shape == (0,)
    with pytest.raises(ValueError, match="linear"):
        soft_nms(ABC_BOXES, ABC_SCORES, ABC_LABELS, method="hard")


def test_suppress_methods():
    boxes, scores, labels = suppress(ABC_BOXES, ABC_SCORES, ABC_LABELS, method="nms",
                                     iou_threshold=0.4)
    # Hard NMS at 0.4: A suppresses B (IoU 0.5) but not C (IoU 1/3); C vs B is 0.2.
    assert boxes.tolist() == [[0, 0, 10, 10], [5, 0, 15, 10]]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7]))
    assert labels.tolist() == [1, 1]
    boxes, scores, labels = suppress(ABC_BOXES, ABC_SCORES, ABC_LABELS, method="linear")
    # Default IoU threshold 0.3 reproduces the worked linear example.
    assert boxes.tolist() == [[0, 0, 10, 10], [5, 0, 15, 10], [0, 0, 10, 5]]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7 * 2 / 3, 0.4]))
    boxes, scores, _ = suppress(ABC_BOXES, ABC_SCORES, ABC_LABELS, method="nms",
                                score_threshold=0.75, max_detections=1)
    assert boxes.tolist() == [[0, 0, 10, 10]] and scores.tolist() == pytest.approx([0.9])


def _dets(boxes, scores, labels):
    return (torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            torch.tensor(scores, dtype=torch.float32), torch.tensor(labels, dtype=torch.int64))


def test_wbf_worked_example():
    # Model 0 and model 1 both see P / R: IoU([10,10,50,50], [12,10,52,50]) = 1520 / 1680 = 0.905.
    #   x1 = (0.9 * 10 + 0.6 * 12) / 1.5 = 10.8, x2 = (0.9 * 50 + 0.6 * 52) / 1.5 = 50.8,
    #   score = (0.9 + 0.6) / 2 * min(2, 2) / 2 = 0.75.
    # Q is seen by model 0 only: 0.6 * min(1, 2) / 2 = 0.3. S sits on P but has label 2, so it
    # is a cluster of its own: 0.5 / 2 = 0.25.
    model_0 = _dets([[10, 10, 50, 50], [100, 100, 140, 140]], [0.9, 0.6], [1, 1])
    model_1 = _dets([[12, 10, 52, 50], [10, 10, 50, 50]], [0.6, 0.5], [1, 2])
    boxes, scores, labels = weighted_box_fusion([model_0, model_1])
    torch.testing.assert_close(boxes, torch.tensor(
        [[10.8, 10, 50.8, 50], [100, 100, 140, 140], [10, 10, 50, 50]]))
    torch.testing.assert_close(scores, torch.tensor([0.75, 0.3, 0.25]))
    assert labels.tolist() == [1, 1, 2]
    _, scores, _ = weighted_box_fusion([model_0, model_1], conf_type="max")
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.6, 0.5]))


def test_wbf_cluster_larger_than_model_count_keeps_mean_score():
    # Boxes in score order 0.8 [0,0,10,10] (model 0), 0.6 [0,0,10,10] (model 1, IoU 1) and
    # 0.4 [0,1,10,11] (model 0 again, IoU 90 / 110 = 0.82 with the fused [0,0,10,10]).
    #   y1 = (0.4 * 1) / 1.8 = 0.2222, y2 = (0.8 * 10 + 0.6 * 10 + 0.4 * 11) / 1.8 = 10.2222,
    #   score = (0.8 + 0.6 + 0.4) / 3 * min(3, 2) / 2 = 0.6.
    model_0 = _dets([[0, 0, 10, 10], [0, 1, 10, 11]], [0.8, 0.4], [0, 0])
    model_1 = _dets([[0, 0, 10, 10]], [0.6], [0])
    boxes, scores, labels = weighted_box_fusion([model_0, model_1])
    torch.testing.assert_close(boxes, torch.tensor([[0, 0.4 / 1.8, 10, 18.4 / 1.8]]))
    torch.testing.assert_close(scores, torch.tensor([0.6]))
    assert labels.tolist() == [0]


# Three models on a 200 x 100 image. EXPECTED_* come from ensemble_boxes 1.0.9 (PyPI
# ensemble-boxes, numpy 2.4), weighted_boxes_fusion(iou_thr=0.55) on these boxes divided by
# (200, 100, 200, 100), its output boxes multiplied back, rounded to 5 decimals (scores to 6).
WBF_CASE = [
    ([[20, 10, 60, 50], [120, 30, 170, 90], [22, 12, 58, 52]], [0.92, 0.55, 0.33], [1, 1, 2]),
    ([[23, 8, 63, 47], [118, 33, 165, 88], [30, 15, 70, 55]], [0.81, 0.74, 0.47], [1, 1, 1]),
    ([[19, 11, 61, 49], [80, 40, 100, 70], [21, 9, 59, 51], [5, 60, 25, 95]],
     [0.66, 0.28, 0.61, 0.12], [1, 1, 2, 2]),
]
EXPECTED_BOXES = [
    [20.74059, 9.59833, 61.29289, 48.70712],
    [118.85271, 31.72093, 167.13177, 88.85271],
    [21.35106, 10.05319, 58.64894, 51.35106],
    [30.0, 15.0, 70.0, 55.0],
    [80.0, 40.0, 100.0, 70.0],
    [5.0, 60.0, 25.0, 95.0],
]
EXPECTED_SCORES = [0.796667, 0.43, 0.313333, 0.156667, 0.093333, 0.04]
EXPECTED_LABELS = [1, 1, 2, 1, 1, 2]


def test_wbf_matches_ensemble_boxes():
    detections = [_dets(*model) for model in WBF_CASE]
    boxes, scores, labels = weighted_box_fusion(detections, iou_threshold=0.55)
    torch.testing.assert_close(boxes, torch.tensor(EXPECTED_BOXES), atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, torch.tensor(EXPECTED_SCORES), atol=1e-6, rtol=0)
    assert labels.tolist() == EXPECTED_LABELS
    # skip_box_thr=0.3 in ensemble_boxes gives the first four rows unchanged: the boxes under
    # 0.3 (0.28, 0.12) were clusters of their own.
    boxes, scores, labels = weighted_box_fusion(detections, skip_box_threshold=0.3)
    torch.testing.assert_close(boxes, torch.tensor(EXPECTED_BOXES[:4]), atol=1e-4, rtol=0)
    torch.testing.assert_close(scores, torch.tensor(EXPECTED_SCORES[:4]), atol=1e-6, rtol=0)


def test_wbf_empty_and_bad_arguments():
    empty = _dets([], [], [])
    boxes, scores, labels = weighted_box_fusion([empty, empty])
    assert boxes.shape == (0, 4) and scores.shape == (0,) and labels.shape == (0,)
    with pytest.raises(ValueError, match="at least one"):
        weighted_box_fusion([])
    with pytest.raises(ValueError, match="conf_type"):
        weighted_box_fusion([empty], conf_type="median")


def test_merge_detections_of_flipped_augmentation():
    # The plain image finds [10,20,50,60] at 0.9; the flipped one (width 100) finds
    # [48,22,88,62] at 0.7, i.e. [12,22,52,62] once mirrored back.
    # IoU = (38 * 38) / (1600 + 1600 - 1444) = 1444 / 1756 = 0.8223.
    plain = _dets([[10, 20, 50, 60]], [0.9], [3])
    flipped_boxes, flipped_scores, flipped_labels = _dets([[48, 22, 88, 62]], [0.7], [3])
    flipped = (hflip_boxes(flipped_boxes, 100), flipped_scores, flipped_labels)
    assert flipped[0].tolist() == [[12, 22, 52, 62]]
    iou = 1444 / 1756

    boxes, scores, labels = merge_detections([plain, flipped], method="nms")
    assert boxes.tolist() == [[10, 20, 50, 60]] and labels.tolist() == [3]
    torch.testing.assert_close(scores, torch.tensor([0.9]))

    # WBF: x1 = (0.9 * 10 + 0.7 * 12) / 1.6 = 10.875, likewise +0.875 on the other corners;
    # score = (0.9 + 0.7) / 2 = 0.8 (both augmentations found it).
    boxes, scores, labels = merge_detections([plain, flipped], method="wbf")
    torch.testing.assert_close(boxes, torch.tensor([[10.875, 20.875, 50.875, 60.875]]))
    torch.testing.assert_close(scores, torch.tensor([0.8]))
    assert labels.tolist() == [3]

    boxes, scores, _ = merge_detections([plain, flipped], method="soft-linear")
    assert boxes.tolist() == [[10, 20, 50, 60], [12, 22, 52, 62]]
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7 * (1 - iou)]))

    _, scores, _ = merge_detections([plain, flipped], method="soft-gaussian", sigma=0.5)
    torch.testing.assert_close(scores, torch.tensor([0.9, 0.7 * math.exp(-iou * iou / 0.5)]))

    _, scores, _ = merge_detections([plain, flipped], method="soft-gaussian", max_detections=1)
    torch.testing.assert_close(scores, torch.tensor([0.9]))
    with pytest.raises(ValueError, match="merge method"):
        merge_detections([plain], method="soft")


def test_hflip_boxes():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0], [0.0, 0.0, 100.0, 5.0]])
    # x1' = 100 - 30 = 70, x2' = 100 - 10 = 90; the full-width box maps onto itself.
    assert hflip_boxes(boxes, 100).tolist() == [[70, 20, 90, 40], [0, 0, 100, 5]]
    generator = torch.Generator().manual_seed(2)
    corners = torch.rand(50, 2, generator=generator, dtype=torch.float64) * 300
    sizes = torch.rand(50, 2, generator=generator, dtype=torch.float64) * 50
    random_boxes = torch.cat((corners, corners + sizes), dim=1)
    flipped = hflip_boxes(random_boxes, 640)
    assert bool((flipped[:, 2] >= flipped[:, 0]).all())
    torch.testing.assert_close(flipped[:, 2] - flipped[:, 0], sizes[:, 0])
    torch.testing.assert_close(hflip_boxes(flipped, 640), random_boxes)


def test_scale_boxes():
    boxes = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    # Detections on an image upscaled by 2 map back with factor 1/2.
    assert scale_boxes(boxes, 0.5).tolist() == [[5, 10, 15, 20]]
    assert scale_boxes(boxes, (2.0, 3.0)).tolist() == [[20, 60, 60, 120]]
    assert scale_boxes(boxes.double(), 2).dtype == torch.float64
