"""Policy-gradient loss (Rao et al., CVPR 2018): the per-image AP against COCOeval, sampling,
rewards, NMS baseline, eq. 11's gradient and the per-image loss."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rcnnlab.evaluation.coco import evaluate_detections
from rcnnlab.methods.policy_gradient import (
    baseline_reward,
    expected_rewards,
    image_ap,
    pg_coefficients,
    pg_surrogate_loss,
    policy_gradient_coefficients,
    policy_gradient_loss,
    sample_actions,
    subset_image_ap,
)


def _t(rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float32)


def _coco_ap(boxes, scores, labels, gt_boxes, gt_labels, backend: str) -> float:
    """COCOeval's AP (0.50:0.95) on a one-image dataset built from the tensors."""

    def xywh(box):
        x1, y1, x2, y2 = (float(v) for v in box)
        return [x1, y1, x2 - x1, y2 - y1]

    category_ids = sorted(set(gt_labels.tolist()) | set(labels.tolist()))
    gt = {
        "images": [{"id": 1, "file_name": "a.png", "width": 400, "height": 400}],
        # Annotation ids start at 1: both libraries read id 0 as "unmatched".
        "annotations": [
            {
                "id": i + 1,
                "image_id": 1,
                "category_id": int(c),
                "bbox": xywh(b),
                "area": xywh(b)[2] * xywh(b)[3],
                "iscrowd": 0,
            }
            for i, (b, c) in enumerate(zip(gt_boxes, gt_labels, strict=True))
        ],
        "categories": [{"id": c, "name": str(c)} for c in category_ids],
    }
    dets = [
        {"image_id": 1, "category_id": int(c), "bbox": xywh(b), "score": float(s)}
        for b, s, c in zip(boxes, scores, labels, strict=True)
    ]
    return evaluate_detections(gt, dets, backend=backend).AP


def _random_scene(seed: int, num_gt: int, num_dets: int, num_classes: int = 2):
    """Ground truth and jittered detections on a 0.25-pixel grid (exact in float32 and xywh)."""
    g = torch.Generator().manual_seed(seed)
    corners = torch.rand(num_gt, 2, generator=g) * 200
    sizes = 10 + torch.rand(num_gt, 2, generator=g) * 60
    gt_boxes = torch.round(torch.cat([corners, corners + sizes], 1) * 4) / 4
    gt_labels = torch.randint(1, num_classes + 1, (num_gt,), generator=g)
    source = torch.randint(0, num_gt, (num_dets,), generator=g)
    jitter = torch.randn(num_dets, 4, generator=g) * 4
    boxes = gt_boxes[source] + jitter
    boxes = (
        torch.round(torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:], boxes[:, :2] + 1)], 1) * 4)
        / 4
    )
    # Mostly the source's class, sometimes another one (a false positive of that class).
    labels = torch.where(
        torch.rand(num_dets, generator=g) < 0.8,
        gt_labels[source],
        torch.randint(1, num_classes + 2, (num_dets,), generator=g),
    )
    scores = torch.round(torch.rand(num_dets, generator=g) * 1000) / 1000 + 0.001
    return boxes, scores, labels, gt_boxes, gt_labels


GT2 = _t([[0, 0, 10, 10], [20, 20, 40, 40]])


def _fixed_cases():
    """(name, boxes, scores, labels, gt_boxes, gt_labels) with known structure."""
    return [
        ("perfect", GT2, _t([0.9, 0.8]), torch.tensor([1, 1]), GT2, torch.tensor([1, 1])),
        (
            "duplicates_and_fp",
            _t(
                [
                    [0, 0, 10, 10],
                    [0, 0, 11, 10],
                    [20, 20, 38, 41],
                    [60, 60, 70, 70],
                    [21, 19, 40, 40],
                ]
            ),
            _t([0.9, 0.95, 0.5, 0.7, 0.6]),
            torch.tensor([1, 1, 1, 1, 1]),
            GT2,
            torch.tensor([1, 1]),
        ),
        (
            "localisation_ladder",
            _t([[0, 0, 10, 19], [0, 0, 10, 14], [0, 0, 10, 12], [0, 0, 10, 10.25]]),
            _t([0.9, 0.8, 0.7, 0.6]),
            torch.tensor([1, 1, 1, 1]),
            GT2[:1],
            torch.tensor([1]),
        ),
        # A class absent from the ground truth (3) must not change the AP, as in COCO.
        (
            "two_classes_and_absent_class",
            _t([[0, 0, 10, 10], [20, 20, 40, 40], [0, 0, 10, 10], [22, 20, 40, 40]]),
            _t([0.6, 0.9, 0.95, 0.5]),
            torch.tensor([1, 2, 3, 2]),
            GT2,
            torch.tensor([1, 2]),
        ),
        # The first detection overlaps both ground truths equally (IoU 0.818); COCO gives it the
        # later one, which leaves the exact box free for the second detection.
        (
            "iou_tie",
            _t([[1, 0, 11, 10], [0, 0, 10, 10]]),
            _t([0.9, 0.8]),
            torch.tensor([1, 1]),
            _t([[0, 0, 10, 10], [2, 0, 12, 10]]),
            torch.tensor([1, 1]),
        ),
    ]


