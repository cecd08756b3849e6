"""Box-aware training augmentation built on torchvision transforms v2.

Every geometric op moves the boxes with the pixels (v2 transforms boxes as the minimal rectangle
around their transformed corners); boxes that leave the image are clamped, and those that collapse
are dropped by SanitizeBoundingBoxes together with their labels.
"""

from __future__ import annotations

import logging

import torch
from torchvision.transforms import v2 as T

log = logging.getLogger(__name__)


def to_model_input() -> T.Transform:
    """uint8 image -> float in [0, 1] (the detector normalises it itself)."""
    return T.ToDtype(torch.float32, scale=True)


def build_train_transforms(
    *,
    enabled: bool = True,
    hsv_prob: float = 0.5,
    brightness: float = 0.3,
    contrast: float = 0.3,
    saturation: float = 0.3,
    hue: float = 0.05,
    flip_prob: float = 0.0,
    affine_prob: float = 0.5,
    degrees: float = 5.0,
    translate: float = 0.05,
    shear: float = 2.0,
    scale: tuple[float, float] = (0.9, 1.1),
    digit_classes: bool = False,
    **_: object,
) -> T.Transform:
    """The augmentation pipeline of a training run (keyword arguments = config.augment).

    `digit_classes` marks a dataset whose classes are digits, for which a horizontal flip
    changes the class (a mirrored 2 is no digit): enabling the flip there logs a warning.
    """
    if not enabled:
        return to_model_input()
    if flip_prob > 0 and digit_classes:
        log.warning("augment.flip_prob=%.2f on a digit dataset: a mirrored digit is not the same "
                    "digit; set augment.flip_prob=0 unless that is intended", flip_prob)
    ops: list[T.Transform] = []
    if hsv_prob > 0:
        jitter = T.ColorJitter(brightness=brightness, contrast=contrast,
                               saturation=saturation, hue=hue)
        ops.append(T.RandomApply([jitter], p=hsv_prob))
    if flip_prob > 0:
        ops.append(T.RandomHorizontalFlip(p=flip_prob))
    if affine_prob > 0:
        affine = T.RandomAffine(degrees=degrees, translate=(translate, translate),
                                scale=tuple(scale), shear=(-shear, shear, -shear, shear))
        ops.append(T.RandomApply([affine], p=affine_prob))
    ops += [T.ClampBoundingBoxes(), T.SanitizeBoundingBoxes(min_size=1.0), to_model_input()]
    return T.Compose(ops)
