"""The run record: everything a reader needs to judge a run, on one page.

`write_record` writes `report.md` (figures linked from `figures/`) and `report.html` (one
self-contained file: figures embedded as base64 data URIs, inline CSS, no external reference)
into the run folder. Both are rendered from the same list of blocks, so they never disagree.

It reads the run folder (`metrics.csv`, `threshold_sweep.csv`, TensorBoard events,
`environment.json`) through `RunDir`, and is given what the caller evaluated with the best
checkpoint (`rcnnlab.api.report` runs the evaluation pipeline once per split): the validation
split and the report split, for the metrics, the precision-recall curves, the confusion matrix
and the detection grid. It detects nothing itself.
"""

from __future__ import annotations

import base64
import html
import math
import os
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from rcnnlab.config import Config
from rcnnlab.data.categories import digit_names
from rcnnlab.data.coco import CocoData
from rcnnlab.data.stats import DatasetStats, compute_stats
from rcnnlab.errors import MissingFileError
from rcnnlab.evaluation.coco import STAT_NAMES, precision_curves
from rcnnlab.evaluation.confusion import ImageMatch, confusion_from_matches, match_coco
from rcnnlab.evaluation.pipeline import EvalResult
from rcnnlab.evaluation.sequence import (
    NO_NUMBER,
    numbers_from_coco,
    numbers_from_detections,
)
from rcnnlab.files import write_atomic
from rcnnlab.models.build import BACKBONE_NAMES
from rcnnlab.reporting.plots import (
    GridPanel,
    plot_class_distribution,
    plot_confusion,
    plot_detection_grid,
    plot_learning_rate,
    plot_losses,
    plot_pr_curves,
    plot_threshold_sweep,
    plot_validation_map,
)
from rcnnlab.runs.checkpoint import Checkpoint
from rcnnlab.runs.environment import environment_rows
from rcnnlab.runs.rundir import RunDir, read_csv_rows
from rcnnlab.version import __version__

FIGURES_DIR = "figures"
PR_IOUS = (0.5, 0.75)
MATCH_IOU = 0.5  # confusion matrix and detection grid


def write_record(run_dir: str | Path, *, best: Checkpoint, model_info: dict,
                 splits: Mapping[str, CocoData], results: Mapping[str, EvalResult], split: str,
                 last: Checkpoint | None = None, grid_images: int = 12) -> dict[str, Path]:
    """Write `report.md`, `report.html` and the figures (`figures/*.png`) of a run folder.

    `best` is the run's best checkpoint and `model_info` its `describe_model`; `splits` are
    the splits of its config (their statistics are reported); `results` holds its evaluation
    of the valid split and of `split`, the split the precision-recall curves,
    confusion matrix and detection grid are drawn on; `last` (the training totals) defaults
    to `best`. Returns the paths written: "markdown", "html" and one per figure (by file stem).
    """
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise MissingFileError(f"{run.root}: not a run folder. Fix: give the folder rcnnlab "
                                "train wrote (runs/<name>)")
    cfg = best.config
    sweep = read_csv_rows(run.threshold_sweep_csv) if run.threshold_sweep_csv.is_file() else []
    stats = {s: compute_stats(d) for s, d in splits.items()}
    ctx = _Context(run.root, cfg, best, last or best, model_info, stats, split, dict(results),
                   run.read_metrics(), sweep)
    figures = _figures(ctx, run.root / FIGURES_DIR, grid_images)
    blocks = _blocks(ctx, figures)
    md = run.root / "report.md"
    write_atomic(md, render_markdown(blocks, run.root))
    page = run.root / "report.html"
    write_atomic(page, render_html(blocks, f"rcnnlab run record: {cfg.name}"))
    return {"markdown": md, "html": page, **{f.path.stem: f.path for f in figures.values()}}


