"""Compare run folders (`rcnnlab compare RUN RUN...`): metrics, per-class AP, config changes.

The first run is the baseline: every other run shows its value and its change against it.

Which numbers are compared (one source for every run, so the columns are comparable):

- ``eval_test.json`` when every run has one (``rcnnlab evaluate RUN --split test``),
- else ``eval_valid.json`` when every run has one,
- else the validation metrics that training logged in ``metrics.csv``, at the best epoch (the
  row with the highest ``val_AP``, first on ties: the weights of ``best.pt``, which is what
  ``evaluate`` scores).

``split`` forces one: a split name reads ``eval_<split>.json`` (every run must have it), and
``"metrics"`` reads metrics.csv. Training figures (best validation AP and its epoch, last
validation AP, epochs, training minutes, iterations, images per second) always come from
metrics.csv; each row of the metric table names its source.

A per-class change counts as unchanged when it rounds to zero at the 3 decimals shown
(``|Δ| < 0.0005``), so the counts always agree with the table: "+0.000" is unchanged, "+0.001"
improved. Classes are the union over the runs, matched by category id; a class that a run lacks,
or whose AP is undefined (no ground truth), is n/a there and counted apart. The metric table is
coloured by the same rule at each row's own decimals.

Config differences are the dotted keys (``train.lr``, ``augment.multiscale_sizes``; a list is
one value) whose values differ between any two runs, in the resolved config's order, so the
run's identity (``name``, ``out_dir``) comes first; a key one run lacks is shown as absent. When
the source is an ``eval_<split>.json``, its inference options (NMS, TTA) are compared too.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Group
from rich.table import Table
from rich.text import Text

from rcnnlab.errors import ConfigError, RunError
from rcnnlab.evaluation.coco import format_score
from rcnnlab.files import write_atomic
from rcnnlab.runs.checkpoint import Checkpoint
from rcnnlab.runs.rundir import RunDir

log = logging.getLogger(__name__)

CLASS_DIGITS = 3  # decimals of AP values and changes; a change that rounds to 0 is none
METRICS_SOURCE = "metrics"


class _Absent:
    """The value of a config key that a run does not have (as opposed to null)."""

    def __repr__(self) -> str:
        return "ABSENT"


ABSENT = _Absent()


@dataclass(frozen=True)
class RunSummary:
    """What a run folder says about itself, read (`RunSummary.read`) without loading the
    model.

    ``val_best`` / ``val_last`` are the metrics.csv validation columns of the best epoch (highest
    ``val_AP``) and of the last validated epoch, with the ``val_`` prefix removed so their keys
    match ``eval_<split>.json`` (``AP``, ``AP50``, ``seq_acc``, ``AP_class3``...). Undefined
    values (empty or nan) are None.
    """

    name: str
    path: Path
    config: dict
    val_best: dict[str, float | None]
    val_last: dict[str, float | None]
    best_epoch: int | None
    epochs: int  # epochs logged in metrics.csv
    evals: dict[str, dict]  # split -> the eval_<split>.json document
    train_seconds: float | None  # sum of epoch_seconds
    iterations: int | None  # the last row's (cumulative) iteration count
    train_img_per_s: float | None  # all training images / all training seconds
    categories: dict[int, str]  # id -> name, from the checkpoint; empty when not read

    @classmethod
    def read(cls, path: str | Path, *, names: bool = True) -> RunSummary:
        """Read a run folder's summary through `RunDir`: config.yaml, metrics.csv, every
        eval_<split>.json.

        With `names`, category names are read from checkpoints/best.pt (or last.pt) when
        present; without a checkpoint, tables show category ids.
        """
        run = RunDir(path)
        missing = [f.name for f in (run.config_yaml, run.metrics_csv) if not f.is_file()]
        if missing:
            raise RunError(f"{run.root}: not a run folder (no {' or '.join(missing)}). Fix: "
                           "give folders written by `rcnnlab train`, e.g. runs/<name>")
        config = run.read_config_dict()
        rows = run.read_metrics()
        validated = [r for r in rows if r.get("val_AP") is not None]
        best = max(validated, key=lambda r: r["val_AP"], default=None)  # max keeps the first tie
        timed = [r for r in rows if r.get("epoch_seconds") is not None]
        seconds = sum(r["epoch_seconds"] for r in timed) if timed else None
        rated = [r for r in timed if r.get("train_img_per_s") is not None]
        rated_seconds = sum(r["epoch_seconds"] for r in rated)
        iterations = rows[-1].get("iterations") if rows else None
        return cls(
            name=run.name,
            path=run.root,
            config=config,
            val_best=_val_columns(best),
            val_last=_val_columns(validated[-1] if validated else None),
            best_epoch=int(best["epoch"]) if best else None,
            epochs=len(rows),
            evals=run.read_evals(),
            train_seconds=seconds,
            iterations=int(iterations) if iterations is not None else None,
            # images/s of the whole run: each epoch's rate weighted by its duration
            train_img_per_s=(sum(r["train_img_per_s"] * r["epoch_seconds"] for r in rated)
                             / rated_seconds if rated_seconds > 0 else None),
            categories=_checkpoint_categories(run) if names else {},
        )

    def metrics(self, source: str) -> dict[str, Any] | None:
        """The detection metrics of a source: ``"metrics"`` or a split's eval json."""
        if source == METRICS_SOURCE:
            return self.val_best
        return self.evals.get(source)


