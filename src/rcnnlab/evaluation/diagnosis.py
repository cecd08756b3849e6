"""Why is mAP low when the loss looks fine? Error breakdown, proposal recall and a diagnosis.

:func:`rcnnlab.api.diagnose` scores a trained run on one split through the evaluation pipeline
and gathers:

* the TIDE error breakdown at IoU 0.5 (:mod:`rcnnlab.evaluation.errors`);
* AP at each IoU threshold 0.50..0.95 (COCO, from :mod:`rcnnlab.evaluation.coco`);
* :func:`rpn_recall`: the share of ground-truth boxes that at least one RPN proposal covers at
  IoU 0.5 and 0.7, and the number of proposals per image: a box no proposal covers can never be
  detected, whatever the box head learns;
* :func:`recall_by_size`: recall of small / medium / large objects (COCO's area ranges) at
  IoU 0.5 among the detections at or above the tuned score threshold;

and ranks the causes of the lost AP with :func:`find_causes` / :func:`diagnose`.

Rules of the diagnosis. Each cause gets a *loss*: an estimate of the AP it costs, from an oracle
that removes it; causes are ranked by loss and reported when the loss is at least
:data:`MIN_LOSS`. TIDE's ΔAPs are AP50 points; the IoU fall-off is mAP points.

* ``localisation`` (boxes close but under the IoU bar): TIDE's localisation ΔAP at IoU 0.5
  plus the fall-off ``AP50 - mAP`` (what mAP@[.5:.95] loses because boxes that count at IoU 0.5
  stop counting at stricter thresholds; 0 for boxes that are exact).
* ``class_confusion``: TIDE's classification ΔAP.
* ``missed`` (missed objects): TIDE's missed ΔAP. The sentence says "small" when small-object
  recall at the tuned threshold is below :data:`SMALL_RECALL_LOW` or
  :data:`SMALL_RECALL_GAP` under the recall of larger objects, and names the RPN when its recall
  at IoU 0.5 is below :data:`RPN_RECALL_LOW`.
* ``nms`` (NMS settings): the ΔAP of removing the duplicates and the background false positives
  that overlap a higher-scoring detection of their own class at IoU >= :data:`NMS_OVERLAP_IOU`
  (a stricter NMS would have removed them).
* ``scores`` (boxes right but scores miscalibrated): the ΔAP of removing the other background
  false positives: confident detections where there is no object, ranked among true ones.
  Its sentence also gives TIDE's oracle-rescoring ΔAP (every true positive ranked above every
  false positive).

TIDE's "both" errors (wrong class and a loose box) are reported as ``class_and_box`` but are
none of the five causes; :attr:`Diagnosis.dominant_cause` is the top-ranked of the five.
"""

from __future__ import annotations

import json
import math
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torchvision.models.detection.transform import resize_boxes
from torchvision.ops import box_iou as torch_box_iou

from rcnnlab.evaluation.errors import (
    ERROR_NAMES,
    ERROR_TYPES,
    ErrorBreakdown,
    TideAnalysis,
    box_iou,
    xyxy,
)
from rcnnlab.files import write_atomic

# ----------------------------------------------------------------------------- rule constants
MIN_LOSS = 0.01
"""A cause is reported when its loss is at least this much AP (one point)."""
NMS_OVERLAP_IOU = 0.3
"""A background false positive overlapping a higher-scoring detection of its own class at this
IoU or more is put down to NMS: an NMS at this IoU would have removed it (the models' default is
0.5; 0.3 is the classic Fast R-CNN setting)."""
SMALL_RECALL_LOW = 0.8
"""Small-object recall (IoU 0.5, tuned threshold) under this makes missed objects "small"."""
SMALL_RECALL_GAP = 0.1
"""... as does small-object recall this far below the recall of medium and large objects."""
RPN_RECALL_LOW = 0.9
"""RPN recall at IoU 0.5 under this names the proposals as a reason for missed objects."""

CAUSES: tuple[str, ...] = ("scores", "localisation", "missed", "class_confusion", "nms")
"""The five causes a diagnosis chooses the dominant one from."""

