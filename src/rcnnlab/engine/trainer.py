"""The training loop: epochs of SGD/AdamW steps, validation mAP, checkpoints, logs.

One `Trainer` owns a run folder (`runs/<name>/`): the resolved `config.yaml`, the machine and
package versions in `environment.json`, `metrics.csv`, TensorBoard events under `tb/`, and
`checkpoints/{last,best}.pt`. `last.pt` is written after every epoch with everything needed to
continue exactly (model, optimizer, scheduler, RNG states, epoch); `best.pt` holds the weights
with the highest validation mAP and what inference needs, without the optimizer's moments, which
would triple its size (AdamW keeps two per weight).
"""

from __future__ import annotations

import csv
import json
import logging
import math
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, RandomSampler

from rcnnlab.config import Config, save_config
from rcnnlab.data.coco import CocoData, CocoDetection, collate
from rcnnlab.data.samplers import RepeatFactorSampler, repeat_factors
from rcnnlab.data.splits import load_splits
from rcnnlab.data.transforms import build_train_transforms, to_model_input
from rcnnlab.engine.checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from rcnnlab.engine.progress import ProgressReporter
from rcnnlab.engine.schedules import lr_factor
from rcnnlab.evaluation.coco import evaluate_detections
from rcnnlab.evaluation.sequence import (
    digit_names,
    numbers_from_coco,
    numbers_from_detections,
    sequence_accuracy,
)
from rcnnlab.inference.predict import detect_dataset
from rcnnlab.methods.scale_weighting import ScaleLossWeighting
from rcnnlab.models.anchors import auto_anchors
from rcnnlab.models.build import build_model, describe_model, load_weights_file
from rcnnlab.models.heads import RoIClassifierLoss, level_losses
from rcnnlab.models.losses import class_counts, inverse_frequency_weights
from rcnnlab.reporting.plots import plot_scale_weights
from rcnnlab.reporting.record import write_record
from rcnnlab.reporting.summary import environment_rows

log = logging.getLogger(__name__)

# Checkpoint entries only `Trainer.resume` reads; best.pt leaves them out.
_RESUME_ONLY = frozenset({"optimizer", "scheduler", "rng", "pg_rng", "scale_weighting"})