@pytest.mark.parametrize("backend", ["faster", "pycocotools"])
@pytest.mark.parametrize("case", _fixed_cases(), ids=lambda c: c[0])
def test_image_ap_matches_cocoeval_on_fixed_cases(case, backend):
    _, boxes, scores, labels, gt_boxes, gt_labels = case
    expected = _coco_ap(boxes, scores, labels, gt_boxes, gt_labels, backend)
    assert image_ap(boxes, scores, labels, gt_boxes, gt_labels) == pytest.approx(
        expected, abs=1e-12
    )


@pytest.mark.parametrize("seed", range(6))
def test_image_ap_matches_faster_coco_eval_on_random_scenes(seed):
    boxes, scores, labels, gt_boxes, gt_labels = _random_scene(
        seed, num_gt=2 + seed % 3, num_dets=8 + 3 * seed
    )
    expected = _coco_ap(boxes, scores, labels, gt_boxes, gt_labels, "faster")
    assert 0.0 < expected < 1.0  # a scene that exercises partial matches
    assert image_ap(boxes, scores, labels, gt_boxes, gt_labels) == pytest.approx(
        expected, abs=1e-12
    )


def test_image_ap_hand_computed_values():
    one = torch.tensor([1])
    assert image_ap(
        GT2, _t([0.9, 0.8]), torch.tensor([1, 1]), GT2, torch.tensor([1, 1])
    ) == pytest.approx(1.0)
    # One of two found, no false positive: precision 1 up to recall 0.5, i.e. 51 of the 101
    # recall points, at every IoU threshold.
    assert image_ap(GT2[:1], _t([0.9]), one, GT2, torch.tensor([1, 1])) == pytest.approx(51 / 101)
    # A false positive ranked above the only true positive: precision 0.5 at every recall.
    assert image_ap(
        _t([[50, 50, 60, 60], [0, 0, 10, 10]]), _t([0.9, 0.8]), torch.tensor([1, 1]), GT2[:1], one
    ) == pytest.approx(0.5)
    # IoU 100/120 = 0.833 matches at thresholds 0.50..0.80: 7 of 10.
    assert image_ap(_t([[0, 0, 10, 12]]), _t([0.9]), one, GT2[:1], one) == pytest.approx(0.7)


def test_image_ap_edge_cases():
    one = torch.tensor([1])
    empty_boxes, empty = torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)
    assert image_ap(GT2[:1], _t([0.9]), one, empty_boxes, empty) == 0.0  # no ground truth
    assert image_ap(empty_boxes, torch.zeros(0), empty, GT2[:1], one) == 0.0  # no detections
    # Only a detection of another class: the ground-truth class scores 0.
    assert image_ap(GT2[:1], _t([0.9]), torch.tensor([2]), GT2[:1], one) == 0.0


@pytest.mark.parametrize(("true_positive_rank", "expected"), [(100, 0.01), (101, 0.0)])
def test_image_ap_keeps_100_detections_per_class(true_positive_rank, expected):
    num_fp = true_positive_rank - 1
    fp_boxes = torch.tensor([[100.0 + i, 100.0, 105.0 + i, 105.0] for i in range(num_fp)])
    boxes = torch.cat([fp_boxes, GT2[:1]])
    scores = torch.cat([torch.linspace(0.99, 0.5, num_fp), _t([0.1])])
    labels = torch.ones(true_positive_rank, dtype=torch.long)
    gt_labels = torch.tensor([1])
    ours = image_ap(boxes, scores, labels, GT2[:1], gt_labels)
    assert ours == pytest.approx(expected, abs=1e-12)
    assert ours == pytest.approx(
        _coco_ap(boxes, scores, labels, GT2[:1], gt_labels, "faster"), abs=1e-12
    )


