"""torchvision's RPN and RoI heads with their training losses split by FPN level, and the RoI
classifier's loss made configurable (cross-entropy, focal, class-weighted, policy gradient).

Inference is torchvision's, untouched. Under mixed precision the heads' layers compute in bf16 /
fp16 but hand their outputs on in float32 (`float32_boxes`): anchors, proposals, box encoding
and decoding, the samplers and the losses are float32, as in a float32 run.

In training the two heads compute the same losses as torchvision (`loss_objectness`,
`loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg`, each a mean over the sampled anchors or
RoIs), from per-item losses, so that each head can also return its losses split by FPN level:
`rpn_level_losses` and `roi_level_losses`, tensors [L] over the levels (in the backbone's
feature order) whose sum is the head's two losses. The RPN assigns an anchor to the level it was
generated on; the RoI head assigns a RoI to the level it is pooled from (torchvision's
LevelMapper, i.e. FPN's eq. 1), so the RoI losses fall on the first four levels only. This split
is what multi-scale loss weighting (AVW/RLO, :mod:`rcnnlab.methods.scale_weighting`) weighs.

RoI classification losses (`RoIClassifierLoss`): "ce" (torchvision's), "focal" and "weighted_ce"
(:mod:`rcnnlab.models.losses`), and "policy_gradient" (Rao et al. 2018,
:mod:`rcnnlab.methods.policy_gradient`): cross-entropy per RoI weighted by eq. 11's factor
``(r(b) - r') + gamma``, the reward computed on the boxes the head regresses for each RoI's
assigned class. Box regression keeps torchvision's smooth-L1 in every case. The policy
gradient's statistics come back in the loss dict too (`pg_baseline_ap`, `pg_mean_reward`,
`pg_mean_advantage`).

So the model's training output is one dict: the `loss_*` entries are what is minimised (their sum,
:func:`total_loss`), the rest are figures about them (:func:`level_losses`, the `pg_*` means).
The objective is a constructor argument of the RoI head, chosen when the model is built.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork, concat_box_prediction_layers
from torchvision.ops import boxes as box_ops

from rcnnlab.methods.policy_gradient import policy_gradient_coefficients
from rcnnlab.models.losses import LOSS_KINDS, SMOOTHED_KINDS, roi_classification_loss

__all__ = ["LevelLossRPN", "LossRoIHeads", "RoIClassifierLoss", "float32_boxes", "install_heads",
           "level_losses", "total_loss", "validation_losses"]

LOSS_PREFIX = "loss_"  # training outputs minimised (summed); the other entries are figures


@dataclass(frozen=True, eq=False)
class RoIClassifierLoss:
    """How the RoI head's classifier is trained (see the module docstring)."""

    kind: str = "ce"  # ce | focal | weighted_ce | policy_gradient
    focal_alpha: float | None = 0.25
    focal_gamma: float = 2.0
    class_weights: Tensor | None = None  # [C+1], index 0 = background (weighted_ce)
    label_smoothing: float = 0.0  # ce / weighted_ce: target 1 - eps, plus eps / (C + 1) each
    pg_samples: int = 10  # k, actions sampled per image (policy_gradient)
    pg_gamma: float = 1.0  # 0 = policy gradient alone, 1 = plus cross-entropy
    pg_nms_iou: float = 0.5  # the NMS whose detections give the baseline r'
    generator: torch.Generator | None = None  # draws the actions (CPU)

    def __post_init__(self) -> None:
        # checked here, when the run is set up, rather than at the first training step
        kinds = (*LOSS_KINDS, "policy_gradient")
        if self.kind not in kinds:
            raise ValueError(f"unknown RoI classification loss {self.kind!r}; choose from {kinds}")
        if (self.class_weights is None) == (self.kind == "weighted_ce"):
            raise ValueError("class weights are required by the weighted_ce loss and only by it")
        if self.label_smoothing and self.kind not in SMOOTHED_KINDS:
            raise ValueError(f"label smoothing is for the {' and '.join(SMOOTHED_KINDS)} losses "
                             "only")


