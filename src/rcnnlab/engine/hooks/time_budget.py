"""`train.time_budget` (minutes), as Ultralytics' `time=`: training, validation included, ends
within the budget, with the schedule fitted to it rather than cut off by it.

After the first iterations the hook measures the time an iteration takes and estimates a
validation's. It then chooses the epochs E = ceil(budget / (full pass + its validation)) and the
iterations n of each epoch (at most a full pass; a shorter epoch sees a random subset of the
images) that fill the budget:

    elapsed + iterations to come x s_iter + validations to come x s_val
            + epochs to come x s_other = budget

The LR schedule ends at the last of those iterations, its warm-up takes at most a tenth of them
(`MAX_WARMUP_SHARE`: 200 warm-up iterations of a 150-iteration run would never let the learning
rate decay), and the augmentation-off tail is the last `augment.no_aug_epochs` of the E epochs.
After each epoch, E and n are fitted again to the measured speed, validation time and other
per-epoch time (checkpoints); a step after which only the final validation still fits ends training.
The decisions are logged and written to time_budget.json.
"""

from __future__ import annotations

import logging
import math
import time
from typing import Any

from rcnnlab.config import TrainConfig
from rcnnlab.engine.loop import HookBase
from rcnnlab.engine.optim import refit_scheduler
from rcnnlab.runs.distributed import broadcast_object
from rcnnlab.runs.rundir import RunDir

log = logging.getLogger(__name__)

# Before a validation has been timed it is estimated at this share of the time training takes
# for as many images (inference plus the validation loss's forward; 0.65 measured on ORAND).
VALIDATION_SHARE = 0.7
# The plan aims this share short of the budget: the last checkpoint and the timer's jitter.
SAFETY = 0.005
# The warm-up takes at most this share of the iterations the budget holds.
MAX_WARMUP_SHARE = 0.1