@dataclass(frozen=True)
class MetricRow:
    """One row of the metric table: a value per run and the change against the first run.

    ``better`` is ``"higher"``, ``"lower"`` or None (a neutral figure such as a threshold);
    ``digits`` is how many decimals the value is shown with.
    """

    key: str
    label: str
    source: str
    values: list[float | None]
    deltas: list[float | None]  # None for the first run and where either value is missing
    better: str | None
    digits: int


@dataclass(frozen=True)
class ClassRow:
    """One class of a per-class table (AP or AP50)."""

    category_id: int
    label: str
    values: list[float | None]
    deltas: list[float | None]


@dataclass(frozen=True)
class ClassCounts:
    """Classes a run improved, degraded or left unchanged against the first run."""

    improved: int
    degraded: int
    unchanged: int
    missing: int  # n/a in this run or in the first


@dataclass(frozen=True)
class ConfigDiff:
    """A dotted config key whose values differ between runs; ABSENT where a run lacks it."""

    key: str
    values: list[Any]


@dataclass(frozen=True)
class Comparison:
    """Everything `compare` shows; ``to_markdown``, ``to_rich`` and ``write`` render it."""

    runs: list[RunSummary]
    names: list[str]  # column headers: folder names, or the given paths when those repeat
    source: str  # "metrics" or a split name
    source_note: str  # why this source was chosen
    metrics: list[MetricRow]
    per_class: dict[str, list[ClassRow]]  # "AP" / "AP50" -> rows sorted by category id
    counts: dict[str, list[ClassCounts | None]]  # per metric, per run (None for the first)
    config_diff: list[ConfigDiff]

    @property
    def source_file(self) -> str:
        """The file the detection metrics were read from."""
        return "metrics.csv" if self.source == METRICS_SOURCE else f"eval_{self.source}.json"

    def metric(self, key: str) -> MetricRow:
        """The metric-table row of `key` (``AP``, ``seq_acc``, ``train_minutes``...)."""
        for row in self.metrics:
            if row.key == key:
                return row
        raise KeyError(f"no metric row {key!r}; rows: {[r.key for r in self.metrics]}")

    def to_markdown(self) -> str:
        """The comparison as Markdown: header, metric table, per-class tables, config diff."""
        lines = ["# Run comparison", ""]
        for i, (name, run) in enumerate(zip(self.names, self.runs, strict=True)):
            lines.append(f"- `{name}`: {run.path}" + (" (baseline)" if i == 0 else ""))
        lines += ["", f"Changes are against `{self.names[0]}`. Detection metrics: "
                  f"{_source_text(self.source)}; {self.source_note}. Training figures: "
                  "metrics.csv.", "", "## Metrics", ""]
        numbers = ["---:"] * len(self.names)
        lines += _md_table(["metric", "source", *self.names], ["---", "---", *numbers],
                           ([r.label, r.source, *_cells(r.values, r.deltas, r.digits)]
                            for r in self.metrics))
        for metric, rows in self.per_class.items():
            lines += ["", f"## Per-class {metric} ({self.source_file})", ""]
            if not rows:
                lines.append("No per-class values in this source.")
                continue
            body = [[r.label, *_cells(r.values, r.deltas, CLASS_DIGITS)] for r in rows]
            body.append(["**improved / degraded / unchanged**",
                         *(_counts_text(c) for c in self.counts[metric])])
            lines += _md_table(["class", *self.names], ["---", *numbers], body)
            lines.append("\nClasses are matched by category id (names that differ between runs "
                         "are all shown, a/b); unchanged: the change rounds to 0.000.")
        lines += ["", "## Config differences", ""]
        if self.config_diff:
            lines += _md_table(["key", *self.names], ["---"] * (len(self.names) + 1),
                               ([f"`{d.key}`", *map(_config_text, d.values)]
                                for d in self.config_diff))
        else:
            lines.append("The configs are identical.")
        return "\n".join(lines) + "\n"

    def to_rich(self) -> Group:
        """Rich tables for the terminal: improvements green, degradations red."""
        # names, labels and config values go in as Text: "[bold]" in them is data, not markup
        parts: list[Any] = [Text(f"Changes against {self.names[0]}. Detection metrics: "
                                 f"{_source_text(self.source)}; {self.source_note}.")]
        table = Table(title="metrics")
        table.add_column("metric")
        table.add_column("source", style="dim")
        for name in self.names:
            table.add_column(Text(name), justify="right")
        for r in self.metrics:
            table.add_row(r.label, r.source,
                          *_rich_cells(r.values, r.deltas, r.digits, r.better))
        parts.append(table)
        for metric, rows in self.per_class.items():
            if not rows:
                parts.append(Text(f"No per-class {metric} in {self.source_file}."))
                continue
            table = Table(title=f"per-class {metric} ({self.source_file})")
            table.add_column("class")
            for name in self.names:
                table.add_column(Text(name), justify="right")
            for r in rows:
                table.add_row(Text(r.label),
                              *_rich_cells(r.values, r.deltas, CLASS_DIGITS, "higher"))
            table.add_section()
            table.add_row("improved / degraded / unchanged",
                          *(_counts_text(c) for c in self.counts[metric]))
            parts.append(table)
        if self.config_diff:
            table = Table(title="config differences")
            table.add_column("key")
            for name in self.names:
                table.add_column(Text(name))
            for d in self.config_diff:
                table.add_row(Text(d.key), *(Text(_config_text(v)) for v in d.values))
            parts.append(table)
        else:
            parts.append(Text("The configs are identical."))
        return Group(*parts)

    def write(self, path: str | Path) -> Path:
        """Write the Markdown to `path` (folders created); returns the path."""
        return write_atomic(path, self.to_markdown())