def test_subset_image_ap_scores_each_subset_like_image_ap():
    boxes, scores, labels, gt_boxes, gt_labels = _random_scene(11, num_gt=4, num_dets=14)
    g = torch.Generator().manual_seed(3)
    subsets = torch.rand(6, 14, generator=g) < 0.5
    subsets[0] = False
    subsets[1] = True
    got = subset_image_ap(boxes, scores, labels, gt_boxes, gt_labels, subsets)
    assert got.shape == (6,) and got.dtype == torch.float64
    for row, value in zip(subsets, got, strict=True):
        expected = image_ap(boxes[row], scores[row], labels[row], gt_boxes, gt_labels)
        assert float(value) == pytest.approx(expected, abs=1e-12)
    assert float(got[0]) == 0.0
    assert float(got[1]) > 0.0


def test_sample_actions_frequencies_approach_probabilities():
    probs = _t([0.0, 0.1, 0.5, 0.9, 1.0])
    actions = sample_actions(probs, 20000, torch.Generator().manual_seed(0))
    assert actions.shape == (20000, 5) and actions.dtype == torch.bool
    freq = actions.float().mean(0)
    assert freq[0] == 0.0 and freq[4] == 1.0
    assert torch.allclose(freq, probs, atol=0.01)


def test_sample_actions_is_deterministic_with_a_seeded_generator():
    probs = torch.linspace(0.05, 0.95, 64)
    first = sample_actions(probs, 10, torch.Generator().manual_seed(7))
    again = sample_actions(probs, 10, torch.Generator().manual_seed(7))
    other = sample_actions(probs, 10, torch.Generator().manual_seed(8))
    assert torch.equal(first, again)
    assert not torch.equal(first, other)
    with pytest.raises(ValueError, match="k must be at least 1"):
        sample_actions(probs, 0)


def test_expected_rewards_average_actions_keeping_each_candidate():
    actions = torch.tensor([[1, 0, 1, 0], [1, 1, 0, 0], [0, 0, 1, 0]], dtype=torch.bool)
    rewards = torch.tensor([0.2, 0.6, 0.5], dtype=torch.float64)
    got = expected_rewards(actions, rewards, fallback=0.3)
    # b0: (0.2 + 0.6) / 2; b1: 0.6; b2: (0.2 + 0.5) / 2; b3 never kept: the fallback.
    assert torch.allclose(got, torch.tensor([0.4, 0.6, 0.35, 0.3], dtype=torch.float64))


def test_baseline_reward_is_ap_after_per_class_nms():
    boxes = _t([[0, 0, 10, 10], [1, 0, 11, 10], [1, 0, 11, 10], [50, 50, 60, 60]])
    scores = _t([0.9, 0.8, 0.7, 0.95])
    labels = torch.tensor([1, 1, 2, 1])
    gt_boxes, gt_labels = _t([[0, 0, 10, 10], [1, 0, 11, 10]]), torch.tensor([1, 2])
    r_prime, keep = baseline_reward(boxes, scores, labels, gt_boxes, gt_labels, nms_iou=0.5)
    # Box 1 overlaps box 0 (IoU 0.82) in the same class and is suppressed; box 2 is the same
    # box in class 2 and survives. Class 1: FP then TP (AP 0.5); class 2: TP (AP 1).
    assert keep.tolist() == [True, False, True, True]
    assert r_prime == pytest.approx(0.75)
    assert r_prime == pytest.approx(
        image_ap(boxes[keep], scores[keep], labels[keep], gt_boxes, gt_labels)
    )
    # A looser NMS keeps everything.
    _, keep_all = baseline_reward(boxes, scores, labels, gt_boxes, gt_labels, nms_iou=0.9)
    assert keep_all.all()


