"""Faster R-CNN factory: backbone, pretrained weights, anchors, image size and budgets.

:func:`build_model` assembles a torchvision :class:`~torchvision.models.detection.FasterRCNN`
from plain keyword arguments; :func:`load_weights_file` loads a local state_dict or rcnnlab
checkpoint into it, skipping (and reporting) tensors whose shape differs, such as a box predictor
trained for another class count; :func:`describe_model` summarises a model for run records.

Architectures (``ARCHS``):

* ``fasterrcnn_resnet50_fpn``, ``fasterrcnn_resnet50_fpn_v2``,
  ``fasterrcnn_mobilenet_v3_large_fpn``: torchvision's three detectors, with COCO weights
  available as torchvision enums. They are assembled here from the same torchvision parts, in
  the same way as torchvision's constructors (``tests/test_models.py`` checks that parameter
  names and shapes are identical, so COCO checkpoints load completely), because the
  constructors only switch to FrozenBatchNorm and freeze early layers when they download the
  weights themselves, while here weights may also come from a local file.
* ``resnet18_fpn``, ``resnet34_fpn``, ``resnet50_fpn``: a ResNet trunk + FPN from
  :func:`~torchvision.models.detection.backbone_utils.resnet_fpn_backbone` with the standard
  FasterRCNN heads and anchors sized for small objects. torchvision has no detector weights for
  them; ImageNet backbone weights (``backbone_weights="DEFAULT"``) or local files only.

Default anchors (sizes are sqrt(area) in pixels of the *resized* image, ratios are height/width):

* the ``fasterrcnn_*`` archs keep torchvision's own anchors (ResNet-50: 32..512, one size per
  level; MobileNet: 32..512 at each of its 3 levels; ratios 0.5, 1, 2), because their COCO RPN
  heads were trained for exactly these anchors: each output channel of the RPN head belongs to
  one anchor shape, so changing the anchors silently changes what the pretrained channels mean.
  They suit the default 800-px resizing. For native-size digits pass smaller sizes.
* ``resnet*_fpn`` (no detector weights to stay compatible with) are tuned for digits at native
  size: sizes 16, 32, 64, 128, 256 on P2..P6 and ratios 0.5, 1, 2, 3. Digits 10-100 px high with
  width/height 0.4-0.6 have sqrt(area) of about 7-70 px and height/width 1.7-2.5; narrow ones
  ("1") reach 3-4. Ratio 2 is the digit's own shape, 3 covers narrow digits, 1 and 0.5 keep
  square and wide objects (digit groups, other datasets) matchable. An anchor half or twice the
  object's aspect caps their IoU near 0.55, below the RPN's 0.7 positive threshold, hence the
  dense ratio set. Size 16 at stride 4 keeps tiny digits matchable; 256 on the pool level is
  rarely used by small images but keeps the level count torchvision's FPN produces.
"""

from __future__ import annotations

import logging
import math
import os
import sys
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import torchvision
from torch import nn
from torchvision.models import MobileNet_V3_Large_Weights, WeightsEnum, mobilenet_v3_large
from torchvision.models.detection import (
    FasterRCNN,
    FasterRCNN_MobileNet_V3_Large_FPN_Weights,
    FasterRCNN_ResNet50_FPN_V2_Weights,
    FasterRCNN_ResNet50_FPN_Weights,
)
from torchvision.models.detection._utils import overwrite_eps
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import (
    BackboneWithFPN,
    _mobilenet_extractor,
    _resnet_fpn_extractor,
    _validate_trainable_layers,
    resnet_fpn_backbone,
)
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.resnet import ResNet18_Weights, ResNet34_Weights, ResNet50_Weights, resnet50
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.poolers import MultiScaleRoIAlign, initLevelMapper

from rcnnlab.config import ARCHS, ModelConfig, section_with
from rcnnlab.errors import ConfigError, DownloadError, MissingFileError, RunError
from rcnnlab.models.anchors import RESNET_FPN_STRIDES
from rcnnlab.models.heads import RoIClassifierLoss, install_heads
from rcnnlab.models.resfpn import ResidualFPNBackbone
from rcnnlab.models.transform import DetectorTransform

__all__ = ["ARCHS", "LoadReport", "build_model", "default_anchors", "describe_model",
           "load_weights_file"]

log = logging.getLogger(__name__)


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

