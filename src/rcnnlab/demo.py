"""`rcnnlab demo`: the main job end to end on the embedded default data.

Generate house numbers (once) -> train the CPU default model -> tune the threshold on valid ->
evaluate on test -> write pred.json / pred.csv, the run record and a short summary with two
figures. The trained model is loaded once, and valid and test are each detected once.
"""

from __future__ import annotations

import time
from collections import defaultdict

from rcnnlab import api
from rcnnlab.config import Config
from rcnnlab.data.categories import digit_names
from rcnnlab.evaluation.sequence import numbers_from_coco, numbers_from_detections
from rcnnlab.reporting.predictions import write_predictions
from rcnnlab.reporting.summary import plot_curves, plot_detections, write_summary
from rcnnlab.runs.environment import machine_description
from rcnnlab.runs.rundir import RunDir


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def run_demo(cfg: Config, *, reporter=None, n_samples: int = 12) -> dict:
    """Run the whole job for `cfg`; returns the headline figures (also written to summary.md)."""
    start = time.perf_counter()
    # the record is written once, below, after tuning and testing (not also after training)
    train_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"record": False})})
    # the demo is deterministic: run again, it starts its folder over and gives the same figures
    fit = api.train(train_cfg, exist_ok=True, reporter=reporter)
    run_dir = fit.run_dir
    loaded = api.load_run(run_dir, device=cfg.train.device)
    valid = loaded.split("valid")
    # the sweep reads the detections training's validation made with these weights
    detections = fit.validation.detections if fit.validation is not None else None
    _, valid_result = api.tune_loaded(loaded, valid, detections)  # stores the best threshold
    test, _ = loaded.evaluate("test", loaded.split("test"), loaded.threshold())
    RunDir(run_dir).write_eval("test", test.as_dict())
    if cfg.train.record:  # after tuning, with both splits evaluated just above
        api.report_loaded(loaded, evaluated={"valid": valid_result, "test": test})
    data = test.data
    names = {c["id"]: c["name"] for c in data.categories}
    digits = digit_names(data.categories)
    # The test detections are what `rcnnlab predict` would write for the test json.
    preds = write_predictions(run_dir, test.detections, [img["id"] for img in data.images],
                              digits, test.threshold, cfg.eval.read_iou)
    by_image: dict[int, list[dict]] = defaultdict(list)
    for det in test.detections:
        by_image[det["image_id"]].append(det)
    shown = data.images[:n_samples]
    ids = [img["id"] for img in shown]
    gt = data.to_coco_dict()
    figures = [
        plot_curves(RunDir(run_dir).read_metrics(), run_dir / "curves.png"),
        plot_detections(
            [data.image_root / img["file_name"] for img in shown], by_image, ids, names,
            test.threshold, run_dir / "samples.png",
            numbers=numbers_from_detections(test.detections, digits, test.threshold, ids,
                                            cfg.eval.read_iou)
            if digits else None,
            truth=numbers_from_coco(gt, digits) if digits else None),
    ]
    m = test.metrics
    figures_out = {
        "test mAP@[.5:.95]": _fmt(m.AP), "test AP50": _fmt(m.AP50), "test AP75": _fmt(m.AP75),
        "test APs / APm / APl": " / ".join(_fmt(v) for v in (m.APs, m.APm, m.APl)),
        "test sequence accuracy": _fmt(test.seq_acc),
        "threshold (tuned on valid)": f"{test.threshold:.2f}",
        "best val mAP (epoch)": f"{fit.best_map:.4f} ({fit.best_epoch})",
        "model": cfg.model.arch + (" + residual FPN" if cfg.model.residual_fpn else ""),
        "train images / epochs / iterations": f"{fit.train_images} / {fit.epochs} / "
                                              f"{fit.iterations}",
        "train speed": f"{fit.train_images_per_s:.2f} img/s",
        "train time": f"{fit.train_seconds / 60:.1f} min",
        "peak memory": f"{fit.peak_memory_mb:.0f} MB",
        "machine": machine_description(),
        "demo wall time": f"{(time.perf_counter() - start) / 60:.1f} min",
        "outputs": f"{preds['json'].name}, {preds['csv'].name}" if "csv" in preds
                   else preds["json"].name,
    }
    write_summary(run_dir / "summary.md", f"rcnnlab demo — {cfg.name}", figures_out, figures)
    return figures_out
