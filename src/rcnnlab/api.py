"""The user-level operations behind the CLI, callable from Python: train, tune, evaluate, predict.

Each takes a run folder (or a checkpoint) and plain arguments, and writes its outputs into the run
folder or the folder it is given. `evaluate`, `tune` and `predict` use the run's saved config;
their `overrides` (dotted `eval.*` items such as ``"eval.nms=gaussian"``, the CLI's syntax) change
its inference options for that call only.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from rcnnlab.config import Config, config_from_dict
from rcnnlab.data.coco import CocoData, CocoDetection, load_coco
from rcnnlab.data.splits import load_splits
from rcnnlab.data.transforms import to_model_input
from rcnnlab.engine.checkpoint import load_checkpoint, load_detector, save_checkpoint
from rcnnlab.engine.trainer import FitResult, Trainer, resolve_device
from rcnnlab.evaluation.coco import CocoMetrics, evaluate_detections
from rcnnlab.evaluation.sequence import (
    digit_names,
    numbers_from_coco,
    numbers_from_detections,
    sequence_accuracy,
)
from rcnnlab.evaluation.threshold import SweepResult, sweep_thresholds
from rcnnlab.inference.predict import (
    ImageFiles,
    detect_dataset,
    image_ids_for,
    list_images,
    write_id_map,
    write_predictions,
)

log = logging.getLogger(__name__)


def train(cfg: Config, *, resume: bool = False, reporter=None) -> FitResult:
    """Train the run described by `cfg` (continuing from its last.pt when `resume`)."""
    return Trainer(cfg, reporter=reporter).fit(resume=resume)


@dataclass
class EvalResult:
    """Scores of a detector on one annotated split."""

    split: str
    metrics: CocoMetrics
    threshold: float
    seq_acc: float | None
    data: CocoData = field(repr=False)  # the split evaluated (ground truth and image root)
    detections: list[dict] = field(repr=False, default_factory=list)
    inference: dict = field(default_factory=dict)  # the inference options used (NMS, TTA)

    @property
    def n_images(self) -> int:
        """Images in the split."""
        return len(self.data.images)

    def as_dict(self) -> dict:
        """Flat, JSON-ready form."""
        out = {"split": self.split, "n_images": self.n_images, "threshold": self.threshold,
               "seq_acc": self.seq_acc}
        out.update(self.metrics.as_dict())
        out["inference"] = self.inference
        return out


def _run_config(ckpt: dict, overrides: list[str] | None = None) -> Config:
    """The run's saved config with `eval.*` overrides applied (anything else is an error)."""
    cfg = config_from_dict(ckpt["config"])
    if overrides:
        cfg.eval = cfg.eval.with_overrides(overrides)
    return cfg


def _split_data(cfg: Config, split: str, json_path: str | None, images: str | None) -> CocoData:
    if json_path is not None:
        return load_coco(json_path, images, skip_missing_images=cfg.data.skip_missing_images)
    splits = load_splits(cfg.data, need=(split,))  # loads train only to hold valid out of it
    if split not in splits:
        raise FileNotFoundError(f"the run's config has no {split} split (data.{split}_json). "
                                "Fix: pass --data PATH.json")
    return splits[split]


def _detect(model, dataset, cfg: Config, device, categories, batch_size=None) -> list[dict]:
    """Detections of a dataset with the config's inference options (NMS, Soft-NMS, TTA)."""
    return detect_dataset(model, dataset, [c["id"] for c in categories], device=device,
                          batch_size=batch_size or cfg.eval.batch_size,
                          digit_classes=digit_names(categories) is not None,
                          **cfg.eval.inference_kwargs())


def evaluate(run: str | Path, *, split: str = "test", json_path: str | None = None,
             images: str | None = None, threshold: float | None = None,
             device: str = "auto", overrides: list[str] | None = None,
             save: bool = True) -> EvalResult:
    """COCO metrics and sequence accuracy of a run's best checkpoint on one split.

    The threshold for sequences defaults to the one `tune` stored in the checkpoint.
    `overrides` are `eval.*` items (``["eval.tta_scales=[1,1.5]"]``) for this call only.
    Writes `eval_<split>.json` (with the inference options used) into the run folder when `run`
    is a run folder and `save` is true.
    """
    dev = resolve_device(device)
    model, ckpt = load_detector(run, device=dev)
    cfg = _run_config(ckpt, overrides)
    data = _split_data(cfg, split, json_path, images)
    _check_categories(ckpt, data)
    dets = _detect(model, CocoDetection(data, transforms=to_model_input()), cfg, dev,
                   ckpt["categories"])
    gt = data.to_coco_dict()
    metrics = evaluate_detections(gt, dets, backend=cfg.eval.backend)
    thr = threshold if threshold is not None else ckpt.get("threshold", cfg.eval.default_threshold)
    digits = digit_names(ckpt["categories"])
    acc = None
    if digits is not None:
        acc = sequence_accuracy(numbers_from_coco(gt, digits), numbers_from_detections(
            dets, digits, thr, [img["id"] for img in data.images]))
    result = EvalResult(split, metrics, thr, acc, data, dets, cfg.eval.inference_kwargs())
    if save and Path(run).is_dir():
        (Path(run) / f"eval_{split}.json").write_text(json.dumps(result.as_dict(), indent=2))
    return result


