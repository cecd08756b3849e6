"""The text of the run record, section by section: each function turns `RecordData` (and the
drawn figures) into the blocks of its section (`render`'s Heading, Paragraph, Table, Code,
RecordFigure). Numbers are formatted here, with `format_score` for scores; nothing is read from
the run folder or the machine.
"""

from __future__ import annotations

import math

import yaml

from rcnnlab.evaluation.coco import STAT_NAMES, format_score
from rcnnlab.models.description import BACKBONE_NAMES
from rcnnlab.reporting.record.data import RecordData
from rcnnlab.reporting.record.render import Block, Code, Heading, Paragraph, RecordFigure, Table
from rcnnlab.version import __version__


def record_blocks(rec: RecordData, figures: dict[str, RecordFigure]) -> list[Block]:
    """The page as blocks: Heading(level, text), Paragraph(text), Table(header, rows),
    Code(text) and the figures (RecordFigure)."""
    cfg = rec.cfg
    b: list[Block] = [Heading(1, f"Run record: {cfg.name}")]
    b.append(Paragraph(f"Written {rec.written} by rcnnlab {__version__} from "
                       f"`{rec.run_dir}`. The best checkpoint (epoch {rec.best.epoch}, highest "
                       f"validation mAP) is evaluated; figures of detections are on the "
                       f"**{rec.split}** split."))
    b += summary_section(rec)
    b += model_section(rec)
    b += data_section(rec, figures)
    b += plan_section(rec)
    b += training_section(rec, figures)
    b += evaluation_section(rec, figures)
    b.append(Heading(2, "Hyperparameters"))
    b.append(Paragraph("The resolved config of the run (every key, defaults included), as "
                       "saved in its checkpoint; `rcnnlab train -c` accepts it as it is."))
    b.append(Code(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)))
    b += environment_section(rec)
    return b


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "n/a"
    return f"{seconds / 60:.1f} min ({seconds:.0f} s)" if seconds >= 60 else f"{seconds:.1f} s"


def _sum_column(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None and not math.isnan(r[key])]
    return sum(values) if values else None


def summary_section(rec: RecordData) -> list[Block]:
    info, last, result = rec.model_info, rec.last, rec.result
    m = result.metrics
    rows = [["split evaluated", f"{rec.split} ({result.n_images} images, "
                                f"{result.data.num_boxes} boxes)"],
            ["mAP@[.5:.95] / AP50 / AP75",
             " / ".join(format_score(v) for v in (m.AP, m.AP50, m.AP75))]]
    if result.seq_acc is not None:
        rows.append([f"sequence accuracy @ {result.threshold:.2f}", format_score(result.seq_acc)])
    rows += [["model", f"{rec.cfg.model.arch} ({BACKBONE_NAMES.get(rec.cfg.model.arch, '?')}), "
                       f"{info['params_total'] / 1e6:.1f} M parameters"],
             ["training", f"{last.epoch} epochs, {last.iteration} iterations, "
                          f"{_duration(last.train_seconds)}"]]
    return [Heading(2, "Summary"), Table(["", ""], rows)]


def model_section(rec: RecordData) -> list[Block]:
    mc, info = rec.cfg.model, rec.model_info
    parts = info["params_by_part"]
    rows = [
        ["architecture (`model.arch`)", mc.arch],
        ["backbone", BACKBONE_NAMES.get(mc.arch, "?")
         + (" + residual block after every FPN output" if info["residual_fpn"] else "")],
        ["detector weights at start", str(mc.weights or "none (random init)")],
        ["backbone weights at start", str(mc.backbone_weights or "none (random init)")],
        ["fine-tuned from", str(rec.cfg.train.finetune_from or "-")],
        ["normalisation", "frozen BatchNorm" if info["frozen_batchnorm"] else "BatchNorm"],
        ["classes", f"{info['num_classes'] - 1} + background"],
        ["parameters", f"{info['params_total']:,} ({info['params_trainable']:,} trainable)"],
        ["parameters: backbone + FPN / RPN / RoI heads",
         " / ".join(f"{parts[k]:,}" for k in ("backbone", "rpn", "roi_heads"))],
        ["input size", _input_size(info["transform"])],
    ]
    levels = [[lv["name"], str(lv["stride"]), ", ".join(map(str, lv["anchor_sizes"])),
               ", ".join(f"{r:g}" for r in lv["aspect_ratios"])] for lv in info["levels"]]
    return [Heading(2, "Model"), Table(["", ""], rows),
            Paragraph("Feature levels and anchors (sizes are sqrt(area) in pixels of the "
                      "network input; ratios are height/width):"),
            Table(["level", "stride", "anchor sizes", "aspect ratios"], levels)]


