"""A short run summary: Markdown with the headline figures, the training curves and sample
detections as PNG files (bare matplotlib Figures, headless; detections drawn by `drawing`)."""

from __future__ import annotations

import math
from pathlib import Path

from rcnnlab.data.images import read_image
from rcnnlab.evaluation.sequence import NO_NUMBER
from rcnnlab.files import replacing, write_atomic
from rcnnlab.reporting.drawing import Panel, draw_grid


def plot_curves(rows: list[dict], out_png: Path) -> Path:
    """Loss (total and the cls / bbox / anchor groups) and validation mAP against epoch, from
    metrics.csv's rows (`RunDir.read_metrics`)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    epochs = [r["epoch"] for r in rows]
    fig = Figure(figsize=(10, 3.8), layout="tight")
    ax_loss, ax_map = fig.subplots(1, 2)
    for key, style in (("loss", "-"), ("loss_cls", "--"), ("loss_bbox", "--"),
                       ("loss_anchor", ":")):
        ax_loss.plot(epochs, [r[key] for r in rows], style, marker="o", ms=3, label=key)
    ax_loss.set(xlabel="epoch", ylabel="training loss (epoch mean)", title="Loss")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    val = [(r["epoch"], r.get("val_AP"), r.get("val_AP50")) for r in rows
           if r.get("val_AP") is not None and not math.isnan(r["val_AP"])]
    if val:
        ax_map.plot([v[0] for v in val], [v[1] for v in val], marker="o", label="mAP@[.5:.95]")
        ax_map.plot([v[0] for v in val], [v[2] for v in val], marker="s", label="AP50")
    ax_map.set(xlabel="epoch", ylabel="validation", title="Validation mAP", ylim=(0, 1))
    ax_map.grid(alpha=0.3)
    ax_map.legend(fontsize=8)
    for ax in (ax_loss, ax_map):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    out_png = Path(out_png)
    with replacing(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    return out_png


def plot_detections(
    image_paths: list[Path],
    detections: dict[int, list[dict]],
    image_ids: list[int],
    names: dict[int, str],
    threshold: float,
    out_png: Path,
    numbers: dict[int, str] | None = None,
    truth: dict[int, str] | None = None,
    cols: int = 4,
) -> Path:
    """A grid of images with their detections (COCO results) at or above `threshold` drawn and
    labelled; with `numbers`, the number read is in each image's banner, and with `truth` the
    true number (and whether they agree) is its title."""
    panels = []
    for path, image_id in zip(image_paths, image_ids, strict=False):
        kept = [d for d in detections.get(image_id, []) if d["score"] >= threshold]
        title = ""
        if numbers is not None and truth is not None:
            ok = numbers.get(image_id) == truth.get(image_id)
            title = f"true {truth.get(image_id)}" + (" ✓" if ok else " ✗")
        panels.append(Panel(
            read_image(path), [(x, y, x + w, y + h) for x, y, w, h in (d["bbox"] for d in kept)],
            [f"{names[d['category_id']]} {d['score']:.2f}" for d in kept],
            number=None if numbers is None else numbers.get(image_id, NO_NUMBER), title=title))
    return draw_grid(panels, out_png, cols=cols,
                     title=f"detections scoring at least {threshold:.2f}")


def write_summary(path: Path, title: str, facts: dict[str, str], figures: list[Path]) -> Path:
    """A Markdown page: a table of facts and the figures (linked relative to the page)."""
    lines = [f"# {title}", "", "| | |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in facts.items()]
    lines.append("")
    for fig in figures:
        lines.append(f"![{fig.stem}]({fig.relative_to(path.parent).as_posix()})")
        lines.append("")
    write_atomic(path, "\n".join(lines))
    return path
