"""Box-aware training augmentation built on torchvision transforms v2.

Every geometric op moves the boxes with the pixels (v2 transforms a box into the minimal
rectangle around its four transformed corners); boxes that leave the image are clamped, and
those that collapse are dropped together with their labels, and counted: the number dropped is
written into the target as `boxes_dropped`, so the trainer can log it whatever process loaded it.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2 as T
from torchvision.transforms.v2 import functional as F

from rcnnlab.config import AugmentConfig, section_with

log = logging.getLogger(__name__)

# AutoAugment's SVHN policy (Cubuk et al. 2018; torchvision's AutoAugmentPolicy.SVHN) with its
# geometric ops (ShearX/Y, TranslateX/Y, Rotate) removed: they would move pixels without the
# boxes, and geometry is the box-aware affine's job. Entries are (op, probability, magnitude bin
# 0..9); the two sub-policies left empty (ShearY/ShearX + TranslateX/Y) are dropped: 23 remain.
SVHN_COLOUR_POLICY: tuple[tuple[tuple[str, float, int | None], ...], ...] = (
    (("Invert", 0.2, None),),
    (("Invert", 0.7, None),),
    (("Equalize", 0.6, None), ("Solarize", 0.6, 6)),
    (("Invert", 0.9, None), ("Equalize", 0.6, None)),
    (("Equalize", 0.6, None),),
    (("AutoContrast", 0.8, None),),
    (("Invert", 0.4, None),),
    (("Solarize", 0.2, 6),),
    (("Invert", 0.9, None), ("AutoContrast", 0.8, None)),
    (("Equalize", 0.6, None),),
    (("Solarize", 0.3, 3),),
    (("Invert", 0.7, None),),
    (("Equalize", 0.9, None),),
    (("Invert", 0.9, None), ("Equalize", 0.6, None)),
    (("Contrast", 0.3, 3),),
    (("Invert", 0.8, None),),
    (("Solarize", 0.4, 8),),
    (("Invert", 0.6, None),),
    (("Invert", 0.6, None),),
    (("Solarize", 0.7, 2),),
    (("Invert", 0.8, None),),
    (("AutoContrast", 0.7, None),),
    (("Invert", 0.1, None),),
)


def colour_op(image: torch.Tensor, op: str, magnitude_bin: int | None, sign: float = 1.0):
    """Apply one AutoAugment colour op to a uint8 image, with torchvision's magnitude bins.

    Solarize inverts pixels at or above 255 * linspace(1, 0, 10)[bin]; Contrast scales by
    1 + sign * linspace(0, 0.9, 10)[bin].
    """
    if op == "Invert":
        return F.invert(image)
    if op == "Equalize":
        return F.equalize(image)
    if op == "AutoContrast":
        return F.autocontrast(image)
    if op == "Solarize":
        level = float(torch.linspace(1.0, 0.0, 10)[magnitude_bin])
        return F.solarize(image, threshold=255.0 * level)
    if op == "Contrast":
        level = float(torch.linspace(0.0, 0.9, 10)[magnitude_bin])
        return F.adjust_contrast(image, 1.0 + sign * level)
    raise ValueError(f"unknown colour op {op!r}")


class SVHNColourPolicy(T.Transform):
    """With probability `p`, draw one sub-policy of SVHN_COLOUR_POLICY and apply its ops.

    Only the image changes: boxes and labels pass through untouched.
    """

    def __init__(self, p: float = 1.0):
        super().__init__()
        self.p = p

    def forward(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        if float(torch.rand(())) >= self.p:
            return image, target
        policy = SVHN_COLOUR_POLICY[int(torch.randint(len(SVHN_COLOUR_POLICY), ()))]
        for op, prob, magnitude in policy:
            if float(torch.rand(())) < prob:
                sign = -1.0 if float(torch.rand(())) < 0.5 else 1.0
                image = colour_op(image, op, magnitude, sign)
        return image, target


class CountDropped(T.Transform):
    """Drop boxes that collapsed (with their labels) and record how many in the target."""

    def __init__(self, min_size: float = 1.0):
        super().__init__()
        self.sanitize = T.SanitizeBoundingBoxes(min_size=min_size)

    def forward(self, image: Any, target: dict) -> tuple[Any, dict]:
        before = len(target["boxes"])
        image, target = self.sanitize(image, target)
        target["boxes_dropped"] = target.get("boxes_dropped", 0) + before - len(target["boxes"])
        return image, target


class RandomWindow(T.Transform):
    """A random `size` x `size` window of the image (a side shorter than `size` is kept whole),
    at the image's own scale: training on small objects in large images sees more of them per
    second. Boxes are clipped to the window; a box with less than `min_visible` of its area
    inside is dropped with its label (a digit cut in half is no digit), and counted in
    `boxes_dropped`."""

    def __init__(self, size: int, min_visible: float = 0.5):
        super().__init__()
        self.size, self.min_visible = size, min_visible

    def forward(self, image: torch.Tensor, target: dict) -> tuple[torch.Tensor, dict]:
        h, w = (int(v) for v in image.shape[-2:])
        ch, cw = min(self.size, h), min(self.size, w)
        if (ch, cw) == (h, w):
            return image, target
        top = int(torch.randint(h - ch + 1, ()))
        left = int(torch.randint(w - cw + 1, ()))
        boxes = target["boxes"].as_subclass(torch.Tensor)
        inside = boxes - torch.tensor([left, top, left, top], dtype=boxes.dtype)
        inside[:, 0::2] = inside[:, 0::2].clamp(0, cw)
        inside[:, 1::2] = inside[:, 1::2].clamp(0, ch)

        def area(b: torch.Tensor) -> torch.Tensor:
            return (b[:, 2] - b[:, 0]).clamp(min=0) * (b[:, 3] - b[:, 1]).clamp(min=0)

        keep = area(inside) >= self.min_visible * area(boxes)
        target = {**target,
                  "boxes": tv_tensors.BoundingBoxes(inside[keep], format="XYXY",
                                                    canvas_size=(ch, cw)),
                  "labels": target["labels"][keep],
                  "boxes_dropped": target.get("boxes_dropped", 0) + int((~keep).sum())}
        return F.crop(image, top, left, ch, cw), target


def resize_scale(height: int, width: int, short_side: int, max_size: int) -> float:
    """torchvision's rule: scale the short side to ``short_side``, the long one to <= max_size."""
    return min(short_side / min(height, width), max_size / max(height, width))


