"""Inference options around a torchvision detector: the box head's NMS, Soft-NMS and TTA.

A `Predictor` is called like the model in eval mode (a list of float CHW images in [0, 1] -> a
list of ``{"boxes", "scores", "labels"}``) and adds:

- the IoU threshold of the box head's per-class NMS (``roi_heads.nms_thresh``) for the call;
- Soft-NMS (Bodla et al., ICCV 2017) in place of that NMS: the head's own NMS is switched off
  (IoU threshold 1.0 suppresses nothing) and its output cap lifted for the forward, then
  `suppress` decays the scores and the configured cap applies again;

(both through a view of the model with other box-head settings, `with_box_settings`: the model
itself is never changed)
- test-time augmentation: one pass per scale factor (and per mirrored image with ``tta_hflip``),
  boxes mapped back to the original image and merged by NMS or weighted boxes fusion.

With every option at its default a call is exactly one forward of the model.
"""

from __future__ import annotations

import copy
from typing import Any

from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image

from rcnnlab.config import EvalConfig, section_with
from rcnnlab.errors import ConfigError
from rcnnlab.inference.nms import Detections, hflip_boxes, merge_detections, scale_boxes, suppress
from rcnnlab.models.precision import with_autocast_backbone

# The box head's output cap while Soft-NMS runs: no cap, so that Soft-NMS sees every candidate
# above the score threshold (at most proposals x classes) rather than the best 100 after
# torchvision's ordering by score.
_UNCAPPED = 1 << 30


def with_box_settings(model: nn.Module, **settings: float | int | None) -> nn.Module:
    """A view of ``model`` whose box head runs with other settings (None = as is), e.g.
    ``nms_thresh=0.3`` or ``detections_per_img=300``; the model itself is not changed.

    The view shares every parameter and buffer with the model: it is a shallow copy whose
    ``roi_heads`` is a shallow copy holding the settings (torchvision's box head reads them at
    every forward).
    """
    changes = {key: value for key, value in settings.items() if value is not None}
    if not changes:
        return model
    heads = copy.copy(model.roi_heads)
    for key, value in changes.items():
        setattr(heads, key, value)
    view = copy.copy(model)
    view._modules = dict(model._modules)  # its own child registry, so the model keeps its head
    view.roi_heads = heads
    return view


def with_proposals(model: nn.Module, proposals: int | None) -> nn.Module:
    """A view of ``model`` whose RPN hands the box head ``proposals`` proposals per image at
    inference (None = as is); shares every parameter, the model itself is not changed."""
    if proposals is None:
        return model
    rpn = copy.copy(model.rpn)
    rpn._post_nms_top_n = {**model.rpn._post_nms_top_n, "testing": proposals}
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view.rpn = rpn
    return view


def _transform(image: Tensor, scale: float, flip: bool) -> Tensor:
    """The image one TTA pass shows the model: resized by ``scale`` (bilinear), then mirrored."""
    if scale != 1.0:
        h, w = image.shape[-2:]
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        # Bilinear without corner alignment, as the detector's own resize does.
        image = nn.functional.interpolate(image[None], size=size, mode="bilinear",
                                          align_corners=False)[0]
    return image.flip(-1) if flip else image


def _map_back(boxes: Tensor, seen: Tensor, original: Tensor, flip: bool) -> Tensor:
    """Boxes found on the pass image ``seen`` as boxes on ``original``, clipped to it."""
    seen_h, seen_w = seen.shape[-2:]
    h, w = original.shape[-2:]
    if flip:
        boxes = hflip_boxes(boxes, seen_w)
    if (seen_h, seen_w) != (h, w):
        # Per-axis ratios of the real sizes, not 1/scale: each side was rounded on its own.
        boxes = scale_boxes(boxes, (w / seen_w, h / seen_h))
    return clip_boxes_to_image(boxes, (h, w))


