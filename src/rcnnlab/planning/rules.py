"""The rules that turn a dataset's fingerprint and the machine into config values.

Each rule is a function of the fingerprint (`rcnnlab.data.fingerprint`), the hardware
(`planning.hardware`) and the choices made before it, and returns a `Choice`: the config keys it
sets and its reason in one line. The rules run in this order:

1. **Input scale.** Shrink every image by the factor f that keeps the smallest objects (the 5th
   percentile of sqrt(w*h)) at `MIN_OBJECT_PX` or more, never below `MIN_IMAGE_SIDE` on the short
   side and never enlarging (native size); large images are capped at `MAX_LONG_SIDE`. A factor
   above `NO_SHRINK_ABOVE` is not worth the blur: native size.
2. **FPN levels.** The stride-4 level (P2), which costs more than the rest of the FPN together
   on large images, only while the smallest objects at that scale are below `P2_BELOW_PX`.
3. **Anchors.** The arch's default anchors (4x each level's stride, h/w ratios 0.5-3) where they
   reach IoU 0.5 with at least `ANCHOR_COVERAGE` of the boxes at that scale; else anchors fitted
   to the boxes (`rcnnlab.models.anchor_fit.fit_anchors`, never covering fewer boxes than the
   defaults).
4. **Training window**: dense small objects (a median of `WINDOW_MIN_OBJECTS` or more an image,
   the largest under a quarter of the window) in images at least twice `WINDOW` long train on
   random `WINDOW`-px windows at the planned scale: as many objects a second for a fraction of
   the pixels; validation and prediction see whole images.
5. **Proposal budgets** from the objects per image (99th percentile and maximum): about
   `PROPOSALS_PER_OBJECT` RPN proposals per object at test time (at least 100), twice as many in
   training, box-head RoIs and detections per image to match.
6. **Sampler**: repeat-factor sampling (LVIS) when the most frequent class has more than
   `IMBALANCE` times the instances of the rarest, else plain shuffling.
7. **Augmentation**: colour jitter and a small affine; a horizontal flip only for classes that
   are not digits or characters.
8. **Model**: ResNet-18 FPN trained from scratch; on a CPU an FPN of 128 channels and a 5x5
   RoIAlign (3.3x faster to train than torchvision's 256 / 7x7, same mAP on ORAND); the
   convolutions in channels-last memory order.
9. **Precision**: `auto`, bf16 where the device computes it natively.
10. **Batch size** that fits half the device's free memory at that scale (`TRAIN_BYTES_PER_PIXEL`
    per input pixel), at most 8 on a CPU and 16 on a GPU; the learning rate scales with it.
11. **Schedule**: the time budget when one is given (epochs fitted to the measured speed), else
    enough epochs for about `ITERATIONS` iterations; AdamW, cosine, warm-up at most a tenth of
    the run.
12. **Validation**: a tenth of the training images held out when there is no validation split;
    numbers read (digits) with overlapping detections of other classes dropped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rcnnlab.data.fingerprint import Fingerprint
from rcnnlab.models.anchor_fit import fit_anchors
from rcnnlab.models.anchors import box_sizes_at_scale, coverage
from rcnnlab.models.architecture import default_anchors
from rcnnlab.models.transform import native_scale
from rcnnlab.planning.hardware import Hardware

ARCH = "resnet18_fpn"
ALL_STRIDES = (4, 8, 16, 32, 64)

MIN_OBJECT_PX = 32  # the smallest objects (p5) are shrunk to no less than this
MIN_IMAGE_SIDE = 128  # nor the images' short side below this
MAX_LONG_SIDE = 1333  # torchvision's cap on the long side
NO_SHRINK_ABOVE = 0.9  # a shrink factor above this keeps native size
WINDOW = 320  # training window of dense small objects in large images (px)
WINDOW_MIN_OBJECTS = 4  # objects an image (median) from which a window holds enough of them
P2_BELOW_PX = 32  # the stride-4 level is kept while the p5 object is smaller than this
ANCHOR_COVERAGE = 0.9  # share of boxes the default anchors must reach at IoU 0.5
PROPOSALS_PER_OBJECT = 10  # RPN proposals per object (p99 objects per image) at test time
MAX_TEST_PROPOSALS = 1000
IMBALANCE = 10.0  # most / least frequent class above which rare classes are repeated
TRAIN_BYTES_PER_PIXEL = 1600  # training memory per input pixel (ResNet-18 FPN 128, bf16)
MEMORY_SHARE = 0.5  # of the device's free memory a batch may take
MAX_BATCH = {"cpu": 8, "gpu": 16}
LR_PER_8_IMAGES = 0.002  # AdamW; measured on ORAND at 10 minutes (0.001 / 0.002 / 0.003)
ITERATIONS = 3000  # a schedule without a time budget trains about this many iterations
MIN_EPOCHS = 12
WARMUP_ITERS = 200
VAL_FRACTION = 0.1


@dataclass(frozen=True)
class Choice:
    """One decision of the plan: the config keys it sets (dotted) and why."""

    topic: str
    values: dict[str, Any]
    reason: str


@dataclass
class Context:
    """What the rules know: the data, the machine, the budget, and the choices made so far."""

    fingerprint: Fingerprint
    hardware: Hardware
    budget_minutes: float | None = None
    has_valid: bool = True  # the data names a validation split
    values: dict[str, Any] = field(default_factory=dict)  # dotted key -> value, so far

    def take(self, choice: Choice) -> Choice:
        """Record a choice's values for the rules after it."""
        self.values.update(choice.values)
        return choice


