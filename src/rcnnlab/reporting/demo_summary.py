"""The demo's summary: its headline figures (summary.md) with the learning curves and test
detections drawn beside them."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

from rcnnlab.config import Config
from rcnnlab.data.categories import digit_names
from rcnnlab.evaluation.coco import format_score
from rcnnlab.evaluation.pipeline import EvalResult
from rcnnlab.evaluation.sequence import numbers_from_coco, numbers_from_detections
from rcnnlab.reporting.summary import plot_curves, plot_detections, write_summary
from rcnnlab.runs.environment import machine_description
from rcnnlab.runs.rundir import RunDir


def write_demo_summary(cfg: Config, fit: Any, test: EvalResult, outputs: dict[str, Path], *,
                       wall_seconds: float, n_samples: int = 12) -> dict[str, str]:
    """Write `summary.md`, `curves.png` and `samples.png` (the first `n_samples` test images
    with their detections) into the run folder of `fit` (the training's `FitResult`); the
    headline figures, as written."""
    run = RunDir(fit.run_dir)
    data = test.data
    digits = digit_names(data.categories)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for det in test.detections:
        by_image[det["image_id"]].append(det)
    shown = data.images[:n_samples]
    ids = [img["id"] for img in shown]
    figures = [
        plot_curves(run.read_metrics(), run.root / "curves.png"),
        plot_detections(
            [data.image_root / img["file_name"] for img in shown], by_image, ids,
            {c["id"]: c["name"] for c in data.categories}, test.threshold,
            run.root / "samples.png",
            numbers=numbers_from_detections(test.detections, digits, test.threshold, ids,
                                            cfg.eval.read_iou) if digits else None,
            truth=numbers_from_coco(data.to_coco_dict(), digits) if digits else None),
    ]
    m = test.metrics
    facts = {
        "test mAP@[.5:.95]": format_score(m.AP), "test AP50": format_score(m.AP50),
        "test AP75": format_score(m.AP75),
        "test APs / APm / APl": " / ".join(format_score(v) for v in (m.APs, m.APm, m.APl)),
        "test sequence accuracy": format_score(test.seq_acc),
        "threshold (tuned on valid)": f"{test.threshold:.2f}",
        "best val mAP (epoch)": f"{fit.best_map:.4f} ({fit.best_epoch})",
        "model": cfg.model.arch + (" + residual FPN" if cfg.model.residual_fpn else ""),
        "train images / epochs / iterations": f"{fit.train_images} / {fit.epochs} / "
                                              f"{fit.iterations}",
        "train speed": f"{fit.train_images_per_s:.2f} img/s",
        "train time": f"{fit.train_seconds / 60:.1f} min",
        "peak memory": f"{fit.peak_memory_mb:.0f} MB",
        "machine": machine_description(),
        "demo wall time": f"{wall_seconds / 60:.1f} min",
        "outputs": ", ".join(path.name for path in outputs.values()),
    }
    write_summary(run.root / "summary.md", f"rcnnlab demo — {cfg.name}", facts, figures)
    return facts
