"""Periodic validation: the evaluation pipeline's metrics on the validation split (given as a
function, since evaluation sits above the engine) and the validation loss, every
`train.eval_every` epochs and after the last.

Under data-parallel training every rank runs the hook: the metrics' detection is shared out
(`evaluation.pipeline`), the validation loss is rank 0's alone (its samplers draw one seeded
stream over the batches in order, which a split could not reproduce)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from rcnnlab.data.coco import CocoDetection
from rcnnlab.engine.hooks.step_losses import RAW_LOSSES, grouped
from rcnnlab.engine.loop import HookBase
from rcnnlab.models.heads import validation_losses


class PeriodicValidation(HookBase):
    """Adds `val_<metric>` (from `evaluate(model)`), `val_loss` and its groups, and
    `val_seconds` to the row of each validated epoch."""

    def __init__(self, evaluate: Callable[[nn.Module], dict[str, Any]], dataset: CocoDetection,
                 *, period: int, batch_size: int, seed: int, main: bool = True):
        self.evaluate, self.dataset = evaluate, dataset
        self.period, self.batch_size, self.seed = period, batch_size, seed
        self.main = main  # rank 0 (or a single process): it alone adds the validation loss

    def after_epoch(self) -> None:
        """Validate when the period or the last epoch comes."""
        loop = self.loop
        if loop.epoch != loop.epochs and loop.epoch % self.period:
            return
        start = time.perf_counter()
        loop.row.update({f"val_{k}": v for k, v in self.evaluate(loop.eval_model).items()})
        if self.main:
            loop.row.update(self.validation_loss())
        loop.row["val_seconds"] = time.perf_counter() - start

    @torch.no_grad()
    def validation_loss(self) -> dict[str, float]:
        """The training losses on the validation split (`models.heads.validation_losses`).

        The RPN and RoI samplers draw from a seeded fork of the random state, so validating
        never changes the training run's random stream.
        """
        model, device = self.loop.eval_model, self.loop.device
        sums, n = dict.fromkeys(RAW_LOSSES, 0.0), 0
        cuda = list(range(torch.cuda.device_count())) if device.type == "cuda" else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(self.seed)
            for start in range(0, len(self.dataset), self.batch_size):
                items = [self.dataset[i] for i in
                         range(start, min(start + self.batch_size, len(self.dataset)))]
                losses = validation_losses(
                    model, [img.to(device) for img, _ in items],
                    [{"boxes": t["boxes"].as_subclass(torch.Tensor).to(device),
                      "labels": t["labels"].to(device)} for _, t in items])
                for key in RAW_LOSSES:
                    sums[key] += losses[key].item() * len(items)
                n += len(items)
        means = {k: v / max(n, 1) for k, v in sums.items()}
        return {f"val_{k}": v for k, v in grouped(means).items()}