def _ceil_to(value: float, step: int) -> int:
    return int(math.ceil(value / step) * step)


def _px(value: float) -> str:
    return f"{value:.0f} px"


# ----------------------------------------------------------------------------- 1. input scale
def input_scale(ctx: Context) -> Choice:
    """How far images are shrunk: as far as the smallest objects allow (never enlarged)."""
    fp = ctx.fingerprint
    keys = {"model.native_size": True}
    if fp.object_size is None or fp.image_short is None:
        return Choice("input scale", {**keys, "model.min_size": 800, "model.max_size": 1333},
                      "no boxes to measure: native size")
    s5, short, long_ = fp.object_size.p5, fp.image_short.p50, fp.image_long.p50
    factor = min(1.0, max(MIN_OBJECT_PX / s5, MIN_IMAGE_SIDE / short))
    capped = min(factor, MAX_LONG_SIDE / fp.image_long.p95)
    if capped > NO_SHRINK_ABOVE:
        return Choice(
            "input scale", {**keys, "model.min_size": 800, "model.max_size": MAX_LONG_SIDE},
            f"the smallest objects (p5 {_px(s5)}) need every pixel: native size, never "
            f"enlarged; images over 800 px short or {MAX_LONG_SIDE} px long side shrink")
    min_size, max_size = _ceil_to(capped * short, 32), _ceil_to(capped * long_, 32)
    scale = native_scale(int(short), int(long_), min_size, max_size)
    if capped < factor:
        why = (f"images of {_px(fp.image_long.p95)} (p95 long side) capped at "
               f"{MAX_LONG_SIDE} px: the smallest objects (p5 {_px(s5)}) become "
               f"{_px(s5 * scale)}")
    elif MIN_OBJECT_PX / s5 >= MIN_IMAGE_SIDE / short:
        why = (f"the smallest objects (p5 {_px(s5)}) stay >= {MIN_OBJECT_PX} px at scale "
               f"{scale:.2f}")
    else:
        why = (f"objects are large (p5 {_px(s5)}): shrunk to {_px(s5 * scale)} at scale "
               f"{scale:.2f}, the image's short side kept >= {MIN_IMAGE_SIDE} px")
    return Choice("input scale", {**keys, "model.min_size": min_size,
                                  "model.max_size": max_size},
                  f"{why}: a {_px(long_)} x {_px(short)} image is trained at "
                  f"{_px(long_ * scale)} x {_px(short * scale)}")


