"""The training loop: batch -> forward -> loss -> backward -> optimizer and scheduler step.

Everything else a run does is a hook (`HookBase`, in the manner of detectron2's `TrainerBase` /
`HookBase`) called before and after training, each epoch and each step: the augmentation
schedule, loss weighting, statistics, validation, the metrics writer, checkpoints, progress. A
hook keeps its own state (`state_dict` / `load_state_dict`), which the checkpoint hook saves in
last.pt under the hook's `name`. A new training-time method is a new hook; the loop stays as is.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from rcnnlab.engine.precision import MixedPrecision
from rcnnlab.errors import TrainingDiverged
from rcnnlab.models.heads import total_loss


class HookBase:
    """A training-time feature. Hooks run in the order they are given to the loop, and read or
    write the loop's state through `self.loop`."""

    name = ""  # key of the hook's state in last.pt; "" = the hook keeps none
    # under data-parallel training: whether each rank's state differs (a random stream of its
    # own), so that last.pt keeps every rank's rather than rank 0's alone
    per_rank = False
    loop: TrainLoop  # set by TrainLoop

    def before_train(self) -> None:
        """Once, before the first epoch (or the first epoch after a resumed one)."""

    def before_epoch(self) -> None:
        """Before each epoch's first batch is drawn."""

    def adjust_loss(self, outputs: dict[str, Tensor], loss: Tensor) -> Tensor:
        """The loss to minimise for this step, given the model's outputs and the loss so far."""
        return loss

    def after_step(self) -> None:
        """After each optimizer and scheduler step."""

    def after_epoch(self) -> None:
        """After each epoch; the epoch's metrics row is `self.loop.row`."""

    def after_train(self) -> None:
        """Once, when training ends or is interrupted."""

    def state_dict(self) -> dict[str, Any]:
        """What resuming needs of this hook."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what `state_dict` returned."""


class TrainLoop:
    """Runs `epochs` epochs of at most `iters_per_epoch` steps each, calling `hooks`."""

    def __init__(self, model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, *, epochs: int,
                 iters_per_epoch: int, device: torch.device, grad_clip: float | None,
                 hooks: Sequence[HookBase], precision: MixedPrecision | None = None,
                 forward: nn.Module | None = None, world_size: int = 1):
        self.model, self.loader = model, loader
        # what a step calls: the model, or its DistributedDataParallel wrapper under torchrun
        self.forward = forward if forward is not None else model
        self.world_size = world_size  # processes training together; images_seen counts all
        self.optimizer, self.scheduler = optimizer, scheduler
        self.epochs, self.iters_per_epoch = epochs, iters_per_epoch
        self.device, self.grad_clip = device, grad_clip
        self.hooks = list(hooks)
        self.precision = precision or MixedPrecision("off", device)  # train.amp
        for hook in self.hooks:
            hook.loop = self
        self.epoch = 0  # epochs completed
        self.iteration = 0  # optimizer steps taken
        self.images_seen = 0  # by every process together
        self.train_seconds = 0.0  # in training steps, validation excluded
        self.row: dict[str, Any] = {}  # the current epoch's metrics, filled by the hooks
        self.targets: list[dict[str, Tensor]] = []  # the current step's batch, as loaded
        self.outputs: dict[str, Tensor] = {}  # and what the model returned for it
        self.loss = math.nan
        # what validation scores and best.pt keeps: the model, or a hook's average of it
        self.eval_model: nn.Module = model

    @property
    def lr(self) -> float:
        """The learning rate of the first parameter group (the head)."""
        return self.optimizer.param_groups[0]["lr"]

    def _call(self, stage: str) -> None:
        for hook in self.hooks:
            getattr(hook, stage)()

    def train(self) -> None:
        """Train from `self.epoch` (0, or where a resumed run stopped) to `epochs`."""
        self._call("before_train")
        try:
            while self.epoch < self.epochs:
                self.train_one_epoch()
        finally:
            self._call("after_train")

    def train_one_epoch(self) -> None:
        """One pass over the loader (at most `iters_per_epoch` steps), then the epoch's hooks."""
        self.row = {}
        self._call("before_epoch")
        self.model.train()
        start, steps = time.perf_counter(), 0
        for images, targets in self.loader:
            # The cap is checked once the next batch is drawn, as the first version of the
            # loop did: drawing it advances the augmentation's random stream, so results stay
            # reproducible across versions.
            if steps >= self.iters_per_epoch:
                break
            self.run_step(images, targets)
            steps += 1
        self.train_seconds += time.perf_counter() - start
        self.epoch += 1
        self.row = {"epoch": self.epoch, "iterations": self.iteration, "lr": self.lr, **self.row}
        self._call("after_epoch")

    def run_step(self, images: list[Tensor], targets: list[dict[str, Tensor]]) -> None:
        """Forward, loss, backward, optimizer and scheduler step on one batch."""
        self.targets = targets
        images = [img.to(self.device) for img in images]
        targets = [{"boxes": t["boxes"].as_subclass(Tensor).to(self.device),
                    "labels": t["labels"].to(self.device)} for t in targets]
        with self.precision.autocast():
            self.outputs = self.forward(images, targets)
        loss = total_loss(self.outputs)
        for hook in self.hooks:
            loss = hook.adjust_loss(self.outputs, loss)
        self.loss = loss.item()
        if not math.isfinite(self.loss):
            parts = {k: round(v.item(), 4) for k, v in self.outputs.items() if v.numel() == 1}
            clip = ("set train.grad_clip" if not self.grad_clip else
                    f"lower train.grad_clip (now {self.grad_clip:g})")
            raise TrainingDiverged(
                f"the loss became {self.loss} at iteration {self.iteration} ({parts}). "
                f"Fix: lower train.lr, raise train.warmup_iters, or {clip}")
        self.optimizer.zero_grad(set_to_none=True)
        self.precision.backward(loss)
        self.precision.step(self.optimizer, self.model.parameters(), self.grad_clip)
        self.scheduler.step()
        self.iteration += 1
        self.images_seen += len(images) * self.world_size
        self._call("after_step")