@dataclass
class _Context:
    """What the record is written from."""

    run_dir: Path
    cfg: Config
    best: Checkpoint
    last: Checkpoint  # training totals
    model_info: dict  # describe_model
    stats: dict[str, DatasetStats]  # per split of the config
    split: str  # the report split
    results: dict[str, EvalResult]  # split -> evaluation
    rows: list[dict]  # metrics.csv
    sweep: list[dict]  # threshold_sweep.csv (empty when not tuned)

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


@dataclass
class _Figure:
    """A PNG of the record and its caption."""

    path: Path
    caption: str


# ------------------------------------------------------------------ figures
def _figures(ctx: _Context, fig_dir: Path, grid_images: int) -> dict[str, _Figure]:
    """Draw every figure the run has data for; name -> figure."""
    out: dict[str, _Figure] = {}
    names = ctx.names
    ids = sorted(names)
    class_names = [names[i] for i in ids]
    out["class_distribution"] = _Figure(plot_class_distribution(
        class_names, {s: [c.instances for c in st.classes] for s, st in ctx.stats.items()},
        fig_dir / "class_distribution.png"),
        "Share of each class among the boxes of each split.")
    if ctx.rows:
        has_val_loss = any(r.get("val_loss") is not None for r in ctx.rows)
        out["losses"] = _Figure(plot_losses(ctx.rows, fig_dir / "losses.png"),
                                "Training loss per epoch (mean over the epoch's iterations)"
                                + (" and validation loss (after the epoch)." if has_val_loss
                                   else "; this run logged no validation loss."))
        out["validation"] = _Figure(
            plot_validation_map(ctx.rows, fig_dir / "validation.png",
                                seq_threshold=ctx.cfg.eval.default_threshold
                                if ctx.digits is not None else None),
            "Validation metrics after each epoch (the model as it was then; sequences read at "
            "`eval.default_threshold`, as training does before `rcnnlab tune`).")
        steps, lrs, unit = _learning_rate(ctx.run_dir, ctx.rows)
        ends = [r["iterations"] for r in ctx.rows] if unit == "iteration" else None
        mult = ctx.cfg.train.backbone_lr_mult
        out["learning_rate"] = _Figure(
            plot_learning_rate(steps, lrs, fig_dir / "learning_rate.png", unit=unit,
                               epoch_ends=ends),
            f"Learning rate of the head parameters per {unit} "
            + ("(TensorBoard `iter/lr`)" if unit == "iteration" else "(metrics.csv)")
            + f"; the backbone trunk learns at {mult:g} x this.")
    if ctx.sweep:
        out["threshold_sweep"] = _Figure(
            plot_threshold_sweep(ctx.sweep, ctx.results["valid"].threshold,
                                 fig_dir / "threshold_sweep.png"),
            "Confidence threshold sweep on the validation split (threshold_sweep.csv); the "
            "dotted line is the threshold stored in the checkpoint. The sweep's mAP and AP50 "
            "count only the detections scoring at least the threshold, so they sit below the "
            "COCO metrics above, which use every detection.")
    result = ctx.results[ctx.split]
    gt = result.data.to_coco_dict()
    curves = precision_curves(gt, result.detections, backend=ctx.cfg.eval.backend)
    at = {iou: curves.at_iou(iou) for iou in PR_IOUS}
    out["pr_curves"] = _Figure(plot_pr_curves(
        curves.recall, {i: p for i, (p, _) in at.items()},
        [names[c] for c in curves.category_ids], fig_dir / "pr_curves.png",
        scores_by_iou={i: s for i, (_, s) in at.items()}, threshold=ctx.threshold),
        f"Precision-recall curves per class on the {ctx.split} split at IoU "
        + " and ".join(f"{i:.2f}" for i in PR_IOUS) + " "
        "(COCO's interpolated precision, all box sizes, up to 100 detections per image); a "
        "dot marks the score threshold.")
    matches = match_coco(gt, result.detections, score_threshold=ctx.threshold,
                         iou_threshold=MATCH_IOU)
    matrix = confusion_from_matches(matches.values(), ids, score_threshold=ctx.threshold,
                                    iou_threshold=MATCH_IOU)
    row_labels, col_labels = matrix.labels(names)
    n_dets = int(matrix.counts[:, :-1].sum())
    out["confusion"] = _Figure(plot_confusion(
        matrix.counts, row_labels, col_labels, fig_dir / "confusion.png",
        title=f"{ctx.split}: IoU {MATCH_IOU:.2f}, score >= {ctx.threshold:.2f} "
              f"({n_dets} detections)"),
        f"Confusion matrix on the {ctx.split} split at IoU {MATCH_IOU:.2f} and score >= "
        f"{ctx.threshold:.2f}. Row = true class (with its number of boxes), column = predicted "
        "class. The background row counts detections matching no box (or a box already "
        "matched); the missed column counts boxes no detection matched. Colour = share of the "
        "row.")
    panels, how = _grid_panels(ctx, result.data, matches, grid_images)
    out["detections"] = _Figure(plot_detection_grid(
        panels, fig_dir / "detections.png",
        title=f"{ctx.split}: IoU {MATCH_IOU:.2f}, score >= {ctx.threshold:.2f}; {how}"),
        f"Detections on {ctx.split} images: {how}.")
    return out