def box_sizes(ctx: Context) -> np.ndarray:
    """(N, 2) training boxes' widths and heights at the planned input scale."""
    v, fp = ctx.values, ctx.fingerprint
    return box_sizes_at_scale(fp.box_wh, fp.box_image_wh, min_size=v["model.min_size"],
                              max_size=v["model.max_size"], native_size=v["model.native_size"])


# ----------------------------------------------------------------------------- 2. FPN levels
def fpn_levels(ctx: Context) -> Choice:
    """Keep the stride-4 level only for small objects."""
    wh = box_sizes(ctx)
    if not len(wh):
        return Choice("FPN levels", {"model.fpn_strides": None}, "no boxes: all five levels")
    s5 = float(np.percentile(np.sqrt(wh[:, 0] * wh[:, 1]), 5))
    if s5 < P2_BELOW_PX:
        return Choice("FPN levels", {"model.fpn_strides": None},
                      f"objects down to {_px(s5)} (p5) at that scale: all five levels, "
                      "stride 4 (P2) to 64")
    return Choice("FPN levels", {"model.fpn_strides": [8, 16, 32, 64]},
                  f"the smallest objects are {_px(s5)} (p5) at that scale: stride 8 to 64, "
                  "without the stride-4 level (P2), the costliest on large images")


# ----------------------------------------------------------------------------- 3. anchors
def anchors(ctx: Context) -> Choice:
    """The default anchors where they cover the boxes, else anchors fitted to them."""
    wh = box_sizes(ctx)
    strides = ctx.values["model.fpn_strides"] or list(ALL_STRIDES)
    sizes, ratios = default_anchors(ARCH, strides)
    unset = {"model.anchors": "given", "model.anchor_sizes": None, "model.aspect_ratios": None}
    if not len(wh):
        return Choice("anchors", unset, "no boxes: the default anchors")
    before = coverage(wh, sizes, ratios, strides=strides)
    if before["iou>=0.5"] >= ANCHOR_COVERAGE:
        return Choice("anchors", unset,
                      f"the default anchors (sizes {[s[0] for s in sizes]}, h/w ratios "
                      f"{list(ratios[0])}) reach IoU 0.5 with {before['iou>=0.5']:.0%} of the "
                      f"boxes (0.7: {before['iou>=0.7']:.0%})")
    fitted_sizes, fitted_ratios = fit_anchors(
        wh, num_levels=len(strides), sizes_per_level=len(sizes[0]), num_ratios=len(ratios[0]),
        strides=strides, reference=(sizes, ratios))
    after = coverage(wh, fitted_sizes, fitted_ratios, strides=strides)
    return Choice("anchors", {"model.anchors": "given", "model.anchor_sizes": fitted_sizes,
                              "model.aspect_ratios": fitted_ratios[0]},
                  f"the default anchors reach IoU 0.5 with {before['iou>=0.5']:.0%} of the "
                  f"boxes only: fitted to them ({after['iou>=0.5']:.0%}, 0.7: "
                  f"{before['iou>=0.7']:.0%} -> {after['iou>=0.7']:.0%})")


# ----------------------------------------------------------------------------- 4. window
def training_window(ctx: Context) -> Choice:
    """Train dense small objects in large images on windows cut at their own scale."""
    fp, v = ctx.fingerprint, ctx.values
    wh = box_sizes(ctx)
    none = Choice("training window", {"augment.crop_size": None},
                  "whole images in training")
    if not len(wh) or fp.image_long is None or fp.objects_per_image is None:
        return none
    scale = native_scale(int(fp.image_short.p50), int(fp.image_long.p50), v["model.min_size"],
                         v["model.max_size"])
    long_side = fp.image_long.p50 * scale
    s95 = float(np.percentile(np.sqrt(wh[:, 0] * wh[:, 1]), 95))
    dense = fp.objects_per_image.p50 >= WINDOW_MIN_OBJECTS
    if long_side < 2 * WINDOW or s95 > WINDOW / 4 or not dense:
        why = ("images of " + _px(long_side) + " are small enough to train whole"
               if long_side < 2 * WINDOW else
               f"objects up to {_px(s95)} (p95) need whole images" if s95 > WINDOW / 4 else
               f"{fp.objects_per_image.p50:.0f} objects an image (median): whole images")
        return Choice("training window", {"augment.crop_size": None}, why)
    return Choice("training window", {"augment.crop_size": WINDOW},
                  f"{fp.objects_per_image.p50:.0f} objects an image (median) of up to "
                  f"{_px(s95)} (p95) in {_px(long_side)} images: trained on {WINDOW}-px "
                  f"windows at the same scale ({(long_side / WINDOW) ** 2:.0f}x fewer pixels a "
                  "step, so more steps in the budget); evaluated on whole images")