def test_pg_coefficients_zero_the_advantage_of_nms_kept_boxes():
    rewards = torch.tensor([0.9, 0.2, 0.7], dtype=torch.float64)
    kept = torch.tensor([True, False, False])
    got = pg_coefficients(rewards, 0.5, kept, gamma=1.0)
    assert torch.allclose(got, torch.tensor([1.0, 0.7, 1.2], dtype=torch.float64))
    got = pg_coefficients(rewards, 0.5, kept, gamma=0.0)
    assert torch.allclose(got, torch.tensor([0.0, -0.3, 0.2], dtype=torch.float64))


LOGITS = [[2.0, 0.5, -1.0], [0.1, 1.5, 0.3], [-0.5, 0.2, 2.5], [1.0, 1.0, 1.0]]
LABELS = [1, 2, 2, 1]


def test_surrogate_gradient_is_eq11_on_the_true_class_logit():
    logits = torch.tensor(LOGITS, requires_grad=True)
    labels = torch.tensor(LABELS)
    # r(b) = 0.8, 0.3, 0.9, 0.6 with r' = 0.5, the last box kept by NMS, gamma = 1.
    coefficients = pg_coefficients(
        torch.tensor([0.8, 0.3, 0.9, 0.6]),
        0.5,
        torch.tensor([False, False, False, True]),
        gamma=1.0,
    )
    assert torch.allclose(coefficients, torch.tensor([1.3, 0.8, 1.4, 1.0]))
    pg_surrogate_loss(logits, labels, coefficients).backward()
    n = len(LOGITS)
    for b, (row, y) in enumerate(zip(LOGITS, LABELS, strict=True)):
        total = sum(math.exp(z) for z in row)
        probs = [math.exp(z) / total for z in row]
        coef = float(coefficients[b])
        # Eq. 11 on the true-class logit; the other logits get the scaled CE gradient.
        assert float(logits.grad[b, y]) * n == pytest.approx(coef * (probs[y] - 1), rel=1e-5)
        for j in range(len(row)):
            if j != y:
                assert float(logits.grad[b, j]) * n == pytest.approx(coef * probs[j], rel=1e-5)


def test_gamma_one_with_zero_advantage_is_cross_entropy():
    labels = torch.tensor(LABELS)
    rewards = torch.full((4,), 0.42)
    kept = torch.tensor([True, False, True, False])
    coefficients = pg_coefficients(rewards, 0.42, kept, gamma=1.0)
    assert torch.equal(coefficients, torch.ones(4))
    ours = torch.tensor(LOGITS, requires_grad=True)
    plain = torch.tensor(LOGITS, requires_grad=True)
    loss = pg_surrogate_loss(ours, labels, coefficients)
    reference = F.cross_entropy(plain, labels)
    loss.backward()
    reference.backward()
    assert float(loss.detach()) == pytest.approx(float(reference.detach()))
    assert torch.allclose(ours.grad, plain.grad, atol=1e-7)


def test_surrogate_loss_of_no_rois_is_zero():
    logits = torch.zeros(0, 3, requires_grad=True)
    loss = pg_surrogate_loss(logits, torch.zeros(0, dtype=torch.long), torch.zeros(0))
    loss.backward()
    assert float(loss.detach()) == 0.0 and logits.grad.shape == (0, 3)


def _duplicate_scene():
    """One ground truth; A (exact, p~0.99966) and B (IoU 0.83, p~0.99988) candidates of class
    1, C a background RoI. NMS keeps B and suppresses A."""
    logits = torch.tensor([[0.0, 8.0], [0.0, 9.0], [1.0, 0.0]], requires_grad=True)
    labels = torch.tensor([1, 1, 0])
    boxes = _t([[0, 0, 10, 10], [0, 0, 10, 12], [30, 30, 40, 40]])
    return logits, labels, boxes, _t([[0, 0, 10, 10]]), torch.tensor([1])