def float32_boxes(outputs: Tensor | Sequence[Tensor]) -> Tensor | list[Tensor]:
    """A head's outputs (a tensor or a list of them) in float32, whatever autocast computed
    them in.

    torchvision decodes boxes in the dtype of the regression output and casts the ground-truth
    boxes to the proposals' dtype. In bfloat16, whose 8-bit mantissa spaces coordinates 4 px
    apart between 512 and 1024, a box 1.5 px high at the bottom of a 640-px image (as
    augmentation leaves one it cuts at the edge) becomes 0 px high, and its regression target
    (a division by that height) NaN; every box moves by up to 2 px. So the heads compute in
    reduced precision, and the box arithmetic, the sampling and the losses see float32.
    """
    if isinstance(outputs, Tensor):
        return outputs.float()
    return [o.float() for o in outputs]


def _smooth_l1_rows(pred: Tensor, target: Tensor) -> Tensor:
    """torchvision's detection box loss (smooth-L1, beta 1/9), summed per row."""
    return F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="none").sum(dim=1)


class LevelLossRPN(RegionProposalNetwork):
    """A :class:`RegionProposalNetwork` whose training losses also come split by FPN level
    (`rpn_level_losses` in its loss dict), and whose box arithmetic stays in float32 under
    mixed precision (`float32_boxes`)."""

    @classmethod
    def from_torchvision(cls, rpn: RegionProposalNetwork) -> LevelLossRPN:
        """The same RPN (sharing its anchor generator and head) with per-level losses."""
        return cls(rpn.anchor_generator, rpn.head, rpn.proposal_matcher.high_threshold,
                   rpn.proposal_matcher.low_threshold, rpn.fg_bg_sampler.batch_size_per_image,
                   rpn.fg_bg_sampler.positive_fraction, dict(rpn._pre_nms_top_n),
                   dict(rpn._post_nms_top_n), rpn.nms_thresh, rpn.score_thresh)

    def forward(self, images, features, targets=None):
        """torchvision's forward, plus `rpn_level_losses` [L] among the training losses.

        The head's convolutions run in whatever precision autocast gives them; its outputs,
        the anchors, the proposals, their encoding and the losses are float32 (see
        `float32_boxes`)."""
        objectness, deltas = self.head(list(features.values()))
        objectness, deltas = float32_boxes(objectness), float32_boxes(deltas)
        # the anchor generator reads only the maps' grid size, dtype and device: the float32
        # objectness maps share the features' grids
        anchors = self.anchor_generator(images, objectness)
        anchors_per_level = [o[0].numel() for o in objectness]
        objectness, deltas = concat_box_prediction_layers(objectness, deltas)
        # Faster R-CNN does not backpropagate through the proposals
        proposals = self.box_coder.decode(deltas.detach(), anchors).view(len(anchors), -1, 4)
        boxes, _ = self.filter_proposals(proposals, objectness, images.image_sizes,
                                         anchors_per_level)
        if not self.training:
            return boxes, {}
        if targets is None:
            raise ValueError("targets should not be None")
        labels, matched_gt_boxes = self.assign_targets_to_anchors(anchors, targets)
        regression_targets = self.box_coder.encode(matched_gt_boxes, anchors)
        loss_objectness, loss_rpn_box_reg, levels = self.level_losses(
            objectness, deltas, labels, regression_targets, anchors_per_level)
        return boxes, {"loss_objectness": loss_objectness, "loss_rpn_box_reg": loss_rpn_box_reg,
                       "rpn_level_losses": levels}

    def level_losses(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor], anchors_per_level: list[int]
                     ) -> tuple[Tensor, Tensor, Tensor]:
        """torchvision's two RPN losses, computed per sampled anchor, and their sum per level
        ([L]; anchors are image-major, level-minor, as `concat_box_prediction_layers` lays
        them out)."""
        sampled_pos, sampled_neg = self.fg_bg_sampler(labels)
        pos = torch.where(torch.cat(sampled_pos, dim=0))[0]
        neg = torch.where(torch.cat(sampled_neg, dim=0))[0]
        sampled = torch.cat([pos, neg], dim=0)
        n = max(sampled.numel(), 1)
        objectness = objectness.flatten()
        labels = torch.cat(labels, dim=0)
        regression_targets = torch.cat(regression_targets, dim=0)
        box_rows = _smooth_l1_rows(pred_bbox_deltas[pos], regression_targets[pos]) / n
        obj_rows = F.binary_cross_entropy_with_logits(
            objectness[sampled], labels[sampled], reduction="none") / n

        per_level = torch.tensor(anchors_per_level, device=objectness.device)
        level_of = torch.arange(len(per_level), device=objectness.device).repeat_interleave(
            per_level).repeat(len(sampled_pos))
        zeros = objectness.new_zeros(len(per_level), dtype=torch.float32)
        levels = (zeros.index_add(0, level_of[sampled], obj_rows.float())
                  .index_add(0, level_of[pos], box_rows.float()))
        return obj_rows.sum(), box_rows.sum(), levels