# ------------------------------------------------------------------------------ reading
def _val_columns(row: dict | None) -> dict[str, float | None]:
    if row is None:
        return {}
    return {k.removeprefix("val_"): v for k, v in row.items() if k.startswith("val_")}


def _checkpoint_categories(run: RunDir) -> dict[int, str]:
    """Category names stored in the run's checkpoint (best.pt, else last.pt); {} when there is
    none or it is unreadable."""
    for file in (run.best_pt, run.last_pt):
        if not file.is_file():
            continue
        try:
            return {int(c["id"]): str(c["name"]) for c in Checkpoint.load(file).categories}
        except ValueError as exc:  # names are cosmetic: fall back to ids, but say so
            log.warning("%s: category names not read (%s); showing category ids", file, exc)
            return {}
    return {}


# ------------------------------------------------------------------------------ comparing
# (key, label, better, digits) of the detection metrics, read from the chosen source
_DETECTION_ROWS = [
    ("n_images", "images", None, 0),
    ("AP", "AP", "higher", 3),
    ("AP50", "AP50", "higher", 3),
    ("AP75", "AP75", "higher", 3),
    ("APs", "APs", "higher", 3),
    ("APm", "APm", "higher", 3),
    ("APl", "APl", "higher", 3),
    ("AR100", "AR100", "higher", 3),
    ("seq_acc", "sequence accuracy", "higher", 3),
    ("threshold", "threshold (sequence accuracy)", None, 2),
]


