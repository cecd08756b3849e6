"""torchvision's RPN and RoI heads with their training losses split by FPN level, and the RoI
classifier's loss made configurable (cross-entropy, focal, class-weighted, policy gradient).

Inference is torchvision's, untouched. In training the two heads compute the same losses as
torchvision (`loss_objectness`, `loss_rpn_box_reg`, `loss_classifier`, `loss_box_reg`, each a
mean over the sampled anchors or RoIs), from per-item losses, so that each head can also report
`level_losses`: a tensor [L] over the FPN levels (in the backbone's feature order) whose sum is
the head's two losses. The RPN assigns an anchor to the level it was generated on; the RoI head
assigns a RoI to the level it is pooled from (torchvision's LevelMapper, i.e. FPN's eq. 1), so
the RoI losses fall on the first four levels only. This split is what multi-scale loss
weighting (AVW/RLO, :mod:`rcnnlab.methods.scale_weighting`) weighs.

RoI classification losses (`RoIClassifierLoss`): "ce" (torchvision's), "focal" and "weighted_ce"
(:mod:`rcnnlab.models.losses`), and "policy_gradient" (Rao et al. 2018,
:mod:`rcnnlab.methods.policy_gradient`): cross-entropy per RoI weighted by eq. 11's factor
``(r(b) - r') + gamma``, the reward computed on the boxes the head regresses for each RoI's
assigned class. Box regression keeps torchvision's smooth-L1 in every case.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.models.detection.roi_heads import RoIHeads
from torchvision.models.detection.rpn import RegionProposalNetwork
from torchvision.ops import boxes as box_ops

from rcnnlab.methods.policy_gradient import policy_gradient_coefficients
from rcnnlab.models.losses import LOSS_KINDS, roi_classification_loss

__all__ = ["LevelLossRPN", "LossRoIHeads", "RoIClassifierLoss", "install_heads", "level_losses"]


@dataclass
class RoIClassifierLoss:
    """How the RoI head's classifier is trained (see the module docstring)."""

    kind: str = "ce"  # ce | focal | weighted_ce | policy_gradient
    focal_alpha: float | None = 0.25
    focal_gamma: float = 2.0
    class_weights: Tensor | None = None  # [C+1], index 0 = background (weighted_ce)
    pg_samples: int = 10  # k, actions sampled per image (policy_gradient)
    pg_gamma: float = 1.0  # 0 = policy gradient alone, 1 = plus cross-entropy
    pg_nms_iou: float = 0.5  # the NMS whose detections give the baseline r'
    generator: torch.Generator | None = None  # draws the actions (CPU)
    info: dict[str, float] = field(default_factory=dict)  # last batch's policy-gradient figures

    def __post_init__(self) -> None:
        # checked here, when the run is set up, rather than at the first training step
        kinds = (*LOSS_KINDS, "policy_gradient")
        if self.kind not in kinds:
            raise ValueError(f"unknown RoI classification loss {self.kind!r}; choose from {kinds}")
        if (self.class_weights is None) == (self.kind == "weighted_ce"):
            raise ValueError("class weights are required by the weighted_ce loss and only by it")


class _LastStep:
    """The last training step's per-level losses, still attached to its graph. Holding them in
    this box keeps a module deep-copyable (an EMA copy, `copy.deepcopy`) and picklable: copies
    start empty instead of failing on non-leaf tensors."""

    def __init__(self, value: Tensor | None = None):
        self.value = value

    def __deepcopy__(self, memo) -> _LastStep:
        return _LastStep()

    def __reduce__(self):
        return (_LastStep, ())


class _LevelLosses:
    """Mixin: a `level_losses` attribute kept in a :class:`_LastStep`."""

    @property
    def level_losses(self) -> Tensor | None:
        """[L] losses of the last training step per FPN level (their sum is the head's loss)."""
        box = self.__dict__.get("_last_step")
        return box.value if box is not None else None

    @level_losses.setter
    def level_losses(self, value: Tensor | None) -> None:
        self.__dict__["_last_step"] = _LastStep(value)


def _smooth_l1_rows(pred: Tensor, target: Tensor) -> Tensor:
    """torchvision's detection box loss (smooth-L1, beta 1/9), summed per row."""
    return F.smooth_l1_loss(pred, target, beta=1 / 9, reduction="none").sum(dim=1)


