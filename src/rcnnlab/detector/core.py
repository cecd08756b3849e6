"""`Detector`: a trained run in memory, loaded once; it predicts, evaluates, tunes and exports.

    from rcnnlab import Detector

    det = Detector.load("runs/demo")               # a run folder, a checkpoint or an export
    result = det.predict("house.png")[0]
    result.boxes, result.scores, result.class_ids, result.names   # xyxy pixels, per box
    result.number                                  # the digits left to right, or None
    result.plot().save("house_boxes.png")          # the image with its boxes drawn
    det.evaluate("test").metrics.AP                # COCO mAP on the run's test split
    sweep, _ = det.tune()                          # the best threshold, stored in the run
    det.export("onnx")                             # runs/demo/export/model.onnx + sidecar

The detections kept are those above `model.box_score_thresh` (what COCO mAP scores, as in
`pred.json`); the number is read, and `plot` draws, at the tuned threshold `det.threshold`.
Inference options (`eval.*`: Soft-NMS, TTA, proposals, autocast) are applied once, when the
detector is made, and hold for everything it does.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torchvision.transforms.v2 import functional as F

from rcnnlab.config import Config, check_threshold
from rcnnlab.data.categories import digit_names
from rcnnlab.data.coco import CocoData, load_coco, require_boxes
from rcnnlab.data.splits import load_splits
from rcnnlab.detector.inputs import images_of
from rcnnlab.detector.result import Result
from rcnnlab.errors import ConfigError, DatasetError, MissingFileError
from rcnnlab.evaluation.pipeline import (
    CocoMetricsEvaluator,
    EvalResult,
    Evaluation,
    Evaluator,
    SequenceAccuracy,
    ThresholdSweep,
    inference_on_dataset,
    score,
)
from rcnnlab.evaluation.sequence import read_number
from rcnnlab.evaluation.threshold import SweepResult
from rcnnlab.export import ExportedDetector, default_export_path, export_model, is_exported
from rcnnlab.inference.predictor import Predictor
from rcnnlab.inference.sources import SourceImage
from rcnnlab.runs.checkpoint import Checkpoint, detector_from_checkpoint, resolve_checkpoint
from rcnnlab.runs.device import resolve_device
from rcnnlab.runs.rundir import RunDir

log = logging.getLogger(__name__)


def with_inference_options(cfg: Config, overrides: Sequence[str]) -> Config:
    """`cfg` with the `eval.*` items `overrides` (``["eval.nms=gaussian"]``, the CLI's syntax)
    applied to its inference options: the one place a trained run's options change."""
    if not overrides:
        return cfg
    return cfg.model_copy(update={"eval": cfg.eval.with_overrides(list(overrides))})


class Detector:
    """A trained detector with its config, categories, tuned threshold and inference options.

    `model` is the eager torchvision detector, or an exported one (`rcnnlab.export`);
    `config` the run's config, whose `eval` section `overrides` change for this detector
    (`cfg` holds the result). `checkpoint` is the checkpoint the weights came from (None for
    an exported model), `path` what `load` was given."""

    def __init__(self, model: Any, config: Config, categories: list[dict], threshold: float,
                 device: torch.device, overrides: Sequence[str] = (), backend: str = "torch", *,
                 checkpoint: Checkpoint | None = None, path: str | Path | None = None):
        self.model, self.device, self.backend = model, device, backend
        self.overrides: list[str] = list(overrides)
        self._given = config  # before the overrides: `with_overrides` applies more on it
        self.cfg: Config = with_inference_options(config, self.overrides)
        self.categories: list[dict] = categories
        self.threshold: float = threshold
        self.checkpoint = checkpoint
        self.path = Path(path) if path is not None else None
        self.digits = digit_names(self.categories)
        self._names = {c["id"]: str(c["name"]) for c in self.categories}
        self._ids = torch.tensor([c["id"] for c in self.categories])
        e = self.cfg.eval
        if backend != "torch" and (e.nms != "nms" or e.nms_iou is not None
                                   or e.amp not in ("off", "auto")
                                   or e.tta_scales != [1.0] or e.tta_hflip
                                   or e.proposals is not None):
            raise ConfigError("an exported model runs its graph as exported: Soft-NMS, another "
                              "NMS IoU, TTA and eval.amp run on the PyTorch model only, and "
                              "eval.proposals is fixed at export (rcnnlab export RUN "
                              "eval.proposals=N). Fix: load the run folder, or leave the eval "
                              "options at their defaults")
        self.predictor = Predictor(model, e, digit_classes=self.digits is not None)
        self.weights: Path | None = None  # the file loaded (`load`), for `model_id`
        self.source = "in-memory"  # what `load` was given
        self._splits: dict[str, CocoData] = {}

    # ------------------------------------------------------------------------- making one
    @classmethod
    def load(cls, path: str | Path, *, device: str = "auto", overrides: Sequence[str] = (),
             backend: str = "auto") -> Detector:
        """A run folder (its best.pt), a checkpoint file, or an exported model with its
        sidecar json, run on the CPU by `backend`: a `.onnx` file by onnxruntime (auto) or
        openvino, a `.xml` (OpenVINO IR) by openvino, a `.torchscript` file by torchscript;
        `overrides` are `eval.*` inference options (``["eval.amp=bf16"]``; PyTorch models
        only)."""
        if is_exported(path):
            model = ExportedDetector(path, runtime=backend)
            det = cls(model, model.config, model.info["categories"], model.info["threshold"],
                      torch.device("cpu"), overrides, backend=model.runtime, path=path)
            det.weights, det.source = Path(path), Path(path).name
            return det
        if backend not in ("auto", "torch"):
            raise ConfigError(f"backend {backend!r} runs exported models (.onnx, .xml, "
                              ".torchscript): export the run first (rcnnlab export RUN), or use "
                              "backend torch")
        dev = resolve_device(device)  # a wrong name is told before anything is read
        checkpoint = Checkpoint.load(resolve_checkpoint(path))
        return cls.from_checkpoint(checkpoint, device=dev, overrides=overrides, path=path)

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint, *, device: str | torch.device = "auto",
                        overrides: Sequence[str] = (),
                        path: str | Path | None = None) -> Detector:
        """The detector of a checkpoint held in memory (training's best weights, say); `path`
        is its run folder or file, where `tune` stores the threshold."""
        dev = resolve_device(device)
        model = detector_from_checkpoint(checkpoint, dev)
        det = cls(model, checkpoint.config, checkpoint.categories, checkpoint.threshold, dev,
                  overrides, checkpoint=checkpoint,
                  path=path if path is not None else checkpoint.path)
        det.weights = checkpoint.path
        det.source = det.path.name if det.path is not None else "in-memory"
        return det

    def with_overrides(self, overrides: Sequence[str]) -> Detector:
        """This detector (the same model in memory) with more `eval.*` options, applied
        after its own."""
        det = Detector(self.model, self._given, self.categories, self.threshold, self.device,
                       [*self.overrides, *overrides], self.backend, checkpoint=self.checkpoint,
                       path=self.path)
        det.weights, det.source = self.weights, self.source
        return det

    # ------------------------------------------------------------------------- identity
    @functools.cached_property
    def model_id(self) -> str:
        """``<run or file name>@<first 12 hex digits of the weights file's SHA-256>`` (just
        "in-memory" for a detector not loaded from a file): which model made a result."""
        if self.weights is None or not self.weights.is_file():
            return self.source
        sha = hashlib.sha256()
        with self.weights.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                sha.update(chunk)
        return f"{self.source}@{sha.hexdigest()[:12]}"

    @property
    def config_digest(self) -> str:
        """The first 12 hex digits of the SHA-256 of the config (eval options included)."""
        config = json.dumps(self.cfg.model_dump(mode="json"), sort_keys=True)
        return hashlib.sha256(config.encode()).hexdigest()[:12]

    @property
    def names(self) -> list[str]:
        """Class names in category-id order."""
        return [str(c["name"]) for c in self.categories]

    @property
    def folder(self) -> RunDir | None:
        """The run folder, when a folder (not a file) was loaded."""
        return RunDir(self.path) if self.path is not None and self.path.is_dir() else None

    # ------------------------------------------------------------------------- predicting
    def predict(self, source: Any, *, threshold: float | None = None, bgr: bool = False,
                batch_size: int | None = None, keep_images: bool = True) -> list[Result]:
        """Detect on `source`: a path (image, folder, glob, video), a PIL image, a numpy array
        (HWC, RGB; `bgr=True` for OpenCV's BGR), a tensor (CHW or NCHW, uint8 or float in
        [0, 1]), or a list of these. One `Result` per image; `threshold` replaces the tuned one
        for `number` and `plot`."""
        return list(self.stream(source, threshold=threshold, bgr=bgr, batch_size=batch_size,
                                keep_images=keep_images))

    __call__ = predict

    def stream(self, source: Any, *, threshold: float | None = None, bgr: bool = False,
               batch_size: int | None = None, keep_images: bool = True) -> Iterator[Result]:
        """`predict`, one result at a time (a long video need not fit in memory)."""
        return self.detect_images(
            images_of(source, bgr=bgr, max_pixels=self.cfg.data.max_image_pixels),
            threshold=threshold, batch_size=batch_size, keep_images=keep_images)

    def detect_images(self, images: Iterable[SourceImage], *, threshold: float | None = None,
                      batch_size: int | None = None,
                      keep_images: bool = True) -> Iterator[Result]:
        """Results of images already read (`inference.sources.SourceImage`), in batches."""
        threshold = self.threshold if check_threshold(threshold) is None else threshold
        batch: list[SourceImage] = []
        for item in images:
            batch.append(item)
            if len(batch) == (batch_size or self.cfg.eval.batch_size):
                yield from self.detect_batch(batch, [threshold] * len(batch),
                                             keep_images=keep_images)
                batch = []
        if batch:
            yield from self.detect_batch(batch, [threshold] * len(batch),
                                         keep_images=keep_images)

    @torch.inference_mode()
    def detect_batch(self, batch: Sequence[SourceImage], thresholds: Sequence[float], *,
                     keep_images: bool = False) -> list[Result]:
        """One model call on `batch`, each image's number read at its own threshold (a
        server batches requests that ask for different ones)."""
        outputs = self.predictor([item.image.to(self.device) for item in batch])
        results = []
        for item, out, threshold in zip(batch, outputs, thresholds, strict=True):
            boxes, scores = out["boxes"].float().cpu(), out["scores"].float().cpu()
            class_ids = self._ids[out["labels"].cpu() - 1]
            number = (read_number(boxes, class_ids, scores, self.digits, threshold,
                                  self.cfg.eval.read_iou)
                      if self.digits is not None else None)
            image = F.to_dtype(item.image, torch.uint8, scale=True) if keep_images else None
            results.append(Result(boxes, scores, class_ids,
                                  [self._names[int(c)] for c in class_ids], number, threshold,
                                  item.name, item.image_id, image))
        return results

    # ------------------------------------------------------------------------- annotated splits
    def split(self, split: str = "test", json_path: str | Path | None = None,
              images: str | Path | None = None) -> CocoData:
        """An annotated split with this detector's categories: `json_path` (images under
        `images`) when given, else the run config's split `split` (read once)."""
        if json_path is not None:
            data = load_coco(json_path, images,
                             skip_missing_images=self.cfg.data.skip_missing_images,
                             max_image_pixels=self.cfg.data.max_image_pixels, split=split)
        else:
            splits = self.config_splits((split,))
            if split not in splits:
                raise MissingFileError(f"the run's config has no {split} split "
                                       f"(data.{split}_json). Fix: pass --data PATH.json")
            data = splits[split]
        ours = [(c["id"], c["name"]) for c in self.categories]
        theirs = [(c["id"], c["name"]) for c in data.categories]
        if theirs != ours:
            raise DatasetError(f"{data.json_path}: categories {theirs} differ from the "
                               f"model's {ours}. Fix: evaluate on data with the training "
                               "categories")
        return data

    def config_splits(self, names: Sequence[str]) -> dict[str, CocoData]:
        """The run config's splits among `names` (those it has), each read once."""
        missing = [n for n in names if n not in self._splits]
        if missing:
            self._splits.update(load_splits(self.cfg.data, need=tuple(missing)))
        return {n: self._splits[n] for n in names if n in self._splits}

    def run(self, data: CocoData, evaluators: Sequence[Evaluator], *,
            description: str = "detecting") -> Evaluation:
        """Detect every image of `data` once and score them with `evaluators` (the
        evaluation pipeline, `rcnnlab.evaluation.pipeline`)."""
        require_boxes(data, "evaluated")
        return inference_on_dataset(self.predictor, data, evaluators, device=self.device,
                                    batch_size=self.cfg.eval.batch_size,
                                    description=description)

    def evaluate(self, split: str = "test", *, data: CocoData | None = None,
                 json_path: str | Path | None = None, images: str | Path | None = None,
                 threshold: float | None = None) -> EvalResult:
        """COCO metrics and the sequence accuracy (at `threshold`, default the tuned one) on
        a split: `data` when given, else `json_path`, else the run config's split `split`."""
        return self.scores(split, data if data is not None else
                           self.split(split, json_path, images), threshold)[0]

    def scores(self, name: str, data: CocoData, threshold: float | None = None,
               extra: Sequence[Evaluator] = ()) -> tuple[EvalResult, Evaluation]:
        """`evaluate` on `data` (named `name`) with `extra` evaluators beside COCO's and the
        sequence accuracy; the scores and the whole evaluation (the extras' results)."""
        threshold = self.threshold if check_threshold(threshold) is None else threshold
        evaluation = self.run(data, [CocoMetricsEvaluator(self.cfg.eval.backend),
                                     SequenceAccuracy(threshold, self.cfg.eval.read_iou),
                                     *extra], description=f"detecting {name}")
        return EvalResult.of(name, evaluation, threshold, self.cfg.eval.inference_kwargs()), \
            evaluation

    # ------------------------------------------------------------------------- the threshold
    def sweep(self, split: str = "valid", *, data: CocoData | None = None,
              json_path: str | Path | None = None, images: str | Path | None = None,
              detections: list[dict] | None = None) -> tuple[SweepResult, EvalResult]:
        """Sweep the confidence threshold (`eval.sweep_*`) on a split (as `evaluate` finds
        it), storing nothing: the sweep and the split's scores at its best threshold. Give
        `detections` (this detector's, on `data`) to score them instead of detecting."""
        data = data if data is not None else self.split(split, json_path, images)
        e = self.cfg.eval
        evaluators = [ThresholdSweep(e.sweep_thresholds(), e.backend, e.read_iou),
                      CocoMetricsEvaluator(e.backend)]
        evaluation = (self.run(data, evaluators, description="sweeping thresholds")
                      if detections is None else score(data, detections, evaluators))
        result: SweepResult = evaluation["sweep"]
        if warning := result.edge_warning():
            log.warning("%s: %s", self.path or self.source, warning)
        return result, EvalResult(split, evaluation["coco"], result.best,
                                  result.best_row.accuracy, data, evaluation.detections,
                                  e.inference_kwargs())

    def tune(self, split: str = "valid", *, data: CocoData | None = None,
             json_path: str | Path | None = None, images: str | Path | None = None,
             detections: list[dict] | None = None) -> tuple[SweepResult, EvalResult]:
        """`sweep`, then store the best threshold: it becomes this detector's, and is written
        into its checkpoint (with its run's best.pt and last.pt) and the sweep table into the
        run folder (`threshold_sweep.csv`), so that `predict` and `evaluate` use it."""
        if self.checkpoint is None or self.checkpoint.path is None:
            raise ConfigError(f"{self.source}: the threshold is stored in the run's "
                              "checkpoints. Fix: tune the run folder (or its .pt file), then "
                              "export it again")
        result, scores = self.sweep(split, data=data, json_path=json_path, images=images,
                                    detections=detections)
        path = self.checkpoint.path
        for file in {path, path.with_name("best.pt"), path.with_name("last.pt")}:
            if file == path:
                ckpt = self.checkpoint
            elif file.is_file():
                ckpt = Checkpoint.load(file)
            else:
                continue
            ckpt.threshold = result.best
            ckpt.save(file)
        self.threshold = result.best
        if self.folder is not None:
            result.to_csv(self.folder.threshold_sweep_csv)
        if self.overrides:
            log.info("threshold %.2f tuned with %s: pass the same overrides to evaluate and "
                     "predict", result.best, " ".join(self.overrides))
        return result, scores

    # ------------------------------------------------------------------------- exporting
    def export(self, format: str = "onnx", out: str | Path | None = None) -> Path:
        """Write this model as `format` (onnx, torchscript, openvino) with its sidecar json;
        the model file's path (default: `<run>/export/model.<suffix>`). Of the inference
        options only `eval.proposals` is held by the exported graph."""
        if self.checkpoint is None:
            raise ConfigError(f"{self.source}: is exported already. Fix: export the run "
                              "folder or its checkpoint")
        if self.path is None and out is None:
            raise ConfigError("an in-memory detector has no run folder: give `out`")
        ours, own = self.cfg.eval.inference_kwargs(), self.checkpoint.config.eval.inference_kwargs()
        if {k: v for k, v in ours.items() if k != "proposals"} != {
                k: v for k, v in own.items() if k != "proposals"}:
            raise ConfigError(f"overrides {self.overrides}: only eval.proposals is held by an "
                              "exported graph (Soft-NMS, TTA and eval.amp run on the PyTorch "
                              "model)")
        target = Path(out) if out else default_export_path(self.path, format)
        moved = self.device.type != "cpu"  # the graph is traced on the CPU
        if moved:
            self.model.to("cpu")
        try:
            return export_model(self.model, self.checkpoint, target, format=format,
                                proposals=self.cfg.eval.proposals)
        finally:
            if moved:
                self.model.to(self.device)
