"""The augmentation schedule: box-aware augmentation and multi-scale training while augmenting,
both off for the last `augment.no_aug_epochs` epochs (YOLOX's `no_aug_epochs`)."""

from __future__ import annotations

import logging

from rcnnlab.config import AugmentConfig
from rcnnlab.data.coco import CocoDetection
from rcnnlab.data.transforms import build_train_transforms
from rcnnlab.engine.loop import HookBase

log = logging.getLogger(__name__)


class AugmentationSchedule(HookBase):
    """Sets the training set's transforms and the model's multi-scale draw each epoch; logs
    `augment` (1 or 0) in the epoch's metrics. The tail is counted from the loop's epochs (which
    `train.time_budget` may set)."""

    def __init__(self, cfg: AugmentConfig, dataset: CocoDetection, *, digit_classes: bool):
        self.cfg, self.dataset = cfg, dataset
        self.digit_classes = digit_classes

    def augmenting(self, epoch: int) -> bool:
        """Augmentation runs (when enabled) except in the last `no_aug_epochs` epochs."""
        return self.cfg.enabled and epoch < self.loop.epochs - self.cfg.no_aug_epochs

    def before_epoch(self) -> None:
        """Choose this epoch's transforms and whether batches draw a short side."""
        on = self.augmenting(self.loop.epoch)
        self.dataset.transforms = build_train_transforms(
            self.cfg, digit_classes=self.digit_classes, augmenting=on)
        multiscale = on and bool(self.cfg.multiscale_sizes)
        self.loop.model.transform.enable_multiscale(multiscale)
        if multiscale:
            log.info("multi-scale training: short side drawn per batch from %s",
                     self.cfg.multiscale_sizes)
        self.loop.row["augment"] = int(on)
