"""Speed and memory of each epoch, and the boxes augmentation dropped."""

from __future__ import annotations

import logging

from rcnnlab.engine.loop import HookBase
from rcnnlab.runs.device import peak_memory_mb

log = logging.getLogger(__name__)


class Throughput(HookBase):
    """`boxes_dropped`, `epoch_seconds`, `train_img_per_s` and `peak_memory_mb` per epoch."""

    def before_epoch(self) -> None:
        """Note where the loop's counters stand."""
        self.dropped = 0
        self.start = (self.loop.train_seconds, self.loop.images_seen)

    def after_step(self) -> None:
        """Count the boxes the batch's augmentation dropped."""
        self.dropped += sum(t.get("boxes_dropped", 0) for t in self.loop.targets)

    def after_epoch(self) -> None:
        """Write the epoch's figures into the row."""
        seconds = self.loop.train_seconds - self.start[0]
        images = self.loop.images_seen - self.start[1]
        if self.dropped:
            log.info("augmentation dropped %d boxes that collapsed or left the image",
                     self.dropped)
        self.loop.row.update({
            "boxes_dropped": self.dropped,
            "epoch_seconds": seconds,
            "train_img_per_s": images / max(seconds, 1e-9),
            "peak_memory_mb": peak_memory_mb(self.loop.device),
        })