# ----------------------------------------------------------------------------- 5. budgets
def proposal_budgets(ctx: Context) -> Choice:
    """Proposals, sampled RoIs and detections per image from the objects per image."""
    fp = ctx.fingerprint
    dense = max(1.0, fp.objects_per_image_p99)
    most = fp.objects_per_image.max if fp.objects_per_image else 1.0
    test_post = min(MAX_TEST_PROPOSALS, max(100, _ceil_to(PROPOSALS_PER_OBJECT * dense, 50)))
    train_post = max(500, 2 * test_post)
    rois = min(512, max(64, 2 ** math.ceil(math.log2(4 * dense))))
    detections = max(100, _ceil_to(2 * most, 50))
    return Choice(
        "proposal budgets",
        {"model.rpn_pre_nms_top_n_test": min(2000, 5 * test_post),
         "model.rpn_post_nms_top_n_test": test_post,
         "model.rpn_pre_nms_top_n_train": min(2000, 2 * train_post),
         "model.rpn_post_nms_top_n_train": train_post,
         "model.rpn_batch_size_per_image": 256,
         "model.box_batch_size_per_image": rois,
         "model.box_detections_per_img": detections},
        f"up to {dense:.0f} objects an image (p99; max {most:.0f}): {test_post} proposals "
        f"at test time, {train_post} in training, {rois} RoIs sampled per image, "
        f"{detections} detections kept")


# ----------------------------------------------------------------------------- 6. sampler
def sampler(ctx: Context) -> Choice:
    """Repeat-factor sampling for a strong class imbalance."""
    fp = ctx.fingerprint
    if fp.imbalance is None or fp.imbalance <= IMBALANCE:
        what = "one class" if len(fp.class_names) == 1 else (
            f"the most frequent class has {fp.imbalance or 1:.1f}x the rarest's instances")
        return Choice("sampler", {"data.repeat_factor_threshold": None},
                      f"{what}: plain shuffling")
    shares = [s for s, c in zip(fp.class_image_share, fp.class_counts, strict=True) if c > 0]
    threshold = round(float(np.median(shares)), 3)
    rarest = fp.class_names[fp.class_counts.index(min(c for c in fp.class_counts if c > 0))]
    return Choice("sampler", {"data.repeat_factor_threshold": threshold},
                  f"the most frequent class has {fp.imbalance:.0f}x the instances of the "
                  f"rarest ('{rarest}'): repeat-factor sampling, images of classes in fewer "
                  f"than {threshold:.1%} of the images (the median class) repeated")


# ----------------------------------------------------------------------------- 7. augmentation
def augmentation(ctx: Context) -> Choice:
    """Colour jitter and a small affine; a flip unless the classes are writing."""
    fp = ctx.fingerprint
    flip = 0.0 if fp.text else 0.5
    values = {"augment.enabled": True, "augment.hsv_prob": 0.5, "augment.affine_prob": 0.5,
              "augment.degrees": 5.0, "augment.translate": 0.05, "augment.shear": 2.0,
              "augment.scale": [0.9, 1.1], "augment.flip_prob": flip,
              "augment.multiscale_sizes": [], "augment.no_aug_epochs": 1}
    kind = "digits" if fp.digits else "characters" if fp.text else "objects"
    return Choice("augmentation", values,
                  f"colour jitter and a small affine (off for the last epoch); the classes are "
                  f"{kind}: " + ("no flip (a mirrored character is no character)" if fp.text
                                 else "horizontal flip 0.5"))