def _learning_rate(run_dir: Path, rows: list[dict]) -> tuple[list, list, str]:
    """LR per iteration from TensorBoard (`iter/lr`) when readable, else per epoch from
    metrics.csv: (steps, values, unit)."""
    series = read_tb_scalars(run_dir / "tb", "iter/lr")
    if series is not None:
        return series[0], series[1], "iteration"
    pairs = [(r["epoch"], r["lr"]) for r in rows if r.get("lr") is not None]
    return [p[0] for p in pairs], [p[1] for p in pairs], "epoch"


def read_tb_scalars(tb_dir: Path, tag: str) -> tuple[list[int], list[float]] | None:
    """(steps, values) of a scalar tag in a TensorBoard folder; None when tensorboard is not
    installed, the folder holds no event file or the tag was never written. A step written
    twice (a resumed run redoing an epoch, in a later file) keeps its last value."""
    try:
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    except ImportError:
        return None
    by_step: dict[int, float] = {}
    # file by file in name (= creation time) order rather than the folder at once: the
    # folder watcher logs a line per file, and later files must win for resumed runs
    for path in sorted(tb_dir.glob("events.out.tfevents.*")):
        acc = EventAccumulator(str(path), size_guidance={"scalars": 0})  # 0: keep every event
        acc.Reload()
        if tag in acc.Tags().get("scalars", []):
            by_step.update({e.step: e.value for e in acc.Scalars(tag)})
    if not by_step:
        return None
    steps = sorted(by_step)
    return steps, [by_step[s] for s in steps]