class Predictor:
    """The detector with the box head's NMS choice and test-time augmentation.

    The options are the inference fields of :class:`~rcnnlab.config.EvalConfig` (its defaults
    are the only ones), given as the section ``cfg``, as keyword options, or both.

    Args:
        model: a torchvision-style detector in eval mode whose ``roi_heads`` carries
            ``nms_thresh``, ``detections_per_img`` and ``score_thresh`` (Faster R-CNN's
            RoIHeads); those are the defaults of the options below and the output cap.
        nms: ``"nms"`` (the head's hard NMS) or ``"linear"`` / ``"gaussian"`` Soft-NMS.
        nms_iou: IoU threshold of that NMS (linear Soft-NMS: the decay threshold N_t; Gaussian
            Soft-NMS has none); None = the model's ``roi_heads.nms_thresh``.
        soft_nms_sigma: the Gaussian Soft-NMS sigma, ``score *= exp(-IoU**2 / sigma)``.
        tta_scales: image scale factors, one pass each (1.0 = the image as is).
        tta_hflip: add a pass on the mirrored image for every scale.
        tta_merge: how the passes merge: ``"nms"`` or ``"wbf"`` (weighted boxes fusion).
        tta_iou: the IoU threshold of that merge.
        amp: ``"off"``, or ``"bf16"`` / ``"fp16"`` (CUDA only): the backbone runs under
            autocast in that precision, the heads in float32 (`models.precision`).
        proposals: RPN proposals per image the box head scores (None = the model's
            ``rpn_post_nms_top_n_test``), through a view of the model (`with_proposals`).
        digit_classes: the classes are digits, which a mirror changes (a mirrored 2 is no
            digit): ``tta_hflip`` is then refused.
    """

    def __init__(self, model: nn.Module, cfg: EvalConfig | None = None, *,
                 digit_classes: bool = False, **options: Any) -> None:
        c = section_with(EvalConfig, cfg, options, "eval")
        if c.tta_hflip and digit_classes:
            raise ConfigError(
                "eval.tta_hflip=true on a digit dataset: a mirrored digit is not a digit, so the "
                "flipped pass would add wrong detections. Fix: set eval.tta_hflip=false "
                "(eval.tta_scales still gives test-time augmentation)"
            )
        self.model = with_autocast_backbone(with_proposals(model, c.proposals), c.amp)
        self.amp = c.amp
        self.nms, self.nms_iou, self.soft_nms_sigma = c.nms, c.nms_iou, c.soft_nms_sigma
        self.tta_scales, self.tta_hflip = [float(s) for s in c.tta_scales], c.tta_hflip
        self.tta_merge, self.tta_iou = c.tta_merge, c.tta_iou

    @property
    def plain(self) -> bool:
        """Whether every option is at its default: a call is then one forward of the model."""
        return (self.nms == "nms" and self.nms_iou is None and self.tta_scales == [1.0]
                and not self.tta_hflip)

    def __call__(self, images: list[Tensor]) -> list[dict[str, Tensor]]:
        """Detections of each image, like the model's eval-mode output."""
        if self.plain:
            return self.model(images)
        passes: list[list[Detections]] = []
        for scale in self.tta_scales:
            for flip in (False, True) if self.tta_hflip else (False,):
                seen = [_transform(image, scale, flip) for image in images]
                found = self._forward(seen)
                if scale == 1.0 and not flip:
                    passes.append(found)  # already on the original images
                    continue
                passes.append([
                    (_map_back(boxes, shown, image, flip), scores, labels)
                    for (boxes, scores, labels), shown, image in zip(found, seen, images,
                                                                     strict=True)
                ])
        if len(passes) == 1:
            merged = passes[0]  # nothing to merge: a second suppression would change the pass
        else:
            cap = self.model.roi_heads.detections_per_img
            merged = [
                merge_detections([one[i] for one in passes], method=self.tta_merge,
                                 iou_threshold=self.tta_iou, max_detections=cap)
                for i in range(len(images))
            ]
        return [{"boxes": b, "scores": s, "labels": lab} for b, s, lab in merged]

    def _forward(self, images: list[Tensor]) -> list[Detections]:
        """One forward with the chosen suppression: the head's NMS at nms_iou, or Soft-NMS."""
        heads = self.model.roi_heads
        if self.nms == "nms":
            outputs = with_box_settings(self.model, nms_thresh=self.nms_iou)(images)
            return [(o["boxes"], o["scores"], o["labels"]) for o in outputs]
        iou = heads.nms_thresh if self.nms_iou is None else self.nms_iou
        cap, score_thresh = heads.detections_per_img, heads.score_thresh
        outputs = with_box_settings(self.model, nms_thresh=1.0,
                                    detections_per_img=_UNCAPPED)(images)
        # Decayed scores below the head's score threshold are dropped, as the head drops them.
        return [suppress(o["boxes"], o["scores"], o["labels"], method=self.nms,
                         iou_threshold=iou, sigma=self.soft_nms_sigma,
                         score_threshold=score_thresh, max_detections=cap)
                for o in outputs]