# Which torchvision weights enum each arch accepts: full detector, and backbone (trunk) only.
_DETECTOR_WEIGHTS: dict[str, type[WeightsEnum]] = {
    "fasterrcnn_resnet50_fpn": FasterRCNN_ResNet50_FPN_Weights,
    "fasterrcnn_resnet50_fpn_v2": FasterRCNN_ResNet50_FPN_V2_Weights,
    "fasterrcnn_mobilenet_v3_large_fpn": FasterRCNN_MobileNet_V3_Large_FPN_Weights,
}
_BACKBONE_WEIGHTS: dict[str, type[WeightsEnum]] = {
    "fasterrcnn_resnet50_fpn": ResNet50_Weights,
    "fasterrcnn_resnet50_fpn_v2": ResNet50_Weights,
    "fasterrcnn_mobilenet_v3_large_fpn": MobileNet_V3_Large_Weights,
    "resnet18_fpn": ResNet18_Weights,
    "resnet34_fpn": ResNet34_Weights,
    "resnet50_fpn": ResNet50_Weights,
}

# Default anchors per arch: (sizes per level, aspect ratios for every level); see module doc.
_TORCHVISION_RATIOS = (0.5, 1.0, 2.0)
_SMALL_OBJECT_ANCHORS = (((16,), (32,), (64,), (128,), (256,)), (0.5, 1.0, 2.0, 3.0))
_DEFAULT_ANCHORS: dict[str, tuple[tuple[tuple[int, ...], ...], tuple[float, ...]]] = {
    "fasterrcnn_resnet50_fpn": (((32,), (64,), (128,), (256,), (512,)), _TORCHVISION_RATIOS),
    "fasterrcnn_resnet50_fpn_v2": (((32,), (64,), (128,), (256,), (512,)), _TORCHVISION_RATIOS),
    "fasterrcnn_mobilenet_v3_large_fpn": (((32, 64, 128, 256, 512),) * 3, _TORCHVISION_RATIOS),
    "resnet18_fpn": _SMALL_OBJECT_ANCHORS,
    "resnet34_fpn": _SMALL_OBJECT_ANCHORS,
    "resnet50_fpn": _SMALL_OBJECT_ANCHORS,
}

_PREDICTOR_PREFIX = "roi_heads.box_predictor."


# --------------------------------------------------------------------------- load reports


