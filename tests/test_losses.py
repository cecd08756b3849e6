"""Tests for rcnnlab.models.losses: focal / weighted cross-entropy and the dispatcher."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rcnnlab.data.coco import load_coco
from rcnnlab.models.losses import (
    class_counts,
    focal_loss,
    inverse_frequency_weights,
    roi_classification_loss,
    weighted_cross_entropy,
)
from tests.conftest import write_coco


def _random_head(seed: int, n: int = 37, classes: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 3
    labels = torch.randint(0, classes, (n,), generator=g)
    return logits, labels


def _logits_of(*probs: list[float]) -> torch.Tensor:
    """Logits whose softmax is exactly the given rows (each sums to 1)."""
    return torch.tensor(probs, dtype=torch.float64).log()


# --------------------------------------------------------------------------- focal loss


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_focal_gamma0_no_alpha_is_cross_entropy_exactly(reduction):
    logits, labels = _random_head(0)
    logits.requires_grad_(True)
    fl = focal_loss(logits, labels, alpha=None, gamma=0.0, reduction=reduction)
    ce = F.cross_entropy(logits, labels, reduction=reduction)
    assert torch.equal(fl, ce)
    (g_fl,) = torch.autograd.grad(fl.sum(), logits)
    (g_ce,) = torch.autograd.grad(ce.sum(), logits)
    assert torch.equal(g_fl, g_ce)


def test_focal_hand_computed_two_samples_three_classes():
    # Sample 1: p = (0.5, 0.25, 0.25), target 1 (foreground) -> p_t = 0.25, alpha_t = 0.25
    #   0.25 * (1 - 0.25)^2 * -log(0.25) = 0.25 * 0.5625 * 1.3862944 = 0.1949476
    # Sample 2: p = (0.1, 0.2, 0.7), target 0 (background) -> p_t = 0.1, alpha_t = 1 - 0.25
    #   0.75 * (1 - 0.1)^2 * -log(0.1) = 0.75 * 0.81 * 2.3025851 = 1.3988204
    # mean = (0.1949476 + 1.3988204) / 2 = 0.7968840; sum = 1.5937681
    logits = _logits_of([0.5, 0.25, 0.25], [0.1, 0.2, 0.7])
    labels = torch.tensor([1, 0])
    one = 0.25 * 0.75**2 * math.log(4)
    two = 0.75 * 0.9**2 * math.log(10)
    per = focal_loss(logits, labels, alpha=0.25, gamma=2.0, reduction="none")
    assert per.tolist() == pytest.approx([one, two], rel=1e-12)
    assert one == pytest.approx(0.1949476, abs=1e-7) and two == pytest.approx(1.3988204, abs=1e-7)
    assert focal_loss(logits, labels).item() == pytest.approx(0.7968840, abs=1e-7)
    assert focal_loss(logits, labels, reduction="sum").item() == pytest.approx(1.5937681, abs=1e-7)
    # alpha=None: the same without alpha_t: 0.5625 * 1.3862944 = 0.7797906, 0.81 * 2.3025851
    # = 1.8650939
    no_alpha = focal_loss(logits, labels, alpha=None, reduction="none")
    assert no_alpha.tolist() == pytest.approx([0.7797906, 1.8650939], abs=1e-7)


def test_focal_down_weights_well_classified_examples():
    # Easy: p_t = 0.9, hard: p_t = 0.1 (both foreground). FL / CE = (1 - p_t)^gamma with
    # alpha off: 0.1^2 = 0.01 for the easy one, 0.9^2 = 0.81 for the hard one.
    logits = _logits_of([0.05, 0.9, 0.05], [0.45, 0.1, 0.45])
    labels = torch.tensor([1, 1])
    ratio = (focal_loss(logits, labels, alpha=None, reduction="none")
             / F.cross_entropy(logits, labels, reduction="none"))
    assert ratio.tolist() == pytest.approx([0.01, 0.81], rel=1e-9)
    # The mean is then dominated by the hard example: its share is 0.81 log 10 / (0.01 log(1/0.9)
    # + 0.81 log 10), against log 10 / (log(1/0.9) + log 10) = 0.956 for cross-entropy.
    fl = focal_loss(logits, labels, alpha=None, reduction="none")
    ce = F.cross_entropy(logits, labels, reduction="none")
    assert (fl[1] / fl.sum()).item() == pytest.approx(0.99943, abs=1e-5)
    assert (ce[1] / ce.sum()).item() == pytest.approx(0.95624, abs=1e-5)


def test_focal_gradient_stays_finite_for_gamma_below_one_at_certainty():
    logits = torch.tensor([[200.0, 0.0, 0.0], [0.0, 0.0, 200.0]], requires_grad=True)
    loss = focal_loss(logits, torch.tensor([0, 2]), alpha=None, gamma=0.5)
    (grad,) = torch.autograd.grad(loss, logits)
    assert loss.item() == 0.0
    assert torch.isfinite(grad).all()


# --------------------------------------------------------------------------- weighted CE


def test_weighted_cross_entropy_hand_case():
    # Zero logits over 3 classes: every CE_i = log 3. Labels (0, 2), weights (0.5, 1, 2):
    # sum = 0.5 log 3 + 2 log 3 = 2.5 log 3; divided by N = 2 RoIs -> 1.25 log 3 = 1.3732653.
    # torch's own weighted mean divides by 0.5 + 2 instead -> log 3.
    logits = torch.zeros(2, 3)
    labels = torch.tensor([0, 2])
    weights = torch.tensor([0.5, 1.0, 2.0])
    assert weighted_cross_entropy(logits, labels, weights).item() == pytest.approx(
        1.25 * math.log(3), rel=1e-6)
    assert weighted_cross_entropy(logits, labels, weights, reduction="sum").item() == (
        pytest.approx(2.5 * math.log(3), rel=1e-6))
    assert weighted_cross_entropy(logits, labels, weights, reduction="none").tolist() == (
        pytest.approx([0.5 * math.log(3), 2 * math.log(3)], rel=1e-6))
    assert F.cross_entropy(logits, labels, weight=weights).item() == pytest.approx(math.log(3))


def test_weighted_cross_entropy_with_unit_weights_is_cross_entropy():
    logits, labels = _random_head(1)
    got = weighted_cross_entropy(logits, labels, torch.ones(logits.shape[1], dtype=torch.float64))
    torch.testing.assert_close(got, F.cross_entropy(logits, labels), rtol=1e-6, atol=0)


# --------------------------------------------------------------------------- class weights


def test_inverse_frequency_weights_on_given_counts():
    # counts 10, 30, 60 of 100: 1/f = 10, 3.333, 1.667, mean 5 -> 2, 0.667, 0.333 (mean 1).
    w = inverse_frequency_weights([10, 30, 60])
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([1.0, 2.0, 2 / 3, 1 / 3], rel=1e-6)
    assert w[1:].mean().item() == pytest.approx(1.0)
    raw = inverse_frequency_weights([10, 30, 60], background_weight=0.5, normalise="none")
    assert raw.tolist() == pytest.approx([0.5, 10.0, 10 / 3, 10 / 6], rel=1e-6)


def test_inverse_frequency_weights_zero_count_gets_the_largest():
    # counts 10, 0, 40 of 50: 1/f = 5, -, 1.25; mean over the seen classes 3.125 -> 1.6, 0.4;
    # the unseen class takes the largest, 1.6.
    w = inverse_frequency_weights([10, 0, 40])
    assert w.tolist() == pytest.approx([1.0, 1.6, 1.6, 0.4], rel=1e-6)


@pytest.mark.parametrize("counts, normalise", [([0, 0], "mean"), ([3, -1], "mean"),
                                               ([3, 1], "max")])
def test_inverse_frequency_weights_refuses_bad_input(counts, normalise):
    with pytest.raises(ValueError):
        inverse_frequency_weights(counts, normalise=normalise)


def test_class_counts_per_model_label(tmp_path):
    # Category ids 2, 5, 9 -> labels 1, 2, 3; the crowd box of id 2 is not counted.
    images = [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in (1, 2)]
    anns = [
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [1, 1, 10, 10]},
        {"id": 2, "image_id": 1, "category_id": 5, "bbox": [20, 1, 10, 10]},
        {"id": 3, "image_id": 2, "category_id": 5, "bbox": [1, 1, 10, 10]},
        {"id": 4, "image_id": 2, "category_id": 2, "bbox": [20, 1, 10, 10]},
        {"id": 5, "image_id": 2, "category_id": 2, "bbox": [40, 1, 10, 10], "iscrowd": 1},
    ]
    cats = [{"id": 5, "name": "five"}, {"id": 2, "name": "two"}, {"id": 9, "name": "none"}]
    data = load_coco(write_coco(tmp_path, images=images, annotations=anns, categories=cats))
    assert class_counts(data) == [1, 3, 0]
    assert inverse_frequency_weights(class_counts(data)).tolist() == pytest.approx(
        [1.0, 1.5, 0.5, 1.5], rel=1e-6)  # 1/f = 4, 4/3 -> / mean 8/3 -> 1.5, 0.5; unseen 1.5


# --------------------------------------------------------------------------- dispatcher


def test_roi_classification_loss_dispatches():
    logits, labels = _random_head(2)
    weights = torch.tensor([0.5, 1.0, 2.0, 1.5, 1.0])
    assert torch.equal(roi_classification_loss("ce", logits, labels),
                       F.cross_entropy(logits, labels))
    assert torch.equal(roi_classification_loss("focal", logits, labels, alpha=0.5, gamma=1.0),
                       focal_loss(logits, labels, alpha=0.5, gamma=1.0))
    assert torch.equal(roi_classification_loss("weighted_ce", logits, labels,
                                               class_weights=weights),
                       weighted_cross_entropy(logits, labels, weights))
    # per RoI, as the RoI head uses it
    assert torch.equal(roi_classification_loss("weighted_ce", logits, labels,
                                               class_weights=weights, reduction="none"),
                       weighted_cross_entropy(logits, labels, weights, reduction="none"))
    assert torch.equal(roi_classification_loss("ce", logits, labels, reduction="none"),
                       F.cross_entropy(logits, labels, reduction="none"))


@pytest.mark.parametrize("kind, weights", [("bce", None), ("weighted_ce", None),
                                           ("ce", torch.ones(5)), ("focal", torch.ones(5))])
def test_roi_classification_loss_refuses_bad_configs(kind, weights):
    logits, labels = _random_head(3)
    with pytest.raises(ValueError):
        roi_classification_loss(kind, logits, labels, class_weights=weights)


# --------------------------------------------------------------------------- label smoothing


def test_label_smoothing_hand_case():
    # Softmax (0.2, 0.6, 0.2), true class 1, eps 0.3 over 3 classes: the target is
    # (0.1, 0.8, 0.1), so the loss is -0.2 log 0.2 - 0.8 log 0.6 = 0.7305480.
    logits = _logits_of([0.2, 0.6, 0.2])
    labels = torch.tensor([1])
    got = roi_classification_loss("ce", logits, labels, label_smoothing=0.3)
    assert got.item() == pytest.approx(-0.2 * math.log(0.2) - 0.8 * math.log(0.6), rel=1e-9)
    assert got.item() == pytest.approx(0.7305480, abs=1e-6)
    # eps 0 is plain cross-entropy: -log 0.6
    assert roi_classification_loss("ce", logits, labels).item() == pytest.approx(-math.log(0.6))


def test_label_smoothing_weighted_hand_case():
    # Weights (1, 2, 0.5), same head: (1 - eps) w_y CE_y + eps / 3 * sum_k w_k (-log p_k)
    # = 0.7 * 2 * 0.5108256 + 0.1 * (1.6094379 + 2 * 0.5108256 + 0.5 * 1.6094379) = 1.0587373,
    # divided by N = 1 RoI.
    logits = _logits_of([0.2, 0.6, 0.2])
    labels = torch.tensor([1])
    weights = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    got = roi_classification_loss("weighted_ce", logits, labels, class_weights=weights,
                                  label_smoothing=0.3)
    assert got.item() == pytest.approx(1.0587373, abs=1e-6)


def test_label_smoothing_keeps_a_confident_right_answer_from_a_zero_loss():
    # the point of smoothing: certainty on the true class is no longer the minimum
    logits, labels = torch.tensor([[0.0, 20.0, 0.0]]), torch.tensor([1])
    assert roi_classification_loss("ce", logits, labels).item() < 1e-6
    assert roi_classification_loss("ce", logits, labels, label_smoothing=0.1).item() > 0.5


def test_label_smoothing_is_refused_with_focal_loss():
    logits, labels = _random_head(4)
    with pytest.raises(ValueError, match="label smoothing"):
        roi_classification_loss("focal", logits, labels, label_smoothing=0.1)
