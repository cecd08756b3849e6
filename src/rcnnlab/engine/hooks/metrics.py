"""The metrics writer: one row per epoch in metrics.csv, and TensorBoard scalars (per step, per
epoch, and what other hooks log through `scalar`)."""

from __future__ import annotations

from rcnnlab.engine.loop import HookBase
from rcnnlab.runs.rundir import RunDir


class MetricsWriter(HookBase):
    """Writes `metrics.csv` (through `RunDir`) and the TensorBoard events under `tb/`."""

    def __init__(self, run: RunDir):
        self.run = run
        self.tb = None

    def before_train(self) -> None:
        """Open the event writer; a resumed run drops the events after its checkpoint."""
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(self.run.tb_dir), purge_step=self.loop.iteration or None)

    def scalar(self, tag: str, value: float, step: int) -> None:
        """Log one TensorBoard scalar."""
        if self.tb is not None:
            self.tb.add_scalar(tag, value, step)

    def after_step(self) -> None:
        """The step's loss and learning rate."""
        self.scalar("iter/loss", self.loop.loss, self.loop.iteration)
        self.scalar("iter/lr", self.loop.lr, self.loop.iteration)

    def after_epoch(self) -> None:
        """The epoch's row: every number to TensorBoard, the row to metrics.csv."""
        row = self.loop.row
        for key, value in row.items():
            if isinstance(value, int | float) and key != "epoch":
                self.scalar(f"epoch/{key}", value, self.loop.epoch)
        self.run.append_metrics(row)

    def after_train(self) -> None:
        """Flush and close the event files."""
        if self.tb is not None:
            self.tb.close()
            self.tb = None
