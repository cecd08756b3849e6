"""Training progress: a rich progress bar on a terminal, plain log lines elsewhere (CI, files)."""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("rcnnlab.train")


def eta_progress(console: Console, *extra: TextColumn, transient: bool = False,
                 disable: bool = False) -> Progress:
    """rcnnlab's bar: description, bar, n/total, `extra` columns, elapsed time and ETA."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    *extra, TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                    console=console, transient=transient, disable=disable)


class ProgressReporter:
    """Shows per-iteration loss / LR and an ETA; `quiet` silences the bar and the lines."""

    def __init__(self, console: Console | None = None, *, log_every: int = 20,
                 quiet: bool = False):
        self.console = console or Console(stderr=True)
        self.use_bar = self.console.is_terminal and not quiet
        self.quiet = quiet
        self.log_every = max(1, log_every)
        self._progress: Progress | None = None
        self._task = None
        self._i = self._total = 0
        self._header = ""
        self._t0 = 0.0

    def start_epoch(self, epoch: int, epochs: int, iters: int, augment: bool) -> None:
        """Open the bar (or log a header line) for one epoch."""
        self._i, self._total, self._t0 = 0, iters, time.perf_counter()
        self._header = f"epoch {epoch}/{epochs}" + ("" if augment else " (no aug)")
        if self.quiet:
            return
        if not self.use_bar:
            log.info("%s: %d iterations, augmentation %s", self._header, iters,
                     "on" if augment else "off")
            return
        self._progress = eta_progress(self.console, TextColumn("{task.fields[stats]}"))
        self._progress.start()
        self._task = self._progress.add_task(self._header, total=iters, stats="")

    def replan(self, epoch: int, epochs: int, iters: int) -> None:
        """The epochs or this epoch's iterations changed (`train.time_budget`)."""
        self._total = iters
        self._header = (f"epoch {epoch}/{epochs}"
                        + (" (no aug)" if self._header.endswith("(no aug)") else ""))
        if self._progress is not None:
            self._progress.update(self._task, total=iters, description=self._header)

    def step(self, loss: float, lr: float) -> None:
        """Advance by one iteration."""
        self._i += 1
        stats = f"loss {loss:.4f} lr {lr:.2e}"
        if self._progress is not None:
            self._progress.update(self._task, advance=1, stats=stats)
            if self._i >= self._total:  # the epoch's steps are done: validation may show its own
                self._progress.stop()
                self._progress = None
        elif not self.quiet and (self._i % self.log_every == 0 or self._i == self._total):
            rate = self._i / max(time.perf_counter() - self._t0, 1e-9)
            eta = (self._total - self._i) / max(rate, 1e-9)
            log.info("%s it %d/%d %s (%.2f it/s, ETA %.0fs)", self._header, self._i,
                     self._total, stats, rate, eta)

    def epoch_done(self, row: dict) -> None:
        """Close the bar and print the epoch's summary line."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        if self.quiet:
            return
        parts = [f"loss {row['loss']:.4f} (cls {row['loss_cls']:.3f} bbox {row['loss_bbox']:.3f} "
                 f"anchor {row['loss_anchor']:.3f})", f"{row['train_img_per_s']:.1f} img/s"]
        if "val_AP" in row:
            parts.append(f"val mAP {row['val_AP']:.4f} AP50 {row['val_AP50']:.4f}")
        if "val_seq_acc" in row:
            parts.append(f"seq acc {row['val_seq_acc']:.4f}")
        log.info("%s done: %s", self._header, ", ".join(parts))
