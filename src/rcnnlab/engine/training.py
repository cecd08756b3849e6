"""A training run assembled from its config: data, model, optimizer, the loop and its hooks.

`fit_model` is the training that `rcnnlab train` runs. The pieces are built here from their
config sections and handed to the loop (`engine.loop`); every feature is a hook from
`engine.hooks`. Validation metrics come from the evaluation pipeline, one layer up, as the
function `evaluate`.
"""

from __future__ import annotations

import functools
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, RandomSampler

from rcnnlab.config import Config
from rcnnlab.data.categories import digit_names
from rcnnlab.data.coco import CocoData, CocoDetection, collate
from rcnnlab.data.samplers import RepeatFactorSampler, ShardedSampler, repeat_factors
from rcnnlab.data.transforms import to_model_input
from rcnnlab.engine.hooks.augmentation import AugmentationSchedule
from rcnnlab.engine.hooks.checkpoint import Checkpointer
from rcnnlab.engine.hooks.ema import WeightAverage
from rcnnlab.engine.hooks.evaluation import PeriodicValidation
from rcnnlab.engine.hooks.metrics import MetricsWriter
from rcnnlab.engine.hooks.policy_gradient import PolicyGradientState
from rcnnlab.engine.hooks.progress import Progress
from rcnnlab.engine.hooks.scale_weighting import ScaleWeighting
from rcnnlab.engine.hooks.step_losses import StepLosses
from rcnnlab.engine.hooks.throughput import Throughput
from rcnnlab.engine.hooks.time_budget import TimeBudget
from rcnnlab.engine.loop import HookBase, TrainLoop
from rcnnlab.engine.optim import build_optimizer, build_scheduler
from rcnnlab.engine.precision import MixedPrecision
from rcnnlab.engine.progress import ProgressReporter
from rcnnlab.errors import ConfigError
from rcnnlab.methods.scale_weighting import ScaleLossWeighting
from rcnnlab.models.anchor_fit import auto_anchors
from rcnnlab.models.architecture import build_model, level_anchors, level_strides
from rcnnlab.models.heads import RoIClassifierLoss
from rcnnlab.models.losses import class_counts, inverse_frequency_weights
from rcnnlab.models.precision import native_bf16
from rcnnlab.models.weights import load_weights_file
from rcnnlab.runs.checkpoint import Checkpoint
from rcnnlab.runs.device import peak_memory_mb, resolve_device
from rcnnlab.runs.distributed import World, init_distributed
from rcnnlab.runs.environment import environment_rows
from rcnnlab.runs.rundir import RunDir

log = logging.getLogger(__name__)


@dataclass
class FitResult:
    """What a finished training run reports."""

    run_dir: Path
    config: Config  # as trained (fitted anchors included): the run's config.yaml
    train_images: int
    best_epoch: int
    best_map: float
    epochs: int
    iterations: int
    train_seconds: float
    train_images_per_s: float
    peak_memory_mb: float
    # best.pt's checkpoint in memory, as this process saved it (None when the best epoch came
    # before a resume, and on ranks other than 0)
    best: Checkpoint | None = field(default=None, repr=False)


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def with_fitted_anchors(cfg: Config, train: CocoData) -> Config:
    """With `model.anchors: auto`, a copy of `cfg` whose anchors are fitted to the training
    boxes (`anchors: given` with the fitted sizes and ratios); else `cfg` itself."""
    if cfg.model.anchors != "auto":
        return cfg
    m = cfg.model
    strides = level_strides(m)
    sizes, ratios = level_anchors(m)
    fit = auto_anchors(
        train, num_levels=len(strides), min_size=m.min_size, max_size=m.max_size,
        native_size=m.native_size, default_sizes=[list(s) for s in sizes],
        default_ratios=[list(r) for r in ratios], strides=strides, seed=cfg.train.seed)
    log.info("auto anchors: %s", fit.summary())
    model = m.model_copy(update={"anchor_sizes": fit.sizes, "aspect_ratios": fit.ratios,
                                 "anchors": "given"})
    return cfg.model_copy(update={"model": model})


