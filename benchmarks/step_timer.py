"""What the training-speed benchmarks share: the clock (a hook on rcnnlab's own TrainLoop) and
the model, optimizer and loader a config builds for it."""

from __future__ import annotations

import time

import torch
from torch.utils.data import DataLoader

from rcnnlab.data.coco import CocoData, CocoDetection, collate
from rcnnlab.data.transforms import build_train_transforms
from rcnnlab.engine.loop import HookBase
from rcnnlab.engine.optim import build_optimizer
from rcnnlab.models.architecture import build_model


def training_pieces(cfg, data: CocoData, device: torch.device):
    """(model, optimizer, loader) of `cfg` on `data`, seeded as every benchmark row is."""
    torch.manual_seed(0)
    model = build_model(cfg.model, num_classes=len(data.categories) + 1).to(device)
    if cfg.train.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(model, cfg.train)
    train_set = CocoDetection(data, build_train_transforms(cfg.augment, digit_classes=True))
    loader = DataLoader(train_set, batch_size=cfg.train.batch_size, shuffle=True,
                        collate_fn=collate, num_workers=cfg.data.workers, drop_last=True)
    return model, optimizer, loader


class StepTimer(HookBase):
    """Starts the clock after `warmup` steps and counts this process's images after it."""

    def __init__(self, warmup: int, device: torch.device):
        self.warmup, self.device, self.start, self.seen = warmup, device, 0.0, 0

    def after_step(self) -> None:
        if self.loop.iteration == self.warmup:
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            self.start, self.seen = time.perf_counter(), 0
        elif self.loop.iteration > self.warmup:
            self.seen += len(self.loop.targets)

    def images_per_s(self) -> float:
        """Images a second since the clock started (the caller ends training first)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return self.seen / (time.perf_counter() - self.start)
