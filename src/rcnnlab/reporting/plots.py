"""Figures of a run (matplotlib, PNG): what a training method did, and the run record's curves,
precision-recall, confusion matrix, threshold sweep and detection grid."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rcnnlab.data.images import read_image
from rcnnlab.files import replacing
from rcnnlab.methods.scale_weighting import ACTION_NAMES, IntervalRecord
from rcnnlab.reporting.drawing import Panel, class_colors, draw_grid


def plot_scale_weights(history: Sequence[IntervalRecord], out_png: Path,
                       level_names: Sequence[str] | None = None,
                       last_iteration: int | None = None) -> Path:
    """Multi-scale loss weighting over training: the weight of each FPN level, the interval
    loss per level, and (RLO) the action probabilities, against iteration.

    `level_names` label the levels (e.g. P2..P6); default "level i". The weights and
    probabilities are drawn as steps from iteration 0 (every weight 1, every action equally
    likely) to `last_iteration` (default: the last update), since the last update holds until
    training ends.
    """
    from matplotlib.figure import Figure

    its = [r.iteration for r in history]
    end = max(last_iteration or 0, its[-1])
    rlo = any(r.probabilities for r in history)
    fig = Figure(figsize=(5 * (3 if rlo else 2), 3.6), layout="constrained")
    axes = fig.subplots(1, 3 if rlo else 2, squeeze=False, sharex=True)[0]
    names = list(level_names or [f"level {i}" for i in range(len(history[0].weights))])
    for i, name in enumerate(names):
        # a weight holds from the end of one interval to the end of the next
        axes[0].step(*_held_steps(its, [r.weights[i] for r in history], 1.0, end),
                     where="post", label=name)
        # a level without loss in an interval (no RoI pooled there) has no point on a log axis
        axes[1].plot(its, [r.interval_loss[i] if r.interval_loss[i] > 0 else float("nan")
                           for r in history], marker=".", label=name)
    axes[0].set(xlabel="iteration", ylabel="loss weight", title="Weight per FPN level")
    axes[1].set(xlabel="iteration", ylabel="mean loss over the interval", yscale="log",
                title="Interval loss per FPN level")
    if rlo:
        rows = [(r.iteration, r.probabilities) for r in history if r.probabilities]
        for a, name in enumerate(ACTION_NAMES):
            axes[2].step(*_held_steps([it for it, _ in rows], [p[a] for _, p in rows],
                                      1 / len(ACTION_NAMES), end),
                         where="post", label=f"a{a} {name}")
        axes[2].set(xlabel="iteration", ylabel="probability", ylim=(0, 1),
                    title="RLO action probabilities")
    for ax in axes:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    out_png = Path(out_png)
    with replacing(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out_png


def _held_steps(its: Sequence[int], values: Sequence[float], initial: float,
                end: int) -> tuple[list[int], list[float]]:
    """A value set at each of `its` and held: from 0 at `initial` to `end` at the last value."""
    return [0, *its, end], [initial, *values, values[-1]]


# ------------------------------------------------------------------ run-record figures
# Each takes plain data (rows of metrics.csv as dicts, arrays, lists) and writes one PNG with a
# bare Figure: drawing with Agg, never touching pyplot's global state (or a notebook's backend).

LOSS_PANELS = (
    ("loss", "Total loss"),
    ("loss_cls", "Classification (RoI head)"),
    ("loss_bbox", "Box regression (RoI head)"),
    ("loss_anchor", "Anchors (RPN objectness + box)"),
)
"""metrics.csv loss columns and their panel titles; validation columns are ``val_<key>``."""

TP_COLOR, FP_COLOR, MISSED_COLOR = "#00a651", "#e8112d", "#ff9d00"
"""Detection grid colours: true positive green, false positive red, missed box orange."""


def _figure(width: float, height: float):
    """A bare Figure with constrained layout (labels and legends never overlap the axes)."""
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")


def _save(fig, out_png: Path, dpi: int = 110) -> Path:
    out_png = Path(out_png)
    with replacing(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    return out_png


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _series(rows: Sequence[Mapping[str, float | None]], key: str) -> tuple[list, list]:
    """(epochs, values) of the rows where column ``key`` holds a number (not empty, not nan)."""
    pairs = [(r["epoch"], r[key]) for r in rows if _finite(r.get(key))]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _integer_axis(ax, values: Sequence[float] = ()) -> None:
    """Whole-number ticks on x (epochs, iterations); with `values`, half a unit of room on
    either side, so a single epoch is one tick rather than a span of fractions around it."""
    from matplotlib.ticker import MaxNLocator

    # min_n_ticks=1: with the default of 2, a one-epoch axis falls back to fractional ticks
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    if len(values):
        ax.set_xlim(min(values) - 0.5, max(values) + 0.5)


def plot_losses(rows: Sequence[Mapping[str, float | None]], out_png: Path) -> Path:
    """Training loss per epoch, total and the cls / bbox / anchor groups, one panel each (their
    scales differ by an order of magnitude), with the validation losses where the rows have
    them (``val_loss``, ``val_loss_cls``, ...). ``rows``: metrics.csv rows, numbers parsed."""
    fig = _figure(10, 6.4)
    for ax, (key, title) in zip(fig.subplots(2, 2).flat, LOSS_PANELS, strict=True):
        ax.plot(*_series(rows, key), marker="o", ms=4, color="tab:blue", label="train")
        val = _series(rows, f"val_{key}")
        if val[0]:
            ax.plot(*val, marker="s", ms=4, ls="--", color="tab:orange", label="validation")
        ax.set(title=title, xlabel="epoch", ylabel="loss (epoch mean)")
        ax.set_ylim(bottom=0)  # losses are >= 0: a zero floor keeps their size honest
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        _integer_axis(ax, [r["epoch"] for r in rows])
    return _save(fig, out_png)


def plot_validation_map(rows: Sequence[Mapping[str, float | None]], out_png: Path, *,
                        seq_threshold: float | None = None) -> Path:
    """Validation mAP@[.5:.95], AP50 and AP75 per epoch, and the sequence accuracy of digit
    runs (``val_seq_acc``, read at ``seq_threshold`` during training), the best-mAP epoch
    marked."""
    fig = _figure(8.2, 4.2)
    ax = fig.subplots()
    for key, label, marker in (("val_AP", "mAP@[.5:.95]", "o"), ("val_AP50", "AP50", "s"),
                               ("val_AP75", "AP75", "^")):
        ax.plot(*_series(rows, key), marker=marker, ms=4, label=label)
    epochs, acc = _series(rows, "val_seq_acc")
    if epochs:
        at = f" @ {seq_threshold:.2f}" if seq_threshold is not None else ""
        ax.plot(epochs, acc, marker="D", ms=4, ls=":", color="tab:gray",
                label=f"sequence accuracy{at}")
    epochs, ap = _series(rows, "val_AP")
    title = "Validation metrics per epoch"
    if epochs:
        best = max(range(len(ap)), key=ap.__getitem__)
        # the best epoch is said in the title: a text label beside the line collides with the
        # curves wherever it is put
        ax.axvline(epochs[best], color="black", lw=0.8, ls="--")
        title += f" (dashed: best mAP {ap[best]:.3f}, epoch {epochs[best]:g})"
    ax.set(xlabel="epoch", ylabel="validation score", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    # outside the axes: inside, the legend hid the last epoch's points wherever it went
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    _integer_axis(ax, [r["epoch"] for r in rows])
    return _save(fig, out_png)


def plot_learning_rate(steps: Sequence[float], lrs: Sequence[float], out_png: Path, *,
                       unit: str = "iteration",
                       epoch_ends: Sequence[float] | None = None) -> Path:
    """The learning rate against ``unit`` ("iteration" or "epoch"); with ``epoch_ends``
    (iterations at which each epoch ended) the epochs are marked along the top."""
    fig = _figure(7, 3.6)
    ax = fig.subplots()
    top = max((abs(v) for v in lrs), default=0.0)
    # the power of ten goes into the axis label: matplotlib's offset text ("1e-3") would sit
    # on top of the epoch axis
    exp = math.floor(math.log10(top)) if top > 0 else 0
    values = [v / 10**exp for v in lrs]
    ax.plot(steps, values, lw=1.4, marker="o" if len(steps) <= 30 else None, ms=4)
    _integer_axis(ax)
    scale = f" (x 1e{exp})" if exp else ""
    ax.set(xlabel=unit, ylabel=f"learning rate{scale}", title=f"Learning rate per {unit}")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    if epoch_ends:
        for end in epoch_ends[:-1]:
            ax.axvline(end, color="tab:gray", lw=0.6, ls=":")
        epoch_axis = ax.secondary_xaxis("top")
        starts = [0, *epoch_ends[:-1]]
        # label every epoch in its middle while that stays legible
        every = max(1, math.ceil(len(epoch_ends) / 20))
        epoch_axis.set_xticks(
            [(a + b) / 2 for a, b in zip(starts, epoch_ends, strict=True)][::every],
            [str(e + 1) for e in range(len(epoch_ends))][::every])
        epoch_axis.tick_params(length=0, labelsize=8)
        epoch_axis.set_xlabel("epoch", fontsize=9)
    return _save(fig, out_png)


def plot_pr_curves(recall: Sequence[float], precision_by_iou: Mapping[float, np.ndarray],
                   class_names: Sequence[str], out_png: Path, *,
                   scores_by_iou: Mapping[float, np.ndarray] | None = None,
                   threshold: float | None = None) -> Path:
    """Precision-recall curves per class, one panel per IoU threshold.

    ``precision_by_iou[iou]`` is [R, K] over ``recall`` [R] (COCO's interpolated precision, -1
    for a class without ground truth, 0 past the highest recall reached); a curve ends at the
    highest recall it reaches, and its AP (the mean over all R recalls) is in the legend. With
    ``scores_by_iou`` (same layout: the score at which each recall is reached) and
    ``threshold``, a dot marks where a class's curve stands at that confidence threshold.
    """
    from matplotlib.lines import Line2D

    recall = np.asarray(recall, dtype=float)
    ious = list(precision_by_iou)
    colors = class_colors(len(class_names))
    fig = _figure(5.0 * len(ious) + 2.4, 4.6)
    axes = fig.subplots(1, len(ious), squeeze=False, sharey=True)[0]
    aps: dict[int, list[str]] = {}  # class index -> its AP per panel, for the legend
    for ax, iou in zip(axes, ious, strict=True):
        prec = np.asarray(precision_by_iou[iou], dtype=float)
        panel = []
        for k in range(len(class_names)):
            p = prec[:, k]
            if (p < 0).all():
                continue  # no ground truth of this class in the split
            panel.append(float(p.mean()))
            aps.setdefault(k, []).append(f"{panel[-1]:.2f}")
            reached = np.flatnonzero(p > 0)
            if reached.size:
                end = reached[-1] + 1
                ax.plot(recall[:end], p[:end], color=colors[k], lw=1.3)
            if scores_by_iou is not None and threshold is not None:
                at = np.flatnonzero(np.asarray(scores_by_iou[iou])[:, k] >= threshold)
                if at.size:
                    ax.plot(recall[at[-1]], p[at[-1]], "o", ms=5, color=colors[k], mec="black",
                            mew=0.6)
        mean = f"mAP {np.mean(panel):.3f}" if panel else "no ground truth"
        if panel and not ax.lines:  # say why the panel is empty rather than leave it blank
            ax.text(0.5, 0.5, "no detection matches a box at this IoU", ha="center",
                    va="center", transform=ax.transAxes, color="tab:gray")
        ax.set(xlim=(0, 1.01), ylim=(0, 1.02), xlabel="recall", title=f"IoU {iou:.2f}: {mean}")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("precision")
    handles = [Line2D([], [], color=colors[k], lw=2,
                      label=f"{class_names[k]}  {' / '.join(aps[k])}") for k in sorted(aps)]
    fig.legend(handles=handles, loc="outside right center", fontsize=8,
               ncols=1 if len(handles) <= 25 else 2,
               title="class  AP @ " + " / ".join(f"{i:.2f}" for i in ious), title_fontsize=8)
    if scores_by_iou is not None and threshold is not None:
        fig.suptitle(f"Precision-recall per class (area all, 100 detections per image); "
                     f"dots: score threshold {threshold:.2f}", fontsize=10)
    else:
        fig.suptitle("Precision-recall per class (area all, 100 detections per image)",
                     fontsize=10)
    return _save(fig, out_png)


def plot_confusion(counts: np.ndarray, row_labels: Sequence[str], col_labels: Sequence[str],
                   out_png: Path, *, title: str = "Confusion matrix") -> Path:
    """A confusion matrix with background: cells coloured by their share of the row (so rare
    classes read as clearly as common ones) and labelled with counts; zero cells left blank and
    the meaningless background/missed corner greyed out. Rows are true classes + background,
    columns predicted classes + missed (see :mod:`rcnnlab.evaluation.confusion`)."""
    from matplotlib.colors import ListedColormap

    counts = np.asarray(counts, dtype=np.int64)
    n_rows, n_cols = counts.shape
    sums = counts.sum(axis=1, keepdims=True)
    share = np.divide(counts, sums, out=np.zeros(counts.shape), where=sums > 0)
    share = np.ma.masked_array(share, mask=np.zeros_like(share, dtype=bool))
    share.mask[-1, -1] = True
    side = max(4.5, 0.55 * n_cols + 2.2)
    fig = _figure(side + 1.2, side)
    ax = fig.subplots()
    cmap = ListedColormap(_blues(256)).with_extremes(bad="#d9d9d9")
    image = ax.imshow(share, cmap=cmap, vmin=0, vmax=1)
    fontsize = 8 if n_cols <= 12 else 6
    for i in range(n_rows):
        for j in range(n_cols):
            if counts[i, j] and not (i == n_rows - 1 and j == n_cols - 1):
                ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=fontsize,
                        color="white" if share[i, j] > 0.55 else "black")
    ax.set_xticks(range(n_cols), col_labels, rotation=90 if n_cols > 12 else 0)
    ax.set_yticks(range(n_rows), [f"{lab} ({s})" for lab, s in zip(row_labels, sums[:, 0],
                                                                   strict=True)])
    # separate the extra row and column from the class block
    ax.axhline(n_rows - 1.5, color="black", lw=1)
    ax.axvline(n_cols - 1.5, color="black", lw=1)
    ax.set(xlabel="predicted class", ylabel="true class (row total)", title=title)
    ax.tick_params(labelsize=fontsize + 1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the row")
    return _save(fig, out_png)


def _blues(n: int) -> np.ndarray:
    """A white-to-blue ramp: white at 0 so empty cells disappear."""
    from matplotlib import colormaps

    ramp = colormaps["Blues"](np.linspace(0, 1, n))
    ramp[0] = (1, 1, 1, 1)
    return ramp


def plot_threshold_sweep(rows: Sequence[Mapping[str, float | None]], chosen: float | None,
                         out_png: Path) -> Path:
    """mAP, AP50 and sequence accuracy against the confidence threshold (threshold_sweep.csv
    rows, numbers parsed), the chosen threshold marked; below, the detections kept."""
    from matplotlib.ticker import MaxNLocator

    fig = _figure(7.5, 5.6)
    ax, ax_n = fig.subplots(2, 1, sharex=True, height_ratios=(3, 1.3))
    thr = [r["threshold"] for r in rows]
    # the sweep's mAP counts only the detections kept at the threshold, so it sits below the
    # COCO mAP of the run (all detections); the labels say so
    for key, label, style in (("mAP", "mAP@[.5:.95] of kept", "-"), ("AP50", "AP50 of kept", "--"),
                              ("accuracy", "sequence accuracy", "-")):
        pairs = [(r["threshold"], r[key]) for r in rows if _finite(r.get(key))]
        if pairs:
            ax.plot(*zip(*pairs, strict=True), style, lw=1.6, label=label)
    if any(_finite(r.get("num_detections")) for r in rows):
        ax_n.plot(thr, [r.get("num_detections") for r in rows], color="tab:gray")
    title = "Confidence threshold sweep"
    if chosen is not None:
        row = min(rows, key=lambda r: abs(r["threshold"] - chosen))
        for a in (ax, ax_n):
            a.axvline(chosen, color="black", lw=0.9, ls=":")
        # the chosen row's figures go in the title: a label inside the axes collides with
        # the legend or the curves somewhere
        parts = [f"{name} {row[key]:.3f}" for key, name in
                 (("accuracy", "seq acc"), ("mAP", "mAP of kept")) if _finite(row.get(key))]
        title += f"\n(dotted: chosen {chosen:.2f}" + "".join(f", {p}" for p in parts) + ")"
    ax.set(ylabel="score on the split", ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    ax_n.yaxis.set_major_locator(MaxNLocator(nbins=4, integer=True))
    ax_n.set_ylim(bottom=0, top=max(1.0, *(r.get("num_detections") or 0 for r in rows)) * 1.05)
    ax_n.set(xlabel="confidence threshold", ylabel="detections kept")
    ax_n.grid(alpha=0.3)
    return _save(fig, out_png)


def plot_class_distribution(class_names: Sequence[str], counts: Mapping[str, Sequence[int]],
                            out_png: Path) -> Path:
    """Each class's share of a split's boxes, one bar per split (``counts``: split name ->
    instances per class), so splits of very different sizes compare at a glance."""
    fig = _figure(min(13.0, max(6.5, 0.25 * len(class_names) * max(len(counts), 1) + 3)), 3.8)
    ax = fig.subplots()
    width = 0.8 / max(len(counts), 1)
    x = np.arange(len(class_names))
    for i, (split, values) in enumerate(counts.items()):
        values = np.asarray(values, dtype=float)
        total = values.sum()
        share = 100 * values / total if total else values
        ax.bar(x + (i - (len(counts) - 1) / 2) * width, share, width,
               label=f"{split} ({int(total)} boxes)")
    ax.set_xticks(x, class_names, rotation=90 if len(class_names) > 15 else 0)
    ax.set(xlabel="class", ylabel="share of the split's boxes (%)", title="Class distribution")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out_png)


@dataclass
class GridPanel:
    """One image of a detection grid: boxes xyxy in the image's pixels, each with its label."""

    image: Path
    title: str
    true_positives: list[tuple[Sequence[float], str]] = field(default_factory=list)
    false_positives: list[tuple[Sequence[float], str]] = field(default_factory=list)
    missed: list[tuple[Sequence[float], str]] = field(default_factory=list)


