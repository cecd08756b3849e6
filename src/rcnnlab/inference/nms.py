"""Suppressing and fusing detections: NMS, Soft-NMS, weighted boxes fusion, and box mapping for TTA.

Everything works on one image's detections as torch tensors on any device: boxes xyxy in absolute
pixels, shape (N, 4); scores, shape (N,); labels (model labels), shape (N,). Boxes of different
labels never interact.

- Soft-NMS: N. Bodla, B. Singh, R. Chellappa, L. S. Davis, "Soft-NMS -- Improving Object
  Detection With One Line of Code", ICCV 2017 (arXiv:1704.04503); reference implementation
  ``cpu_soft_nms`` in https://github.com/bharatsingh430/soft-nms/blob/master/lib/nms/cpu_nms.pyx.
- Weighted boxes fusion: R. Solovyev, W. Wang, T. Gabruseva, "Weighted boxes fusion: Ensembling
  boxes from different object detection models", Image and Vision Computing 107 (2021);
  reference implementation ``weighted_boxes_fusion`` in ``ensemble_boxes/ensemble_boxes_wbf.py``
  of https://github.com/ZFTurbo/Weighted-Boxes-Fusion (PyPI ``ensemble-boxes`` 1.0.9).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor
from torchvision.ops import batched_nms

Detections = tuple[Tensor, Tensor, Tensor]
"""One image's (boxes xyxy (N, 4), scores (N,), labels (N,))."""

SuppressMethod = Literal["nms", "linear", "gaussian"]
MergeMethod = Literal["nms", "wbf", "soft-linear", "soft-gaussian"]

# (IoU threshold, score threshold) used when a caller leaves them out: 0.5 is torchvision's RoI
# heads NMS threshold; 0.3 and 0.001 are the Soft-NMS paper's N_t and the reference code's
# `threshold`; 0.55 and 0.0 are ensemble_boxes' `iou_thr` and `skip_box_thr`.
_DEFAULTS: dict[str, tuple[float, float]] = {
    "nms": (0.5, 0.0),
    "linear": (0.3, 0.001),
    "gaussian": (0.3, 0.001),
    "wbf": (0.55, 0.0),
}
_SOFT_METHODS = {"soft-linear": "linear", "soft-gaussian": "gaussian"}


def _areas(boxes: Tensor) -> Tensor:
    return (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])


def _iou_with(box: Tensor, area: Tensor, boxes: Tensor, areas: Tensor) -> Tensor:
    """IoU of one box (4,) with each of `boxes` (N, 4), areas given; 0 where the union is 0."""
    top_left = torch.maximum(box[:2], boxes[:, :2])
    bottom_right = torch.minimum(box[2:], boxes[:, 2:])
    wh = (bottom_right - top_left).clamp(min=0)
    inter = wh[:, 0] * wh[:, 1]
    # Two zero-area boxes have a zero union: the clamp makes their IoU 0 instead of NaN.
    return inter / (area + areas - inter).clamp(min=torch.finfo(boxes.dtype).tiny)


