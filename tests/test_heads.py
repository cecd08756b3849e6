"""The per-level RPN / RoI heads: torchvision's losses exactly, split by FPN level and returned
in the loss dict, and the RoI classifier's loss (focal, class-weighted, policy gradient) chosen
when the model is built."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork

from rcnnlab.models import heads
from rcnnlab.models.architecture import build_model
from rcnnlab.models.heads import RoIClassifierLoss, level_losses, total_loss, validation_losses

IMAGES = [torch.rand(3, 48, 120, generator=torch.Generator().manual_seed(0)),
          torch.rand(3, 40, 90, generator=torch.Generator().manual_seed(1))]
TARGETS = [
    {"boxes": torch.tensor([[5.0, 5, 30, 40], [40, 8, 70, 38]]), "labels": torch.tensor([1, 2])},
    {"boxes": torch.tensor([[10.0, 4, 30, 30]]), "labels": torch.tensor([3])},
]


def build(classifier_loss: RoIClassifierLoss | None = None):
    """The same weights every time (seed 0), trained with `classifier_loss`."""
    torch.manual_seed(0)
    return build_model(arch="resnet18_fpn", num_classes=4, native_size=True,
                       load_weights=False, min_size=64, max_size=256,
                       classifier_loss=classifier_loss).train()


@pytest.fixture(scope="module")
def model():
    return build()


def losses_of(model, seed=1):
    torch.manual_seed(seed)  # the RPN and RoI samplers draw from torch's generator
    return model(IMAGES, TARGETS)


def classifier_loss_of(classifier_loss: RoIClassifierLoss) -> torch.Tensor:
    return losses_of(build(classifier_loss))["loss_classifier"]


def test_same_losses_as_torchvision_and_levels_sum_to_them(model):
    reference = copy.deepcopy(model)
    reference.rpn.__class__ = RegionProposalNetwork
    reference.roi_heads.__class__ = RoIHeads
    ours, theirs = losses_of(model), losses_of(reference)
    assert set(ours) == {*theirs, "rpn_level_losses", "roi_level_losses"}
    for key in theirs:
        torch.testing.assert_close(ours[key], theirs[key], rtol=1e-5, atol=1e-7)
    levels = level_losses(ours)
    assert levels.shape == (5,)  # P2-P6
    torch.testing.assert_close(levels.sum(), total_loss(ours), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(total_loss(ours), sum(theirs.values()), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours["rpn_level_losses"].sum(),
                               ours["loss_objectness"] + ours["loss_rpn_box_reg"])
    # RoIs are pooled from P2-P5 only: nothing of the RoI head lands on P6
    assert ours["roi_level_losses"][4] == 0
    torch.testing.assert_close(ours["roi_level_losses"].sum(),
                               ours["loss_classifier"] + ours["loss_box_reg"])
    levels.sum().backward()  # the split carries the gradient
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0
    model.zero_grad()
    assert not hasattr(model.rpn, "_step")  # nothing of the step stays on the module


def test_focal_at_gamma_0_and_unit_class_weights_give_cross_entropy():
    ce = classifier_loss_of(RoIClassifierLoss())
    torch.testing.assert_close(classifier_loss_of(
        RoIClassifierLoss("focal", focal_alpha=None, focal_gamma=0.0)), ce)
    torch.testing.assert_close(classifier_loss_of(
        RoIClassifierLoss("weighted_ce", class_weights=torch.ones(4))), ce)
    # doubling one class's weight raises the loss by that class's share of the CE sum
    assert classifier_loss_of(RoIClassifierLoss(
        "weighted_ce", class_weights=torch.tensor([1.0, 2.0, 1.0, 1.0]))) > ce
    assert classifier_loss_of(RoIClassifierLoss("focal")) < ce  # alpha 0.25, gamma 2


def test_policy_gradient_scales_each_rois_cross_entropy(monkeypatch):
    calls = []

    def fake_coefficients(logits, labels, boxes, gt_boxes, gt_labels, **kwargs):
        calls.append((logits.detach().clone(), labels.clone(), boxes.clone(), gt_boxes,
                      gt_labels, kwargs))
        coef = torch.where(labels > 0, 3.0, 1.0)  # candidates x3, background plain CE
        return coef, {"baseline_ap": 0.5, "mean_reward": 0.25, "mean_advantage": -0.25}

    monkeypatch.setattr(heads, "policy_gradient_coefficients", fake_coefficients)
    gen = torch.Generator().manual_seed(0)
    outputs = losses_of(build(RoIClassifierLoss(
        "policy_gradient", pg_samples=7, pg_gamma=0.5, pg_nms_iou=0.4, generator=gen)))
    loss = outputs["loss_classifier"]
    assert len(calls) == 2  # one call per image, with that image's RoIs and ground truth
    logits = torch.cat([c[0] for c in calls])
    labels = torch.cat([c[1] for c in calls])
    rows = F.cross_entropy(logits, labels, reduction="none")
    expected = (rows * torch.where(labels > 0, 3.0, 1.0)).sum() / len(labels)
    torch.testing.assert_close(loss, expected)
    for (_, _, boxes, gt_boxes, gt_labels, kwargs), image, target in zip(
            calls, IMAGES, TARGETS, strict=True):
        h, w = image.shape[1:]
        assert (boxes[:, 0::2] >= 0).all() and (boxes[:, 0::2] <= w).all()  # clipped
        assert (boxes[:, 1::2] >= 0).all() and (boxes[:, 1::2] <= h).all()
        assert torch.equal(gt_boxes, target["boxes"]) and torch.equal(gt_labels, target["labels"])
        assert kwargs == {"k": 7, "gamma": 0.5, "nms_iou": 0.4, "generator": gen}
    # the figures come back in the loss dict, averaged over the images
    assert {k: v.item() for k, v in outputs.items() if k.startswith("pg_")} == {
        "pg_baseline_ap": 0.5, "pg_mean_reward": 0.25, "pg_mean_advantage": -0.25}


def test_real_policy_gradient_step_is_finite_and_reproducible():
    outputs = [losses_of(build(RoIClassifierLoss(
        "policy_gradient", generator=torch.Generator().manual_seed(3)))) for _ in range(2)]
    results = [out["loss_classifier"] for out in outputs]
    assert torch.isfinite(results[0]) and torch.equal(results[0], results[1])
    figures = outputs[0]
    assert 0.0 <= figures["pg_baseline_ap"] <= 1.0 and 0.0 <= figures["pg_mean_reward"] <= 1.0


def test_label_smoothing_reaches_the_roi_head():
    # smoothed CE is linear in eps, (1 - eps) CE + eps * mean_k(-log p_k), so on the same
    # sampled RoIs the change at eps 0.2 is twice the change at eps 0.1
    ce = classifier_loss_of(RoIClassifierLoss())
    at_01 = classifier_loss_of(RoIClassifierLoss(label_smoothing=0.1))
    at_02 = classifier_loss_of(RoIClassifierLoss(label_smoothing=0.2))
    assert not torch.isclose(at_01, ce)
    torch.testing.assert_close(at_02 - ce, 2 * (at_01 - ce), rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="label smoothing"):
        RoIClassifierLoss("focal", label_smoothing=0.1)


def test_validation_losses_use_cross_entropy_and_leave_the_model_as_it_was():
    pg = build(RoIClassifierLoss("policy_gradient", generator=torch.Generator().manual_seed(3)))
    pg.eval()
    torch.manual_seed(1)
    losses = validation_losses(pg, IMAGES, TARGETS)
    assert not any(k.startswith("pg_") for k in losses)  # plain cross-entropy
    assert not pg.training and not pg.rpn.training and not pg.roi_heads.training
    assert pg.roi_heads.classifier_loss.kind == "policy_gradient"
    # BatchNorm stays in eval mode: the same as a plain CE model's losses in that mode
    ce = build().eval()
    torch.manual_seed(1)
    reference = validation_losses(ce, IMAGES, TARGETS)
    for key in ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"):
        torch.testing.assert_close(losses[key], reference[key])


def test_inference_is_unchanged(model):
    reference = copy.deepcopy(model).eval()
    reference.rpn.__class__ = RegionProposalNetwork
    reference.roi_heads.__class__ = RoIHeads
    model.eval()
    with torch.no_grad():
        ours, theirs = model(IMAGES), reference(IMAGES)
    model.train()
    for a, b in zip(ours, theirs, strict=True):
        for key in ("boxes", "scores", "labels"):
            assert torch.equal(a[key], b[key])