def _grid_panels(ctx: _Context, data: CocoData, matches: Mapping[int, ImageMatch],
                 n: int) -> tuple[list[GridPanel], str]:
    """Up to `n` images: half the slots for the images with the most errors, the rest the
    first others in file order; and a phrase saying so."""
    order = sorted(data.images, key=lambda img: -matches[img["id"]].num_errors)  # stable
    worst = [img for img in order if matches[img["id"]].num_errors][: n // 2]
    taken = {img["id"] for img in worst}
    rest = [img for img in data.images if img["id"] not in taken][: n - len(worst)]
    how = (f"{len(worst) + len(rest)} of {len(data.images)} images, the {len(worst)} with the "
           f"most errors first" if worst else f"the first {len(rest)} of {len(data.images)} "
           "images (no errors in the split)")
    names, digits = ctx.names, ctx.digits
    result = ctx.results[ctx.split]
    shown_ids = [img["id"] for img in worst + rest]
    read = truth = {}
    if digits is not None:
        read = numbers_from_detections(result.detections, digits, ctx.threshold, shown_ids,
                                       ctx.cfg.eval.read_iou)
        truth = numbers_from_coco(data.to_coco_dict(), digits)
    panels = []
    for img in worst + rest:
        m = matches[img["id"]]
        if digits is not None:
            ok = read[img["id"]] == truth[img["id"]]
            # pred.csv's "-1" (no digit kept) would read as a number here
            said = "nothing" if read[img["id"]] == NO_NUMBER else read[img["id"]]
            title = f"#{img['id']}: true {truth[img['id']]}, read {said} " + ("✓" if ok else "✗")
        else:
            title = (f"#{img['id']}: {len(m.true_positives)} TP, "
                     f"{len(m.false_positives) + len(m.confusions)} FP, {len(m.missed)} missed")

        def det(d: int, m: ImageMatch = m) -> str:
            # ".97" rather than "0.97": labels of neighbouring digits collide less
            return f"{names[int(m.det_labels[d])]} {m.det_scores[d]:.2f}".replace(" 0.", " .")

        panels.append(GridPanel(
            image=data.image_root / img["file_name"], title=title,
            true_positives=[(m.det_boxes[d], det(d)) for d, _ in m.true_positives],
            false_positives=[(m.det_boxes[d], det(d)) for d in m.false_positives]
            + [(m.det_boxes[d], f"{det(d)} (true {names[int(m.gt_labels[g])]})")
               for d, g in m.confusions],
            missed=[(m.gt_boxes[g], names[int(m.gt_labels[g])]) for g in m.missed]))
    return panels, how


# ------------------------------------------------------------------ content
def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) \
        else f"{value:.{digits}f}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)" if seconds >= 60 else f"{seconds:.1f} s"


def _sum_column(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    return sum(values) if values else None


def _blocks(ctx: _Context, figures: dict[str, _Figure]) -> list[tuple]:
    """The page as blocks: ("h", level, text), ("p", text), ("table", header, rows),
    ("code", text), ("figure", _Figure)."""
    cfg, result = ctx.cfg, ctx.results[ctx.split]
    m = result.metrics
    b: list[tuple] = [("h", 1, f"Run record: {cfg.name}")]
    b.append(("p", f"Written {time.strftime('%Y-%m-%d %H:%M')} by rcnnlab {__version__} from "
                   f"`{ctx.run_dir}`. The best checkpoint (epoch {ctx.best.epoch}, highest "
                   f"validation mAP) is evaluated; figures of detections are on the "
                   f"**{ctx.split}** split."))
    b += _summary(ctx, m, result)
    b += _model_section(ctx)
    b += _data_section(ctx, figures)
    b += _plan_section(ctx)
    b += _training_section(ctx, figures)
    b += _evaluation_section(ctx, figures)
    b.append(("h", 2, "Hyperparameters"))
    b.append(("p", "The resolved config of the run (every key, defaults included), as saved "
                   "in its checkpoint; `rcnnlab train -c` accepts it as it is."))
    b.append(("code", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)))
    b += _environment_section(ctx)
    return b


def _summary(ctx: _Context, m, result) -> list[tuple]:
    info, last = ctx.model_info, ctx.last
    rows = [["split evaluated", f"{ctx.split} ({result.n_images} images, "
                                f"{result.data.num_boxes} boxes)"],
            ["mAP@[.5:.95] / AP50 / AP75", " / ".join(_fmt(v) for v in (m.AP, m.AP50, m.AP75))]]
    if result.seq_acc is not None:
        rows.append([f"sequence accuracy @ {result.threshold:.2f}", _fmt(result.seq_acc)])
    rows += [["model", f"{ctx.cfg.model.arch} ({BACKBONE_NAMES.get(ctx.cfg.model.arch, '?')}), "
                       f"{info['params_total'] / 1e6:.1f} M parameters"],
             ["training", f"{last.epoch} epochs, {last.iteration} iterations, "
                          f"{_duration(last.train_seconds)}"]]
    return [("h", 2, "Summary"), ("table", ["", ""], rows)]