def tune(run: str | Path, *, json_path: str | None = None, images: str | None = None,
         device: str = "auto", overrides: list[str] | None = None,
         save: bool = True) -> SweepResult:
    """Sweep the confidence threshold on the validation split and store the best one.

    The best threshold (highest sequence accuracy, ties to higher mAP) is written into the run's
    best.pt and last.pt so that `predict` and `evaluate` use it by default; the sweep table is
    written to `threshold_sweep.csv`. `overrides` are `eval.*` items for this call only (the
    sweep range, or the inference options: Soft-NMS and TTA change the scores, so pass the
    same ones to `evaluate` and `predict`; they are not stored). With `save=False` nothing is
    written: the sweep is only returned.
    """
    dev = resolve_device(device)
    model, ckpt = load_detector(run, device=dev)
    cfg = _run_config(ckpt, overrides)
    data = _split_data(cfg, "valid", json_path, images)
    _check_categories(ckpt, data)
    dets = _detect(model, CocoDetection(data, transforms=to_model_input()), cfg, dev,
                   ckpt["categories"])
    e = cfg.eval
    n = int(round((e.sweep_max - e.sweep_min) / e.sweep_step)) + 1
    thresholds = [round(e.sweep_min + i * e.sweep_step, 4) for i in range(n)]
    result = sweep_thresholds(data.to_coco_dict(), dets, thresholds, backend=e.backend)
    best = result.best
    if warning := result.edge_warning():
        log.warning("%s: %s", run, warning)
    if not save:  # a what-if sweep (e.g. an ablation of inference options): nothing stored
        return result
    ckpt_path = Path(ckpt["path"])
    for path in {ckpt_path, ckpt_path.with_name("best.pt"), ckpt_path.with_name("last.pt")}:
        if path.is_file():
            state = load_checkpoint(path)
            state["threshold"] = best
            save_checkpoint(path, state)
    if Path(run).is_dir():
        result.to_csv(Path(run) / "threshold_sweep.csv")
    if overrides:
        log.info("threshold %.2f tuned with %s: pass the same overrides to evaluate and predict",
                 best, " ".join(overrides))
    return result


def predict(run: str | Path, source: str | Path, out_dir: str | Path, *,
            images: str | None = None, threshold: float | None = None,
            batch_size: int | None = None, device: str = "auto",
            overrides: list[str] | None = None) -> dict[str, Path]:
    """Detect on a folder of images or a COCO json; write pred.json and pred.csv into `out_dir`.

    Image ids come from the json, else from numeric file stems, else they are enumerated and
    the mapping is written to `image_ids.csv` beside the outputs. `overrides` are `eval.*`
    items (inference options) for this call only.
    """
    dev = resolve_device(device)
    model, ckpt = load_detector(run, device=dev)
    cfg = _run_config(ckpt, overrides)
    source, out_dir = Path(source), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: dict[str, Path] = {}
    if source.is_file():
        data = load_coco(source, images, skip_missing_images=cfg.data.skip_missing_images)
        dataset = CocoDetection(data, transforms=to_model_input())
        image_ids = [img["id"] for img in data.images]
    else:
        files = list_images(source)
        image_ids, enumerated = image_ids_for(files)
        dataset = ImageFiles(files, image_ids)
        if enumerated:
            paths["ids"] = write_id_map(out_dir, files, image_ids)
            log.info("file names are not numeric: image ids 1..%d, mapping in %s",
                     len(files), paths["ids"])
    dets = _detect(model, dataset, cfg, dev, ckpt["categories"], batch_size)
    thr = threshold if threshold is not None else ckpt.get("threshold", cfg.eval.default_threshold)
    paths.update(write_predictions(out_dir, dets, image_ids, digit_names(ckpt["categories"]), thr))
    return paths


def _check_categories(ckpt: dict, data: CocoData) -> None:
    theirs = [(c["id"], c["name"]) for c in data.categories]
    ours = [(c["id"], c["name"]) for c in ckpt["categories"]]
    if theirs != ours:
        raise ValueError(f"{data.json_path}: categories {theirs} differ from the checkpoint's "
                         f"{ours}. Fix: evaluate on data with the training categories")

