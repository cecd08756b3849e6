"""The training-speed clock the benchmark scripts share: a hook on rcnnlab's own TrainLoop."""

from __future__ import annotations

import time

import torch

from rcnnlab.engine.loop import HookBase


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
