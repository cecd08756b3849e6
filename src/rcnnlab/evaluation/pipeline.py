"""One evaluation pipeline: run a detector over a split once, feed several evaluators.

As detectron2's ``inference_on_dataset(model, loader, DatasetEvaluators([...]))``:
:func:`inference_on_dataset` detects every image of a COCO split once (with the run's
inference options: NMS, Soft-NMS, TTA) and hands the detections to each evaluator; evaluators
that need more than the detections (the RPN's proposals) also see each batch as it passes.
Validation during training, ``evaluate``, ``tune``, ``report``, ``diagnose`` and the demo all
go through it. Under torchrun the ranks share the detection (`inference.detect`); rank 0 scores
and every rank gets the scores.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rcnnlab.config import EvalConfig
from rcnnlab.data.categories import digit_names
from rcnnlab.data.coco import CocoData, CocoDetection
from rcnnlab.data.transforms import to_model_input
from rcnnlab.errors import ConfigError
from rcnnlab.evaluation.coco import CocoMetrics, evaluate_detections
from rcnnlab.evaluation.diagnosis import RPNRecall, RPNRecallCounter
from rcnnlab.evaluation.errors import TideAnalysis
from rcnnlab.evaluation.sequence import (
    numbers_from_coco,
    numbers_from_detections,
    sequence_accuracy,
)
from rcnnlab.evaluation.threshold import SweepResult, sweep_thresholds
from rcnnlab.inference.detect import detect_dataset
from rcnnlab.inference.predictor import Predictor
from rcnnlab.runs.distributed import broadcast_object, world


class Evaluator:
    """Scores one aspect of a split's detections; `name` keys its result."""

    name = ""

    def process(self, images: list[torch.Tensor], targets: list[dict],
                outputs: list[dict]) -> None:
        """See one batch as it passes (images on the device, targets, the predictor's output)."""

    def evaluate(self, gt: dict[str, Any], detections: list[dict]) -> Any:
        """The result, from the split's ground truth (COCO dict) and all its detections."""
        raise NotImplementedError


class CocoMetricsEvaluator(Evaluator):
    """COCO box metrics (`rcnnlab.evaluation.coco`)."""

    name = "coco"

    def __init__(self, backend: str = "faster"):
        self.backend = backend

    def evaluate(self, gt: dict[str, Any], detections: list[dict]) -> CocoMetrics:
        """The 12 COCO stats, AP per IoU and per class."""
        return evaluate_detections(gt, detections, backend=self.backend)


class SequenceAccuracy(Evaluator):
    """Whole-number accuracy at a score threshold; None on data whose classes are no digits."""

    name = "seq_acc"

    def __init__(self, threshold: float, read_iou: float | None = None):
        self.threshold, self.read_iou = threshold, read_iou

    def evaluate(self, gt: dict[str, Any], detections: list[dict]) -> float | None:
        """The share of images whose number is read exactly."""
        digits = digit_names(gt["categories"])
        if digits is None:
            return None
        return sequence_accuracy(numbers_from_coco(gt, digits), numbers_from_detections(
            detections, digits, self.threshold, [img["id"] for img in gt["images"]],
            self.read_iou))


class ThresholdSweep(Evaluator):
    """mAP, AP50 and sequence accuracy of the detections kept at each score threshold."""

    name = "sweep"

    def __init__(self, thresholds: Sequence[float], backend: str = "faster",
                 read_iou: float | None = None):
        self.thresholds, self.backend, self.read_iou = list(thresholds), backend, read_iou

    def evaluate(self, gt: dict[str, Any], detections: list[dict]) -> SweepResult:
        """The sweep table and its best threshold."""
        return sweep_thresholds(gt, detections, self.thresholds, backend=self.backend,
                                read_iou=self.read_iou)


class TideErrors(Evaluator):
    """The TIDE error breakdown (`rcnnlab.evaluation.errors`)."""

    name = "tide"

    def evaluate(self, gt: dict[str, Any], detections: list[dict]) -> TideAnalysis:
        """The matched analysis; `.breakdown()` gives the ΔAP per error type."""
        return TideAnalysis(gt, detections)