SIZE_RANGES: dict[str, tuple[float, float]] = {
    "small": (0.0, 32.0**2),
    "medium": (32.0**2, 96.0**2),
    "large": (96.0**2, math.inf),
}
"""COCO's object sizes by area in pixels (lower bound inclusive)."""


def _size_of(areas: np.ndarray) -> np.ndarray:
    """Size name per area (COCO's ranges)."""
    names = np.empty(len(areas), dtype=object)
    for name, (lo, hi) in SIZE_RANGES.items():
        names[(areas >= lo) & (areas < hi)] = name
    return names


def _share(hits: np.ndarray) -> float | None:
    return float(hits.mean()) if hits.size else None


# ---------------------------------------------------------------------------------- RPN recall
@dataclass(frozen=True)
class RPNRecall:
    """How many ground-truth boxes the RPN's proposals cover (before the box head)."""

    recall: dict[float, float | None]  # IoU threshold -> share of boxes with a proposal at it
    recall_by_size: dict[str, float | None]  # at the first IoU threshold; None: no such box
    n_gt_by_size: dict[str, int]
    n_gt: int
    proposals_per_image: float  # mean
    min_proposals: int
    max_proposals: int

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form (IoU keys as strings)."""
        out = asdict(self)
        out["recall"] = {f"{t:.2f}": v for t, v in self.recall.items()}
        return out


@torch.inference_mode()
def rpn_proposals(model, images: Sequence[Tensor]) -> list[Tensor]:
    """The RPN's proposals for a batch of images, xyxy in each original image's pixels.

    Runs ``model.transform``, ``model.backbone`` and ``model.rpn`` as torchvision's
    ``GeneralizedRCNN.forward`` does (the model is put in eval mode for the call), then maps
    the proposals from the transformed image back to the original size with
    ``torchvision.models.detection.transform.resize_boxes``, as ``transform.postprocess``
    maps detections.
    """
    was_training = model.training
    model.eval()
    try:
        original_sizes = [tuple(int(s) for s in img.shape[-2:]) for img in images]
        image_list, _ = model.transform(list(images))
        features = model.backbone(image_list.tensors)
        if isinstance(features, Tensor):
            features = OrderedDict([("0", features)])
        proposals, _ = model.rpn(image_list, features)
    finally:
        model.train(was_training)
    return [resize_boxes(p, size, original)
            for p, size, original in zip(proposals, image_list.image_sizes, original_sizes,
                                         strict=True)]


class RPNRecallCounter:
    """Accumulates, batch by batch, each ground-truth box's best proposal IoU (see
    :func:`rpn_recall`)."""

    def __init__(self, model, iou_thresholds: Sequence[float] = (0.5, 0.7)):
        if not iou_thresholds:
            raise ValueError("rpn_recall needs at least one IoU threshold")
        self.model, self.iou_thresholds = model, tuple(iou_thresholds)
        self.best: list[Tensor] = []  # per gt box: its best proposal IoU
        self.areas: list[Tensor] = []
        self.counts: list[int] = []

    def add(self, images: Sequence[Tensor], targets: Sequence[Mapping[str, Any]]) -> None:
        """Run the RPN on a batch (images on the model's device, targets with xyxy boxes)."""
        for target, props in zip(targets, rpn_proposals(self.model, images), strict=True):
            self.counts.append(len(props))
            gt = torch.as_tensor(target["boxes"], dtype=torch.float32).reshape(-1, 4)
            if len(gt) == 0:
                continue
            props = props.detach().float().cpu()
            if len(props):
                self.best.append(torch_box_iou(gt, props).max(dim=1).values)
            else:
                self.best.append(torch.zeros(len(gt)))
            self.areas.append((gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1]))

    def result(self) -> RPNRecall:
        """Recall at each IoU threshold, recall by size at the first, and proposal counts."""
        best_iou = torch.cat(self.best).numpy() if self.best else np.zeros(0)
        sizes = _size_of(torch.cat(self.areas).numpy()) if self.areas else np.zeros(
            0, dtype=object)
        first, counts = self.iou_thresholds[0], self.counts
        return RPNRecall(
            recall={float(t): _share(best_iou >= t) for t in self.iou_thresholds},
            recall_by_size={s: _share(best_iou[sizes == s] >= first) for s in SIZE_RANGES},
            n_gt_by_size={s: int((sizes == s).sum()) for s in SIZE_RANGES},
            n_gt=len(best_iou),
            proposals_per_image=float(np.mean(counts)) if counts else 0.0,
            min_proposals=min(counts, default=0),
            max_proposals=max(counts, default=0),
        )