class LevelLossRPN(_LevelLosses, RegionProposalNetwork):
    """A :class:`RegionProposalNetwork` that also reports its losses per FPN level."""

    _num_anchors_per_level: list[int] | None = None

    def filter_proposals(self, proposals, objectness, image_shapes, num_anchors_per_level):
        """torchvision's; records the anchors per level, which `compute_loss` needs."""
        self._num_anchors_per_level = list(num_anchors_per_level)
        return super().filter_proposals(proposals, objectness, image_shapes,
                                        num_anchors_per_level)

    def compute_loss(self, objectness: Tensor, pred_bbox_deltas: Tensor, labels: list[Tensor],
                     regression_targets: list[Tensor]) -> tuple[Tensor, Tensor]:
        """torchvision's two RPN losses, computed per sampled anchor and also summed per level."""
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

        # anchors are image-major, level-minor (concat_box_prediction_layers)
        per_level = torch.tensor(self._num_anchors_per_level, device=objectness.device)
        level_of = torch.arange(len(per_level), device=objectness.device).repeat_interleave(
            per_level).repeat(len(sampled_pos))
        zeros = objectness.new_zeros(len(per_level))
        self.level_losses = (zeros.index_add(0, level_of[sampled], obj_rows)
                             .index_add(0, level_of[pos], box_rows))
        return obj_rows.sum(), box_rows.sum()


class LossRoIHeads(_LevelLosses, RoIHeads):
    """A box-only :class:`RoIHeads` whose training loss follows `classifier_loss` and is also
    reported per FPN level (`level_losses`); inference is torchvision's."""

    classifier_loss: RoIClassifierLoss  # set by install_heads

    def forward(self, features, proposals, image_shapes, targets=None):
        """Training: sample RoIs, run the box head, return the losses; eval: torchvision's."""
        if not self.training:
            return super().forward(features, proposals, image_shapes, targets)
        if targets is None:
            raise ValueError("targets should not be None in training")
        proposals, _, labels, regression_targets = self.select_training_samples(
            proposals, targets)
        box_features = self.box_head(self.box_roi_pool(features, proposals, image_shapes))
        class_logits, box_regression = self.box_predictor(box_features)

        per_image = [len(lab) for lab in labels]
        labels_cat = torch.cat(labels, dim=0)
        targets_cat = torch.cat(regression_targets, dim=0)
        n = max(labels_cat.numel(), 1)
        cls_rows = self._classifier_rows(class_logits, box_regression, labels_cat, proposals,
                                         image_shapes, targets, per_image) / n
        pos = torch.where(labels_cat > 0)[0]
        box_regression = box_regression.reshape(labels_cat.numel(), -1, 4)
        box_rows = _smooth_l1_rows(box_regression[pos, labels_cat[pos]], targets_cat[pos]) / n

        # level each RoI is pooled from, as an index into the backbone's feature order
        names = list(features)
        pooled = [names.index(name) for name in self.box_roi_pool.featmap_names
                  if name in features]
        level_of = torch.tensor(pooled, device=labels_cat.device)[
            self.box_roi_pool.map_levels(proposals)]
        zeros = class_logits.new_zeros(len(names))
        self.level_losses = zeros.index_add(0, level_of, cls_rows).index_add(
            0, level_of[pos], box_rows)
        return [], {"loss_classifier": cls_rows.sum(), "loss_box_reg": box_rows.sum()}

    def _classifier_rows(self, class_logits, box_regression, labels, proposals, image_shapes,
                         targets, per_image) -> Tensor:
        """Per-RoI classification loss (before the mean over RoIs)."""
        cfg = self.classifier_loss
        pg = cfg.kind == "policy_gradient"
        rows = roi_classification_loss(
            "ce" if pg else cfg.kind, class_logits, labels, alpha=cfg.focal_alpha,
            gamma=cfg.focal_gamma, class_weights=cfg.class_weights, reduction="none")
        if not pg:
            return rows
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
        cfg.info = {key: sum(float(d[key]) for d in infos) / len(infos)
                    for key in ("baseline_ap", "mean_reward", "mean_advantage")}
        return rows * torch.cat(coefficients).to(rows.dtype)


def install_heads(model) -> None:
    """Give a torchvision Faster R-CNN the per-level RPN and the configurable RoI head.

    The instances are re-classed in place (the subclasses add no state of their own), so
    parameters, buffers, state-dict keys and inference are unchanged.
    """
    if model.roi_heads.has_mask() or model.roi_heads.has_keypoint():
        raise ValueError("LossRoIHeads handles box detection only (no masks or keypoints)")
    model.rpn.__class__ = LevelLossRPN
    model.roi_heads.__class__ = LossRoIHeads
    model.roi_heads.classifier_loss = RoIClassifierLoss()


def level_losses(model) -> Tensor:
    """The last training step's total loss split by FPN level ([L], sums to the total)."""
    return model.rpn.level_losses + model.roi_heads.level_losses
