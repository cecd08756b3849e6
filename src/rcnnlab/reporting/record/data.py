"""What the run record shows, gathered in one place: `RecordData`.

`gather` reads the run folder through `RunDir` (metrics.csv, threshold_sweep.csv,
time_budget.json, environment.json, the TensorBoard learning rate, scale_weights.png), the
clock and, for a run without environment.json, this machine, and takes what the caller
evaluated with the best checkpoint. The figures (`figures`) and the text (`sections`) are
written from `RecordData` alone.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rcnnlab.config import Config
from rcnnlab.data.categories import digit_names
from rcnnlab.data.coco import CocoData
from rcnnlab.data.stats import DatasetStats, compute_stats
from rcnnlab.evaluation.pipeline import EvalResult
from rcnnlab.runs.checkpoint import Checkpoint
from rcnnlab.runs.environment import environment_rows
from rcnnlab.runs.rundir import Row, RunDir

LR_TAG = "iter/lr"
"""The TensorBoard tag of the learning rate per iteration."""


@dataclass(frozen=True)
class LearningRate:
    """The learning rate of the head parameters: per iteration (TensorBoard) when the run
    logged it, else per epoch (metrics.csv)."""

    steps: list[float]
    values: list[float]
    unit: str  # "iteration" or "epoch"


@dataclass
class RecordData:
    """What the record is written from."""

    run_dir: Path
    cfg: Config
    best: Checkpoint
    last: Checkpoint  # training totals
    model_info: dict  # describe_model
    stats: dict[str, DatasetStats]  # per split of the config
    split: str  # the report split
    results: dict[str, EvalResult]  # split -> evaluation
    rows: list[Row]  # metrics.csv
    sweep: list[Row]  # threshold_sweep.csv (empty when not tuned)
    time_budget: dict | None  # time_budget.json (None without train.time_budget)
    environment: list[list[str]]  # the machine and package rows
    environment_saved: bool  # environment.json's (training's); else this process's
    learning_rate: LearningRate
    scale_weights_png: Path | None  # the multi-scale loss weighting figure, when drawn
    written: str  # when the record was written ("2026-01-31 12:00", local time)

    @property
    def names(self) -> dict[int, str]:
        """Category id -> name."""
        return {c["id"]: str(c["name"]) for c in self.best.categories}

    @property
    def digits(self) -> dict[int, str] | None:
        """Category id -> digit on digit datasets, else None."""
        return digit_names(self.best.categories)

    @property
    def threshold(self) -> float:
        """The sequence / confusion threshold: the tuned one stored in the checkpoint."""
        return self.results[self.split].threshold

    @property
    def result(self) -> EvalResult:
        """The evaluation of the report split."""
        return self.results[self.split]


def gather(run: RunDir, *, best: Checkpoint, last: Checkpoint | None, model_info: dict,
           splits: Mapping[str, CocoData], results: Mapping[str, EvalResult],
           split: str) -> RecordData:
    """Everything the record shows: the run folder's files (through `run`), the splits'
    statistics and the evaluations given."""
    rows = run.read_metrics()
    environment = run.read_environment()
    return RecordData(
        run_dir=run.root, cfg=best.config, best=best, last=last or best,
        model_info=model_info, stats={s: compute_stats(d) for s, d in splits.items()},
        split=split, results=dict(results), rows=rows, sweep=run.read_threshold_sweep(),
        time_budget=run.read_time_budget(),
        environment=environment if environment is not None
        else environment_rows(best.config.train.device),
        environment_saved=environment is not None,
        learning_rate=_learning_rate(run, rows),
        scale_weights_png=run.scale_weights_png if run.scale_weights_png.is_file() else None,
        written=time.strftime("%Y-%m-%d %H:%M"))


def _learning_rate(run: RunDir, rows: list[Row]) -> LearningRate:
    """LR per iteration from TensorBoard (`iter/lr`) when readable, else per epoch from
    metrics.csv."""
    series = run.read_tb_scalars(LR_TAG)
    if series is not None:
        return LearningRate(series[0], series[1], "iteration")
    pairs = [(r["epoch"], r["lr"]) for r in rows if r.get("lr") is not None]
    return LearningRate([p[0] for p in pairs], [p[1] for p in pairs], "epoch")
