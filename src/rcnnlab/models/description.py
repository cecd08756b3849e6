"""A built detector summarised for run records: :func:`describe_model` (its parameters, FPN
levels and anchors, input transform and budgets) and :data:`BACKBONE_NAMES` (each arch's
backbone in words)."""

from __future__ import annotations

from typing import Any

from torchvision.models.detection import FasterRCNN
from torchvision.ops.misc import FrozenBatchNorm2d

from rcnnlab.config import ARCHS
from rcnnlab.models.architecture import probe_levels
from rcnnlab.models.resfpn import ResidualFPNBackbone
from rcnnlab.models.weights import predictor_classes

__all__ = ["BACKBONE_NAMES", "describe_model"]


BACKBONE_NAMES = {
    "fasterrcnn_resnet50_fpn": "ResNet-50 + FPN (torchvision Faster R-CNN v1)",
    "fasterrcnn_resnet50_fpn_v2": "ResNet-50 + FPN (torchvision Faster R-CNN v2)",
    "fasterrcnn_mobilenet_v3_large_fpn": "MobileNetV3-Large + FPN",
    "resnet18_fpn": "ResNet-18 + FPN",
    "resnet34_fpn": "ResNet-34 + FPN",
    "resnet50_fpn": "ResNet-50 + FPN",
}
"""The backbone of each arch in words (run records)."""
assert set(BACKBONE_NAMES) == set(ARCHS), "describe every arch of rcnnlab.config.ARCHS"


def describe_model(model: FasterRCNN) -> dict[str, Any]:
    """Summarise a detector for a run record.

    Runs the backbone once on a 128x128 zero image (eval mode, no grad, training flag restored)
    to read the feature levels and their strides.

    Returns:
        A JSON-friendly dict: parameter counts (total, trainable, per part), class count,
        normalisation, residual FPN, the FPN levels (name, stride, anchor sizes and ratios,
        anchors per location), the input transform and the RPN / RoI budgets.
    """
    anchor_gen = model.rpn.anchor_generator
    levels = [
        {
            "name": name,
            "stride": stride,
            "anchor_sizes": [int(s) for s in sizes],
            "aspect_ratios": [float(r) for r in ratios],
            "anchors_per_location": len(sizes) * len(ratios),
        }
        for (name, stride), sizes, ratios in zip(
            probe_levels(model.backbone), anchor_gen.sizes, anchor_gen.aspect_ratios, strict=True
        )
    ]
    params = list(model.parameters())
    transform = model.transform
    rpn, roi = model.rpn, model.roi_heads
    return {
        "num_classes": predictor_classes(model),
        "params_total": sum(p.numel() for p in params),
        "params_trainable": sum(p.numel() for p in params if p.requires_grad),
        "params_by_part": {
            part: sum(p.numel() for p in getattr(model, part).parameters())
            for part in ("backbone", "rpn", "roi_heads")
        },
        "frozen_batchnorm": any(isinstance(m, FrozenBatchNorm2d) for m in model.modules()),
        "residual_fpn": isinstance(model.backbone, ResidualFPNBackbone),
        "out_channels": model.backbone.out_channels,
        "num_levels": len(levels),
        "levels": levels,
        "transform": {
            "native_size": getattr(transform, "native", False),
            "min_size": list(transform.min_size),
            "max_size": transform.max_size,
            "image_mean": list(transform.image_mean),
            "image_std": list(transform.image_std),
        },
        "rpn": {
            "pre_nms_top_n": dict(rpn._pre_nms_top_n),
            "post_nms_top_n": dict(rpn._post_nms_top_n),
            "batch_size_per_image": rpn.fg_bg_sampler.batch_size_per_image,
            "nms_thresh": rpn.nms_thresh,
            "score_thresh": rpn.score_thresh,
        },
        "roi_heads": {
            "batch_size_per_image": roi.fg_bg_sampler.batch_size_per_image,
            "detections_per_img": roi.detections_per_img,
            "score_thresh": roi.score_thresh,
            "nms_thresh": roi.nms_thresh,
        },
    }
