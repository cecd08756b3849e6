"""A short run summary: Markdown with the headline figures, the training curves and sample
detections as PNG files (matplotlib, headless)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402

from rcnnlab.data.images import read_image  # noqa: E402
from rcnnlab.files import replacing, write_atomic  # noqa: E402


def plot_curves(rows: list[dict], out_png: Path) -> Path:
    """Loss (total and the cls / bbox / anchor groups) and validation mAP against epoch, from
    metrics.csv's rows (`RunDir.read_metrics`)."""
    epochs = [r["epoch"] for r in rows]
    fig, (ax_loss, ax_map) = plt.subplots(1, 2, figsize=(10, 3.8))
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
    fig.tight_layout()
    with replacing(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
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
    """A grid of images with their detections at or above `threshold` drawn and labelled."""
    n = len(image_paths)
    rows = max(1, math.ceil(n / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 1.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, path, image_id in zip(axes.flat, image_paths, image_ids, strict=False):
        ax.imshow(read_image(path).permute(1, 2, 0).numpy())
        for det in detections.get(image_id, []):
            if det["score"] < threshold:
                continue
            x, y, w, h = det["bbox"]
            ax.add_patch(plt.Rectangle((x, y), w, h, fill=False, color="lime", lw=1.2))
            ax.text(x, y - 1, f"{names[det['category_id']]} {det['score']:.2f}", color="yellow",
                    fontsize=6, va="bottom", bbox={"facecolor": "black", "alpha": 0.5, "pad": 0.5})
        if numbers is not None:
            title = f"read {numbers.get(image_id, '-1')}"
            if truth is not None:
                ok = numbers.get(image_id) == truth.get(image_id)
                title += f" / true {truth.get(image_id)}" + (" ✓" if ok else " ✗")
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    with replacing(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    return out_png


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