def _model_section(ctx: _Context) -> list[tuple]:
    mc, info = ctx.cfg.model, ctx.model_info
    parts = info["params_by_part"]
    rows = [
        ["architecture (`model.arch`)", mc.arch],
        ["backbone", BACKBONE_NAMES.get(mc.arch, "?")
         + (" + residual block after every FPN output" if info["residual_fpn"] else "")],
        ["detector weights at start", str(mc.weights or "none (random init)")],
        ["backbone weights at start", str(mc.backbone_weights or "none (random init)")],
        ["fine-tuned from", str(ctx.cfg.train.finetune_from or "-")],
        ["normalisation", "frozen BatchNorm" if info["frozen_batchnorm"] else "BatchNorm"],
        ["classes", f"{info['num_classes'] - 1} + background"],
        ["parameters", f"{info['params_total']:,} ({info['params_trainable']:,} trainable)"],
        ["parameters: backbone + FPN / RPN / RoI heads",
         " / ".join(f"{parts[k]:,}" for k in ("backbone", "rpn", "roi_heads"))],
        ["input size", _input_size(info["transform"])],
    ]
    levels = [[lv["name"], str(lv["stride"]), ", ".join(map(str, lv["anchor_sizes"])),
               ", ".join(f"{r:g}" for r in lv["aspect_ratios"])] for lv in info["levels"]]
    return [("h", 2, "Model"), ("table", ["", ""], rows),
            ("p", "Feature levels and anchors (sizes are sqrt(area) in pixels of the network "
                  "input; ratios are height/width):"),
            ("table", ["level", "stride", "anchor sizes", "aspect ratios"], levels)]


def _input_size(transform: dict) -> str:
    short = "/".join(str(v) for v in transform["min_size"])
    if transform["native_size"]:
        return (f"native size, never upscaled; images with a short side over {short} or a long "
                f"side over {transform['max_size']} px shrink to fit")
    return f"resized to short side {short}, long side at most {transform['max_size']} px"


def _data_section(ctx: _Context, figures: dict[str, _Figure]) -> list[tuple]:
    stats = ctx.stats
    d = ctx.cfg.data
    sizes = []
    for s, st in stats.items():
        source = (f"held out of train ({d.val_fraction:.0%}, seed {d.split_seed})"
                  if s == "valid" and d.valid_json is None else f"`{st.source}`")
        sizes.append([s, source, str(st.num_images), str(st.num_boxes), str(st.num_negatives),
                      _fmt(st.num_boxes / st.num_images if st.num_images else None, 2)])
    classes = []
    for k, cat in enumerate(ctx.best.categories):
        cells = [str(cat["id"]), str(cat["name"])]
        for st in stats.values():
            c = st.classes[k]
            cells.append(f"{c.instances} ({_fmt(c.share, 1)}%)")
        classes.append(cells)
    digits = ctx.digits
    note = ("The class names are the digits 0-9: the number of an image is read from its "
            "digit boxes left to right." if digits is not None else
            "The classes are not digits: no sequence accuracy is computed.")
    return [("h", 2, "Data"),
            ("table", ["split", "source", "images", "boxes", "images without a box",
                       "boxes per image"], sizes),
            ("p", f"Classes ({len(classes)}) and their boxes per split (share of the split). "
                  + note),
            ("table", ["id", "name", *stats], classes),
            ("figure", figures["class_distribution"])]


def _plan_section(ctx: _Context) -> list[tuple]:
    """What the planner chose and why, when the run was planned (`Config.plan`)."""
    record = ctx.cfg.plan
    if record is None:
        return []
    budget = (f"a {record.budget_minutes:g}-minute budget" if record.budget_minutes
              else "no time budget")
    rows = [[topic, f"`{values}`", reason] for topic, values, reason in record.rows(ctx.cfg)]
    return [("h", 2, "Plan"),
            ("p", f"The config came from the plan for `{record.data}` on {record.device} "
                  f"({record.machine}), {budget}: each choice, the values it set (a value the "
                  "run's recipe or command line changed shows the planned one) and its "
                  "reason."),
            ("table", ["choice", "values", "reason"], rows)]