class LossRoIHeads(RoIHeads):
    """A box-only :class:`RoIHeads` trained with `classifier_loss`, its losses also split by
    FPN level (`roi_level_losses`); inference is torchvision's."""

    def __init__(self, *args, classifier_loss: RoIClassifierLoss | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.classifier_loss = classifier_loss or RoIClassifierLoss()

    @classmethod
    def from_torchvision(cls, heads: RoIHeads,
                         classifier_loss: RoIClassifierLoss | None = None) -> LossRoIHeads:
        """The same box head (sharing its modules) trained with `classifier_loss`."""
        if heads.has_mask() or heads.has_keypoint():
            raise ValueError("LossRoIHeads handles box detection only (no masks or keypoints)")
        return cls(heads.box_roi_pool, heads.box_head, heads.box_predictor,
                   heads.proposal_matcher.high_threshold, heads.proposal_matcher.low_threshold,
                   heads.fg_bg_sampler.batch_size_per_image, heads.fg_bg_sampler.positive_fraction,
                   heads.box_coder.weights, heads.score_thresh, heads.nms_thresh,
                   heads.detections_per_img, classifier_loss=classifier_loss)

    def forward(self, features, proposals, image_shapes, targets=None):
        """Training: sample RoIs, run the box head, return the losses; eval: torchvision's."""
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None in training")
        proposals, _, labels, regression_targets = self.select_training_samples(
            proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = float32_boxes(self.box_predictor(box_features))

        per_image = [len(lab) for lab in labels]
        labels_cat = torch.cat(labels, dim=0)
        targets_cat = torch.cat(regression_targets, dim=0)
        n = max(labels_cat.numel(), 1)
        cls_rows, figures = self._classifier_rows(class_logits, box_regression, labels_cat,
                                                  proposals, image_shapes, targets, per_image)
        cls_rows = cls_rows / n
        pos = torch.where(labels_cat > 0)[0]
        box_regression = box_regression.reshape(labels_cat.numel(), -1, 4)
        box_rows = _smooth_l1_rows(box_regression[pos, labels_cat[pos]], targets_cat[pos]) / n

        # level each RoI is pooled from, as an index into the backbone's feature order
        names = list(features)
        pooled = [names.index(name) for name in self.box_roi_pool.featmap_names
                  if name in features]
        level_of = torch.tensor(pooled, device=labels_cat.device)[
            self.box_roi_pool.map_levels(proposals)]
        zeros = class_logits.new_zeros(len(names), dtype=torch.float32)
        levels = zeros.index_add(0, level_of, cls_rows.float()).index_add(
            0, level_of[pos], box_rows.float())
        return [], {"loss_classifier": cls_rows.sum(), "loss_box_reg": box_rows.sum(),
                    "roi_level_losses": levels, **figures}

    def _classifier_rows(self, class_logits, box_regression, labels, proposals, image_shapes,
                         targets, per_image) -> tuple[Tensor, dict[str, Tensor]]:
        """Per-RoI classification loss (before the mean over RoIs), and the policy gradient's
        figures (`pg_*`, means over the batch's images) when it is the objective."""
        cfg = self.classifier_loss
        pg = cfg.kind == "policy_gradient"
        rows = roi_classification_loss(
            "ce" if pg else cfg.kind, class_logits, labels, alpha=cfg.focal_alpha,
            gamma=cfg.focal_gamma, class_weights=cfg.class_weights, reduction="none",
            label_smoothing=cfg.label_smoothing)
        if not pg:
            return rows, {}
        # the boxes the detector would output for each RoI's assigned class, as NMS sees them
        decoded = self.box_coder.decode(box_regression.detach(), proposals)
        boxes = decoded[torch.arange(len(labels), device=labels.device), labels]
        coefficients, infos = [], []
        for i, (logits_i, labels_i, boxes_i) in enumerate(zip(
                class_logits.split(per_image), labels.split(per_image), boxes.split(per_image),
                strict=True)):
            coef, info = policy_gradient_coefficients(
                logits_i, labels_i, box_ops.clip_boxes_to_image(boxes_i, image_shapes[i]),
                targets[i]["boxes"], targets[i]["labels"], k=cfg.pg_samples, gamma=cfg.pg_gamma,
                nms_iou=cfg.pg_nms_iou, generator=cfg.generator)
            coefficients.append(coef)
            infos.append(info)
        figures = {f"pg_{key}": torch.tensor(sum(float(d[key]) for d in infos) / len(infos),
                                             dtype=torch.float64)
                   for key in ("baseline_ap", "mean_reward", "mean_advantage")}
        return rows * torch.cat(coefficients).to(rows.dtype), figures


def install_heads(model, classifier_loss: RoIClassifierLoss | None = None) -> None:
    """Give a torchvision Faster R-CNN, while it is built, the per-level RPN and the RoI head
    trained with `classifier_loss` (default cross-entropy).

    The new heads share every submodule of the old ones, so parameters, buffers, state-dict
    keys and inference are unchanged.
    """
    model.roi_heads = LossRoIHeads.from_torchvision(model.roi_heads, classifier_loss)
    model.rpn = LevelLossRPN.from_torchvision(model.rpn)


def total_loss(outputs: Mapping[str, Tensor]) -> Tensor:
    """What training minimises: the sum of the `loss_*` entries of the model's output."""
    return sum(v for k, v in outputs.items() if k.startswith(LOSS_PREFIX))


def level_losses(outputs: Mapping[str, Tensor]) -> Tensor:
    """The total loss of a training step split by FPN level ([L], sums to `total_loss`)."""
    return outputs["rpn_level_losses"] + outputs["roi_level_losses"]


@contextmanager
def _losses_as_in_evaluation(model) -> Iterator[None]:
    """Only the loss branches in training mode, the RoI classifier on cross-entropy."""
    heads = model.roi_heads
    objective, heads.classifier_loss = heads.classifier_loss, RoIClassifierLoss()
    was_training = model.training
    model.eval()
    for module in (model, model.rpn, heads):  # not recursive: children stay in eval mode
        module.training = True
    try:
        yield
    finally:
        heads.classifier_loss = objective
        model.train(was_training)


def validation_losses(model, images: list[Tensor],
                      targets: list[dict[str, Tensor]]) -> dict[str, Tensor]:
    """A batch's training losses with the model as in evaluation: BatchNorm, dropout and the
    input size as at test time, plain cross-entropy for the classifier whatever the objective,
    so that validation losses compare across objectives. The RPN and RoI samplers still draw
    from torch's generator: fork it to keep a training run's random stream."""
    with _losses_as_in_evaluation(model):
        return model(images, targets)