# The seed lab groups torchvision's four losses into three: the RoI head's classification and
# box regression, and the RPN ("anchor") objectness + box terms.
LOSS_GROUPS = {
    "loss_cls": ("loss_classifier",),
    "loss_bbox": ("loss_box_reg",),
    "loss_anchor": ("loss_objectness", "loss_rpn_box_reg"),
}
RAW_LOSSES = ("loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present; anything else is passed to torch.device."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={name} but CUDA is not available; use train.device=cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def param_groups(model: torch.nn.Module, lr: float, backbone_lr_mult: float) -> list[dict]:
    """Two LR groups as in DETR: the backbone body at lr * mult, everything else at lr.

    The FPN counts as "rest": it is new on top of a (possibly pretrained) body.
    """
    body, rest = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (body if name.startswith("backbone.body.") else rest).append(p)
    groups = [{"params": rest, "lr": lr, "name": "head"}]
    if body:
        groups.append({"params": body, "lr": lr * backbone_lr_mult, "name": "backbone"})
    return groups


def build_optimizer(model: torch.nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW or SGD over the two LR groups (keyword source: config.train)."""
    groups = param_groups(model, cfg.lr, cfg.backbone_lr_mult)
    # The fused kernels do one pass over all parameters: on a 2-core CPU AdamW's default
    # per-tensor loop costs ~0.2 s a step for ResNet-18-FPN, the fused one ~0.01 s.
    fused = {"fused": True} if _fused_ok(model) else {}
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, **fused)
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay, **fused)


def _fused_ok(model: torch.nn.Module) -> bool:
    """Fused optimizers need floating-point parameters on the CPU or CUDA."""
    return all(p.device.type in ("cpu", "cuda") and p.is_floating_point()
               for p in model.parameters())


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this process: GPU allocations on CUDA, resident set size on the CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@dataclass
class FitResult:
    """What a finished `fit` reports."""

    run_dir: Path
    train_images: int
    best_epoch: int
    best_map: float
    epochs: int
    iterations: int
    train_seconds: float
    train_images_per_s: float
    peak_memory_mb: float


class Trainer:
    """Trains one run described by a Config; see the module docstring for what it writes."""

    def __init__(self, cfg: Config, *, splits: dict[str, CocoData] | None = None,
                 reporter: ProgressReporter | None = None):
        self.cfg = cfg
        self.run_dir = cfg.run_dir
        self.ckpt_dir = self.run_dir / "checkpoints"
        self.reporter = reporter or ProgressReporter(log_every=cfg.train.log_every)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        seed_everything(cfg.train.seed)
        self.splits = splits or load_splits(cfg.data, need=("train", "valid"))
        self.train_data, self.valid_data = self.splits["train"], self.splits["valid"]
        self.categories = self.train_data.categories
        self.category_ids = self.train_data.category_ids
        self.digits = digit_names(self.categories)
        self.model = self.build_model()
        if cfg.train.finetune_from:
            report = load_weights_file(self.model, cfg.train.finetune_from)
            log.info("fine-tuning from %s: %s", cfg.train.finetune_from, report)
        self.train_set = CocoDetection(self.train_data)
        self.valid_set = CocoDetection(self.valid_data, transforms=to_model_input())
        self.generator = torch.Generator().manual_seed(cfg.train.seed)
        self.loader = DataLoader(
            self.train_set, batch_size=cfg.train.batch_size, collate_fn=collate,
            sampler=self.build_sampler(), num_workers=cfg.data.workers,
            generator=self.generator, drop_last=False,
        )
        # draws policy gradient's actions; its own stream, saved in checkpoints
        self.pg_generator = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.model.roi_heads.classifier_loss = self.build_classifier_loss()
        self.scale_weighting = None
        if cfg.train.scale_weighting != "none":
            self.scale_weighting = ScaleLossWeighting(
                num_levels=len(self.model.rpn.anchor_generator.sizes),
                method=cfg.train.scale_weighting, interval=cfg.train.scale_interval,
                seed=cfg.train.seed)
        self.iters_per_epoch = len(self.loader)
        if cfg.train.iters_per_epoch:
            self.iters_per_epoch = min(self.iters_per_epoch, cfg.train.iters_per_epoch)
        self.total_iters = self.iters_per_epoch * cfg.train.epochs
        self.optimizer = build_optimizer(self.model, cfg.train)
        t = cfg.train
        milestones = [m * self.iters_per_epoch for m in t.milestones]
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(
            schedule=t.schedule, total_iters=self.total_iters, warmup_iters=t.warmup_iters,
            warmup_factor=t.warmup_factor, eta_min=t.eta_min, milestones=milestones,
            gamma=t.gamma))
        self.epoch = 0  # epochs completed
        self.iteration = 0
        self.best_map = -1.0
        self.best_epoch = 0
        self.train_seconds = 0.0
        self.images_seen = 0
        self.threshold = cfg.eval.default_threshold

    def build_model(self) -> torch.nn.Module:
        """The detector of the config; with `model.anchors: auto` the anchors are first fitted
        to the training boxes and written into the config (so config.yaml and the checkpoints
        hold the fitted values)."""
        num_classes = len(self.categories) + 1
        model = build_model(num_classes=num_classes, **self.cfg.model.build_kwargs())
        if self.cfg.model.anchors == "auto":
            m = self.cfg.model
            levels = describe_model(model)["levels"]
            fit = auto_anchors(
                self.train_data, num_levels=len(levels), min_size=m.min_size,
                max_size=m.max_size, native_size=m.native_size,
                default_sizes=[lv["anchor_sizes"] for lv in levels],
                default_ratios=[lv["aspect_ratios"] for lv in levels],
                strides=[lv["stride"] for lv in levels], seed=self.cfg.train.seed)
            log.info("auto anchors: %s", fit.summary())
            m.anchor_sizes, m.aspect_ratios, m.anchors = fit.sizes, fit.ratios, "given"
            model = build_model(num_classes=num_classes, **m.build_kwargs())
        return model.to(self.device)

    def build_sampler(self):
        """Shuffling, or repeat-factor sampling when `data.repeat_factor_threshold` is set."""
        threshold = self.cfg.data.repeat_factor_threshold
        if threshold is None:
            return RandomSampler(self.train_set, generator=self.generator)
        factors = repeat_factors(self.train_data, threshold)
        log.info("repeat-factor sampling (t=%g): %d of %d images repeated, factors up to %.2f, "
                 "%d samples an epoch", threshold, int((factors > 1).sum()), len(factors),
                 float(factors.max()), round(float(factors.sum())))
        return RepeatFactorSampler(factors, generator=self.generator)

    def build_classifier_loss(self) -> RoIClassifierLoss:
        """The RoI classifier's objective from `train.objective` / `cls_loss` / its options."""
        t = self.cfg.train
        weights = None
        if t.class_weights == "inverse_frequency":
            weights = inverse_frequency_weights(class_counts(self.train_data))
        elif t.class_weights is not None:
            if len(t.class_weights) != len(self.categories):
                raise ValueError(
                    f"train.class_weights has {len(t.class_weights)} values but the data has "
                    f"{len(self.categories)} classes (ids {self.category_ids}); give one weight "
                    "per class in id order, or inverse_frequency")
            weights = torch.tensor([1.0, *t.class_weights])
        if weights is not None:
            log.info("class weights (background first): %s",
                     ", ".join(f"{w:.3f}" for w in weights.tolist()))
        kind = "policy_gradient" if t.objective == "policy_gradient" else t.cls_loss
        return RoIClassifierLoss(
            kind=kind, focal_alpha=t.focal_alpha, focal_gamma=t.focal_gamma,
            class_weights=weights, pg_samples=t.pg_samples, pg_gamma=t.pg_gamma,
            pg_nms_iou=self.cfg.model.box_nms_thresh, generator=self.pg_generator)

    # ------------------------------------------------------------------ state
    def state(self) -> dict:
        """Everything `resume` needs, plus what inference needs (categories, config)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": self.epoch,
            "iteration": self.iteration,
            "best_map": self.best_map,
            "best_epoch": self.best_epoch,
            "train_seconds": self.train_seconds,
            "images_seen": self.images_seen,
            "rng": rng_state(self.generator),
            "pg_rng": self.pg_generator.get_state(),
            "scale_weighting": (self.scale_weighting.state_dict()
                                if self.scale_weighting is not None else None),
            "config": self.cfg.model_dump(mode="json"),
            "categories": self.categories,
            "threshold": self.threshold,
        }

    def weights_state(self) -> dict:
        """What `best.pt` keeps: `state()` without the entries only `resume` reads."""
        return {k: v for k, v in self.state().items() if k not in _RESUME_ONLY}

    def resume(self, path: Path | None = None) -> None:
        """Continue from a `last.pt`: model, optimizer, scheduler, RNG states and epoch."""
        path = path or self.ckpt_dir / "last.pt"
        ckpt = load_checkpoint(path)
        if "optimizer" not in ckpt:
            raise ValueError(f"{path}: holds the weights only (a best.pt), not the optimizer state "
                             "that resuming needs. Fix: resume from the run's checkpoints/last.pt, "
                             "or start a new run from these weights with train.finetune_from")
        if [c["id"] for c in ckpt["categories"]] != self.category_ids:
            raise ValueError("cannot resume: the checkpoint's categories differ from the data's")
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        for key in ("epoch", "iteration", "best_map", "best_epoch", "train_seconds",
                    "images_seen", "threshold"):
            setattr(self, key, ckpt[key])
        set_rng_state(ckpt["rng"], self.generator)
        self.pg_generator.set_state(ckpt["pg_rng"])
        if self.scale_weighting is not None:
            self.scale_weighting.load_state_dict(ckpt["scale_weighting"])
        _truncate_metrics(self.run_dir / "metrics.csv", self.epoch)
        log.info("resumed %s at epoch %d (iteration %d)", self.run_dir, self.epoch, self.iteration)

    # ------------------------------------------------------------------ loop
    def fit(self, resume: bool = False) -> FitResult:
        """Train for the configured epochs (from the last checkpoint when `resume`)."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        save_config(self.cfg, self.run_dir / "config.yaml")
        # the run record names this machine even when it is rewritten on another one
        device = f"{self.device} (train.device: {self.cfg.train.device})"
        (self.run_dir / "environment.json").write_text(
            json.dumps(environment_rows(device), indent=1))
        if resume:
            self.resume()
        from torch.utils.tensorboard import SummaryWriter

        writer = SummaryWriter(str(self.run_dir / "tb"), purge_step=self.iteration or None)
        try:
            for epoch in range(self.epoch, self.cfg.train.epochs):
                row = self.train_one_epoch(epoch, writer)
                self.epoch = epoch + 1
                last = self.epoch == self.cfg.train.epochs
                if last or self.epoch % self.cfg.train.eval_every == 0:
                    row.update(self.validate())
                    if row["val_AP"] > self.best_map:
                        self.best_map, self.best_epoch = row["val_AP"], self.epoch
                        save_checkpoint(self.ckpt_dir / "best.pt", self.weights_state())
                for key, value in row.items():
                    if isinstance(value, int | float) and key != "epoch":
                        writer.add_scalar(f"epoch/{key}", value, self.epoch)
                _append_metrics(self.run_dir / "metrics.csv", row)
                save_checkpoint(self.ckpt_dir / "last.pt", self.state())
                self.reporter.epoch_done(row)
        finally:
            writer.close()
            if self.scale_weighting is not None and self.scale_weighting.history:
                levels = describe_model(self.model)["levels"]
                plot_scale_weights(self.scale_weighting.history,
                                   self.run_dir / "scale_weights.png",
                                   [f"P{round(math.log2(lv['stride']))}" for lv in levels],
                                   last_iteration=self.iteration)
        if self.cfg.train.record:
            # threshold not tuned yet: `rcnnlab tune` then `rcnnlab report` rewrites it
            write_record(self.run_dir, device=str(self.device))
        return FitResult(self.run_dir, len(self.train_data.images), self.best_epoch,
                         self.best_map, self.epoch, self.iteration,
                         self.train_seconds, self.images_seen / max(self.train_seconds, 1e-9),
                         peak_memory_mb(self.device))

    def augment_on(self, epoch: int) -> bool:
        """Augmentation runs (when enabled) except in the last `no_aug_epochs` epochs."""
        return (self.cfg.augment.enabled
                and epoch < self.cfg.train.epochs - self.cfg.augment.no_aug_epochs)

    def train_one_epoch(self, epoch: int, writer) -> dict:
        """One pass over the training loader; returns the epoch's mean losses and timings."""
        aug = self.augment_on(epoch)
        if aug:
            self.train_set.transforms = build_train_transforms(
                **self.cfg.augment.model_dump(), digit_classes=self.digits is not None)
        else:
            self.train_set.transforms = to_model_input()
        # Multi-scale lives in the model's transform (one short side per batch): on with the rest.
        sizes = self.cfg.augment.multiscale_sizes if aug else []
        self.model.transform.train_short_sides = tuple(sizes)
        if sizes:
            log.info("multi-scale training: short side drawn per batch from %s", sizes)
        self.model.train()
        sums = dict.fromkeys(RAW_LOSSES, 0.0)
        n_iter = n_img = dropped = 0
        start = time.perf_counter()
        self.reporter.start_epoch(epoch + 1, self.cfg.train.epochs, self.iters_per_epoch, aug)
        for images, targets in self.loader:
            if n_iter >= self.iters_per_epoch:
                break
            dropped += sum(t.get("boxes_dropped", 0) for t in targets)
            images = [img.to(self.device) for img in images]
            targets = [{"boxes": t["boxes"].as_subclass(torch.Tensor).to(self.device),
                        "labels": t["labels"].to(self.device)} for t in targets]
            losses = self.model(images, targets)
            loss = self.total_loss(losses, writer)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(
                    f"loss became {loss.item()} at iteration {self.iteration} "
                    f"({ {k: round(v.item(), 4) for k, v in losses.items()} }). "
                    "Fix: lower train.lr, raise train.warmup_iters, or set train.grad_clip")
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if self.cfg.train.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.train.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.iteration += 1
            n_iter += 1
            n_img += len(images)
            for key in RAW_LOSSES:
                sums[key] += losses[key].item()
            pg_info = self.model.roi_heads.classifier_loss.info
            for key, value in pg_info.items():
                sums[f"pg_{key}"] = sums.get(f"pg_{key}", 0.0) + value
            writer.add_scalar("iter/loss", loss.item(), self.iteration)
            writer.add_scalar("iter/lr", self.optimizer.param_groups[0]["lr"], self.iteration)
            self.reporter.step(loss.item(), self.optimizer.param_groups[0]["lr"])
        elapsed = time.perf_counter() - start
        self.train_seconds += elapsed
        self.images_seen += n_img
        means = {k: v / max(n_iter, 1) for k, v in sums.items()}
        row = {"epoch": epoch + 1, "iterations": self.iteration,
               "lr": self.optimizer.param_groups[0]["lr"], "augment": int(aug)}
        row["loss"] = sum(means[k] for k in RAW_LOSSES)
        for group, keys in LOSS_GROUPS.items():
            row[group] = sum(means[k] for k in keys)
        row.update(means)
        if self.scale_weighting is not None:
            row.update({f"w_level{i}": w for i, w in enumerate(self.scale_weighting.weights())})
        row["boxes_dropped"] = dropped
        if dropped:
            log.info("augmentation dropped %d boxes that collapsed or left the image", dropped)
        row["epoch_seconds"] = elapsed
        row["train_img_per_s"] = n_img / max(elapsed, 1e-9)
        row["peak_memory_mb"] = peak_memory_mb(self.device)
        return row

    def total_loss(self, losses: dict, writer) -> torch.Tensor:
        """The loss to minimise: the sum of the four, or its per-level split weighted by AVW/RLO
        (whose interval records also go to TensorBoard and `scale_weights.csv`)."""
        if self.scale_weighting is None:
            return sum(losses.values())
        levels = level_losses(self.model)
        loss = self.scale_weighting.weighted_total(list(levels))
        record = self.scale_weighting.update(levels.detach().tolist())
        if record is not None:
            for i, w in enumerate(record.weights):
                writer.add_scalar(f"scale_weighting/w_level{i}", w, record.iteration)
            for a, p in enumerate(record.probabilities or []):
                writer.add_scalar(f"scale_weighting/p_action{a}", p, record.iteration)
            _append_metrics(self.run_dir / "scale_weights.csv", record.as_row())
        return loss

    def validate(self) -> dict:
        """Validation mAP (12 COCO stats) and, for digit datasets, sequence accuracy."""
        start = time.perf_counter()
        # the run's own inference options (eval.nms, eval.tta_*), as evaluate will use them
        dets = detect_dataset(self.model, self.valid_set, self.category_ids, device=self.device,
                              batch_size=self.cfg.eval.batch_size,
                              **self.cfg.eval.inference_kwargs(),
                              digit_classes=self.digits is not None)
        gt = self.valid_data.to_coco_dict()
        metrics = evaluate_detections(gt, dets, backend=self.cfg.eval.backend)
        row = {f"val_{k}": (v if v is not None else float("nan"))
               for k, v in metrics.as_dict().items() if isinstance(v, int | float | None)}
        if self.digits is not None:
            row["val_seq_acc"] = sequence_accuracy(
                numbers_from_coco(gt, self.digits),
                numbers_from_detections(dets, self.digits, self.threshold,
                                        [img["id"] for img in self.valid_data.images]))
        row.update(self.validation_loss())
        row["val_seconds"] = time.perf_counter() - start
        return row

    @torch.no_grad()
    def validation_loss(self) -> dict:
        """The training losses on the validation split (plain cross-entropy for the classifier,
        whatever the objective), so that loss curves compare train and validation.

        Only the loss branches run in training mode: BatchNorm statistics, dropout and the
        multi-scale draw stay as in evaluation, and the RPN / RoI samplers draw from a seeded
        fork of the RNG, so validating never changes the training run's random stream.
        """
        model, heads = self.model, self.model.roi_heads
        objective, heads.classifier_loss = heads.classifier_loss, RoIClassifierLoss()
        model.eval()
        for module in (model, model.rpn, heads):  # not recursive: children stay in eval mode
            module.training = True
        sums, n = dict.fromkeys(RAW_LOSSES, 0.0), 0
        cuda = list(range(torch.cuda.device_count())) if self.device.type == "cuda" else []
        try:
            with torch.random.fork_rng(devices=cuda):
                torch.manual_seed(self.cfg.train.seed)
                bs = self.cfg.eval.batch_size
                for start in range(0, len(self.valid_set), bs):
                    items = [self.valid_set[i] for i in
                             range(start, min(start + bs, len(self.valid_set)))]
                    losses = model(
                        [img.to(self.device) for img, _ in items],
                        [{"boxes": t["boxes"].as_subclass(torch.Tensor).to(self.device),
                          "labels": t["labels"].to(self.device)} for _, t in items])
                    for key in RAW_LOSSES:
                        sums[key] += losses[key].item() * len(items)
                    n += len(items)
        finally:
            heads.classifier_loss = objective
            model.eval()
        means = {k: v / max(n, 1) for k, v in sums.items()}
        row = {"val_loss": sum(means.values())}
        row.update({f"val_{group}": sum(means[k] for k in keys)
                    for group, keys in LOSS_GROUPS.items()})
        return row


def _append_metrics(path: Path, row: dict) -> None:
    """Append one epoch to metrics.csv, widening the header when new columns appear."""
    rows = []
    if path.is_file():
        with path.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
    rows.append({k: _fmt(v) for k, v in row.items()})
    fields: list[str] = []
    for r in rows:
        fields += [k for k in r if k not in fields]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields, restval="")
        writer.writeheader()
        writer.writerows(rows)


def _fmt(value) -> str:
    if value is None:
        return ""
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _truncate_metrics(path: Path, epochs_done: int) -> None:
    """On resume, forget logged epochs after the checkpoint (they will be redone)."""
    if not path.is_file():
        return
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        rows = [r for r in reader if int(r["epoch"]) <= epochs_done]
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