def classifier_loss(cfg: Config, train: CocoData,
                    generator: torch.Generator) -> RoIClassifierLoss:
    """The RoI classifier's loss from `train.roi_loss` and its options."""
    t = cfg.train
    weights = None
    if t.class_weights == "inverse_frequency":
        weights = inverse_frequency_weights(class_counts(train))
    elif t.class_weights is not None:
        if len(t.class_weights) != len(train.categories):
            raise ConfigError(
                f"train.class_weights has {len(t.class_weights)} values but the data has "
                f"{len(train.categories)} classes (ids {train.category_ids}); give one weight "
                "per class in id order, or inverse_frequency")
        weights = torch.tensor([1.0, *t.class_weights])
    if weights is not None:
        log.info("class weights (background first): %s",
                 ", ".join(f"{w:.3f}" for w in weights.tolist()))
    return RoIClassifierLoss(
        kind=t.roi_loss, focal_alpha=t.focal_alpha, focal_gamma=t.focal_gamma,
        class_weights=weights, label_smoothing=t.label_smoothing, pg_samples=t.pg_samples,
        pg_gamma=t.pg_gamma, pg_nms_iou=cfg.model.box_nms_thresh, generator=generator)


def train_sampler(cfg: Config, dataset: CocoDetection, generator: torch.Generator,
                  world: World | None = None):
    """Shuffling, or repeat-factor sampling when `data.repeat_factor_threshold` is set; under
    data-parallel training, this rank's shard of it (every rank's `generator` is seeded alike)."""
    threshold = cfg.data.repeat_factor_threshold
    if threshold is None:
        sampler = RandomSampler(dataset, generator=generator)
    else:
        factors = repeat_factors(dataset.data, threshold)
        log.info("repeat-factor sampling (t=%g): %d of %d images repeated, factors up to "
                 "%.2f, %d samples an epoch", threshold, int((factors > 1).sum()),
                 len(factors), float(factors.max()), round(float(factors.sum())))
        sampler = RepeatFactorSampler(factors, generator=generator)
    if world is not None and world.distributed:
        return ShardedSampler(sampler, world.rank, world.size)
    return sampler


def _seed_worker(rank_offset: int, worker_id: int) -> None:
    """A loader worker's random streams, offset by its rank (torch seeds every rank's workers
    from the same shared generator)."""
    seed = (torch.initial_seed() + rank_offset) % 2**63
    torch.manual_seed(seed)
    random.seed(seed)
    np.random.seed(seed % 2**32)


def build_detector(cfg: Config, train_data: CocoData,
                   pg_generator: torch.Generator) -> tuple[Config, nn.Module]:
    """The detector to train: anchors fitted (`model.anchors: auto`), the RoI classifier's loss
    chosen, weights of `train.finetune_from` loaded. Returns the config as trained, too."""
    cfg = with_fitted_anchors(cfg, train_data)
    model = build_model(cfg.model, num_classes=len(train_data.categories) + 1,
                        classifier_loss=classifier_loss(cfg, train_data, pg_generator),
                        multiscale_sizes=cfg.augment.multiscale_sizes)
    if cfg.train.finetune_from:
        log.info("fine-tuning from %s: %s", cfg.train.finetune_from,
                 load_weights_file(model, cfg.train.finetune_from))
    return cfg, model