class TimeBudget(HookBase):
    """Fits the loop's epochs, iterations per epoch and LR schedule to `minutes` of wall time,
    validation included, from measured speed. Register it after the validation hook (it reads
    the epoch's `val_seconds`) and before the checkpoint hook (which saves its state)."""

    name = "time_budget"

    def __init__(self, minutes: float, cfg: TrainConfig, *, full_epoch: int, valid_images: int,
                 run: RunDir | None):
        self.budget = minutes * 60.0
        self.cfg, self.full_epoch, self.valid_images = cfg, full_epoch, valid_images
        self.run = run  # None on ranks other than 0: they write nothing
        self.plan: dict[str, Any] | None = None
        self.val_times: list[float] = []  # seconds of each validation so far
        self.elapsed_before = 0.0  # wall seconds of the run before a resume
        # the first steps are slower (allocator, oneDNN / cuDNN kernel choice): not timed
        self.skip = min(3, full_epoch // 4)
        self.timed = min(30, max(1, full_epoch // 4))
        self.epoch_start = 0  # the loop's iteration when the epoch under way began

    # ------------------------------------------------------------------ the clock
    def elapsed(self) -> float:
        """Wall seconds of training so far, validation included (across a resume)."""
        return self.elapsed_before + time.perf_counter() - self.start

    def before_train(self) -> None:
        """Start the clock; a resumed run takes up its plan again."""
        self.start = time.perf_counter()
        self.steps, self.timer = 0, self.start
        self.epoch_start = self.loop.iteration
        if self.plan is not None:
            self._apply(self.plan["epochs"], self.plan["iters_per_epoch"], in_epoch=0)

    def before_epoch(self) -> None:
        """Note where the epoch starts."""
        self.epoch_start = self.loop.iteration

    def after_step(self) -> None:
        """Time the first iterations and plan; end the epoch early when the budget would only
        hold the final validation."""
        self.steps += 1
        in_epoch = self.loop.iteration - self.epoch_start
        if self.plan is None:
            if self.steps == self.skip:
                self.timer = time.perf_counter()
            elif self.steps == self.skip + self.timed:
                self._first_plan((time.perf_counter() - self.timer) / self.timed, in_epoch)
            return
        loop = self.loop
        if in_epoch < loop.iters_per_epoch and broadcast_object(
                self.elapsed() + self.plan["val_seconds"] > self.budget):
            log.info("time budget: the rest of it is the final validation's; training ends "
                     "with epoch %d at iteration %d", loop.epoch + 1, loop.iteration)
            self._apply(loop.epoch + 1, in_epoch, in_epoch=in_epoch)

    def after_epoch(self) -> None:
        """Fit the epochs left and their iterations to the measured speed and times."""
        loop, plan = self.loop, self.plan
        if "val_seconds" in loop.row:
            self.val_times.append(loop.row["val_seconds"])
        if plan is None or loop.epoch >= loop.epochs:
            return
        s_iter = loop.train_seconds / max(loop.iteration, 1)
        val_s = sum(self.val_times) / len(self.val_times) if self.val_times else (
            plan["val_seconds"])
        other = max(0.0, self.elapsed() - loop.train_seconds - sum(self.val_times)) / loop.epoch
        new = broadcast_object(self._fit(s_iter, val_s, other, in_epoch=0))
        new["estimated_validation"] = not self.val_times
        self.plan = new
        self._apply(new["epochs"], new["iters_per_epoch"], in_epoch=0)
        log.info("time budget: %.1f of %s left; %.3f s an iteration, validation %.1f s, "
                 "%.1f s other per epoch -> %d more epoch(s) of %d iterations",
                 (self.budget - self.elapsed()) / 60, _minutes(self.budget), s_iter, val_s,
                 other, new["epochs"] - loop.epoch, new["iters_per_epoch"])
        self._write()

    def after_train(self) -> None:
        """Say how much of the budget training and validation took."""
        if self.plan is None:
            return
        took = self.elapsed()
        self.plan.update(took_minutes=took / 60, epochs_run=self.loop.epoch,
                         iterations_run=self.loop.iteration)
        log.info("time budget %s: training and validation took %.2f min (%.1f%% of it), "
                 "%d epochs, %d iterations", _minutes(self.budget), took / 60,
                 100 * took / self.budget, self.loop.epoch, self.loop.iteration)
        self._write()

    # ------------------------------------------------------------------ planning
    def _first_plan(self, s_iter: float, in_epoch: int) -> None:
        val_s = VALIDATION_SHARE * s_iter * self.valid_images / self.cfg.batch_size
        plan = self._fit(s_iter, val_s, 0.0, in_epoch=in_epoch)
        plan["estimated_validation"] = True
        self.plan = plan = broadcast_object(plan)  # rank 0's measurement decides for all
        self._apply(plan["epochs"], plan["iters_per_epoch"], in_epoch=in_epoch)
        log.info("time budget %s: %.3f s an iteration (measured over %d), validation ~%.1f s "
                 "(estimated) -> %d epochs of %d iterations (a full pass is %d); the LR "
                 "schedule (%d iterations, %d of warm-up) and the augmentation-off tail are "
                 "fitted to them", _minutes(self.budget), s_iter, self.timed, val_s,
                 plan["epochs"], plan["iters_per_epoch"], self.full_epoch,
                 plan["total_iterations"], plan["warmup_iters"])
        self._write()

    def _validations(self, first: int, last: int) -> int:
        """Validated epochs among first..last (1-based): every eval_every-th, and the last."""
        if last < first:
            return 0
        period = self.cfg.eval_every
        # counted, not enumerated: a long budget plans billions of short epochs
        return last // period - (first - 1) // period + (1 if last % period else 0)

    def _fit(self, s_iter: float, val_s: float, other: float, *,
             in_epoch: int) -> dict[str, Any]:
        """The plan from the epoch under way (`in_epoch` of its iterations done): as many
        epochs as the rest of the budget holds, rounded up, and the iterations n of each that
        fill it."""
        loop = self.loop
        # the time for the epochs from the one under way, its done steps counted as to come
        left = self.budget * (1 - SAFETY) - self.elapsed() + in_epoch * s_iter
        per_epoch = self.full_epoch * s_iter + val_s / self.cfg.eval_every + other
        remaining = max(1, math.ceil(left / per_epoch))
        epochs = loop.epoch + remaining
        spare = left - self._validations(loop.epoch + 1, epochs) * val_s - remaining * other
        n = max(1, min(self.full_epoch, int(spare / (remaining * s_iter))))
        return {"budget_minutes": self.budget / 60, "epochs": epochs, "iters_per_epoch": n,
                "full_epoch": self.full_epoch,
                "total_iterations": loop.iteration - in_epoch + remaining * n,
                "warmup_iters": self.warmup_iters(loop.iteration - in_epoch + remaining * n),
                "seconds_per_iteration": s_iter, "val_seconds": val_s,
                "other_seconds_per_epoch": other}

    def _apply(self, epochs: int, iters_per_epoch: int, *, in_epoch: int) -> None:
        """Set the loop's epochs and iterations per epoch, and the LR schedule to match."""
        loop = self.loop
        loop.epochs, loop.iters_per_epoch = epochs, iters_per_epoch
        total = max(loop.iteration - in_epoch + (epochs - loop.epoch) * iters_per_epoch,
                    loop.iteration + 1)
        refit_scheduler(loop.scheduler, self.cfg, total, self.full_epoch,
                        warmup_iters=self.warmup_iters(total))

    def warmup_iters(self, total: int) -> int:
        """The warm-up of a run of `total` iterations: the config's, at most a tenth of them."""
        return min(self.cfg.warmup_iters, int(MAX_WARMUP_SHARE * total))

    def _write(self) -> None:
        if self.run is not None:
            self.run.write_time_budget(self.plan)

    # ------------------------------------------------------------------ resume
    def state_dict(self) -> dict:
        """The plan, the validation times and the wall time used so far."""
        return {"plan": self.plan, "val_times": self.val_times,
                "elapsed": self.elapsed() if hasattr(self, "start") else self.elapsed_before}

    def load_state_dict(self, state: dict) -> None:
        """Take up a resumed run's plan and clock."""
        self.plan, self.val_times = state["plan"], list(state["val_times"])
        self.elapsed_before = state["elapsed"]


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:g} min"