def rescale(image: torch.Tensor, boxes: torch.Tensor | None, scale: float):
    """Resize a CHW float image by ``scale`` (bilinear) and its xyxy boxes with it.

    The size is floored as torchvision does; the epsilon keeps a size meant to be exact (a
    drawn short side: 37 * (40 / 37) = 39.999...) from landing one pixel short.
    """
    h, w = (int(s) for s in image.shape[-2:])
    size = (max(1, math.floor(h * scale + 1e-6)), max(1, math.floor(w * scale + 1e-6)))
    resized = torch.nn.functional.interpolate(
        image[None], size=size, mode="bilinear", align_corners=False)[0]
    if boxes is not None:
        ratios = torch.tensor([size[1] / w, size[0] / h] * 2, dtype=boxes.dtype,
                              device=boxes.device)
        boxes = boxes * ratios
    return resized, boxes


def to_model_input() -> T.Transform:
    """uint8 image -> float in [0, 1] (the detector normalises it itself)."""
    return T.ToDtype(torch.float32, scale=True)


def build_train_transforms(cfg: AugmentConfig | None = None, *, digit_classes: bool = False,
                           augmenting: bool = True, **options: Any) -> T.Transform:
    """The training transforms of a run, from the `augment` section (its fields may also be
    given, or overridden, as keyword `options`; the defaults are the section's).

    Order: the training window (`crop_size`), SVHN colour policy, ColorJitter, flip, affine,
    clamp + drop collapsed boxes, to float. Without augmentation (`enabled` false, or
    `augmenting` false: the augmentation-off epochs) only the window and the conversion remain:
    the window sets what a training step sees, not how it is varied. `digit_classes` marks a
    dataset whose classes are digits, for which a horizontal flip changes the class (a mirrored
    2 is no digit): enabling the flip there logs a warning. Multi-scale training and
    `no_aug_epochs` are the training loop's (the model's transform, the augmentation schedule).
    """
    c = section_with(AugmentConfig, cfg, options, "augment")
    window = [RandomWindow(c.crop_size)] if c.crop_size else []
    if not (c.enabled and augmenting):
        if not window:
            return to_model_input()
        return T.Compose([*window, CountDropped(min_size=1.0), to_model_input()])
    if c.flip_prob > 0 and digit_classes:
        log.warning("augment.flip_prob=%.2f on a digit dataset: a mirrored digit is not the same "
                    "digit; set augment.flip_prob=0 unless that is intended", c.flip_prob)
    ops: list[T.Transform] = list(window)
    if c.svhn_policy_prob > 0:
        ops.append(SVHNColourPolicy(c.svhn_policy_prob))
    if c.hsv_prob > 0:
        jitter = T.ColorJitter(brightness=c.brightness, contrast=c.contrast,
                               saturation=c.saturation, hue=c.hue)
        ops.append(T.RandomApply([jitter], p=c.hsv_prob))
    if c.flip_prob > 0:
        ops.append(T.RandomHorizontalFlip(p=c.flip_prob))
    if c.affine_prob > 0:
        affine = T.RandomAffine(degrees=c.degrees, translate=(c.translate, c.translate),
                                scale=tuple(c.scale), shear=(-c.shear, c.shear, -c.shear, c.shear))
        ops.append(T.RandomApply([affine], p=c.affine_prob))
    ops += [T.ClampBoundingBoxes(), CountDropped(min_size=1.0), to_model_input()]
    return T.Compose(ops)