def compare_runs(paths: Sequence[str | Path], split: str | None = None, *,
                 names: bool = True) -> Comparison:
    """Compare two or more run folders against the first one.

    `split` None picks the source as the module docstring says; a split name forces
    ``eval_<split>.json`` and ``"metrics"`` forces metrics.csv. `names` reads category names
    from the checkpoints (see `RunSummary.read`).
    """
    if len(paths) < 2:
        # no brackets in the message: the CLI prints errors as rich markup
        raise ConfigError(f"compare needs at least 2 run folders, got {len(paths)}. Fix: give "
                         "two or more, e.g. rcnnlab compare runs/a runs/b")
    runs = [RunSummary.read(p, names=names) for p in paths]
    source, note = _choose_source(runs, split)
    headers = [r.name for r in runs]
    if len(set(headers)) < len(headers):  # same folder name under different parents
        headers = [str(r.path) for r in runs]
    # metrics.csv does not log how many images were validated: no row rather than all n/a
    metrics = [_metric_row(runs, source, *spec) for spec in _DETECTION_ROWS
               if spec[0] != "n_images" or source != METRICS_SOURCE]
    metrics += _training_rows(runs)
    per_class, counts = {}, {}
    labels = _class_labels(runs)
    for metric in ("AP", "AP50"):
        rows = _class_rows(runs, source, metric, labels)
        per_class[metric] = rows
        counts[metric] = [None] + [_count(rows, i) for i in range(1, len(runs))]
    return Comparison(runs, headers, source, note, metrics, per_class, counts,
                      _config_diff(runs, source))


def _choose_source(runs: list[RunSummary], split: str | None) -> tuple[str, str]:
    if split == METRICS_SOURCE:
        return METRICS_SOURCE, "as requested"
    if split is not None:
        lacking = [str(r.path) for r in runs if split not in r.evals]
        if lacking:
            raise RunError(f"{', '.join(lacking)}: no eval_{split}.json. Fix: rcnnlab "
                             f"evaluate RUN --split {split}, or compare another split")
        return split, "as requested"
    for candidate in ("test", "valid"):
        if all(candidate in r.evals for r in runs):
            return candidate, f"every run has eval_{candidate}.json"
    lacking = [r.name for r in runs if "valid" not in r.evals]
    return METRICS_SOURCE, (f"not every run has eval_test.json or eval_valid.json ("
                            f"no eval_valid.json: {', '.join(lacking)})")


def _source_text(source: str) -> str:
    if source == METRICS_SOURCE:
        return "metrics.csv (validation at the best epoch, the weights of best.pt)"
    return f"eval_{source}.json (`rcnnlab evaluate RUN --split {source}`)"


def _delta(base: float | None, value: float | None) -> float | None:
    return None if base is None or value is None else value - base


def _row(key: str, label: str, source: str, values: list[float | None], better: str | None,
         digits: int) -> MetricRow:
    deltas = [None] + [_delta(values[0], v) for v in values[1:]]
    return MetricRow(key, label, source, values, deltas, better, digits)


def _metric_row(runs: list[RunSummary], source: str, key: str, label: str, better: str | None,
                digits: int) -> MetricRow:
    values = []
    for run in runs:
        if key == "threshold" and source == METRICS_SOURCE:
            # training reads numbers at eval.default_threshold (tune runs afterwards)
            value = (run.config.get("eval") or {}).get("default_threshold")
        else:
            value = (run.metrics(source) or {}).get(key)
        values.append(_finite(value))
    src = "metrics.csv" if source == METRICS_SOURCE else f"eval_{source}.json"
    if key == "threshold" and source == METRICS_SOURCE:
        src = "config eval.default_threshold"
    return _row(key, label, src, values, better, digits)


def _training_rows(runs: list[RunSummary]) -> list[MetricRow]:
    def minutes(run: RunSummary) -> float | None:
        return None if run.train_seconds is None else run.train_seconds / 60

    specs = [
        ("best_val_AP", "best val AP", [r.val_best.get("AP") for r in runs], "higher", 3),
        ("best_epoch", "best val AP epoch", [r.best_epoch for r in runs], None, 0),
        ("last_val_AP", "last val AP", [r.val_last.get("AP") for r in runs], "higher", 3),
        ("epochs", "epochs", [r.epochs for r in runs], None, 0),
        ("train_minutes", "training minutes", [minutes(r) for r in runs], "lower", 1),
        ("iterations", "iterations", [r.iterations for r in runs], None, 0),
        ("train_img_per_s", "train img/s", [r.train_img_per_s for r in runs], "higher", 2),
    ]
    return [_row(key, label, "metrics.csv", values, better, digits)
            for key, label, values, better, digits in specs]