def _input_size(transform: dict) -> str:
    short = "/".join(str(v) for v in transform["min_size"])
    if transform["native_size"]:
        return (f"native size, never upscaled; images with a short side over {short} or a long "
                f"side over {transform['max_size']} px shrink to fit")
    return f"resized to short side {short}, long side at most {transform['max_size']} px"


def data_section(rec: RecordData, figures: dict[str, RecordFigure]) -> list[Block]:
    stats = rec.stats
    d = rec.cfg.data
    sizes = []
    for s, st in stats.items():
        # a split held out of train was read from train's json (data.val_fraction); the
        # config alone cannot tell, as generated data and a data.yaml name no valid json
        held_out = s == "valid" and "train" in stats and st.source == stats["train"].source
        source = (f"held out of train ({d.val_fraction:.0%}, seed {d.split_seed})"
                  if held_out else f"`{st.source}`")
        sizes.append([s, source, str(st.num_images), str(st.num_boxes), str(st.num_negatives),
                      format_score(st.num_boxes / st.num_images if st.num_images else None, 2)])
    classes = []
    for k, cat in enumerate(rec.best.categories):
        cells = [str(cat["id"]), str(cat["name"])]
        for st in stats.values():
            c = st.classes[k]
            cells.append(f"{c.instances} ({format_score(c.share, 1)}%)")
        classes.append(cells)
    digits = rec.digits
    note = ("The class names are the digits 0-9: the number of an image is read from its "
            "digit boxes left to right." if digits is not None else
            "The classes are not digits: no sequence accuracy is computed.")
    return [Heading(2, "Data"),
            Table(["split", "source", "images", "boxes", "images without a box",
                   "boxes per image"], sizes),
            Paragraph(f"Classes ({len(classes)}) and their boxes per split (share of the "
                      "split). " + note),
            Table(["id", "name", *stats], classes),
            figures["class_distribution"]]


def plan_section(rec: RecordData) -> list[Block]:
    """What the planner chose and why, when the run was planned (`Config.plan`)."""
    record = rec.cfg.plan
    if record is None:
        return []
    budget = (f"a {record.budget_minutes:g}-minute budget" if record.budget_minutes
              else "no time budget")
    rows = [[topic, f"`{values}`", reason] for topic, values, reason in record.rows(rec.cfg)]
    return [Heading(2, "Plan"),
            Paragraph(f"The config came from the plan for `{record.data}` on {record.device} "
                      f"({record.machine}), {budget}: each choice, the values it set (a value "
                      "the run's recipe or command line changed shows the planned one) and its "
                      "reason."),
            Table(["choice", "values", "reason"], rows)]


def training_section(rec: RecordData, figures: dict[str, RecordFigure]) -> list[Block]:
    last, t = rec.last, rec.cfg.train
    train_s = last.train_seconds
    val_s = _sum_column(rec.rows, "val_seconds")
    seen = last.images_seen
    peak = [r["peak_memory_mb"] for r in rec.rows if r.get("peak_memory_mb") is not None]
    rows = [
        ["epochs", f"{last.epoch} of {t.epochs}"],
        ["iterations", str(last.iteration)],
        ["batch size", str(t.batch_size)],
        ["images seen", "n/a" if seen is None else str(seen)],
        ["training time (training steps only)", _duration(train_s)],
        ["validation time (all epochs)", _duration(val_s)],
        ["throughput", "n/a" if not (seen and train_s) else f"{seen / train_s:.2f} images/s"],
        ["best epoch (validation mAP)", f"{rec.best.best_epoch} "
                                        f"({format_score(rec.best.best_map)})"],
        ["peak memory", f"{max(peak):.0f} MB" if peak else
         "n/a (this run did not record it in metrics.csv)"],
        ["optimizer", f"{t.optimizer}, lr {t.lr:g} (backbone x {t.backbone_lr_mult:g}), "
                      f"weight decay {t.weight_decay:g}"],
        ["schedule", f"{t.schedule}, warm-up {t.warmup_iters} iterations"],
        ["weights evaluated", "the last step's" if t.ema_decay is None else
         f"their moving average (EMA, decay {t.ema_decay:g}, warm-up {t.ema_warmup} "
         "iterations): validation, best.pt and this record score it"],
    ]
    budget = rec.time_budget
    if budget is not None:  # train.epochs did not apply
        rows[0] = ["epochs", f"{last.epoch} of {budget['epochs']} (chosen by the time budget)"]
        rows.insert(1, ["time budget", _time_budget(budget)])
    out = [Heading(2, "Training"), Table(["", ""], rows)]
    out += [figures[k] for k in ("losses", "validation", "learning_rate") if k in figures]
    if rec.scale_weights_png is not None:
        out.append(RecordFigure(rec.scale_weights_png,
                                "Multi-scale loss weighting over training."))
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