def _training_section(ctx: _Context, figures: dict[str, _Figure]) -> list[tuple]:
    last, t = ctx.last, ctx.cfg.train
    train_s = last.train_seconds
    val_s = _sum_column(ctx.rows, "val_seconds")
    seen = last.images_seen
    peak = [r["peak_memory_mb"] for r in ctx.rows if r.get("peak_memory_mb") is not None]
    rows = [
        ["epochs", f"{last.epoch} of {t.epochs}"],
        ["iterations", str(last.iteration)],
        ["batch size", str(t.batch_size)],
        ["images seen", "n/a" if seen is None else str(seen)],
        ["training time (training steps only)", _duration(train_s)],
        ["validation time (all epochs)", _duration(val_s)],
        ["throughput", "n/a" if not (seen and train_s) else f"{seen / train_s:.2f} images/s"],
        ["best epoch (validation mAP)", f"{ctx.best.best_epoch} "
                                        f"({_fmt(ctx.best.best_map)})"],
        ["peak memory", f"{max(peak):.0f} MB" if peak else
         "n/a (this run did not record it in metrics.csv)"],
        ["optimizer", f"{t.optimizer}, lr {t.lr:g} (backbone x {t.backbone_lr_mult:g}), "
                      f"weight decay {t.weight_decay:g}"],
        ["schedule", f"{t.schedule}, warm-up {t.warmup_iters} iterations"],
        ["weights evaluated", "the last step's" if t.ema_decay is None else
         f"their moving average (EMA, decay {t.ema_decay:g}, warm-up {t.ema_warmup} "
         "iterations): validation, best.pt and this record score it"],
    ]
    budget = RunDir(ctx.run_dir).read_time_budget()
    if budget is not None:  # train.epochs did not apply
        rows[0] = ["epochs", f"{last.epoch} of {budget['epochs']} (chosen by the time budget)"]
        rows.insert(1, ["time budget", _time_budget(budget)])
    out = [("h", 2, "Training"), ("table", ["", ""], rows)]
    out += [("figure", figures[k]) for k in ("losses", "validation", "learning_rate")
            if k in figures]
    if (ctx.run_dir / "scale_weights.png").is_file():
        out.append(("figure", _Figure(ctx.run_dir / "scale_weights.png",
                                      "Multi-scale loss weighting over training.")))
    return out


def _time_budget(plan: dict) -> str:
    """What train.time_budget chose, from time_budget.json."""
    text = (f"{plan['budget_minutes']:g} min: {plan['epochs']} epochs of "
            f"{plan['iters_per_epoch']} iterations (a full pass is {plan['full_epoch']}), fitted "
            f"to {plan['seconds_per_iteration']:.3f} s an iteration and "
            f"{plan['val_seconds']:.1f} s a validation "
            f"({'estimated' if plan.get('estimated_validation') else 'measured'})")
    if plan.get("took_minutes") is not None:
        text += (f"; training and validation took {plan['took_minutes']:.2f} min "
                 f"({100 * plan['took_minutes'] / plan['budget_minutes']:.1f}%)")
    return text