def _finite(value: Any) -> float | None:
    """A number from json or yaml; None, nan and non-numbers are None (undefined)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if math.isnan(value) else value


def _class_ids(metrics: dict | None, metric: str) -> set[int]:
    prefix = f"{metric}_class"
    ids = set()
    for key in metrics or {}:
        tail = key.removeprefix(prefix)
        if tail != key and tail.lstrip("-").isdigit():
            ids.add(int(tail))
    return ids


def _class_labels(runs: list[RunSummary]) -> dict[int, str]:
    """id -> "name (id N)", or the id alone where it is the name; names that differ between
    runs are all shown ("0/1 (id 1)"), as classes are matched by id."""
    names: dict[int, list[str]] = {}
    for run in runs:
        for cid, name in run.categories.items():
            if name not in names.setdefault(cid, []):
                names[cid].append(name)
    labels = {}
    for cid, known in names.items():
        label = "/".join(known)
        labels[cid] = label if label == str(cid) else f"{label} (id {cid})"
    return labels


def _class_rows(runs: list[RunSummary], source: str, metric: str,
                labels: dict[int, str]) -> list[ClassRow]:
    ids = set().union(*(_class_ids(r.metrics(source), metric) for r in runs))
    rows = []
    for cid in sorted(ids):
        values = [_finite((r.metrics(source) or {}).get(f"{metric}_class{cid}")) for r in runs]
        deltas = [None] + [_delta(values[0], v) for v in values[1:]]
        rows.append(ClassRow(cid, labels.get(cid, str(cid)), values, deltas))
    return rows


def _change(delta: float, digits: int) -> int:
    """+1 up, -1 down, 0 unchanged: the sign of the change as shown with `digits` decimals
    (round and format both round the exact binary value, so they agree)."""
    shown = round(delta, digits)
    return (shown > 0) - (shown < 0)


def _count(rows: list[ClassRow], i: int) -> ClassCounts:
    changes = [_change(r.deltas[i], CLASS_DIGITS) for r in rows if r.deltas[i] is not None]
    return ClassCounts(improved=changes.count(1), degraded=changes.count(-1),
                       unchanged=changes.count(0), missing=len(rows) - len(changes))


def _flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested mappings -> {"a.b": value}; lists and scalars are leaves."""
    flat: dict[str, Any] = {}
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, dotted + "."))
        else:
            flat[dotted] = value
    return flat


def _config_diff(runs: list[RunSummary], source: str) -> list[ConfigDiff]:
    flats = [_flatten(r.config) for r in runs]
    if source != METRICS_SOURCE:
        # the inference options (NMS, TTA) an eval was made with change its numbers too
        for flat, run in zip(flats, runs, strict=True):
            inference = run.evals[source].get("inference")
            if inference is not None:
                flat.update(_flatten({f"eval_{source}.json:inference": inference}))
    keys: list[str] = []  # every run's keys, a key new in a later run after its predecessor
    for flat in flats:
        pos = 0
        for key in flat:
            if key in keys:
                pos = keys.index(key) + 1
            else:
                keys.insert(pos, key)
                pos += 1
    diffs = []
    for key in keys:
        values = [flat.get(key, ABSENT) for flat in flats]
        if any(v != values[0] for v in values[1:]):
            diffs.append(ConfigDiff(key, values))
    return diffs


# ------------------------------------------------------------------------------ formatting
def _delta_text(delta: float, digits: int) -> str:
    return f"{delta:+.{digits}f}"


def _cells(values: list[float | None], deltas: list[float | None], digits: int) -> list[str]:
    """'0.550 (+0.050)' per run; the value alone where there is no change to show."""
    return [format_score(v, digits) + ("" if d is None else f" ({_delta_text(d, digits)})")
            for v, d in zip(values, deltas, strict=True)]


def _rich_cells(values: list[float | None], deltas: list[float | None], digits: int,
                better: str | None) -> list[Text]:
    cells = []
    for value, delta in zip(values, deltas, strict=True):
        cell = Text(format_score(value, digits), style="dim" if value is None else "")
        if delta is not None:
            change = _change(delta, digits) * (1 if better == "higher" else -1)
            style = "" if better is None or change == 0 else ("green" if change > 0 else "red")
            cell.append(f" ({_delta_text(delta, digits)})", style=style)
        cells.append(cell)
    return cells


def _counts_text(counts: ClassCounts | None) -> str:
    if counts is None:
        return ""
    text = f"{counts.improved} / {counts.degraded} / {counts.unchanged}"
    return text + (f" ({counts.missing} n/a)" if counts.missing else "")


def _config_text(value: Any) -> str:
    if value is ABSENT:
        return "(absent)"
    return value if isinstance(value, str) else json.dumps(value, default=str)


def _md_table(header: list[str], align: list[str], rows) -> list[str]:
    def line(cells) -> str:
        return "| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |"

    return [line(header), "|" + "|".join(align) + "|", *(line(r) for r in rows)]