@pytest.mark.parametrize(("gamma", "expected"), [(1.0, [1.15, 1.0, 1.0]), (0.0, [0.15, 0.0, 1.0])])
def test_policy_gradient_loss_on_a_suppressed_better_box(gamma, expected):
    logits, labels, boxes, gt_boxes, gt_labels = _duplicate_scene()
    probs = torch.softmax(logits.detach(), -1)[:2, 1]
    # With this seed every one of the 10 actions keeps both candidates, which makes r exact.
    assert sample_actions(probs, 10, torch.Generator().manual_seed(0)).all()
    loss, info = policy_gradient_loss(
        logits,
        labels,
        boxes,
        gt_boxes,
        gt_labels,
        k=10,
        gamma=gamma,
        generator=torch.Generator().manual_seed(0),
    )
    # r' = AP({B}) = 0.7 (B matches at IoU 0.50..0.80). Every action keeps {B, A}: B is a TP
    # at 0.50..0.80 (AP 1) and an FP before A's TP at 0.85..0.95 (AP 0.5): r = 0.85 for both.
    # A is suppressed: 0.85 - 0.7 + gamma; B is kept: gamma; C is background: 1.
    assert info == pytest.approx(
        {
            "baseline_ap": 0.7,
            "mean_reward": 0.85,
            "mean_advantage": 0.075,
            "num_candidates": 2,
            "num_nms_kept": 1,
            "num_unsampled": 0,
        }
    )
    coefficients = torch.tensor(expected)
    reference = pg_surrogate_loss(logits, labels, coefficients)
    assert float(loss.detach()) == pytest.approx(float(reference.detach()))
    loss.backward()
    p_a = float(probs[0])
    assert float(logits.grad[0, 1]) * 3 == pytest.approx(expected[0] * (p_a - 1), rel=1e-4)


def test_policy_gradient_coefficients_compose_the_steps():
    boxes, _, labels, gt_boxes, gt_labels = _random_scene(5, num_gt=4, num_dets=24)
    labels[::4] = 0  # some background RoIs
    logits = torch.randn(24, 4, generator=torch.Generator().manual_seed(1))
    coefficients, info = policy_gradient_coefficients(
        logits,
        labels,
        boxes,
        gt_boxes,
        gt_labels,
        k=10,
        gamma=0.5,
        generator=torch.Generator().manual_seed(9),
    )

    fg = labels > 0
    p = torch.softmax(logits, -1)[torch.arange(24), labels][fg]
    r_prime, kept = baseline_reward(boxes[fg], p, labels[fg], gt_boxes, gt_labels, 0.5)
    actions = sample_actions(p, 10, torch.Generator().manual_seed(9))
    rewards = expected_rewards(
        actions, subset_image_ap(boxes[fg], p, labels[fg], gt_boxes, gt_labels, actions), r_prime
    )
    expected = pg_coefficients(rewards, r_prime, kept, gamma=0.5).float()

    assert torch.allclose(coefficients[fg], expected)
    assert torch.equal(coefficients[~fg], torch.ones(int((~fg).sum())))
    assert torch.equal(coefficients[fg][kept], torch.full((int(kept.sum()),), 0.5))
    assert info["baseline_ap"] == pytest.approx(r_prime)
    assert info["mean_reward"] == pytest.approx(float(rewards.mean()))
    assert info["num_candidates"] == int(fg.sum()) and info["num_nms_kept"] == int(kept.sum())
    assert 0 < info["num_nms_kept"] < info["num_candidates"]


def test_policy_gradient_loss_is_deterministic_with_a_seeded_generator():
    boxes, _, labels, gt_boxes, gt_labels = _random_scene(2, num_gt=3, num_dets=20)
    logits = torch.randn(20, 4, generator=torch.Generator().manual_seed(4))
    runs = [
        policy_gradient_loss(
            logits, labels, boxes, gt_boxes, gt_labels, generator=torch.Generator().manual_seed(s)
        )
        for s in (3, 3, 4)
    ]
    assert float(runs[0][0]) == float(runs[1][0]) and runs[0][1] == runs[1][1]
    assert float(runs[0][0]) != float(runs[2][0])


def test_images_without_candidates_get_plain_cross_entropy():
    logits = torch.tensor(LOGITS)
    labels = torch.zeros(4, dtype=torch.long)
    boxes = _t([[0, 0, 5, 5]] * 4)
    for gt_boxes, gt_labels in [
        (torch.zeros(0, 4), torch.zeros(0, dtype=torch.long)),
        (GT2, torch.tensor([1, 2])),
    ]:
        loss, info = policy_gradient_loss(
            logits,
            labels,
            boxes,
            gt_boxes,
            gt_labels,
            gamma=0.0,
            generator=torch.Generator().manual_seed(0),
        )
        assert float(loss.detach()) == pytest.approx(float(F.cross_entropy(logits, labels)))
        assert info["num_candidates"] == 0 and info["mean_advantage"] == 0.0
