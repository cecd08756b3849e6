"""`RunDir`: the one owner of a run folder's layout and file formats.

    runs/<name>/
      config.yaml          the resolved config the run trained with
      environment.json     the machine and package versions that trained it
      metrics.csv          one row per epoch (train losses, validation metrics, timings)
      scale_weights.csv    AVW / RLO: one row per weighting interval
      tb/                  TensorBoard events
      checkpoints/         last.pt (resumable) and best.pt (weights of the best validation mAP)
      time_budget.json     with train.time_budget: the epochs it chose, and why
      threshold_sweep.csv  written by `tune`
      eval_<split>.json    written by `evaluate`
      report.md / report.html / figures/   the run record

Every file is written atomically (a temporary file, fsync, rename), so a run killed mid-write
leaves the previous version, never half a file. Numbers in the CSV files are read back by one
rule: an empty cell or "nan" is None (undefined).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from rcnnlab.config import Config, config_from_dict
from rcnnlab.errors import RunError
from rcnnlab.files import write_atomic

Row = dict[str, float | None]


def _cell(value: Any) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def number(text: str | None) -> float | None:
    """A CSV cell as a number: empty, "nan" or non-numeric is None (undefined)."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def read_csv_rows(path: str | Path) -> list[Row]:
    """Rows of one of the run's CSV files with numbers parsed by `number`; a file that is no
    CSV text is a RunError naming it."""
    try:
        with Path(path).open(newline="", encoding="utf-8") as fh:
            return [{k: number(v) for k, v in row.items() if k is not None}
                    for row in csv.DictReader(fh)]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise RunError(f"{path}: damaged, not the CSV rcnnlab writes ({exc}). Fix: restore it "
                       "from a copy, or move it away (what is drawn from it is then left "
                       "out)") from None


def append_csv_row(path: str | Path, row: dict[str, Any]) -> None:
    """Append a row, widening the header when new columns appear (the file is rewritten)."""
    path = Path(path)
    rows: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    rows.append({k: _cell(v) for k, v in row.items()})
    _write_rows(path, rows)


def _write_rows(path: Path, rows: list[dict[str, str]], header: list[str] | None = None) -> None:
    fields: list[str] = list(header or [])
    for r in rows:
        fields += [k for k in r if k not in fields]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, restval="", lineterminator="\r\n")
    writer.writeheader()
    writer.writerows(rows)
    write_atomic(path, buffer.getvalue())