# ----------------------------------------------------------------------------- 8. model
def model(ctx: Context) -> Choice:
    """The detector: ResNet-18 FPN from scratch, narrow on a CPU."""
    hw = ctx.hardware
    channels, grid = (256, 7) if hw.gpu else (128, 5)
    why = ("torchvision's FPN width and RoIAlign grid on a GPU" if hw.gpu else
           "FPN 128 channels and a 5x5 RoIAlign on a CPU (3.3x faster to train than 256 / 7x7 "
           "at the same ORAND mAP)")
    return Choice("model", {"model.arch": ARCH, "model.weights": None,
                            "model.backbone_weights": None, "model.fpn_channels": channels,
                            "model.roi_output_size": grid, "model.roi_sampling_ratio": 2,
                            "model.box_head_dim": 1024, "train.channels_last": True},
                  f"ResNet-18 FPN trained from scratch (no download); {why}; convolutions in "
                  "channels-last (NHWC) order, which oneDNN and cuDNN prefer (1.65x faster on "
                  "640-px images on a CPU with AMX, never slower on ORAND)")


# ----------------------------------------------------------------------------- 9. precision
def precision(ctx: Context) -> Choice:
    """bf16 where the device computes it natively."""
    hw = ctx.hardware
    now = f"bf16 here ({hw.bf16})" if hw.bf16 else "float32 here (no native bf16)"
    return Choice("precision", {"train.amp": "auto", "eval.amp": "auto"},
                  f"auto: {now}; boxes and losses stay float32 either way")