def plot_detection_grid(panels: Sequence[GridPanel], out_png: Path, *, title: str = "",
                        cols: int | None = None) -> Path:
    """A grid of images with true positives (green), false positives (red) and missed
    ground-truth boxes (orange, dashed) drawn by `draw_detections`, with a legend.

    True positives are labelled on top of their boxes, false positives and missed boxes under
    theirs, so the kinds do not overwrite each other; labels that would leave a tight crop go
    in a band added above or below it.
    """
    drawn = []
    for panel in panels:
        kinds = ((panel.true_positives, TP_COLOR, False, False),
                 (panel.false_positives, FP_COLOR, False, True),
                 (panel.missed, MISSED_COLOR, True, True))
        boxes = [(box, label, color, dashed, below) for items, color, dashed, below in kinds
                 for box, label in items]
        drawn.append(Panel(read_image(panel.image), [b[0] for b in boxes],
                           [b[1] for b in boxes], colors=[b[2] for b in boxes],
                           dashed=[b[3] for b in boxes], below=[b[4] for b in boxes],
                           title=panel.title))
    legend = [("true positive (class, score)", TP_COLOR, False),
              ("false positive (class, score; 'true X': the box is an X)", FP_COLOR, False),
              ("missed ground truth (its class)", MISSED_COLOR, True)]
    return draw_grid(drawn, out_png, cols=cols, title=title, legend=legend)