def _evaluation_section(ctx: _Context, figures: dict[str, _Figure]) -> list[tuple]:
    res = ctx.results
    splits = list(res)
    header = ["metric", *(f"{s} ({res[s].n_images} images)" for s in splits)]
    table = [[name, *(_fmt(getattr(res[s].metrics, name)) for s in splits)]
             for name in STAT_NAMES]
    digits = ctx.digits is not None
    if digits:
        table.append([f"sequence accuracy @ {ctx.threshold:.2f}",
                      *(_fmt(res[s].seq_acc) for s in splits)])
    out: list[tuple] = [("h", 2, "Evaluation"),
                        ("p", "COCO box metrics of the best checkpoint (\"n/a\": the split has no "
                              "box the metric applies to, e.g. no large boxes for APl)."),
                        ("table", header, table)]
    if "test" in res and "valid" in res:
        v, t = res["valid"], res["test"]
        gap = [["AP", _fmt(v.metrics.AP), _fmt(t.metrics.AP), _diff(t.metrics.AP, v.metrics.AP)],
               ["AP50", _fmt(v.metrics.AP50), _fmt(t.metrics.AP50),
                _diff(t.metrics.AP50, v.metrics.AP50)]]
        if digits:
            gap.append(["sequence accuracy", _fmt(v.seq_acc), _fmt(t.seq_acc),
                        _diff(t.seq_acc, v.seq_acc)])
        out += [("h", 3, "Generalisation gap"),
                ("p", "Test minus validation. The checkpoint and the threshold were chosen on "
                      "validation, so validation scores are optimistic; a large negative gap "
                      "means they were chosen on noise or the splits differ."),
                ("table", ["metric", "valid", "test", "test - valid"], gap)]
    else:
        out.append(("p", "No test split in the run's config (`data.test_json`): no "
                         "generalisation gap. The validation split chose the checkpoint and "
                         "the threshold, so its scores are optimistic."))
    names = ctx.names
    per_class = [[str(cid), names[cid],
                  *(_fmt(v) for s in splits for v in (res[s].metrics.per_class.get(cid),
                                                       res[s].metrics.per_class_ap50.get(cid)))]
                 for cid in sorted(names)]
    out += [("h", 3, "Per-class AP"),
            ("table", ["id", "class", *(f"{s} {k}" for s in splits for k in ("AP", "AP50"))],
             per_class)]
    out.append(("h", 3, "Confidence threshold"))
    thr = res["valid"].threshold
    if ctx.sweep:
        out.append(("p", f"Threshold {thr:.2f}, tuned on the validation split by `rcnnlab tune` "
                         + ("(highest sequence accuracy, ties to higher mAP). It decides which "
                            "digits are read." if digits else "(highest mAP).")
                         + " Detections scoring below it are left out of the sequences, the "
                           "confusion matrix and the detection grid; COCO mAP uses all "
                           "detections."))
        out.append(("figure", figures["threshold_sweep"]))
    else:
        out.append(("p", f"Threshold {thr:.2f}: the default (`eval.default_threshold`), not "
                         "tuned. Run `rcnnlab tune` on the run, then write the record again."))
    out += [("h", 3, f"Errors on the {ctx.split} split"),
            ("figure", figures["pr_curves"]), ("figure", figures["confusion"]),
            ("figure", figures["detections"])]
    return out


def _diff(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a - b:+.4f}"


def _environment_section(ctx: _Context) -> list[tuple]:
    rows = RunDir(ctx.run_dir).read_environment()
    if rows is not None:
        note = ("Of the training process, as `rcnnlab train` saved it in `environment.json` "
                "when training started.")
    else:
        rows = environment_rows(ctx.cfg.train.device)
        note = ("Of the process that wrote this record: the run has no `environment.json` (it "
                "was trained before rcnnlab saved one), so this is the machine of "
                "`rcnnlab report`, which need not be the one that trained.")
    return [("h", 2, "Environment"), ("p", note), ("table", ["", ""], rows)]


# ------------------------------------------------------------------ rendering
_NUMBER = re.compile(r"^[-+]?[\d,.]+( ?(%|\(.*\)|[a-zA-Z/ ]+))?$|^n/a$")


