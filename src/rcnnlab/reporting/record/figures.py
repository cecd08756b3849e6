"""The figures of the run record, each with its caption: `draw_figures` draws every figure the
run has data for (`plots`), from `RecordData` alone. The precision-recall curves, the confusion
matrix and the detection grid are computed here from the report split's evaluation."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rcnnlab.data.coco import CocoData
from rcnnlab.evaluation.coco import precision_curves
from rcnnlab.evaluation.confusion import ImageMatch, confusion_from_matches, match_coco
from rcnnlab.evaluation.sequence import NO_NUMBER, numbers_from_coco, numbers_from_detections
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
from rcnnlab.reporting.record.data import RecordData
from rcnnlab.reporting.record.render import RecordFigure

PR_IOUS = (0.5, 0.75)
MATCH_IOU = 0.5  # confusion matrix and detection grid


def draw_figures(rec: RecordData, fig_dir: Path, grid_images: int) -> dict[str, RecordFigure]:
    """Draw every figure the run has data for into `fig_dir`; name (the file's stem) ->
    figure."""
    out: dict[str, RecordFigure] = {}
    names = rec.names
    ids = sorted(names)
    class_names = [names[i] for i in ids]
    out["class_distribution"] = RecordFigure(plot_class_distribution(
        class_names, {s: [c.instances for c in st.classes] for s, st in rec.stats.items()},
        fig_dir / "class_distribution.png"),
        "Share of each class among the boxes of each split.")
    if rec.rows:
        out.update(_training_figures(rec, fig_dir))
    if rec.sweep:
        out["threshold_sweep"] = RecordFigure(
            plot_threshold_sweep(rec.sweep, rec.results["valid"].threshold,
                                 fig_dir / "threshold_sweep.png"),
            "Confidence threshold sweep on the validation split (threshold_sweep.csv); the "
            "dotted line is the threshold stored in the checkpoint. The sweep's mAP and AP50 "
            "count only the detections scoring at least the threshold, so they sit below the "
            "COCO metrics above, which use every detection.")
    result = rec.result
    gt = result.data.to_coco_dict()
    curves = precision_curves(gt, result.detections, backend=rec.cfg.eval.backend)
    at = {iou: curves.at_iou(iou) for iou in PR_IOUS}
    out["pr_curves"] = RecordFigure(plot_pr_curves(
        curves.recall, {i: p for i, (p, _) in at.items()},
        [names[c] for c in curves.category_ids], fig_dir / "pr_curves.png",
        scores_by_iou={i: s for i, (_, s) in at.items()}, threshold=rec.threshold),
        f"Precision-recall curves per class on the {rec.split} split at IoU "
        + " and ".join(f"{i:.2f}" for i in PR_IOUS) + " "
        "(COCO's interpolated precision, all box sizes, up to 100 detections per image); a "
        "dot marks the score threshold.")
    matches = match_coco(gt, result.detections, score_threshold=rec.threshold,
                         iou_threshold=MATCH_IOU)
    matrix = confusion_from_matches(matches.values(), ids, score_threshold=rec.threshold,
                                    iou_threshold=MATCH_IOU)
    row_labels, col_labels = matrix.labels(names)
    n_dets = int(matrix.counts[:, :-1].sum())
    out["confusion"] = RecordFigure(plot_confusion(
        matrix.counts, row_labels, col_labels, fig_dir / "confusion.png",
        title=f"{rec.split}: IoU {MATCH_IOU:.2f}, score >= {rec.threshold:.2f} "
              f"({n_dets} detections)"),
        f"Confusion matrix on the {rec.split} split at IoU {MATCH_IOU:.2f} and score >= "
        f"{rec.threshold:.2f}. Row = true class (with its number of boxes), column = predicted "
        "class. The background row counts detections matching no box (or a box already "
        "matched); the missed column counts boxes no detection matched. Colour = share of the "
        "row.")
    panels, how = _grid_panels(rec, result.data, matches, grid_images)
    out["detections"] = RecordFigure(plot_detection_grid(
        panels, fig_dir / "detections.png",
        title=f"{rec.split}: IoU {MATCH_IOU:.2f}, score >= {rec.threshold:.2f}; {how}"),
        f"Detections on {rec.split} images: {how}.")
    return out


def _training_figures(rec: RecordData, fig_dir: Path) -> dict[str, RecordFigure]:
    """Losses, validation metrics and learning rate, from metrics.csv (and TensorBoard)."""
    has_val_loss = any(r.get("val_loss") is not None for r in rec.rows)
    lr = rec.learning_rate
    ends = [r["iterations"] for r in rec.rows] if lr.unit == "iteration" else None
    mult = rec.cfg.train.backbone_lr_mult
    return {
        "losses": RecordFigure(
            plot_losses(rec.rows, fig_dir / "losses.png"),
            "Training loss per epoch (mean over the epoch's iterations)"
            + (" and validation loss (after the epoch)." if has_val_loss
               else "; this run logged no validation loss.")),
        "validation": RecordFigure(
            plot_validation_map(rec.rows, fig_dir / "validation.png",
                                seq_threshold=rec.cfg.eval.default_threshold
                                if rec.digits is not None else None),
            "Validation metrics after each epoch (the model as it was then; sequences read at "
            "`eval.default_threshold`, as training does before `rcnnlab tune`)."),
        "learning_rate": RecordFigure(
            plot_learning_rate(lr.steps, lr.values, fig_dir / "learning_rate.png",
                               unit=lr.unit, epoch_ends=ends),
            f"Learning rate of the head parameters per {lr.unit} "
            + ("(TensorBoard `iter/lr`)" if lr.unit == "iteration" else "(metrics.csv)")
            + f"; the backbone trunk learns at {mult:g} x this."),
    }


def _grid_panels(rec: RecordData, data: CocoData, matches: Mapping[int, ImageMatch],
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
    names, digits = rec.names, rec.digits
    shown_ids = [img["id"] for img in worst + rest]
    read = truth = {}
    if digits is not None:
        read = numbers_from_detections(rec.result.detections, digits, rec.threshold, shown_ids,
                                       rec.cfg.eval.read_iou)
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
