"""Progress display: a bar with loss, LR and ETA on a terminal, log lines elsewhere."""

from __future__ import annotations

from rcnnlab.engine.loop import HookBase
from rcnnlab.engine.progress import ProgressReporter


class Progress(HookBase):
    """Drives a `ProgressReporter` from the loop."""

    def __init__(self, reporter: ProgressReporter):
        self.reporter = reporter

    def before_epoch(self) -> None:
        """Open the epoch's bar (the augmentation hook has said whether it augments)."""
        loop = self.loop
        self.reporter.start_epoch(loop.epoch + 1, loop.epochs, loop.iters_per_epoch,
                                  bool(loop.row.get("augment", 0)))
        self.plan = (loop.epochs, loop.iters_per_epoch)

    def after_step(self) -> None:
        """Advance by one step (re-labelled when a hook changed the epochs' plan)."""
        loop = self.loop
        if (loop.epochs, loop.iters_per_epoch) != self.plan:
            self.plan = (loop.epochs, loop.iters_per_epoch)
            self.reporter.replan(loop.epoch + 1, *self.plan)
        self.reporter.step(loop.loss, loop.lr)

    def after_epoch(self) -> None:
        """Close the bar with the epoch's summary line."""
        self.reporter.epoch_done(self.loop.row)
