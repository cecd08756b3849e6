"""Faster R-CNN architecture: backbone, FPN levels, anchors, image size and budgets.

:func:`build_model` assembles a torchvision :class:`~torchvision.models.detection.FasterRCNN`
from a model config section or plain keyword arguments, loading its weights through
:mod:`rcnnlab.models.weights`; :func:`level_strides` tells the strides of its feature levels
without building it, and :func:`default_anchors` the anchors an arch gets when none are given.

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
from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torchvision
from torch import nn
from torchvision.models import mobilenet_v3_large
from torchvision.models.detection import FasterRCNN
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
from torchvision.models.resnet import resnet50
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool
from torchvision.ops.misc import FrozenBatchNorm2d
from torchvision.ops.poolers import MultiScaleRoIAlign, initLevelMapper

from rcnnlab.config import ARCHS, ModelConfig, section_with
from rcnnlab.errors import ConfigError
from rcnnlab.models.anchors import RESNET_FPN_STRIDES
from rcnnlab.models.heads import RoIClassifierLoss, install_heads
from rcnnlab.models.resfpn import ResidualFPNBackbone
from rcnnlab.models.transform import DetectorTransform
from rcnnlab.models.weights import fetch_weights, is_legacy_r50, load_matching

__all__ = ["ARCHS", "build_model", "default_anchors", "level_anchors", "level_strides",
           "probe_levels"]

log = logging.getLogger(__name__)


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
            :func:`~rcnnlab.models.weights.load_weights_file`.
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
        fetched = fetch_weights(value, arch=arch, param=param)
        if fetched is not None:
            sources.append((*fetched, prefix))
    pretrained = weights is not None or backbone_weights is not None
    max_layers = 6 if arch == "fasterrcnn_mobilenet_v3_large_fpn" else 5
    trainable = _validate_trainable_layers(pretrained, cfg.trainable_backbone_layers, max_layers,
                                           3)
    # As in torchvision: a pretrained trunk keeps its BatchNorm statistics frozen (detection
    # batches are too small to re-estimate them); a trunk trained from scratch needs real BN.
    norm_layer = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d

    backbone = _build_backbone(arch, norm_layer, trainable, cfg)
    levels = probe_levels(backbone)
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
        log.info(load_matching(model, state_dict, source, prefix=prefix).summary())
    if weights is not None and is_legacy_r50(weights, arch):
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


# --------------------------------------------------------------------------- building blocks


def _build_backbone(arch: str, norm_layer: type[nn.Module], trainable: int,
                    cfg: ModelConfig) -> nn.Module:
    """Trunk + FPN for ``arch``, mirroring the torchvision constructors without weights."""
    channels = cfg.fpn_channels or 256
    custom = _custom_fpn(arch, cfg)
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
    strides = _resnet_fpn_strides(strides)
    stages = [_STAGE_OF_STRIDE[s] for s in strides if s != 64]
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


def _custom_fpn(arch: str, cfg: ModelConfig) -> bool:
    """Whether `cfg` asks for an FPN other than the arch's own (``model.fpn_strides`` or
    ``model.fpn_channels``); a ConfigError for the archs whose FPN their COCO weights fix."""
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
    return custom


def _resnet_fpn_strides(strides: Sequence[int]) -> list[int]:
    """The level strides of a ResNet FPN built for `strides` (``model.fpn_strides``): sorted,
    each once; a ConfigError where they make no FPN."""
    strides = sorted(set(strides))
    if 64 in strides and 32 not in strides:
        raise ConfigError(f"model.fpn_strides {strides}: the stride-64 level pools the "
                          "stride-32 one. Fix: add 32, or drop 64")
    if not any(s != 64 for s in strides):
        raise ConfigError(f"model.fpn_strides {strides}: give at least one of 4, 8, 16, 32")
    return strides


# MobileNetV3-Large's FPN as torchvision's extractor builds it: the outputs of the trunk's last
# downsampling block and of its last layer (both stride 32), and the max-pool level.
_MOBILENET_FPN_STRIDES = (32, 32, 64)


def level_strides(cfg: ModelConfig) -> list[int]:
    """The strides of the feature levels (FPN levels, the max-pool one included) of the model
    :func:`build_model` makes from `cfg`, in order, without building it.

    They are the ``"stride"`` of each of :func:`~rcnnlab.models.description.describe_model`'s
    ``levels``: 4, 8, 16, 32, 64 for the ResNet FPNs, the given ``model.fpn_strides`` (sorted,
    each once) where set, 32, 32, 64 for MobileNetV3.

    Raises:
        ConfigError: FPN options the arch does not take, or strides that make no FPN (as
            :func:`build_model` would raise).
    """
    custom = _custom_fpn(cfg.arch, cfg)
    if cfg.arch == "fasterrcnn_mobilenet_v3_large_fpn":
        return list(_MOBILENET_FPN_STRIDES)
    if not custom:
        return list(RESNET_FPN_STRIDES)
    return _resnet_fpn_strides(cfg.fpn_strides or RESNET_FPN_STRIDES)


@torch.no_grad()
def probe_levels(backbone: nn.Module, size: int = 128) -> list[tuple[str, int]]:
    """(name, stride) of each feature map ``backbone`` returns, from one tiny forward pass.

    Read from the module rather than hard-coded so the level count always matches what the
    torchvision version in use builds (5 for ResNet FPNs, 3 for MobileNetV3);
    :func:`level_strides` tells the strides from the config alone.
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


def level_anchors(cfg: ModelConfig) -> tuple[tuple[tuple[int, ...], ...],
                                              tuple[tuple[float, ...], ...]]:
    """The anchors of each feature level of the model :func:`build_model` makes from `cfg`,
    without building it: (sizes, ratios) with one tuple per level of :func:`level_strides`
    (the given ``model.anchor_sizes`` / ``aspect_ratios``, else the arch's defaults)."""
    return _resolve_anchors(cfg.arch, level_strides(cfg), cfg.anchor_sizes, cfg.aspect_ratios)


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
