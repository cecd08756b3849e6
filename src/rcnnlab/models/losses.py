"""RoI classifier losses for the Fast R-CNN head: cross-entropy, softmax focal loss and
class-weighted cross-entropy (:func:`roi_classification_loss` picks one; the RoI head in
:mod:`rcnnlab.models.heads` uses it per RoI, with torchvision's box loss unchanged).

Every loss here reduces with ``"mean"`` over the number of RoIs, like torchvision's, so the
classifier term keeps the same scale against the box and RPN terms whichever is chosen.

Focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017) on a softmax head:
``FL = -alpha_t (1 - p_t)^gamma log p_t`` with ``p_t`` the softmax probability of the target. The
paper defines alpha for the binary (sigmoid) case. For a softmax head with a background class this
follows Detectron's softmax focal loss (FAIR's Caffe2 op for RetinaNet): ``alpha_t = alpha`` for
foreground targets (label >= 1) and ``1 - alpha`` for background (label 0),
``z = (label == 0) * (1 - alpha) + (label >= 1) * alpha`` in
https://github.com/pytorch/pytorch/blob/4daf879e47073d0d12819e6da940170fb2f888fe/modules/detectron/softmax_focal_loss_op.cu
(mmcv's ``softmax_focal_loss``, mmcv/ops/csrc/common/cuda/softmax_focal_loss_cuda_kernel.cuh,
applies one alpha to every class instead, which only rescales the loss; its ``"mean"`` in
mmcv/ops/focal_loss.py is the sum over samples / N, as here). ``alpha=None`` turns the weighting
off (alpha_t = 1), so ``gamma=0, alpha=None`` is plain cross-entropy. The default alpha = 0.25 is
RetinaNet's, tuned for dense detectors where background dominates by ~1000:1; it weights a
background RoI 3x a foreground one and scales the loss by 0.25..0.75. The RoI head already samples
its RoIs (25 % positives by torchvision's default), so ``alpha=None`` is worth trying there.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from rcnnlab.data.coco import CocoData

LOSS_KINDS = ("ce", "focal", "weighted_ce")
SMOOTHED_KINDS = ("ce", "weighted_ce")  # the losses that take label smoothing


def focal_loss(logits: Tensor, labels: Tensor, alpha: float | None = 0.25, gamma: float = 2.0,
               reduction: str = "mean") -> Tensor:
    """Softmax focal loss ``-alpha_t (1 - p_t)^gamma log p_t`` of logits [N, C+1], labels [N].

    ``alpha_t`` is ``alpha`` for foreground labels and ``1 - alpha`` for background (label 0), as in
    Detectron (see the module docstring); ``alpha=None`` means ``alpha_t = 1``.
    ``reduction``: ``"mean"`` (sum / N), ``"sum"`` or ``"none"`` ([N]). With ``gamma=0`` and
    ``alpha=None`` the result is bit-identical to ``F.cross_entropy(logits, labels)``.
    """
    log_p = F.log_softmax(logits, dim=1)
    # The clamp keeps the gradient of (1 - p)^gamma finite for gamma < 1 where p rounds to 1
    # (inf * log 1 would be NaN); it changes the value only below the smallest normal float.
    one_minus_p = (1 - log_p.exp()).clamp_min(torch.finfo(log_p.dtype).tiny)
    weighted = one_minus_p.pow(gamma) * log_p
    if alpha is not None:
        alpha_c = logits.new_full((logits.shape[1],), alpha)
        alpha_c[0] = 1 - alpha
        weighted = weighted * alpha_c
    # nll_loss picks the target column and reduces: the same call cross_entropy makes after its
    # log_softmax, so gamma=0 / alpha=None reproduces it exactly (pow(0) is exactly 1).
    return F.nll_loss(weighted, labels, reduction=reduction)


def weighted_cross_entropy(logits: Tensor, labels: Tensor, class_weights: Tensor,
                           reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """Class-weighted cross-entropy ``w[y_i] * CE_i`` of logits [N, C+1], labels [N].

    ``class_weights`` is [C+1] (index 0 = background), e.g. :func:`inverse_frequency_weights`.
    ``"mean"`` divides the weighted sum by N, the number of RoIs, not by the sum of the targets'
    weights as ``F.cross_entropy(weight=...)`` does: torch's normalisation cancels the weights
    whenever a batch holds one class only and rescales the loss with each batch's class mix, while
    dividing by N makes a class's weight a fixed multiplier of its RoIs' loss, keeps the loss
    equal to cross-entropy when all weights are 1, and keeps it on cross-entropy's scale when the
    weights average about 1 (as :func:`inverse_frequency_weights` makes them).
    ``label_smoothing`` is ``F.cross_entropy``'s (each class's term carries its own weight).
    """
    weight = class_weights.to(device=logits.device, dtype=logits.dtype)
    if reduction == "mean":
        return F.cross_entropy(logits, labels, weight=weight, reduction="sum",
                               label_smoothing=label_smoothing) / labels.numel()
    return F.cross_entropy(logits, labels, weight=weight, reduction=reduction,
                           label_smoothing=label_smoothing)


def class_counts(data: CocoData) -> list[int]:
    """Training instances per class: element ``k - 1`` counts the boxes of model label ``k``.

    Crowd boxes are left out, as they are of the training targets (``CocoDetection.target``).
    """
    counts = [0] * len(data.categories)
    label_of = data.label_of
    for img in data.images:
        for ann in data.annotations.get(img["id"], []):
            if not ann.get("iscrowd", 0):
                counts[label_of[ann["category_id"]] - 1] += 1
    return counts


def inverse_frequency_weights(counts: Sequence[int], background_weight: float = 1.0,
                              normalise: str = "mean") -> Tensor:
    """Class weights [C+1] from per-class instance counts [C] (as :func:`class_counts` gives).

    Foreground weight ``w_c = 1 / f_c`` with ``f_c = n_c / sum(n)``; ``normalise="mean"`` rescales
    them so that the weights of the classes with instances average 1 (the loss stays on
    cross-entropy's scale), ``"none"`` keeps ``1 / f_c``. A class with no instance never occurs as
    a target in these counts, so its weight only matters if they come from another split; it gets
    the largest weight (the rarest class's) rather than infinity, and is left out of the mean.
    Index 0 is the background, ``background_weight``, not normalised.
    """
    n = torch.as_tensor(counts, dtype=torch.float64)
    if n.ndim != 1 or (n < 0).any():
        raise ValueError(f"counts must be a list of non-negative numbers, got {counts!r}")
    seen = n > 0
    if not seen.any():
        raise ValueError("no class has an instance: class weights are undefined")
    weights = n.sum() / n
    if normalise == "mean":
        weights = weights / weights[seen].mean()
    elif normalise != "none":
        raise ValueError(f"normalise must be 'mean' or 'none', got {normalise!r}")
    weights[~seen] = weights[seen].max()
    return torch.cat([weights.new_tensor([background_weight]), weights]).float()


def roi_classification_loss(kind: str, class_logits: Tensor, labels: Tensor, *,
                            alpha: float | None = 0.25, gamma: float = 2.0,
                            class_weights: Tensor | None = None,
                            reduction: str = "mean", label_smoothing: float = 0.0) -> Tensor:
    """The RoI classification loss ``kind`` ("ce", "focal" or "weighted_ce").

    ``alpha`` and ``gamma`` are the focal loss's; ``class_weights`` [C+1] is required by
    "weighted_ce" and refused by the others (a weight that is silently unused is a config error).
    ``reduction``: ``"mean"`` over RoIs, ``"sum"`` or ``"none"`` (one value per RoI).
    ``label_smoothing`` ε (cross-entropy kinds only): the target is ``1 - ε`` on the true class
    plus ``ε / (C + 1)`` on every class, background included (Szegedy et al. 2016, as in
    ``F.cross_entropy``), so the classifier is not pushed toward certainty on every RoI.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown RoI classification loss {kind!r}; choose one of {LOSS_KINDS}")
    if (class_weights is None) == (kind == "weighted_ce"):
        raise ValueError(f"class_weights are {'required' if class_weights is None else 'unused'}"
                         f" with the {kind!r} loss")
    if label_smoothing and kind not in SMOOTHED_KINDS:
        raise ValueError(f"label smoothing is for the {' and '.join(SMOOTHED_KINDS)} losses only")
    if kind == "focal":
        return focal_loss(class_logits, labels, alpha=alpha, gamma=gamma, reduction=reduction)
    if kind == "weighted_ce":
        return weighted_cross_entropy(class_logits, labels, class_weights, reduction=reduction,
                                      label_smoothing=label_smoothing)
    return F.cross_entropy(class_logits, labels, reduction=reduction,
                           label_smoothing=label_smoothing)