def rpn_recall(model, dataset, iou_thresholds: Sequence[float] = (0.5, 0.7), *,
               device: str | torch.device = "cpu", batch_size: int = 4,
               progress: Callable[[int], None] | None = None) -> RPNRecall:
    """Share of ground-truth boxes covered by at least one RPN proposal at each IoU threshold.

    ``dataset`` yields (float image, target with xyxy ``boxes``), e.g. a
    :class:`~rcnnlab.data.coco.CocoDetection` with ``to_model_input()``; crowd boxes are not in
    its targets. Sizes use each box's area w*h. ``progress`` is called with the images done.
    The evaluation pipeline counts the same from the batches it already loads
    (:class:`RPNRecallCounter`).
    """
    counter = RPNRecallCounter(model, iou_thresholds)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        counter.add([img.to(device) for img, _ in items], [target for _, target in items])
        if progress:
            progress(len(items))
    return counter.result()


# -------------------------------------------------------------------------- recall by size
@dataclass(frozen=True)
class SizeRecall:
    """Recall of ground-truth boxes by COCO size among detections scoring >= ``threshold``."""

    recall: dict[str, float | None]  # small / medium / large; None where there is no such box
    n_gt: dict[str, int]
    threshold: float
    iou: float

    def others(self) -> float | None:
        """Recall of the medium and large boxes together (None when there are none)."""
        n = self.n_gt["medium"] + self.n_gt["large"]
        if n == 0:
            return None
        hits = sum((self.recall[s] or 0.0) * self.n_gt[s] for s in ("medium", "large"))
        return hits / n


def recall_by_size(gt: Mapping[str, Any], detections: Sequence[Mapping[str, Any]], *,
                   score_threshold: float, iou_thresh: float = 0.5) -> SizeRecall:
    """Recall per COCO object size at ``iou_thresh`` of the detections scoring >= threshold.

    Matching is COCO's / TIDE's (greedy by score, same class); sizes come from the annotations'
    ``area`` (w*h where absent), as COCO's APs/APm/APl do.
    """
    kept = [d for d in detections if d["score"] >= score_threshold]
    analysis = TideAnalysis(gt, kept, pos_thresh=iou_thresh, bg_thresh=min(0.1, iou_thresh))
    sizes = _size_of(analysis.gt_area)
    return SizeRecall(
        recall={s: _share(analysis.gt_matched[sizes == s]) for s in SIZE_RANGES},
        n_gt={s: int((sizes == s).sum()) for s in SIZE_RANGES},
        threshold=score_threshold,
        iou=iou_thresh,
    )


# ---------------------------------------------------------------------------------- diagnosis
@dataclass(frozen=True)
class Finding:
    """One ranked cause: its name, the AP it costs (see the module docstring) and a sentence."""

    cause: str  # one of CAUSES, or "class_and_box", or "none"
    loss: float
    text: str


def _overlapped(detections: Sequence[Mapping[str, Any]], indexes: Sequence[int],
                iou: float) -> list[int]:
    """Those of ``indexes`` overlapping a higher-scoring same-class detection at >= ``iou``."""
    groups: dict[tuple[int, int], list[int]] = {}
    for k, d in enumerate(detections):
        groups.setdefault((int(d["image_id"]), int(d["category_id"])), []).append(k)
    out = []
    for k in indexes:
        d = detections[k]
        rivals = [r for r in groups[(int(d["image_id"]), int(d["category_id"]))]
                  if detections[r]["score"] > d["score"]]
        if rivals:
            boxes = np.array([xyxy(detections[r]["bbox"]) for r in [k, *rivals]], dtype=float)
            if box_iou(boxes[:1], boxes[1:]).max() >= iou:
                out.append(k)
    return out