def evaluation_section(rec: RecordData, figures: dict[str, RecordFigure]) -> list[Block]:
    res = rec.results
    splits = list(res)
    header = ["metric", *(f"{s} ({res[s].n_images} images)" for s in splits)]
    table = [[name, *(format_score(getattr(res[s].metrics, name)) for s in splits)]
             for name in STAT_NAMES]
    digits = rec.digits is not None
    if digits:
        table.append([f"sequence accuracy @ {rec.threshold:.2f}",
                      *(format_score(res[s].seq_acc) for s in splits)])
    out: list[Block] = [Heading(2, "Evaluation"),
                        Paragraph("COCO box metrics of the best checkpoint (\"n/a\": the split "
                                  "has no box the metric applies to, e.g. no large boxes for "
                                  "APl)."),
                        Table(header, table)]
    if "test" in res and "valid" in res:
        v, t = res["valid"], res["test"]
        gap = [["AP", format_score(v.metrics.AP), format_score(t.metrics.AP),
                _diff(t.metrics.AP, v.metrics.AP)],
               ["AP50", format_score(v.metrics.AP50), format_score(t.metrics.AP50),
                _diff(t.metrics.AP50, v.metrics.AP50)]]
        if digits:
            gap.append(["sequence accuracy", format_score(v.seq_acc), format_score(t.seq_acc),
                        _diff(t.seq_acc, v.seq_acc)])
        out += [Heading(3, "Generalisation gap"),
                Paragraph("Test minus validation. The checkpoint and the threshold were chosen "
                          "on validation, so validation scores are optimistic; a large "
                          "negative gap means they were chosen on noise or the splits differ."),
                Table(["metric", "valid", "test", "test - valid"], gap)]
    else:
        out.append(Paragraph("No test split in the run's config (`data.test_json`): no "
                             "generalisation gap. The validation split chose the checkpoint "
                             "and the threshold, so its scores are optimistic."))
    names = rec.names
    per_class = [[str(cid), names[cid],
                  *(format_score(v) for s in splits
                    for v in (res[s].metrics.per_class.get(cid),
                              res[s].metrics.per_class_ap50.get(cid)))]
                 for cid in sorted(names)]
    out += [Heading(3, "Per-class AP"),
            Table(["id", "class", *(f"{s} {k}" for s in splits for k in ("AP", "AP50"))],
                  per_class)]
    out.append(Heading(3, "Confidence threshold"))
    thr = res["valid"].threshold
    if rec.sweep:
        out.append(Paragraph(f"Threshold {thr:.2f}, tuned on the validation split by "
                             "`rcnnlab tune` "
                             + ("(highest sequence accuracy, ties to higher mAP). It decides "
                                "which digits are read." if digits else "(highest mAP).")
                             + " Detections scoring below it are left out of the sequences, the "
                               "confusion matrix and the detection grid; COCO mAP uses all "
                               "detections."))
        out.append(figures["threshold_sweep"])
    else:
        out.append(Paragraph(f"Threshold {thr:.2f}: the default (`eval.default_threshold`), "
                             "not tuned. Run `rcnnlab tune` on the run, then write the record "
                             "again."))
    out += [Heading(3, f"Errors on the {rec.split} split"),
            figures["pr_curves"], figures["confusion"], figures["detections"]]
    return out


def _diff(a: float | None, b: float | None) -> str:
    return "n/a" if a is None or b is None else f"{a - b:+.4f}"


def environment_section(rec: RecordData) -> list[Block]:
    if rec.environment_saved:
        note = ("Of the training process, as `rcnnlab train` saved it in `environment.json` "
                "when training started.")
    else:
        note = ("Of the process that wrote this record: the run has no `environment.json` (it "
                "was trained before rcnnlab saved one), so this is the machine of "
                "`rcnnlab report`, which need not be the one that trained.")
    return [Heading(2, "Environment"), Paragraph(note), Table(["", ""], rec.environment)]


