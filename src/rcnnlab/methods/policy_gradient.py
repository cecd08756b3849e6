"""Policy-gradient classification loss for the RoI head (Rao et al., CVPR 2018).

Y. Rao, D. Lin, J. Lu, J. Zhou, "Learning Globally Optimized Object Detector via Policy
Gradient", CVPR 2018, pp. 6190-6198, doi:10.1109/CVPR.2018.00648
(https://openaccess.thecvf.com/content_cvpr_2018/papers/Rao_Learning_Globally_Optimized_CVPR_2018_paper.pdf).

Sources. Only the abstract could be read (https://mlanthology.org/cvpr/2018/rao2018cvpr-learning/;
an excerpt of the paper's first page at https://vdocuments.net/learning-globally-optimized-object-detector-via-policy-the-key-idea-of-global.html):
"the cross-entropy gradient is adaptively adjusted according to overall mean Average Precision
(mAP) of the current state for each detection candidate". A CVPR 2018 survey note
(https://github.com/cvpaperchallenge/CVPR2018_Survey/pull/371) reports +2.0 points of COCO-style mAP
for Faster R-CNN and +1.8 with FPN. No reference implementation was found. The method section was
not reachable, so the equations below are the statement of the paper this project was specified
from, written out in full here, and each point where that statement leaves a choice is settled
here and marked "Reading".

The method. The detection candidates of one image are the RoIs assigned a ground-truth class
``y_b >= 1``; candidate ``b`` is the detection (box ``b``, class ``y_b``, score ``p_b``), where
``p_b`` is its softmax score for ``y_b``. An action keeps each candidate independently with
probability ``p_b`` (a Bernoulli per candidate) and is rewarded with the COCO-style AP of the
kept detections against the image's ground truth. ``r(b)`` is the mean reward of the ``k``
sampled actions that keep ``b``; the baseline ``r'`` is the reward of the detections ordinary
per-class NMS keeps. The cross-entropy gradient on the true-class logit, ``p_b - 1``, becomes
(eq. 11) ``((r(b) - r') + gamma) * (p_b - 1)``, and for the candidates NMS keeps only
``gamma * (p_b - 1)`` remains. ``gamma = 0`` is policy gradient alone; ``gamma = 1`` with
``r(b) = r'`` is cross-entropy.

Readings:

* Reward (:func:`image_ap`): COCO's AP of one image, i.e. what COCOeval reports as AP on a
  dataset made of that image alone: greedy matching in descending score order to the unmatched
  ground truth of highest IoU, 101-point interpolated precision, at most 100 detections per
  class, averaged over IoU 0.50:0.05:0.95 and over the classes that have ground truth in the
  image. As in COCO, a class without ground truth in the image does not enter the mean, so
  detections of such a class are not penalised. An image without ground truth scores 0.0 (COCO
  has no value there); every action then scores the same, so the advantage is 0.
* ``r(b)`` when no sampled action kept ``b``: ``r'``, so its advantage is 0 and it gets the
  ``gamma`` term only (:func:`expected_rewards`).
* "Rewards of boxes already selected by NMS are set to 0" is read as their advantage
  ``r(b) - r'`` being set to 0, not ``r(b)`` (:func:`pg_coefficients`): that is the reading under
  which only the ``gamma`` term remains, whereas ``r(b) = 0`` would leave ``gamma - r'`` and push
  down the very boxes NMS keeps, the harder the better the NMS result.
* Gradient on the other logits (:func:`pg_surrogate_loss`): eq. 11 concerns the true-class logit.
  Here the whole cross-entropy of the candidate is scaled by its coefficient, so logit
  ``j != y_b`` receives ``coefficient * p_j``; the row's gradient still sums to zero like
  cross-entropy's, i.e. the cross-entropy gradient is "adjusted" as the abstract says.
* Normalisation: the weighted cross-entropy is averaged over all RoIs (background ones included),
  as torchvision's ``fastrcnn_loss`` averages its cross-entropy, so ``gamma = 1`` with zero
  advantage gives exactly the ordinary loss. The autograd gradient is therefore eq. 11 divided
  by the number of RoIs.
* Background RoIs (``y_b = 0``) are not detections of any class, so they are not candidates: they
  keep ordinary cross-entropy (coefficient 1, whatever ``gamma``), without which ``gamma = 0``
  would stop the classifier learning background.
* Boxes: the reward is computed on the boxes the caller passes, one per RoI. Pass the boxes the
  detector would output for the RoI's assigned class (the regressed boxes, detached), as NMS and
  mAP see them at test time; the proposals themselves also work, as an approximation.

Rewards are computed on the CPU in float64 (a handful of small tensors; the greedy matching is a
loop over the candidates that can match, batched over actions and IoU thresholds).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.ops import batched_nms, box_iou

# np.linspace exactly as COCOeval builds its parameters, so thresholds compare bit for bit.
COCO_IOU_THRESHOLDS: tuple[float, ...] = tuple(float(t) for t in np.linspace(0.5, 0.95, 10))
"""IoU thresholds COCO averages AP over: 0.50, 0.55, ..., 0.95."""

_RECALL_THRESHOLDS = torch.from_numpy(np.linspace(0.0, 1.0, 101))
_MAX_DETS = 100  # COCO's largest maxDets, applied per image and class
_EPS = float(np.spacing(1))  # COCO's guard in tp / (tp + fp)


def subset_image_ap(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    subsets: Tensor,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
) -> Tensor:
    """COCO-style AP of one image (see :func:`image_ap`) for each subset of its detections.

    ``boxes`` [n, 4] xyxy, ``scores`` [n], ``labels`` [n] are all the detections; ``subsets`` is a
    bool [K, n] whose row ``i`` selects the detections of subset ``i``. Returns a float64 [K] CPU
    tensor. One call scores all subsets at once, which is what makes sampled actions cheap.
    """
    subsets = subsets.detach().cpu().bool()
    num_subsets, n = subsets.shape
    if boxes.shape[0] != n or scores.shape[0] != n or labels.shape[0] != n:
        raise ValueError(
            f"subsets cover {n} detections but boxes/scores/labels have "
            f"{boxes.shape[0]}/{scores.shape[0]}/{labels.shape[0]}"
        )
    gt_labels = gt_labels.detach().cpu().long()
    classes = torch.unique(gt_labels)
    if classes.numel() == 0 or n == 0:
        return torch.zeros(num_subsets, dtype=torch.float64)

    order = torch.sort(scores.detach().cpu(), descending=True, stable=True).indices
    boxes = boxes.detach().cpu().double()[order]
    labels = labels.detach().cpu().long()[order]
    subsets = subsets[:, order]
    in_class = labels[None, :] == classes[:, None]  # [C, n]
    # COCO scores only the top 100 detections of each class in an image.
    rank = torch.cumsum(subsets[:, None, :] & in_class[None], dim=-1)  # [K, C, n]
    active = subsets & ((rank <= _MAX_DETS) | ~in_class[None]).all(dim=1)

    # COCO gives an IoU tie between unmatched ground truths to the later one; with the ground
    # truth reversed, argmax (which returns the first maximum) does the same.
    gt_boxes = gt_boxes.detach().cpu().double().flip(0)
    gt_labels = gt_labels.flip(0)
    thresholds = torch.as_tensor(iou_thresholds, dtype=torch.float64).clamp(max=1 - 1e-10)
    ious = box_iou(boxes, gt_boxes)  # [n, G]
    same_class = labels[:, None] == gt_labels[None, :]
    can_match = (ious[:, None, :] >= thresholds[None, :, None]) & same_class[:, None, :]

    # Greedy matching is sequential in score order; only detections that overlap a ground truth
    # of their class enough, in some subset, can be true positives, so only those are visited.
    # The loop runs in numpy, whose per-call overhead on these tiny arrays is well below torch's.
    ious_np, can_match_np, active_np = ious.numpy(), can_match.numpy(), active.numpy()
    matched = np.zeros((num_subsets, thresholds.numel(), gt_boxes.shape[0]), dtype=bool)
    tp_np = np.zeros((num_subsets, thresholds.numel(), n), dtype=bool)
    gt_index = np.arange(gt_boxes.shape[0])
    for d in np.flatnonzero(can_match_np.any(axis=(1, 2)) & active_np.any(axis=0)):
        free_iou = np.where(can_match_np[d] & ~matched, ious_np[d], -1.0)  # [K, T, G]
        best_gt = free_iou.argmax(axis=-1)
        hit = (free_iou.max(axis=-1) >= 0) & active_np[:, d, None]
        matched |= hit[..., None] & (gt_index == best_gt[..., None])
        tp_np[:, :, d] = hit
    tp = torch.from_numpy(tp_np)

    # Per class, the precision/recall curve over the detections in score order. Positions of
    # other classes or unselected detections repeat the previous point, which leaves COCO's
    # interpolated precision unchanged, so every class and subset uses the full sequence.
    fp = active[:, None, :] & ~tp
    tp_sum = (tp[:, :, None, :] & in_class).cumsum(dim=-1).double()  # [K, T, C, n]
    fp_sum = (fp[:, :, None, :] & in_class).cumsum(dim=-1).double()
    num_class_gt = (gt_labels[None, :] == classes[:, None]).sum(dim=1).double()  # [C]
    recall = tp_sum / num_class_gt[:, None]
    precision = tp_sum / (tp_sum + fp_sum + _EPS)
    precision = precision.flip(-1).cummax(dim=-1).values.flip(-1)
    queries = _RECALL_THRESHOLDS.expand(*recall.shape[:-1], -1).contiguous()
    index = torch.searchsorted(recall, queries, side="left")
    interpolated = precision.gather(-1, index.clamp(max=n - 1)) * (index < n)
    return interpolated.mean(dim=-1).mean(dim=(1, 2))


def image_ap(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    iou_thresholds: Sequence[float] = COCO_IOU_THRESHOLDS,
) -> float:
    """COCO-style AP (0.50:0.95) of one image's detections against its ground truth.

    Equal to COCOeval's AP on a dataset holding only this image: detections matched greedily in
    descending score order to the unmatched same-class ground truth of highest IoU, 101-point
    interpolated precision, at most 100 detections per class, averaged over ``iou_thresholds``
    and over the classes present in ``gt_labels``. Detections of classes absent from the ground
    truth do not count; an image without ground truth scores 0.0. Boxes are xyxy.
    """
    everything = torch.ones(1, boxes.shape[0], dtype=torch.bool)
    return float(
        subset_image_ap(boxes, scores, labels, gt_boxes, gt_labels, everything, iou_thresholds)[0]
    )


def sample_actions(probs: Tensor, k: int, generator: torch.Generator | None = None) -> Tensor:
    """``k`` actions over the candidates: bool [k, n], candidate ``b`` kept with prob ``probs[b]``.

    Candidates are drawn independently, so an action has probability prod(p_b) over the kept
    candidates times prod(1 - p_b) over the others. ``generator`` (on ``probs``' device) makes
    the draw reproducible; None uses torch's global generator.
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    probs = probs.detach()
    draws = torch.rand((k, probs.shape[0]), generator=generator, device=probs.device)
    return draws < probs


def expected_rewards(actions: Tensor, action_rewards: Tensor, fallback: float) -> Tensor:
    """``r(b)``: mean reward of the sampled actions that keep candidate ``b``.

    ``actions`` is bool [k, n], ``action_rewards`` [k]. A candidate that no action kept gets
    ``fallback`` (the baseline ``r'``, so that its advantage is 0).
    """
    kept = actions.to(action_rewards.dtype)
    counts = kept.sum(dim=0)
    means = (action_rewards @ kept) / counts.clamp(min=1)
    return torch.where(counts > 0, means, torch.full_like(means, fallback))


def baseline_reward(
    boxes: Tensor,
    scores: Tensor,
    labels: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    nms_iou: float = 0.5,
) -> tuple[float, Tensor]:
    """``r'``: :func:`image_ap` of the detections per-class NMS at ``nms_iou`` keeps.

    Returns ``(r', keep)`` with ``keep`` a bool [n] mask of the detections NMS kept.
    """
    keep = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep[batched_nms(boxes.float(), scores.float(), labels, nms_iou)] = True
    return image_ap(boxes[keep], scores[keep], labels[keep], gt_boxes, gt_labels), keep


def pg_coefficients(
    rewards: Tensor, baseline: float, kept_by_nms: Tensor, gamma: float = 1.0
) -> Tensor:
    """Eq. 11's factor per candidate: ``(r(b) - r') * [b not kept by NMS] + gamma``.

    The cross-entropy gradient ``p_b - 1`` on the true-class logit is multiplied by it. For
    boxes NMS keeps the advantage is zeroed, not the reward (see the module docstring).
    """
    advantage = torch.where(kept_by_nms, torch.zeros_like(rewards), rewards - baseline)
    return advantage + gamma


def pg_surrogate_loss(
    class_logits: Tensor, assigned_labels: Tensor, coefficients: Tensor
) -> Tensor:
    """Scalar whose gradient on ``class_logits[b, y_b]`` is ``coefficients[b] * (p_b - 1) / n``.

    It is the per-RoI cross-entropy weighted by the (detached) coefficients and averaged over the
    ``n`` RoIs, the normalisation of torchvision's ``fastrcnn_loss``; the other logits ``j`` of
    RoI ``b`` receive ``coefficients[b] * p_j / n``. Zero RoIs give a zero loss.
    """
    ce = F.cross_entropy(class_logits, assigned_labels, reduction="none")
    weights = coefficients.detach().to(device=ce.device, dtype=ce.dtype)
    return (weights * ce).sum() / max(ce.numel(), 1)


def policy_gradient_coefficients(
    class_logits: Tensor,
    assigned_labels: Tensor,
    boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    *,
    k: int = 10,
    gamma: float = 1.0,
    nms_iou: float = 0.5,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, dict[str, Any]]:
    """Per-RoI cross-entropy weights of one image: eq. 11's factor, 1 for background RoIs.

    ``class_logits`` [n, C+1] and ``assigned_labels`` [n] (0 = background) are the RoI head's
    logits and targets, ``boxes`` [n, 4] the boxes the rewards are computed on (see the module
    docstring), ``gt_boxes``/``gt_labels`` the image's ground truth. ``generator`` must be a CPU
    generator. Returns the coefficients (float32, on ``class_logits``' device) and loggable
    values: ``baseline_ap`` (r'), ``mean_reward`` (mean r(b) over candidates),
    ``mean_advantage`` (mean advantage over candidates, 0 for those NMS keeps), and the counts
    ``num_candidates``, ``num_nms_kept`` and ``num_unsampled`` (candidates no action kept).

    For a batch, either average :func:`policy_gradient_loss` over the images, or concatenate the
    images' coefficients and call :func:`pg_surrogate_loss` once, which reproduces
    ``fastrcnn_loss``'s mean over all the batch's RoIs.
    """
    num_rois = class_logits.shape[0]
    if assigned_labels.shape[0] != num_rois or boxes.shape[0] != num_rois:
        raise ValueError(
            f"{num_rois} logits rows but {assigned_labels.shape[0]} labels and "
            f"{boxes.shape[0]} boxes"
        )
    labels = assigned_labels.detach().cpu().long()
    probs = torch.softmax(class_logits.detach().cpu().float(), dim=-1)
    scores = probs.gather(1, labels[:, None]).squeeze(1)
    candidate = labels > 0
    cand_boxes = boxes.detach().cpu().float()[candidate]
    cand_scores, cand_labels = scores[candidate], labels[candidate]

    baseline, kept = baseline_reward(
        cand_boxes, cand_scores, cand_labels, gt_boxes, gt_labels, nms_iou
    )
    actions = sample_actions(cand_scores, k, generator)
    action_rewards = subset_image_ap(
        cand_boxes, cand_scores, cand_labels, gt_boxes, gt_labels, actions
    )
    rewards = expected_rewards(actions, action_rewards, baseline)
    candidate_coefficients = pg_coefficients(rewards, baseline, kept, gamma)
    coefficients = torch.ones(num_rois, dtype=torch.float32)
    coefficients[candidate] = candidate_coefficients.float()

    has_candidates = bool(candidate.any())
    info = {
        "baseline_ap": baseline,
        "mean_reward": float(rewards.mean()) if has_candidates else baseline,
        "mean_advantage": float(candidate_coefficients.mean()) - gamma if has_candidates else 0.0,
        "num_candidates": int(candidate.sum()),
        "num_nms_kept": int(kept.sum()),
        "num_unsampled": int((~actions.any(dim=0)).sum()),
    }
    return coefficients.to(class_logits.device), info


def policy_gradient_loss(
    class_logits: Tensor,
    assigned_labels: Tensor,
    boxes: Tensor,
    gt_boxes: Tensor,
    gt_labels: Tensor,
    **options: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """Policy-gradient classification loss of one image and its info (see
    :func:`policy_gradient_coefficients` for the arguments, the keyword `options` k, gamma,
    nms_iou and generator, and the info keys).

    Replaces the RoI head's cross-entropy: with ``gamma = 1`` and rewards equal to the baseline
    it is exactly ``F.cross_entropy(class_logits, assigned_labels)``.
    """
    coefficients, info = policy_gradient_coefficients(
        class_logits, assigned_labels, boxes, gt_boxes, gt_labels, **options)
    return pg_surrogate_loss(class_logits, assigned_labels, coefficients), info