def _ap_at(per_iou: Mapping[float, float | None], t: float) -> float | None:
    for key, value in per_iou.items():
        if abs(float(key) - t) < 1e-6:
            return value
    return None


def _f(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def find_causes(analysis: TideAnalysis, per_iou: Mapping[float, float | None] | None = None, *,
                size_recall: SizeRecall | None = None, rpn: RPNRecall | None = None,
                nms_iou: float | None = None,
                category_names: Mapping[int, str] | None = None) -> list[Finding]:
    """The causes of lost AP, ranked by loss, each with one sentence (module docstring rules).

    ``analysis`` is the TIDE analysis at IoU 0.5; ``per_iou`` COCO's AP per IoU threshold
    (:attr:`CocoMetrics.per_iou`), needed for the IoU fall-off; ``size_recall`` and ``rpn``
    refine the "missed" sentence; ``nms_iou`` is the NMS IoU in use, named in the NMS advice.
    """
    tide = analysis.breakdown()
    base, d, n = tide.ap, tide.delta_ap, tide.counts
    names = category_names or {}
    findings: list[Finding] = []

    ious = per_iou or {}
    ap50 = _ap_at(ious, 0.5)
    valid = [v for v in ious.values() if v is not None]
    m_ap = float(np.mean(valid)) if valid else None
    falloff = max(ap50 - m_ap, 0.0) if ap50 is not None and m_ap is not None else 0.0
    parts = []  # each clause only where its figure shows at 3 decimals
    if ap50 is not None and round(falloff, 3) > 0:
        parts.append(f"AP falls from {_f(ap50)} at IoU 0.50 to {_f(_ap_at(ious, 0.75))} at 0.75 "
                     f"and {_f(_ap_at(ious, 0.9))} at 0.90 (mAP {_f(m_ap)}, {falloff:.3f} under "
                     "AP50)")
    if round(d["loc"], 3) > 0:
        parts.append(f"{n['loc']} detections overlap their object only at IoU "
                     f"{tide.bg_thresh:g}-{tide.pos_thresh:g}, costing {d['loc']:.3f} AP50")
    findings.append(Finding("localisation", d["loc"] + falloff,
                            "Boxes are close but under the IoU bar: " + "; ".join(parts) + "."))

    top = analysis.confusions().most_common(1)
    pair = ""
    if top:
        (det_cls, true_cls), times = top[0]
        pair = (f"; the most frequent is '{names.get(true_cls, true_cls)}' detected as "
                f"'{names.get(det_cls, det_cls)}' ({times}x)")
    findings.append(Finding("class_confusion", d["cls"], (
        f"Classes are confused: {n['cls']} detections sit on an object (IoU >= "
        f"{tide.pos_thresh:g}) with the wrong class, costing {d['cls']:.3f} AP50{pair}.")))

    findings.append(Finding("missed", d["miss"], _missed_text(tide, size_recall, rpn)))

    bkg = analysis.detections_of("bkg")
    clustered = _overlapped(analysis.detections, bkg, NMS_OVERLAP_IOU)
    isolated = sorted(set(bkg) - set(clustered))
    nms_loss = max(analysis.ap(["dupe"], drop=clustered) - base, 0.0)
    advice = f"now {nms_iou:g}" if nms_iou is not None else "the model's box_nms_thresh"
    overlapping = (f" and {len(clustered)} background ones overlapping a higher-scoring "
                   "detection of their class" if clustered else "")
    findings.append(Finding("nms", nms_loss, (
        f"Duplicates survive NMS: {n['dupe']} duplicate detections (IoU >= {tide.pos_thresh:g} "
        f"with an object already found){overlapping} cost {nms_loss:.3f} AP50; try a lower NMS "
        f"IoU (eval.nms_iou, {advice}) or Soft-NMS (eval.nms=gaussian).")))

    scores_loss = max(analysis.ap(drop=isolated) - base, 0.0)
    findings.append(Finding("scores", scores_loss, (
        f"Boxes are right but scores are miscalibrated: {len(isolated)} confident detections "
        f"on background (IoU <= {tide.bg_thresh:g} with every object) rank among true ones, "
        f"costing {scores_loss:.3f} AP50; ranking every true positive above every false "
        f"positive would add {tide.fp_delta_ap:.3f}.")))

    findings.append(Finding("class_and_box", d["both"], (
        f"{n['both']} detections have both the wrong class and a loose box (IoU "
        f"{tide.bg_thresh:g}-{tide.pos_thresh:g} with an object of another class), costing "
        f"{d['both']:.3f} AP50.")))

    ranked = sorted((f for f in findings if f.loss >= MIN_LOSS), key=lambda f: -f.loss)
    if not ranked:
        return [Finding("none", 0.0, (
            f"No cause costs {MIN_LOSS:g} AP or more: AP50 {base:.3f}, mAP {_f(m_ap)}."))]
    return ranked


def _missed_text(tide: ErrorBreakdown, size_recall: SizeRecall | None,
                 rpn: RPNRecall | None) -> str:
    """The "missed" sentence, naming small objects and the RPN when the figures point there."""
    subject = "Objects"
    clauses = []
    if size_recall is not None and size_recall.recall["small"] is not None:
        rs, ro = size_recall.recall["small"], size_recall.others()
        if rs < SMALL_RECALL_LOW or (ro is not None and rs < ro - SMALL_RECALL_GAP):
            subject = "Small objects"
            versus = f" against {ro:.2f} for larger ones" if ro is not None else ""
            clauses.append(f"recall of small objects at IoU {size_recall.iou:g} and score >= "
                           f"{size_recall.threshold:.2f} is {rs:.2f}{versus}")
    if rpn is not None:
        t, r = next(iter(rpn.recall.items()))
        if r is not None and r < RPN_RECALL_LOW:
            clauses.append(f"the RPN covers only {r:.0%} of the boxes at IoU {t:g} "
                           f"({rpn.proposals_per_image:.0f} proposals per image)")
    share = tide.counts["miss"] / tide.n_gt
    text = (f"{subject} are missed: {tide.counts['miss']} of {tide.n_gt} ground-truth boxes "
            f"({share:.0%}) have no detection of any class near them, costing "
            f"{tide.delta_ap['miss']:.3f} AP50")
    return "; ".join([text, *clauses]) + "."


def diagnose(analysis: TideAnalysis, per_iou: Mapping[float, float | None] | None = None,
             **kwargs: Any) -> list[str]:
    """Plain-language findings, most costly first: :func:`find_causes`' sentences."""
    return [f.text for f in find_causes(analysis, per_iou, **kwargs)]


# ------------------------------------------------------------------------------- run level
@dataclass
class Diagnosis:
    """Everything `rcnnlab.api.diagnose` measured on one split, and the ranked findings."""

    run: str
    split: str
    n_images: int
    threshold: float  # tuned score threshold used for recall by size
    metrics: dict[str, float | None]  # AP, AP50, AP75, APs, APm, APl
    per_iou: dict[float, float | None]
    errors: ErrorBreakdown  # TIDE at IoU 0.5
    rpn: RPNRecall
    size_recall: SizeRecall
    findings: list[Finding]
    inference: dict = field(default_factory=dict)
    training: dict[str, float | None] = field(default_factory=dict)  # last metrics.csv row

    @property
    def dominant_cause(self) -> str | None:
        """The top-ranked of :data:`CAUSES`, None when none costs :data:`MIN_LOSS`."""
        return next((f.cause for f in self.findings if f.cause in CAUSES), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "run": self.run,
            "split": self.split,
            "n_images": self.n_images,
            "threshold": self.threshold,
            "dominant_cause": self.dominant_cause,
            "findings": [asdict(f) for f in self.findings],
            "metrics": self.metrics,
            "per_iou": {f"{t:.2f}": v for t, v in self.per_iou.items()},
            "errors": self.errors.as_dict(),
            "rpn": self.rpn.as_dict(),
            "size_recall": asdict(self.size_recall),
            "inference": self.inference,
            "training": self.training,
        }

    def to_markdown(self) -> str:
        """A short report: findings, TIDE table, AP per IoU, recall by size and of the RPN."""
        m, e, r, s = self.metrics, self.errors, self.rpn, self.size_recall
        lines = [f"# Diagnosis: {self.run} ({self.split}, {self.n_images} images)", ""]
        head = (f"mAP {_f(m.get('AP'))}, AP50 {_f(m.get('AP50'))}, AP75 {_f(m.get('AP75'))}")
        if self.training.get("loss") is not None:
            head += (f"; last training epoch {self.training.get('epoch', 0):.0f}: loss "
                     f"{self.training['loss']:.3f}")
            groups = [f"{k.removeprefix('loss_')} {self.training[k]:.3f}"
                      for k in ("loss_cls", "loss_bbox", "loss_anchor")
                      if self.training.get(k) is not None]
            head += f" ({', '.join(groups)})" if groups else ""
        lines += [head + ".", "", "## Findings", ""]
        lines += [f"{i}. {f.text}" for i, f in enumerate(self.findings, start=1)]
        lines += ["", f"Dominant cause: **{self.dominant_cause or 'none'}**.", "",
                  f"## TIDE errors at IoU {e.pos_thresh:g} (background {e.bg_thresh:g})", "",
                  f"AP50 {e.ap:.3f} from {e.n_detections} detections, {e.n_tp} true positives, "
                  f"{e.n_gt} ground-truth boxes. The table weighs errors at IoU "
                  f"{e.pos_thresh:g} only: what mAP loses above it is the fall-off in the next "
                  "table, counted under localisation in the findings.", "",
                  "| error | count | ΔAP50 | share of lost AP50 |", "|---|---:|---:|---:|"]
        shares = e.lost_share()
        for kind in ERROR_TYPES:
            lines.append(f"| {ERROR_NAMES[kind]} | {e.counts[kind]} | {e.delta_ap[kind]:.3f} | "
                         f"{shares[kind]:.0%} |")
        lines += [f"| false positives (oracle rescoring) | | {e.fp_delta_ap:.3f} | |",
                  f"| false negatives (perfect recall) | | {e.fn_delta_ap:.3f} | |", "",
                  "## AP by IoU threshold", "",
                  "| IoU | " + " | ".join(f"{t:.2f}" for t in self.per_iou) + " |",
                  "|---|" + "---:|" * len(self.per_iou),
                  "| AP | " + " | ".join(_f(v) for v in self.per_iou.values()) + " |", "",
                  "## Recall by object size", "",
                  "| | small | medium | large |", "|---|---:|---:|---:|",
                  "| ground-truth boxes | " + " | ".join(str(s.n_gt[k]) for k in SIZE_RANGES)
                  + " |",
                  f"| AP (COCO) | {_f(m.get('APs'))} | {_f(m.get('APm'))} | {_f(m.get('APl'))} |",
                  f"| detected, IoU {s.iou:g}, score >= {s.threshold:.2f} | "
                  + " | ".join(_f(s.recall[k]) for k in SIZE_RANGES) + " |"]
        first = next(iter(r.recall))
        lines.append(f"| RPN proposal at IoU {first:g} | "
                     + " | ".join(_f(r.recall_by_size[k]) for k in SIZE_RANGES) + " |")
        lines += ["", "RPN recall: " + ", ".join(f"{_f(v)} at IoU {t:g}" for t, v in
                                                  r.recall.items())
                  + f"; proposals per image {r.proposals_per_image:.1f} "
                  f"(min {r.min_proposals}, max {r.max_proposals}).", ""]
        return "\n".join(lines)

    def save(self, folder: str | Path) -> dict[str, Path]:
        """Write ``diagnosis.md`` and ``diagnosis.json`` into ``folder``."""
        folder = Path(folder)
        paths = {"md": folder / "diagnosis.md", "json": folder / "diagnosis.json"}
        write_atomic(paths["md"], self.to_markdown())
        write_atomic(paths["json"], json.dumps(self.to_dict(), indent=2))
        return paths


def last_training_row(rows: Sequence[Mapping[str, float | None]]) -> dict[str, float | None]:
    """The loss columns of the last metrics.csv row ({} for a run without rows)."""
    if not rows:
        return {}
    keys = ("epoch", "loss", "loss_cls", "loss_bbox", "loss_anchor")
    return {k: rows[-1].get(k) for k in keys}