def _numeric_columns(rows: Sequence[Sequence[str]], width: int) -> list[bool]:
    """Columns after the first whose cells all start with a number (right-aligned)."""
    return [i > 0 and all(_NUMBER.match(r[i].split(" ")[0]) for r in rows if r[i])
            for i in range(width)]


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: Sequence[tuple], base: Path) -> str:
    """Markdown of the blocks; figures are linked relative to `base` (the page's folder)."""
    out: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            out += ["#" * block[1] + " " + block[2], ""]
        elif kind == "p":
            out += [block[1], ""]
        elif kind == "code":
            out += ["```yaml", block[1].rstrip("\n"), "```", ""]
        elif kind == "table":
            header, rows = block[1], block[2]
            right = _numeric_columns(rows, len(header))
            out.append("| " + " | ".join(_md_cell(h) for h in header) + " |")
            out.append("| " + " | ".join("---:" if r else "---" for r in right) + " |")
            out += ["| " + " | ".join(_md_cell(c) for c in row) + " |" for row in rows]
            out.append("")
        elif kind == "figure":
            fig = block[1]
            rel = os.path.relpath(fig.path, base)
            out += [f"![{fig.path.stem}]({Path(rel).as_posix()})", "", f"*{fig.caption}*", ""]
    return "\n".join(out)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;max-width:1180px;
margin:2em auto;padding:0 1em;color:#222;line-height:1.45}
h1{border-bottom:2px solid #444}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.6em 0 1.2em;font-size:.92em}
th,td{border:1px solid #d0d0d0;padding:.25em .6em;vertical-align:top}
th{background:#f0f0f0}tr:nth-child(even) td{background:#fafafa}td.num{text-align:right;
font-variant-numeric:tabular-nums}
pre{background:#f6f8fa;border:1px solid #ddd;padding:.8em;overflow:auto;font-size:.85em;
max-height:40em}code{background:#f3f3f3;padding:0 .2em}
figure{margin:1em 0 2em}figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:.9em;color:#555;margin-top:.3em}nav a{margin-right:1em}
@media print{pre{max-height:none;overflow:visible;white-space:pre-wrap}nav{display:none}
figure{break-inside:avoid}}
"""


def _inline(text: str) -> str:
    """Escaped HTML of a line with Markdown's `code` and **bold** spans."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    return re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)


def _anchor(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def render_html(blocks: Sequence[tuple], title: str) -> str:
    """One self-contained HTML page of the blocks: inline CSS, figures as base64 data URIs,
    no reference to any other file or address."""
    sections = [b[2] for b in blocks if b[0] == "h" and b[1] == 2]
    body: list[str] = []
    for block in blocks:
        kind = block[0]
        if kind == "h":
            level, text = block[1], block[2]
            body.append(f'<h{level} id="{_anchor(text)}">{_inline(text)}</h{level}>')
            if level == 1:
                body.append("<nav>" + "".join(f'<a href="#{_anchor(s)}">{html.escape(s)}</a>'
                                              for s in sections) + "</nav>")
        elif kind == "p":
            body.append(f"<p>{_inline(block[1])}</p>")
        elif kind == "code":
            body.append(f"<pre>{html.escape(block[1])}</pre>")
        elif kind == "table":
            header, rows = block[1], block[2]
            right = _numeric_columns(rows, len(header))
            # a key-value table has a blank header (Markdown needs one; HTML does not)
            head = ("" if not any(header) else "<thead><tr>" + "".join(
                f"<th>{_inline(h)}</th>" for h in header) + "</tr></thead>")
            trs = ["<tr>" + "".join(f'<td{" class=num" if right[i] else ""}>{_inline(c)}</td>'
                                    for i, c in enumerate(row)) + "</tr>" for row in rows]
            body.append(f"<table>{head}<tbody>{''.join(trs)}</tbody></table>")
        elif kind == "figure":
            fig = block[1]
            data = base64.b64encode(fig.path.read_bytes()).decode("ascii")
            body.append(f'<figure><img alt="{html.escape(fig.path.stem)}" '
                        f'src="data:image/png;base64,{data}"><figcaption>'
                        f"{_inline(fig.caption)}</figcaption></figure>")
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(title)}</title><style>{_CSS}</style></head><body>\n"
            + "\n".join(body) + "\n</body></html>\n")