@dataclass
class LoadReport:
    """What happened when a state dict was loaded into a model.

    Names are the model's parameter/buffer names (after any prefix remapping, see
    :func:`load_weights_file`); BatchNorm ``num_batches_tracked`` counters are left out.

    Attributes:
        source: the file path or torchvision weights name the tensors came from.
        loaded: names of the tensors copied into the model.
        skipped_shape: name -> (shape in the source, shape in the model) for tensors present in
            both but with different shapes (typically the box predictor of another class count).
        missing: model tensors the source has no value for (they keep their initialisation).
        unexpected: source tensors with no counterpart in the (targeted part of the) model.
    """

    source: str
    loaded: list[str] = field(default_factory=list)
    skipped_shape: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line with the counts, e.g. for a log."""
        return (
            f"{self.source}: loaded {len(self.loaded)} tensors, skipped {len(self.skipped_shape)} "
            f"with another shape, {len(self.missing)} missing, {len(self.unexpected)} unexpected"
        )

    def __str__(self) -> str:
        return self.summary()

    def as_dict(self) -> dict[str, Any]:
        """JSON-friendly counts and names, for run records."""
        return {
            "source": self.source,
            "counts": {
                "loaded": len(self.loaded),
                "skipped_shape": len(self.skipped_shape),
                "missing": len(self.missing),
                "unexpected": len(self.unexpected),
            },
            "skipped_shape": {k: [list(a), list(b)] for k, (a, b) in self.skipped_shape.items()},
            "missing": list(self.missing),
            "unexpected": list(self.unexpected),
        }


# --------------------------------------------------------------------------- public API


def build_model(
    cfg: ModelConfig | None = None,
    *,
    num_classes: int,
    classifier_loss: RoIClassifierLoss | None = None,
    multiscale_sizes: Sequence[int] = (),
    load_weights: bool = True,
    **options: Any,
) -> FasterRCNN:
    """Build a Faster R-CNN detector from a model config section.

    The options are the fields of :class:`~rcnnlab.config.ModelConfig` (its defaults are the
    only ones), given as the section ``cfg``, as keyword ``options``, or both (``options``
    replace the section's values): ``build_model(cfg.model, num_classes=11)`` or
    ``build_model(arch="resnet18_fpn", num_classes=11, native_size=True)``. ``anchors: auto``
    must be resolved into ``anchor_sizes`` / ``aspect_ratios`` first: here the given (or default)
    anchors are used.

        Args:
        num_classes: number of classes *including* background (dataset classes + 1). The box
            predictor always has this size, whatever the weights were trained with.
        classifier_loss: how the RoI head's classifier is trained (default cross-entropy).
        multiscale_sizes: short sides drawn per training batch (multi-scale training, see
            :class:`~rcnnlab.models.transform.DetectorTransform`); empty = off.
        load_weights: False builds the layout that ``weights``/``backbone_weights`` imply
            (FrozenBatchNorm, frozen stages, eps) without reading or fetching them: for
            rebuilding a trained model whose checkpoint supplies every tensor.

    Model options (:class:`~rcnnlab.config.ModelConfig`):
        arch: one of :data:`ARCHS`.
        weights: full-detector weights: ``None`` (random init), a torchvision enum name
            (``"FasterRCNN_ResNet50_FPN_Weights.COCO_V1"``, or ``"DEFAULT"`` / ``"COCO_V1"`` for
            the arch's own enum), or the path of a local ``.pt``/``.pth`` file (a state_dict or an
            rcnnlab checkpoint with a ``"model"`` key). Tensors whose shape differs from the
            model's (the predictor, when the class count differs) are skipped; see
            :func:`load_weights_file`.
        backbone_weights: weights for the backbone only, same three kinds (e.g.
            ``"ResNet18_Weights.IMAGENET1K_V1"``, ``"DEFAULT"``, or an ImageNet classification
            or backbone state_dict file). Loaded before ``weights``, so ``weights`` wins where
            both have a tensor.
        trainable_backbone_layers: number of trunk stages left trainable, counted from the top
            (ResNet 0-5, MobileNetV3 0-6). Only meaningful with pretrained weights (default 3,
            with FrozenBatchNorm in the trunk); without any, the whole trunk trains with regular
            BatchNorm, as in torchvision. ``fasterrcnn_resnet50_fpn_v2`` always uses regular
            BatchNorm, as torchvision's v2 recipe does.
        residual_fpn: refine each FPN output with a zero-initialised residual block
            (:class:`~rcnnlab.models.resfpn.ResidualFPNBackbone`).
        anchor_sizes: anchor sizes (sqrt of area, px) per FPN level; one list per level. ``None``
            uses the arch's default (see the module docstring). Every level must have the same
            ``len(sizes) * len(ratios)``, since one RPN head serves all levels.
        aspect_ratios: anchor height/width ratios: one list per level, or a single list used for
            every level. ``None`` uses the arch's default.
        min_size, max_size: torchvision's resizing: scale the short side to ``min_size`` unless
            the long side would exceed ``max_size``.
        native_size: never upscale: scale = ``min(1, min_size/short, max_size/long)``
            (:class:`~rcnnlab.models.transform.DetectorTransform`).
        rpn_pre_nms_top_n_train, rpn_pre_nms_top_n_test: proposals kept per level before NMS.
        rpn_post_nms_top_n_train, rpn_post_nms_top_n_test: proposals kept per image after NMS.
        rpn_batch_size_per_image: anchors sampled per image for the RPN loss.
        box_batch_size_per_image: proposals sampled per image for the box-head loss.
        box_detections_per_img: maximum detections returned per image.
        box_score_thresh: minimum class score of a returned detection.
        box_nms_thresh: per-class NMS IoU threshold of the box head.

    Returns:
        The model, in training mode.

    Raises:
        ConfigError: unknown arch, bad class count, bad anchors, unknown weights name.
        MissingFileError: a weights path that does not exist.
        RunError: a weights file that cannot be read or does not fit the model.
        RuntimeError: torchvision weights that cannot be downloaded (no network, no cache).
    """
    cfg = _model_config(cfg, options)
    arch, weights, backbone_weights = cfg.arch, cfg.weights, cfg.backbone_weights
    min_size, max_size = cfg.min_size, cfg.max_size
    if num_classes < 2:
        raise ConfigError(
            f"num_classes={num_classes} must count background plus at least one class "
            "(num_classes = number of dataset classes + 1)"
        )
    # Resolve and fetch the weights before building anything, so a typo or a failed download
    # fails fast. Backbone weights come first, so full-detector weights win where both have a
    # tensor.
    sources = []
    for value, param, prefix in (
        (backbone_weights, "backbone_weights", "backbone."),
        (weights, "weights", ""),
    ):
        if not load_weights:
            continue
        src = _resolve_weights(value, arch=arch, param=param)
        if isinstance(src, Path):
            sources.append((str(src), _read_weights_file(src), prefix))
        elif src is not None:
            sources.append((_enum_name(src), _download_torchvision(src, param), prefix))
    pretrained = weights is not None or backbone_weights is not None
    max_layers = 6 if arch == "fasterrcnn_mobilenet_v3_large_fpn" else 5
    trainable = _validate_trainable_layers(pretrained, cfg.trainable_backbone_layers, max_layers,
                                           3)
    # As in torchvision: a pretrained trunk keeps its BatchNorm statistics frozen (detection
    # batches are too small to re-estimate them); a trunk trained from scratch needs real BN.
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d

    backbone = _build_backbone(arch, norm_layer, trainable, cfg)
    levels = _probe_levels(backbone)
    level_names = [name for name, _ in levels]
    sizes, ratios = _resolve_anchors(arch, [stride for _, stride in levels], cfg.anchor_sizes,
                                     cfg.aspect_ratios)
    anchor_generator = AnchorGenerator(sizes, ratios)
    if cfg.residual_fpn:
        backbone = ResidualFPNBackbone(backbone, level_names)

    v2 = arch == "fasterrcnn_resnet50_fpn_v2"
    extra: dict[str, Any] = {}
    # the RPN head is built before the box head, as FasterRCNN would: the same init order
    rpn_head = RPNHead(
        backbone.out_channels,
        anchor_generator.num_anchors_per_location()[0],
        conv_depth=2 if v2 else 1,
    )
    res, dim = cfg.roi_output_size, cfg.box_head_dim
    if v2:
        # torchvision's v2 recipe: a 2-conv RPN head and a 4-conv + 1-FC box head with BN.
        extra["box_head"] = FastRCNNConvFCHead(
            (backbone.out_channels, res, res), [256, 256, 256, 256], [dim],
            norm_layer=nn.BatchNorm2d
        )
    elif (res, dim) != (7, 1024):
        extra["box_head"] = TwoMLPHead(backbone.out_channels * res**2, dim)
    if (res, dim) != (7, 1024):
        extra["box_predictor"] = FastRCNNPredictor(dim, num_classes)
    if (res, cfg.roi_sampling_ratio) != (7, 2) or len(level_names) != 5:
        # RoIs are pooled from the FPN levels, not the max-pool one (as torchvision does)
        extra["box_roi_pool"] = MultiScaleRoIAlign(
            [name for name in level_names if name != "pool"], res, cfg.roi_sampling_ratio)
    if arch == "fasterrcnn_mobilenet_v3_large_fpn":
        extra["rpn_score_thresh"] = 0.05  # torchvision's default for this arch
    model = FasterRCNN(
        backbone,
        num_classes=None if "box_predictor" in extra else num_classes,
        min_size=min_size,
        max_size=max_size,
        rpn_anchor_generator=anchor_generator,
        # Built here (not by FasterRCNN) so the anchor count follows the configured anchors and
        # the v2 head gets its conv depth.
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=cfg.rpn_pre_nms_top_n_train,
        rpn_pre_nms_top_n_test=cfg.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_train=cfg.rpn_post_nms_top_n_train,
        rpn_post_nms_top_n_test=cfg.rpn_post_nms_top_n_test,
        rpn_batch_size_per_image=cfg.rpn_batch_size_per_image,
        box_batch_size_per_image=cfg.box_batch_size_per_image,
        box_detections_per_img=cfg.box_detections_per_img,
        box_score_thresh=cfg.box_score_thresh,
        box_nms_thresh=cfg.box_nms_thresh,
        **extra,
    )
    _set_pooler_scales(model.roi_heads.box_roi_pool, dict(levels))
    # Losses split by FPN level and a configurable RoI classifier loss (inference unchanged).
    install_heads(model, classifier_loss)
    # Ours in both modes: native size, and the per-batch multi-scale draw of training.
    model.transform = DetectorTransform(
        min_size, max_size, model.transform.image_mean, model.transform.image_std,
        native=cfg.native_size, train_short_sides=multiscale_sizes,
    )

    for source, state_dict, prefix in sources:
        log.info(_load_state_dict(model, state_dict, source, prefix=prefix).summary())
    if weights is not None and _is_legacy_r50(weights, arch):
        # These legacy weights were trained with eps=0 in FrozenBatchNorm; torchvision sets it
        # after loading them, and so do we, also for a local copy of the file.
        overwrite_eps(model, 0.0)
    return model


def _model_config(cfg: ModelConfig | None, options: dict[str, Any]) -> ModelConfig:
    """The section with `options` applied, validated (unknown or ill-typed options are errors)."""
    arch = options.get("arch", cfg.arch if cfg is not None else "resnet18_fpn")
    if arch not in ARCHS:
        raise ConfigError(f"unknown arch {arch!r}; choose one of {', '.join(ARCHS)}")
    return section_with(ModelConfig, cfg, options, "model")


def _is_legacy_r50(weights: str, arch: str) -> bool:
    """Whether `weights` names (or is a local copy of) the R50 COCO_V1 file."""
    legacy = FasterRCNN_ResNet50_FPN_Weights.COCO_V1
    if Path(weights).name == _url_filename(legacy.url):
        return True
    if weights.split(".")[0] == type(legacy).__name__:  # the enum has this one member
        return True
    return arch == "fasterrcnn_resnet50_fpn" and weights in ("DEFAULT", "COCO_V1")


def load_weights_file(
    model: nn.Module, path: str | os.PathLike[str], *, strict_head: bool = False
) -> LoadReport:
    """Load a local weights file into ``model``, skipping tensors of another shape.

    The file is read with ``torch.load(path, map_location="cpu", weights_only=True)`` and may be
    a plain state_dict or a checkpoint dict whose ``"model"`` (or ``"state_dict"``) entry is one.
    Key prefixes are matched automatically: a detector state_dict, a checkpoint saved with or
    without ``residual_fpn``, a backbone (``body.*``/``fpn.*``) state_dict, or an ImageNet
    classification state_dict of the trunk (``conv1.*``/``layer1.*`` or ``features.*``) all load
    into the matching part of a detector.

    Args:
        model: a model from :func:`build_model`.
        path: the ``.pt``/``.pth`` file.
        strict_head: raise instead of skipping when the box predictor does not fit (use it when
            the file must be a detector for exactly this class list, e.g. for evaluation).

    Returns:
        A :class:`LoadReport` with the loaded, skipped, missing and unexpected tensors.

    Raises:
        MissingFileError: the file does not exist (a FileNotFoundError).
        RunError: the file is not a state_dict, nothing in it matches the model, or
            ``strict_head`` and the predictor does not match (a ValueError).
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise MissingFileError(_missing_file_message(path, "weights"))
    report = _load_state_dict(model, _read_weights_file(path), str(path))
    if strict_head:
        bad = [
            k for k in (*report.skipped_shape, *report.missing) if k.startswith(_PREDICTOR_PREFIX)
        ]
        if bad:
            shape = report.skipped_shape.get(_PREDICTOR_PREFIX + "cls_score.weight")
            found = f"{shape[0][0]} classes" if shape else "no box predictor"
            raise RunError(
                f"{path}: its box predictor does not fit the model ({found} in the file, "
                f"{_num_classes(model)} in the model, background included): {', '.join(bad)}. "
                "Use a checkpoint trained on this dataset's categories, or load with "
                "strict_head=False to keep a freshly initialised predictor"
            )
    log.info(report.summary())
    return report


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
            _probe_levels(model.backbone), anchor_gen.sizes, anchor_gen.aspect_ratios, strict=True
        )
    ]
    params = list(model.parameters())
    transform = model.transform
    rpn, roi = model.rpn, model.roi_heads
    return {
        "num_classes": _num_classes(model),
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


# --------------------------------------------------------------------------- building blocks


def _build_backbone(arch: str, norm_layer: type[nn.Module], trainable: int,
                    cfg: ModelConfig) -> nn.Module:
    """Trunk + FPN for ``arch``, mirroring the torchvision constructors without weights."""
    channels = cfg.fpn_channels or 256
    custom = cfg.fpn_strides is not None or channels != 256
    if custom and not arch.startswith("resnet"):
        given = {key: value for key, value in (("fpn_strides", cfg.fpn_strides),
                                                ("fpn_channels", cfg.fpn_channels))
                 if value is not None and value != 256}
        raise ConfigError(
            "model.fpn_strides and model.fpn_channels apply to the resnet*_fpn archs; "
            f"{arch}'s FPN is the one its COCO weights were trained with (given: "
            + ", ".join(f"model.{key}={value}" for key, value in given.items())
            + "). Fix: add " + " ".join(f"model.{key}=null" for key in given)
            + " (the arch's own FPN), or use arch resnet18_fpn / resnet34_fpn / resnet50_fpn")
    if arch == "fasterrcnn_resnet50_fpn_v2":
        # v2 keeps regular BatchNorm in the trunk and adds BN to the FPN, pretrained or not.
        return _resnet_fpn_extractor(resnet50(), trainable, norm_layer=nn.BatchNorm2d)
    if arch == "fasterrcnn_mobilenet_v3_large_fpn":
        return _mobilenet_extractor(mobilenet_v3_large(norm_layer=norm_layer), True, trainable)
    trunk = "resnet50" if arch == "fasterrcnn_resnet50_fpn" else arch.removesuffix("_fpn")
    if not custom:  # torchvision's own constructor: the layout (and init order) of old runs
        return resnet_fpn_backbone(
            backbone_name=trunk, weights=None, norm_layer=norm_layer, trainable_layers=trainable
        )
    return _resnet_fpn(trunk, norm_layer, trainable, cfg.fpn_strides or RESNET_FPN_STRIDES,
                       channels)


def _resnet_fpn(trunk: str, norm_layer: type[nn.Module], trainable: int,
                strides: Sequence[int], channels: int) -> BackboneWithFPN:
    """torchvision's ResNet FPN (as `_resnet_fpn_extractor` builds it) with only the levels of
    `strides` and `channels` FPN channels: stride 4..32 are the outputs of trunk stages 1..4,
    64 max-pools the stride-32 level. The trunk ends at the last stage used."""
    strides = sorted(set(strides))
    if 64 in strides and 32 not in strides:
        raise ConfigError(f"model.fpn_strides {strides}: the stride-64 level pools the "
                          "stride-32 one. Fix: add 32, or drop 64")
    stages = [_STAGE_OF_STRIDE[s] for s in strides if s != 64]
    if not stages:
        raise ConfigError(f"model.fpn_strides {strides}: give at least one of 4, 8, 16, 32")
    backbone = torchvision.models.resnet.__dict__[trunk](weights=None, norm_layer=norm_layer)
    trained = ["layer4", "layer3", "layer2", "layer1", "conv1"][:trainable]
    if trainable == 5:
        trained.append("bn1")
    for name, parameter in backbone.named_parameters():
        if not any(name.startswith(layer) for layer in trained):
            parameter.requires_grad_(False)
    stage2 = backbone.inplanes // 8  # layer1's output channels
    fpn = BackboneWithFPN(
        backbone, {f"layer{k}": str(i) for i, k in enumerate(stages)},
        [stage2 * 2 ** (k - 1) for k in stages], channels,
        extra_blocks=LastLevelMaxPool() if 64 in strides else None,
    )
    if 64 not in strides:  # BackboneWithFPN puts the max-pool level in when given None
        fpn.fpn.extra_blocks = None
    return fpn


_STAGE_OF_STRIDE = {4: 1, 8: 2, 16: 3, 32: 4}


@torch.no_grad()
def _probe_levels(backbone: nn.Module, size: int = 128) -> list[tuple[str, int]]:
    """(name, stride) of each feature map ``backbone`` returns, from one tiny forward pass.

    Read from the module rather than hard-coded so the level count always matches what the
    torchvision version in use builds (5 for ResNet FPNs, 3 for MobileNetV3).
    """
    was_training = backbone.training
    backbone.eval()  # keep BatchNorm running statistics untouched
    try:
        features = backbone(torch.zeros(1, 3, size, size))
    finally:
        backbone.train(was_training)
    return [(name, size // feat.shape[-1]) for name, feat in features.items()]


def _set_pooler_scales(pooler: MultiScaleRoIAlign, strides: Mapping[str, int]) -> None:
    """Fix the RoI pooler's per-level scales to the backbone's true strides.

    torchvision infers them from the first batch it sees (feature size / largest unpadded image
    size, rounded in log2) and caches them for good. With small images the padding to a
    multiple of 32 can round that the wrong way (a 33-px-high image is padded to 64, its P2 map
    is 16 high, 16/33 rounds to 1/2 instead of 1/4), so RoIs would be pooled from the wrong
    place, and the result would depend on which batch came first (a resumed run would differ).
    """
    # The pooler skips names the backbone does not return (MobileNet has fewer levels).
    names = [name for name in pooler.featmap_names if name in strides]
    pooler.scales = [1.0 / strides[name] for name in names]
    pooler.map_levels = initLevelMapper(
        int(math.log2(strides[names[0]])),
        int(math.log2(strides[names[-1]])),
        canonical_scale=pooler.canonical_scale,
        canonical_level=pooler.canonical_level,
    )


def default_anchors(arch: str, strides: Sequence[int]
                    ) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[float, ...], ...]]:
    """The anchors `arch` gets on FPN levels of these strides when none are given: (sizes, ratios)
    with one tuple per level (see the module docstring)."""
    return _resolve_anchors(arch, strides, None, None)


def _resolve_anchors(
    arch: str,
    strides: Sequence[int],
    anchor_sizes: Sequence[Sequence[int]] | None,
    aspect_ratios: Sequence[Sequence[float]] | Sequence[float] | None,
) -> tuple[tuple[tuple[int, ...], ...], tuple[tuple[float, ...], ...]]:
    """Validate the anchor config and return (sizes, ratios) with one tuple per level (of the
    given strides)."""
    num_levels = len(strides)
    default_sizes, default_ratios = _DEFAULT_ANCHORS[arch]
    if arch.startswith("resnet") and num_levels != len(default_sizes):
        # fewer FPN levels (model.fpn_strides): each keeps its size, 4x its stride
        default_sizes = tuple((4 * stride,) for stride in strides)
    sizes = default_sizes if anchor_sizes is None else anchor_sizes
    ratios = default_ratios if aspect_ratios is None else aspect_ratios
    if any(isinstance(s, int | float) for s in sizes):
        raise ConfigError(
            f"anchor_sizes must be one list per FPN level, e.g. [[16], [32], ...]; got {sizes!r}"
        )
    if len(sizes) != num_levels:
        raise ConfigError(
            f"anchor_sizes has {len(sizes)} levels but arch {arch!r} has {num_levels} feature "
            f"maps (FPN levels incl. pool); give exactly {num_levels} lists"
        )
    sizes_t = tuple(tuple(int(s) for s in level) for level in sizes)
    # A flat list of ratios, or a single inner list, applies to every level.
    if all(isinstance(r, int | float) for r in ratios):
        ratios = [ratios] * num_levels
    elif len(ratios) == 1:
        ratios = list(ratios) * num_levels
    if len(ratios) != num_levels:
        raise ConfigError(
            f"aspect_ratios has {len(ratios)} levels but arch {arch!r} has {num_levels} feature "
            f"maps; give one list per level or a single list for all levels"
        )
    ratios_t = tuple(tuple(float(r) for r in level) for level in ratios)
    for level_sizes, level_ratios in zip(sizes_t, ratios_t, strict=True):
        if not level_sizes or not level_ratios:
            raise ConfigError("every FPN level needs at least one anchor size and one ratio")
        if min(level_sizes) <= 0 or min(level_ratios) <= 0:
            raise ConfigError(f"anchor sizes and ratios must be positive: {sizes_t}, {ratios_t}")
    counts = {len(s) * len(r) for s, r in zip(sizes_t, ratios_t, strict=True)}
    if len(counts) != 1:
        raise ConfigError(
            "every FPN level must have the same number of anchors (sizes x ratios), because a "
            f"single RPN head serves all levels; got sizes {sizes_t} and ratios {ratios_t}"
        )
    return sizes_t, ratios_t


def _num_classes(model: nn.Module) -> int:
    return model.roi_heads.box_predictor.cls_score.out_features


# --------------------------------------------------------------------------- weights sources


def _resolve_weights(value: str | None, *, arch: str, param: str) -> WeightsEnum | Path | None:
    """Turn a ``weights``/``backbone_weights`` string into a torchvision enum or a file path."""
    if value is None:
        return None
    value = str(value)
    path = Path(value).expanduser()
    if path.is_file():
        return path
    if path.suffix in (".pt", ".pth") or "/" in value or os.sep in value:
        raise MissingFileError(_missing_file_message(path, param))
    expected = (_DETECTOR_WEIGHTS if param == "weights" else _BACKBONE_WEIGHTS).get(arch)
    if expected is None:
        raise ConfigError(
            f"{param}={value!r}: torchvision has no detector weights for arch {arch!r}. Use "
            f"backbone_weights='DEFAULT' ({_BACKBONE_WEIGHTS[arch].__name__}) for an ImageNet "
            "trunk, or pass a local .pt/.pth file"
        )
    valid = ", ".join([f"{expected.__name__}.{w.name}" for w in expected] + ["DEFAULT"])
    try:
        resolved = torchvision.models.get_weight(value) if "." in value else expected[value]
    except (KeyError, ValueError):
        raise ConfigError(
            f"{param}={value!r} is not a torchvision weights name nor an existing file; for arch "
            f"{arch!r} use one of: {valid}; or the path of a local .pt/.pth file"
        ) from None
    if not isinstance(resolved, expected):
        raise ConfigError(
            f"{param}={value!r} are {type(resolved).__name__} weights, but arch {arch!r} takes "
            f"{expected.__name__} for {param}: use one of {valid}, or a local .pt/.pth file"
        )
    return resolved


def _missing_file_message(path: Path, param: str) -> str:
    if path.is_dir():
        return (f"{param}={path} is a folder. Fix: give the .pt/.pth file in it (a run's "
                "checkpoints/best.pt, say)")
    return (
        f"{param} file not found: {path}. Pass an existing .pt/.pth file (a state_dict or an "
        "rcnnlab checkpoint), a torchvision weights name such as "
        "'FasterRCNN_ResNet50_FPN_Weights.COCO_V1' or 'DEFAULT', or None for random init"
    )


def _enum_name(weights: WeightsEnum) -> str:
    return f"{type(weights).__name__}.{weights.name}"


def _url_filename(url: str) -> str:
    return os.path.basename(urlparse(url).path)


def _download_torchvision(weights: WeightsEnum, param: str) -> Mapping[str, Any]:
    """Fetch an enum's state_dict through torchvision's loader (download or torch hub cache)."""
    try:
        return weights.get_state_dict(progress=sys.stderr.isatty(), check_hash=True)
    except OSError as exc:  # URLError, socket and SSL errors are all OSErrors
        filename = _url_filename(weights.url)
        cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
        raise DownloadError(
            f"cannot load {param}={_enum_name(weights)}: downloading {weights.url} failed "
            f"({exc}); there is no network access and the file is not in the torch hub cache "
            f"({cached}). On a machine with network access download that URL, then either copy "
            f"the file to {cached} or pass its path instead: {param}='/path/to/{filename}'"
        ) from exc


def _read_weights_file(path: Path) -> Mapping[str, Any]:
    """Read a state_dict (or a checkpoint's ``"model"`` state_dict) from ``path``."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for non-weights pickles
        raise RunError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({exc}). Save weights "
            "as a state_dict: torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(obj, Mapping):
        for key in ("model", "state_dict"):
            if isinstance(obj.get(key), Mapping):
                return obj[key]
        if any(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
    raise RunError(
        f"{path}: holds no state_dict (expected a dict of tensors, or a checkpoint dict with a "
        f"'model' state_dict; got {type(obj).__name__})"
    )


# --------------------------------------------------------------------------- state dict loading


def _key_rewrites(model: nn.Module) -> list[tuple[str, str]]:
    """Candidate (old prefix, new prefix) rewrites from a file's keys to the model's."""
    bb = "backbone.base." if isinstance(model.backbone, ResidualFPNBackbone) else "backbone."
    candidates = [
        ("", ""),  # same layout
        ("module.", ""),  # saved from DataParallel / DDP
        ("backbone.", bb),  # plain detector into a residual-FPN one
        ("backbone.base.", "backbone."),  # residual-FPN detector into a plain one
        ("", bb),  # a backbone's own state_dict: body.* + fpn.*
        ("", bb + "body."),  # ImageNet ResNet: conv1.*, layer1.*, ...
        ("features.", bb + "body."),  # ImageNet MobileNetV3: features.0.*, ...
    ]
    return list(dict.fromkeys(candidates))


def _rewrite(key: str, old: str, new: str) -> str:
    return new + key[len(old) :] if key.startswith(old) else key


def _load_state_dict(
    model: nn.Module, state_dict: Mapping[str, Any], source: str, *, prefix: str = ""
) -> LoadReport:
    """Copy the tensors of ``state_dict`` that fit into ``model`` (restricted to ``prefix``)."""
    target = {k: v for k, v in model.state_dict().items() if k.startswith(prefix)}
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor)}
    # Pick the key rewrite under which most of the file's tensors find a home in the model.
    old, new = max(
        _key_rewrites(model),
        key=lambda rw: sum(_rewrite(k, *rw) in target for k in tensors),
    )
    remapped = {_rewrite(k, old, new): v for k, v in tensors.items()}
    report = LoadReport(source)
    to_load: dict[str, torch.Tensor] = {}
    for key, value in remapped.items():
        if not key.startswith(prefix):
            report.unexpected.append(key)
        elif key in target and target[key].shape != value.shape:
            report.skipped_shape[key] = (tuple(value.shape), tuple(target[key].shape))
        else:
            # Keys unknown to the model are passed on too: torchvision modules rename legacy keys
            # in _load_from_state_dict (e.g. the RPN head's pre-0.9 "conv.weight").
            to_load[key] = value
    # Keep torch's per-module version metadata (rewritten like the keys) so those legacy-key
    # conversions see the version the file was saved with.
    metadata = getattr(state_dict, "_metadata", None)
    loadable = _with_metadata(to_load, metadata, old, new)
    missing, unexpected = model.load_state_dict(loadable, strict=False)

    def counts(key: str) -> bool:  # BatchNorm batch counters are noise in a report
        return not key.endswith("num_batches_tracked")

    # torch lists every model key the (renamed) dict did not provide, so anything of the
    # targeted part that is not missing was loaded.
    missing_set = set(missing)
    report.unexpected += [k for k in unexpected if counts(k)]
    report.missing = [
        k for k in missing if k in target and k not in report.skipped_shape and counts(k)
    ]
    report.loaded = [k for k in target if k not in missing_set and counts(k)]
    if not report.loaded:
        sample = ", ".join(list(tensors)[:3]) or "no tensors"
        raise RunError(
            f"{source}: none of its {len(tensors)} tensors fit the model ({sample}, ...). Is it "
            "a checkpoint of another architecture? Build the model with the arch it was "
            "trained with, or pass it as backbone_weights if it holds a backbone only"
        )
    return report


def _with_metadata(
    tensors: dict[str, torch.Tensor], metadata: Mapping[str, Any] | None, old: str, new: str
) -> dict[str, torch.Tensor]:
    """``tensors`` as an OrderedDict carrying ``metadata`` with module prefixes rewritten."""
    out = OrderedDict(tensors)
    if metadata is not None:
        # Metadata keys are module names without a trailing dot ("" is the root module).
        out._metadata = {  # type: ignore[attr-defined]
            _rewrite(k + ".", old, new).removesuffix("."): v for k, v in metadata.items()
        }
    return out