class RunDir:
    """Paths and formats of one run folder (see the module docstring)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"RunDir({str(self.root)!r})"

    # ------------------------------------------------------------------ paths
    @property
    def config_yaml(self) -> Path:
        """The resolved config."""
        return self.root / "config.yaml"

    @property
    def environment_json(self) -> Path:
        """The training machine and package versions."""
        return self.root / "environment.json"

    @property
    def metrics_csv(self) -> Path:
        """One row per epoch."""
        return self.root / "metrics.csv"

    @property
    def scale_weights_csv(self) -> Path:
        """AVW / RLO interval records."""
        return self.root / "scale_weights.csv"

    @property
    def scale_weights_png(self) -> Path:
        """Their figure."""
        return self.root / "scale_weights.png"

    @property
    def time_budget_json(self) -> Path:
        """What `train.time_budget` chose, and why."""
        return self.root / "time_budget.json"

    @property
    def threshold_sweep_csv(self) -> Path:
        """The threshold sweep of `tune`."""
        return self.root / "threshold_sweep.csv"

    @property
    def tb_dir(self) -> Path:
        """TensorBoard events."""
        return self.root / "tb"

    @property
    def checkpoints(self) -> Path:
        """The checkpoint folder."""
        return self.root / "checkpoints"

    @property
    def last_pt(self) -> Path:
        """The resumable checkpoint of the last epoch."""
        return self.checkpoints / "last.pt"

    @property
    def best_pt(self) -> Path:
        """The weights of the best validation mAP."""
        return self.checkpoints / "best.pt"

    def eval_json(self, split: str) -> Path:
        """The scores `evaluate` wrote for a split."""
        return self.root / f"eval_{split}.json"

    @property
    def report_md(self) -> Path:
        """The run record as Markdown (figures linked from `figures_dir`)."""
        return self.root / "report.md"

    @property
    def report_html(self) -> Path:
        """The run record as one self-contained HTML page."""
        return self.root / "report.html"

    @property
    def figures_dir(self) -> Path:
        """The run record's figures."""
        return self.root / "figures"

    @property
    def name(self) -> str:
        """The folder's name, of its absolute path without following links ("runs/x/.." is
        "runs")."""
        return Path(os.path.abspath(self.root)).name

    # ------------------------------------------------------------------ starting a run
    def holds_run(self) -> bool:
        """Whether a training run has written here (metrics or a checkpoint)."""
        return any(p.is_file() for p in (self.metrics_csv, self.last_pt, self.best_pt))

    def prepare(self, *, resume: bool, exist_ok: bool) -> None:
        """Make the folder ready for training: a new run never mixes with an old one.

        A folder that holds a run is refused unless `resume` (continue it from last.pt) or
        `exist_ok` (start over: the old run's outputs are deleted first). Temporary files that
        an interrupted write left behind are removed either way.
        """
        if resume and not self.last_pt.is_file():
            raise RunError(f"{self.root}: nothing to resume, there is no checkpoints/last.pt (no "
                           "epoch's checkpoint was saved: the run stopped in its first epoch, "
                           "or its first save failed). Fix: start it again without --resume "
                           "(with --exist-ok if the folder holds an earlier attempt)")
        if not resume and self.holds_run():
            if not exist_ok:
                raise RunError(f"{self.root}: holds a run already (metrics.csv or checkpoints). "
                               "Fix: --resume to continue it, --exist-ok to start it over (its "
                               f"outputs are deleted), or name={self.next_free_name()} for a new "
                               "run beside it")
            self.clear()
        self.root.mkdir(parents=True, exist_ok=True)
        for leftover in [*self.root.glob("*.tmp"), *self.checkpoints.glob("*.tmp")]:
            leftover.unlink()

    def next_free_name(self) -> str:
        """The first of `<name>2`, `<name>3`, ... that no folder beside this one has."""
        n = 2
        while (self.root.parent / f"{self.root.name}{n}").exists():
            n += 1
        return f"{self.root.name}{n}"

    def clear(self) -> None:
        """Delete what a training run and the commands after it wrote here."""
        for path in [self.config_yaml, self.environment_json, self.metrics_csv,
                     self.scale_weights_csv, self.scale_weights_png, self.threshold_sweep_csv,
                     self.time_budget_json,
                     *self.root.glob("eval_*.json"), *self.root.glob("report.*"),
                     *self.root.glob("diagnosis.*")]:
            path.unlink(missing_ok=True)
        for folder in (self.checkpoints, self.tb_dir, self.figures_dir):
            if folder.is_dir():
                shutil.rmtree(folder)

    # ------------------------------------------------------------------ files
    def write_config(self, cfg: Config) -> Path:
        """Write the resolved config as YAML (what the run really used)."""
        return write_atomic(self.config_yaml,
                            yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    def read_config(self) -> Config:
        """The run's config.yaml."""
        return config_from_dict(yaml.safe_load(self.config_yaml.read_text()))

    def read_config_dict(self) -> dict[str, Any]:
        """The run's config.yaml as the plain mapping it holds, not validated (an older run's
        keys need not match today's config); a file that is no YAML mapping is a RunError."""
        try:
            config = yaml.safe_load(self.config_yaml.read_text()) or {}
        except yaml.YAMLError as exc:
            raise RunError(f"{self.config_yaml}: not valid YAML ({exc})") from None
        if not isinstance(config, dict):
            raise RunError(f"{self.config_yaml}: expected a mapping of config sections")
        return config

    def write_environment(self, rows: list[list[str]]) -> Path:
        """Save the machine and package rows (`runs.environment.environment_rows`)."""
        return write_atomic(self.environment_json, json.dumps(rows, indent=1))

    def read_environment(self) -> list[list[str]] | None:
        """The saved rows, or None for runs that have none."""
        if not self.environment_json.is_file():
            return None
        return json.loads(self.environment_json.read_text())

    def write_time_budget(self, plan: dict[str, Any]) -> Path:
        """Write `time_budget.json`."""
        return write_atomic(self.time_budget_json, json.dumps(plan, indent=1))

    def read_time_budget(self) -> dict[str, Any] | None:
        """`time_budget.json`, or None when the run had no time budget."""
        if not self.time_budget_json.is_file():
            return None
        return json.loads(self.time_budget_json.read_text())

    def append_metrics(self, row: dict[str, Any]) -> None:
        """Append one epoch to metrics.csv."""
        append_csv_row(self.metrics_csv, row)

    def read_metrics(self) -> list[Row]:
        """metrics.csv rows, numbers parsed ([] when there is no file); rows without an epoch
        number are a RunError naming the line."""
        if not self.metrics_csv.is_file():
            return []
        rows = read_csv_rows(self.metrics_csv)
        for line, row in enumerate(rows, 2):
            epoch = row.get("epoch")
            if not isinstance(epoch, int | float) or not math.isfinite(epoch) \
                    or epoch != int(epoch) or epoch < 1:
                raise RunError(f"{self.metrics_csv}, line {line}: no epoch number "
                               f"({row.get('epoch')!r}): the file is damaged. Fix: restore it "
                               "from a copy, or move it away (the record then has no training "
                               "curves)")
        return rows

    def truncate_metrics(self, epochs_done: int) -> None:
        """On resume, forget logged epochs after the checkpoint (they will be redone)."""
        if not self.metrics_csv.is_file():
            return
        with self.metrics_csv.open(newline="") as fh:
            reader = csv.DictReader(fh)
            rows = [r for r in reader if int(r["epoch"]) <= epochs_done]
        _write_rows(self.metrics_csv, rows, reader.fieldnames)

    def read_threshold_sweep(self) -> list[Row]:
        """threshold_sweep.csv rows, numbers parsed ([] when the run was not tuned)."""
        if not self.threshold_sweep_csv.is_file():
            return []
        return read_csv_rows(self.threshold_sweep_csv)

    def read_tb_scalars(self, tag: str) -> tuple[list[int], list[float]] | None:
        """(steps, values) of a scalar tag of the TensorBoard events; None when tensorboard is
        not installed, there is no event file or the tag was never written. A step written
        twice (a resumed run redoing an epoch, in a later file) keeps its last value."""
        try:
            from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
        except ImportError:
            return None
        by_step: dict[int, float] = {}
        # file by file in name (= creation time) order rather than the folder at once: the
        # folder watcher logs a line per file, and later files must win for resumed runs
        for path in sorted(self.tb_dir.glob("events.out.tfevents.*")):
            acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep all
            acc.Reload()
            if tag in acc.Tags().get("scalars", []):
                by_step.update({e.step: e.value for e in acc.Scalars(tag)})
        if not by_step:
            return None
        steps = sorted(by_step)
        return steps, [by_step[s] for s in steps]

    def write_eval(self, split: str, result: dict[str, Any]) -> Path:
        """Write `eval_<split>.json`."""
        return write_atomic(self.eval_json(split), json.dumps(result, indent=2))

    def read_evals(self) -> dict[str, dict[str, Any]]:
        """Every `eval_<split>.json` of the run, by split."""
        evals = {}
        for file in sorted(self.root.glob("eval_*.json")):
            try:
                evals[file.stem.removeprefix("eval_")] = json.loads(file.read_text())
            except json.JSONDecodeError as exc:
                raise RunError(f"{file}: not valid JSON ({exc}). Fix: rerun rcnnlab evaluate "
                                 "or delete the file") from None
        return evals