def fit_model(cfg: Config, splits: dict[str, CocoData],
              evaluate: Callable[[nn.Module, CocoData], dict[str, Any]], *,
              resume: bool = False, reporter: ProgressReporter | None = None,
              extra_hooks: Sequence[HookBase] = ()) -> FitResult:
    """Train the run `cfg` describes on `splits["train"]`, validating on `splits["valid"]`
    with `evaluate(model, data)` (continuing from its last.pt when `resume`). `extra_hooks` are
    extra training-time features, called after the configured methods' hooks and before
    validation, the metrics writer and the checkpoints."""
    t = cfg.train
    if t.threads:
        torch.set_num_threads(t.threads)
    world, device = init_distributed(resolve_device(t.device))
    if t.sync_bn and device.type != "cuda":
        raise ConfigError(f"train.sync_bn=true on {device}: torch's SyncBatchNorm runs on GPUs "
                          "only. Fix: train.sync_bn=false (on the CPU the processes keep their "
                          "own BatchNorm statistics), or train on CUDA")
    main = world.is_main
    seed_everything(t.seed)  # every rank builds the same initial model
    train_data, valid_data = splits["train"], splits["valid"]
    # the policy gradient's actions: a stream of their own, saved in last.pt
    pg_generator = torch.Generator().manual_seed(world.seed(t.seed + 1))
    cfg, model = build_detector(cfg, train_data, pg_generator)
    if t.sync_bn and world.distributed:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if t.channels_last:  # convolutions run in NHWC, which oneDNN and cuDNN often prefer
        # the whole model, not only the backbone: the RPN head's convolutions see NHWC
        # features, and DDP's gradient buckets must have the layout of the gradients
        model.to(memory_format=torch.channels_last)
    forward = model
    if world.distributed:
        # each rank augments and samples its own way; the shuffle below stays shared
        seed_everything(world.seed(t.seed))
        forward = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
    train_set = CocoDetection(train_data)
    valid_set = CocoDetection(valid_data, transforms=to_model_input())
    generator = torch.Generator().manual_seed(t.seed)
    loader = DataLoader(train_set, batch_size=t.batch_size, collate_fn=collate,
                        sampler=train_sampler(cfg, train_set, generator, world),
                        num_workers=cfg.data.workers, generator=generator,
                        worker_init_fn=(functools.partial(_seed_worker, world.seed(0))
                                        if world.distributed else None))
    iters_per_epoch = min(len(loader), t.iters_per_epoch or len(loader))
    optimizer = build_optimizer(model, t)
    scheduler = build_scheduler(optimizer, t, iters_per_epoch)

    # Rank 0 alone scores validation, writes the run folder and reports; every rank detects
    # its share of the validation images and checkpoints its random state through rank 0
    # (collectives), so the validation and checkpoint hooks run everywhere.
    run = RunDir(cfg.run_dir)
    writer = MetricsWriter(run) if main else None
    checkpointer = Checkpointer(run, cfg, train_data.categories, generator, main=main)
    hooks: list[HookBase] = [
        AugmentationSchedule(cfg.augment, train_set,
                             digit_classes=digit_names(train_data.categories) is not None),
        StepLosses(),
    ]
    if t.roi_loss == "policy_gradient":
        hooks.append(PolicyGradientState(pg_generator))
    if t.scale_weighting != "none":
        weighting = ScaleLossWeighting(num_levels=len(model.rpn.anchor_generator.sizes),
                                       method=t.scale_weighting, interval=t.scale_interval,
                                       seed=t.seed)
        hooks.append(ScaleWeighting(weighting, run if main else None, writer))
    if t.ema_decay is not None:  # every rank: each validates its share with the average
        hooks.append(WeightAverage(model, decay=t.ema_decay, warmup=t.ema_warmup))
    hooks += [*extra_hooks, Throughput()]
    # every rank detects its share of the validation images; rank 0 scores them
    hooks.append(PeriodicValidation(lambda m: evaluate(m, valid_data), valid_set,
                                    period=t.eval_every, batch_size=cfg.eval.batch_size,
                                    seed=t.seed, main=main))
    if t.time_budget is not None:
        hooks.append(TimeBudget(t.time_budget, t, full_epoch=iters_per_epoch,
                                valid_images=len(valid_set), run=run if main else None))
    if main:
        hooks += [writer, checkpointer,
                  Progress(reporter or ProgressReporter(log_every=t.log_every))]
    else:
        hooks.append(checkpointer)
    precision = MixedPrecision(t.amp, device)
    if t.amp == "auto" and main:
        log.info("train.amp auto: %s on %s (%s)", precision.mode, device,
                 native_bf16(device) or "no native bf16")
    loop = TrainLoop(model, loader, optimizer, scheduler, epochs=t.epochs,
                     iters_per_epoch=iters_per_epoch, device=device, grad_clip=t.grad_clip,
                     hooks=hooks, precision=precision, forward=forward,
                     world_size=world.size)

    if main:
        run.root.mkdir(parents=True, exist_ok=True)
        run.write_config(cfg)
        # the run record names this machine even when it is rewritten on another one
        where = f"{device} (train.device: {t.device})"
        if world.distributed:
            where += f", {world.size} processes ({torch.distributed.get_backend()})"
        run.write_environment(environment_rows(where))
    if resume:
        checkpointer.resume()
    loop.train()
    return FitResult(run.root, cfg, len(train_data.images), checkpointer.best_epoch,
                     checkpointer.best_map, loop.epoch, loop.iteration, loop.train_seconds,
                     loop.images_seen / max(loop.train_seconds, 1e-9), peak_memory_mb(device),
                     checkpointer.best)