# ----------------------------------------------------------------------------- 10. batch
def batch_size(ctx: Context) -> Choice:
    """The largest batch (at most the device's cap) that fits half the free memory."""
    fp, hw, v = ctx.fingerprint, ctx.hardware, ctx.values
    cap = MAX_BATCH["gpu" if hw.gpu else "cpu"]
    if fp.image_long is None:
        pixels = 0.0
    else:
        scale = native_scale(int(fp.image_short.p95), int(fp.image_long.p95), v["model.min_size"],
                             v["model.max_size"])
        window = v.get("augment.crop_size") or math.inf
        pixels = (_ceil_to(min(window, fp.image_long.p95 * scale), 32)
                  * _ceil_to(min(window, fp.image_short.p95 * scale), 32))
    per_image = TRAIN_BYTES_PER_PIXEL * pixels
    if hw.memory_bytes is None or per_image == 0:
        batch, memory = cap, "memory unknown"
    else:
        fits = int(MEMORY_SHARE * hw.memory_bytes // per_image)
        batch = max(1, min(cap, fits))
        memory = (f"{per_image / 2**30:.2f} GiB an image of {pixels / 1e6:.2f} Mpx against "
                  f"{hw.memory_bytes / 2**30:.0f} GiB free")
    lr = round(LR_PER_8_IMAGES * batch / 8, 6)
    return Choice("batch", {"train.batch_size": batch, "eval.batch_size": max(batch, 8),
                            "train.lr": lr},
                  f"batch {batch} ({memory}; at most {cap} on a {'GPU' if hw.gpu else 'CPU'}), "
                  f"learning rate {lr:g} (0.002 per 8 images)")


# ----------------------------------------------------------------------------- 11. schedule
def schedule(ctx: Context) -> Choice:
    """The time budget, or a number of epochs, and the optimiser around it."""
    fp, v = ctx.fingerprint, ctx.values
    many = len(fp.class_names) > 1
    values = {"train.optimizer": "adamw", "train.backbone_lr_mult": 1.0,
              "train.weight_decay": 1e-4, "train.schedule": "cosine", "train.eta_min": 0.01,
              "train.grad_clip": 10.0, "train.label_smoothing": 0.1 if many else 0.0,
              "train.roi_loss": "ce"}
    smoothing = ("label smoothing 0.1 between look-alike classes" if many
                 else "no label smoothing (one class)")
    train_images = fp.images * (1 - (0 if ctx.has_valid else VAL_FRACTION))
    per_epoch = max(1, math.ceil(train_images / v["train.batch_size"]))
    if ctx.budget_minutes is not None:
        values.update({"train.time_budget": ctx.budget_minutes, "train.epochs": MIN_EPOCHS,
                       "train.warmup_iters": WARMUP_ITERS})
        return Choice("schedule", values,
                      f"{ctx.budget_minutes:g} minutes: epochs and their length fitted to the "
                      f"measured speed (a full pass is {per_epoch} iterations), warm-up at most "
                      f"a tenth of the run; AdamW, cosine, the backbone at the full rate (from "
                      f"scratch); {smoothing}")
    epochs = max(MIN_EPOCHS, math.ceil(ITERATIONS / per_epoch))
    warmup = min(WARMUP_ITERS, epochs * per_epoch // 10)
    values.update({"train.time_budget": None, "train.epochs": epochs,
                   "train.warmup_iters": warmup})
    return Choice("schedule", values,
                  f"no time budget: {epochs} epochs of {per_epoch} iterations (about "
                  f"{epochs * per_epoch} in all), warm-up {warmup}; AdamW, cosine, the backbone "
                  f"at the full rate (from scratch); {smoothing}")


# ----------------------------------------------------------------------------- 12. validation
def validation(ctx: Context) -> Choice:
    """A held-out share when there is no validation split; how numbers are read."""
    fp = ctx.fingerprint
    values: dict[str, Any] = {"eval.read_iou": 0.4 if fp.digits else None,
                              "eval.sweep_min": 0.45, "eval.sweep_max": 0.9}
    parts = []
    if not ctx.has_valid:
        values["data.val_fraction"] = VAL_FRACTION
        parts.append(f"no validation split: {VAL_FRACTION:.0%} of the training images held "
                     "out")
    parts.append("numbers read from digits, a detection overlapping a higher-scored one of "
                 "another class by IoU > 0.4 left out" if fp.digits
                 else "no number to read (the classes are not digits)")
    return Choice("validation", values, "; ".join(parts))


PLANNED_KEYS = frozenset({
    "model.native_size", "model.min_size", "model.max_size", "model.fpn_strides",
    "model.anchors", "model.anchor_sizes", "model.aspect_ratios",
    "model.rpn_pre_nms_top_n_test", "model.rpn_post_nms_top_n_test",
    "model.rpn_pre_nms_top_n_train", "model.rpn_post_nms_top_n_train",
    "model.rpn_batch_size_per_image", "model.box_batch_size_per_image",
    "model.box_detections_per_img", "data.repeat_factor_threshold", "augment.enabled",
    "augment.hsv_prob", "augment.affine_prob", "augment.degrees", "augment.translate",
    "augment.shear", "augment.scale", "augment.flip_prob", "augment.multiscale_sizes",
    "augment.no_aug_epochs", "augment.crop_size", "model.arch", "model.weights",
    "model.backbone_weights",
    "model.fpn_channels", "model.roi_output_size", "model.roi_sampling_ratio",
    "model.box_head_dim", "train.channels_last", "train.amp", "eval.amp", "train.batch_size",
    "eval.batch_size", "train.lr", "train.optimizer", "train.backbone_lr_mult",
    "train.weight_decay", "train.schedule", "train.eta_min", "train.grad_clip",
    "train.label_smoothing", "train.roi_loss", "train.time_budget", "train.epochs",
    "train.warmup_iters", "eval.read_iou", "eval.sweep_min", "eval.sweep_max",
    "data.val_fraction"})
"""Every key a rule may set (the configuration reference marks them)."""

RULES = (input_scale, fpn_levels, anchors, training_window, proposal_budgets, sampler,
         augmentation, model, precision, batch_size, schedule, validation)
"""The rules in the order they run (a rule may read the values of those before it)."""