class RPNRecallEvaluator(Evaluator):
    """How many ground-truth boxes the RPN's proposals cover (from each batch as it passes)."""

    name = "rpn"

    def __init__(self, model: torch.nn.Module, iou_thresholds: Sequence[float] = (0.5, 0.7)):
        self.counter = RPNRecallCounter(model, iou_thresholds)

    def process(self, images, targets, outputs) -> None:
        """Run the RPN on the batch."""
        self.counter.add(images, targets)

    def evaluate(self, gt: dict[str, Any], detections: list[dict]) -> RPNRecall:
        """Recall at each IoU threshold, by size, and the proposal counts."""
        return self.counter.result()


@dataclass
class Evaluation:
    """A detector's detections on one split and what each evaluator made of them."""

    data: CocoData = field(repr=False)  # the split (ground truth and image root)
    detections: list[dict] = field(repr=False)  # COCO results
    results: dict[str, Any]  # evaluator name -> its result

    def __getitem__(self, name: str) -> Any:
        return self.results[name]


@dataclass
class EvalResult:
    """Scores of a detector on one annotated split."""

    split: str
    metrics: CocoMetrics
    threshold: float  # the score threshold of the sequence accuracy
    seq_acc: float | None  # None when the classes are not digits
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

    @classmethod
    def of(cls, split: str, evaluation: Evaluation, threshold: float,
           inference: dict) -> EvalResult:
        """From an evaluation with the COCO and sequence evaluators."""
        return cls(split, evaluation["coco"], threshold, evaluation["seq_acc"], evaluation.data,
                   evaluation.detections, inference)


def inference_on_dataset(predictor: Predictor, data: CocoData,
                         evaluators: Sequence[Evaluator] = (), *,
                         device: str | torch.device = "cpu", batch_size: int = 8,
                         progress: Callable[[int], None] | None = None,
                         description: str = "detecting") -> Evaluation:
    """Detect every image of `data` once with `predictor`; every evaluator scores the result.

    Under torchrun every rank calls this: each detects its share of the batches, rank 0 scores
    them all, and every rank returns rank 0's results (the detections are rank 0's alone: the
    other ranks' `Evaluation.detections` is empty)."""
    here = world()
    needs_batches = [e.name for e in evaluators if type(e).process is not Evaluator.process]
    if here.distributed and needs_batches:
        raise ConfigError(f"the {', '.join(needs_batches)} evaluation sees every batch in one "
                          "process. Fix: run this command without torchrun")
    dataset = CocoDetection(data, transforms=to_model_input())

    def on_batch(images, targets, outputs) -> None:
        for evaluator in evaluators:
            evaluator.process(images, targets, outputs)

    detections = detect_dataset(predictor, dataset, data.category_ids, device=device,
                                batch_size=batch_size, progress=progress, on_batch=on_batch,
                                description=description)
    if not here.distributed:
        return score(data, detections, evaluators)
    results = broadcast_object(score(data, detections, evaluators).results if here.is_main
                               else None)
    return Evaluation(data, detections, results)


def score(data: CocoData, detections: list[dict], evaluators: Sequence[Evaluator]) -> Evaluation:
    """The evaluators' results on detections already made (by `inference_on_dataset` before,
    e.g. during training's validation); evaluators that need the batches cannot be used."""
    gt = data.to_coco_dict()
    return Evaluation(data, detections, {e.name: e.evaluate(gt, detections) for e in evaluators})


def predictor_for(model: torch.nn.Module, cfg: EvalConfig, categories: Sequence[dict]) -> Predictor:
    """The model with the config's inference options (NMS, Soft-NMS, TTA)."""
    return Predictor(model, cfg, digit_classes=digit_names(categories) is not None)


def validation_row(result: EvalResult) -> dict[str, float]:
    """What training logs of a validation: every COCO number (undefined = nan) and, on digit
    data, the sequence accuracy."""
    row = {k: (v if v is not None else math.nan) for k, v in result.metrics.as_dict().items()
           if isinstance(v, int | float | None)}
    if result.seq_acc is not None:
        row["seq_acc"] = result.seq_acc
    return row


def validate(model: torch.nn.Module, data: CocoData, cfg: EvalConfig, *,
             device: str | torch.device) -> EvalResult:
    """Training's validation: COCO metrics and the sequence accuracy at
    `eval.default_threshold`, with the run's inference options."""
    evaluation = inference_on_dataset(
        predictor_for(model, cfg, data.categories), data,
        [CocoMetricsEvaluator(cfg.backend), SequenceAccuracy(cfg.default_threshold, cfg.read_iou)],
        device=device, batch_size=cfg.batch_size, description="validating")
    return EvalResult.of("valid", evaluation, cfg.default_threshold, cfg.inference_kwargs())