def soft_nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    method: Literal["linear", "gaussian"] = "gaussian",
    iou_threshold: float = 0.3,
    sigma: float = 0.5,
    score_threshold: float = 0.001,
    max_detections: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Soft-NMS per label: indices of the kept boxes and their decayed scores.

    Follows Bodla et al. (ICCV 2017), algorithm 1, as the reference ``cpu_soft_nms`` does: the
    box M with the highest current score is selected, then the score s_i of every remaining box
    of the same label is decayed by its IoU with M:

    - ``"linear"``: s_i <- s_i * (1 - IoU(M, b_i)) if IoU(M, b_i) >= iou_threshold, else s_i
      (the paper's eq. 2; the reference code tests ``ov > Nt``, which only differs at equality);
    - ``"gaussian"``: s_i <- s_i * exp(-IoU(M, b_i)**2 / sigma) for every remaining box (the
      paper's eq. 3 and the reference's ``np.exp(-(ov * ov)/sigma)``); iou_threshold is unused.

    A box whose score is below ``score_threshold`` is removed, whether it starts there or decays
    there (the reference keeps a selected box even when its starting score is below it). IoU is
    the continuous area ratio of torchvision, not the reference's legacy "+1 pixel" one.

    Returns ``(keep, new_scores)``: int64 indices into the inputs and the kept boxes' scores after
    decay, both ordered by descending new score (ties: lower index first) and truncated to
    ``max_detections`` when given; same device as the inputs.
    """
    if method not in ("linear", "gaussian"):
        raise ValueError(f"soft_nms method must be 'linear' or 'gaussian', got {method!r}")
    if method == "gaussian" and sigma <= 0:
        raise ValueError(f"sigma must be > 0, got {sigma}")
    candidates = torch.nonzero(scores >= score_threshold).flatten()
    boxes = boxes[candidates]
    current = scores[candidates].clone()
    labels = labels[candidates]
    areas = _areas(boxes)
    alive = torch.ones_like(current, dtype=torch.bool)
    limit = len(candidates) if max_detections is None else min(len(candidates), max_detections)
    selected: list[int] = []
    # Scores only ever decrease, so each selected maximum is final and no later selection can
    # beat it: selection order is already the descending order of the new scores.
    while len(selected) < limit:
        best = int(current.masked_fill(~alive, float("-inf")).argmax())
        if not bool(alive[best]):
            break
        selected.append(best)
        alive[best] = False
        iou = _iou_with(boxes[best], areas[best], boxes, areas)
        if method == "linear":
            decay = torch.where(iou >= iou_threshold, 1 - iou, torch.ones_like(iou))
        else:
            decay = torch.exp(-(iou * iou) / sigma)
        rivals = alive & (labels == labels[best])
        current = torch.where(rivals, current * decay, current)
        alive &= current >= score_threshold
    order = torch.tensor(selected, dtype=torch.int64, device=candidates.device)
    return candidates[order], current[order]


def nms(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    iou_threshold: float = 0.5,
    score_threshold: float = 0.0,
    max_detections: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Hard NMS per label (torchvision's ``batched_nms``) with the return shape of `soft_nms`.

    Boxes scoring below ``score_threshold`` are dropped first; a box is suppressed by a
    higher-scoring box of its label when their IoU is > ``iou_threshold``. Returns ``(keep,
    scores[keep])`` ordered by descending score, truncated to ``max_detections`` when given.
    """
    candidates = torch.nonzero(scores >= score_threshold).flatten()
    keep = batched_nms(boxes[candidates], scores[candidates], labels[candidates], iou_threshold)
    keep = candidates[keep[:max_detections]]
    return keep, scores[keep]


def suppress(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    *,
    method: SuppressMethod = "nms",
    iou_threshold: float | None = None,
    sigma: float = 0.5,
    score_threshold: float | None = None,
    max_detections: int | None = None,
) -> Detections:
    """The surviving ``(boxes, scores, labels)`` after hard NMS or Soft-NMS, best first.

    ``method`` is ``"nms"`` (`nms`) or ``"linear"`` / ``"gaussian"`` (`soft_nms`, whose
    decayed scores are returned). Thresholds left as None take the method's usual value: IoU 0.5
    and score 0.0 for NMS, IoU 0.3 and score 0.001 for Soft-NMS.
    """
    if method not in ("nms", "linear", "gaussian"):
        raise ValueError(f"suppress method must be 'nms', 'linear' or 'gaussian', got {method!r}")
    default_iou, default_score = _DEFAULTS[method]
    iou_threshold = default_iou if iou_threshold is None else iou_threshold
    score_threshold = default_score if score_threshold is None else score_threshold
    if method == "nms":
        keep, new_scores = nms(boxes, scores, labels, iou_threshold=iou_threshold,
                               score_threshold=score_threshold, max_detections=max_detections)
    else:
        keep, new_scores = soft_nms(boxes, scores, labels, method=method,
                                    iou_threshold=iou_threshold, sigma=sigma,
                                    score_threshold=score_threshold,
                                    max_detections=max_detections)
    return boxes[keep], new_scores, labels[keep]


def _fuse_label(
    boxes: Tensor, scores: Tensor, iou_threshold: float, conf_type: str, n_models: int
) -> tuple[Tensor, Tensor]:
    """WBF clusters of one label's boxes, given by descending score: (fused boxes, scores)."""
    n = len(scores)
    fused = boxes.new_zeros((n, 4))
    weighted_sum = boxes.new_zeros((n, 4))
    score_sum = scores.new_zeros(n)
    score_max = scores.new_zeros(n)
    count = scores.new_zeros(n)
    n_clusters = 0
    for box, score in zip(boxes, scores, strict=True):
        target = n_clusters
        if n_clusters:
            # Matched against the clusters' current fused boxes, not their members, as in the
            # reference's find_matching_box_fast.
            ious = _iou_with(box, _areas(box[None])[0], fused[:n_clusters],
                             _areas(fused[:n_clusters]))
            best_iou, best = ious.max(0)
            if best_iou > iou_threshold:
                target = int(best)
        if target == n_clusters:
            n_clusters += 1
        weighted_sum[target] += score * box
        score_sum[target] += score
        score_max[target] = torch.maximum(score_max[target], score)
        count[target] += 1
        fused[target] = weighted_sum[target] / score_sum[target]
    count = count[:n_clusters]
    if conf_type == "avg":
        # Mean score, scaled down when fewer boxes than models found the object (allows_overflow
        # False in the reference, so a cluster with extra boxes of one model stays <= its mean).
        fused_scores = score_sum[:n_clusters] / count * count.clamp(max=n_models) / n_models
    else:
        fused_scores = score_max[:n_clusters]
    return fused[:n_clusters], fused_scores


def weighted_box_fusion(
    detections: Sequence[Detections],
    *,
    iou_threshold: float = 0.55,
    skip_box_threshold: float = 0.0,
    conf_type: Literal["avg", "max"] = "avg",
) -> Detections:
    """Weighted boxes fusion of several models' (or augmentations') detections of one image.

    Matches ``ensemble_boxes.weighted_boxes_fusion`` with equal model weights: per label, boxes
    scoring >= ``skip_box_threshold`` are taken by descending score (ties: input order) and each
    joins the cluster whose current fused box it overlaps best if that IoU is
    > ``iou_threshold``, else starts a new cluster. A fused box is the score-weighted mean of its
    cluster's boxes; its score is, for ``conf_type="avg"``, the cluster's mean score times
    ``min(cluster size, n_models) / n_models`` (a box seen by one of two models is halved), for
    ``"max"`` the cluster's highest score. ``n_models`` is ``len(detections)``, empty ones
    included.

    The reference takes coordinates normalised to [0, 1] and clips them there; this takes
    absolute xyxy pixels and does not clip. Normalising changes neither the weighted means
    (they commute with scaling each axis) nor IoU (invariant to it), so the results agree up
    to that scale. As in the reference, boxes of zero area are dropped; so are boxes of
    non-positive score, which would give their cluster no weight to average by.

    Returns ``(boxes, scores, labels)`` ordered by descending fused score, with the dtypes and
    device of the first entry. The clustering is sequential, so it runs on the CPU.
    """
    if not detections:
        raise ValueError("weighted_box_fusion needs at least one set of detections")
    if conf_type not in ("avg", "max"):
        raise ValueError(f"conf_type must be 'avg' or 'max', got {conf_type!r}")
    first_boxes, first_scores, first_labels = detections[0]
    boxes = torch.cat([d[0].detach().cpu().reshape(-1, 4) for d in detections]).double()
    scores = torch.cat([d[1].detach().cpu().reshape(-1) for d in detections]).double()
    labels = torch.cat([d[2].detach().cpu().reshape(-1) for d in detections])
    usable = (scores >= skip_box_threshold) & (scores > 0) & (_areas(boxes) > 0)
    boxes, scores, labels = boxes[usable], scores[usable], labels[usable]
    fused_boxes, fused_scores, fused_labels = [boxes.new_zeros((0, 4))], [scores[:0]], [labels[:0]]
    for label in labels.unique():
        mine = torch.nonzero(labels == label).flatten()
        mine = mine[torch.argsort(scores[mine], descending=True, stable=True)]
        label_boxes, label_scores = _fuse_label(boxes[mine], scores[mine], iou_threshold,
                                                conf_type, len(detections))
        fused_boxes.append(label_boxes)
        fused_scores.append(label_scores)
        fused_labels.append(label.expand(len(label_scores)))
    out_boxes, out_scores = torch.cat(fused_boxes), torch.cat(fused_scores)
    out_labels = torch.cat(fused_labels)
    order = torch.argsort(out_scores, descending=True, stable=True)
    device = first_boxes.device
    return (out_boxes[order].to(device=device, dtype=first_boxes.dtype),
            out_scores[order].to(device=device, dtype=first_scores.dtype),
            out_labels[order].to(device=device, dtype=first_labels.dtype))


def merge_detections(
    detections: Sequence[Detections],
    *,
    method: MergeMethod = "nms",
    iou_threshold: float | None = None,
    sigma: float = 0.5,
    score_threshold: float | None = None,
    max_detections: int | None = None,
    conf_type: Literal["avg", "max"] = "avg",
) -> Detections:
    """Merge one image's detections from several test-time augmentations into one set.

    Each entry must already be mapped back to the original image (`hflip_boxes`,
    `scale_boxes`). ``"nms"``, ``"soft-linear"`` and ``"soft-gaussian"`` concatenate the entries
    and `suppress` them; ``"wbf"`` fuses them with `weighted_box_fusion`, where
    ``score_threshold`` is its ``skip_box_threshold`` (applied before fusing) and ``conf_type``
    its score rule. Thresholds left as None take the method's usual value (IoU 0.5 / 0.3 / 0.3 /
    0.55, score 0.0 / 0.001 / 0.001 / 0.0 for nms / soft-linear / soft-gaussian / wbf). Returns
    ``(boxes, scores, labels)`` best first, at most ``max_detections`` of them when given.
    """
    if not detections:
        raise ValueError("merge_detections needs at least one set of detections")
    if method == "wbf":
        default_iou, default_score = _DEFAULTS["wbf"]
        boxes, scores, labels = weighted_box_fusion(
            detections,
            iou_threshold=default_iou if iou_threshold is None else iou_threshold,
            skip_box_threshold=default_score if score_threshold is None else score_threshold,
            conf_type=conf_type,
        )
        return boxes[:max_detections], scores[:max_detections], labels[:max_detections]
    if method != "nms" and method not in _SOFT_METHODS:
        raise ValueError(
            f"merge method must be 'nms', 'wbf', 'soft-linear' or 'soft-gaussian', got {method!r}"
        )
    return suppress(
        torch.cat([d[0].reshape(-1, 4) for d in detections]),
        torch.cat([d[1].reshape(-1) for d in detections]),
        torch.cat([d[2].reshape(-1) for d in detections]),
        method=_SOFT_METHODS.get(method, "nms"),
        iou_threshold=iou_threshold,
        sigma=sigma,
        score_threshold=score_threshold,
        max_detections=max_detections,
    )


def hflip_boxes(boxes: Tensor, width: float) -> Tensor:
    """Mirror xyxy boxes about the vertical axis of an image ``width`` pixels wide.

    x1' = width - x2 and x2' = width - x1, so the result is xyxy again; applying it twice gives
    the boxes back. Maps detections on a horizontally flipped image to the original one.
    """
    x1, y1, x2, y2 = boxes.unbind(-1)
    return torch.stack((width - x2, y1, width - x1, y2), dim=-1)


def scale_boxes(boxes: Tensor, factor: float | tuple[float, float]) -> Tensor:
    """Multiply xyxy box coordinates by ``factor``, one number or ``(x factor, y factor)``.

    Detections on an image resized by s (new size = s * old size) map back to the original with
    ``factor=1 / s``; a pair covers resizes whose two axes were rounded differently.
    """
    fx, fy = (factor, factor) if isinstance(factor, int | float) else factor
    return boxes * boxes.new_tensor([fx, fy, fx, fy])
