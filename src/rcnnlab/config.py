"""Typed run configuration: YAML files with `base:` inheritance plus dotted CLI overrides.

A config is a tree of pydantic models, one section per stage of the pipeline
(data -> model -> train -> evaluation/predict). Each stage reads only its own section.
Unknown keys are errors, so a typo in a YAML file or an override never passes silently.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rcnnlab.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits true / false (bool, or Any, among its arguments; or a
    validator of its own that reads them, as `off` for the amp modes)."""
    if annotation is bool or annotation is Any or isinstance(annotation, BeforeValidator):
        return True
    return any(_takes_bool(arg) for arg in get_args(annotation))


class _Section(BaseModel):
    # inf passes every lower bound (train.lr=inf would train), so no number may be infinite
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_for_a_number(cls, value: Any, info: ValidationInfo) -> Any:
        # pydantic reads true as 1 and false as 0: train.epochs=true would train one epoch
        field = cls.model_fields.get(info.field_name or "")
        if isinstance(value, bool) and field is not None and not _takes_bool(
                field.annotation) and not any(_takes_bool(m) for m in field.metadata):
            raise ValueError("true / false where a value of another type is expected")
        return value


# ------------------------------------------------------------------------------------ data
class SynthConfig(_Section):
    """The embedded default dataset: generated house numbers (written once, reused after)."""

    # generated house numbers (the demo's data): where train/, valid/ and test/ are written when
    # absent
    out_dir: str = "data/synth"
    # generated training images
    n_train: int = 4000
    # generated validation images (threshold tuning, best checkpoint)
    n_valid: int = 300
    # generated test images
    n_test: int = 500
    # generator seed: the same seed gives byte-identical files
    seed: int = Field(0, ge=0)


class DataConfig(_Section):
    """Where the COCO splits live; a split's image root defaults to its json's folder."""

    # a YOLO dataset's data.yaml: its train, val and test folders fill the data.*_json keys left
    # unset (read as Ultralytics reads it: its path:, Roboflow's ../ fallback, images/ -> labels/)
    yolo: str | None = None
    # COCO json of the training split, or a YOLO data.yaml (the split of the same role;
    # data.yaml:KEY reads the folder of that key)
    train_json: str | None = None
    # image folder of the training split (default: the json's folder, or its images/ subfolder)
    train_images: str | None = None
    # COCO json of the validation split (the best checkpoint and the tuned threshold come from it),
    # or a YOLO data.yaml
    valid_json: str | None = None
    # image folder of the validation split
    valid_images: str | None = None
    # COCO json of the test split (optional), or a YOLO data.yaml
    test_json: str | None = None
    # image folder of the test split
    test_images: str | None = None
    # hold this share of the training images out as valid when no valid json is given
    # (deterministic, every class in valid where possible)
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)
    # seed of that hold-out split
    split_seed: int = Field(0, ge=0)
    # drop records whose image file is missing (counted) instead of stopping
    skip_missing_images: bool = False
    # images with more pixels are refused before they are decoded (a decompression bomb never loads)
    max_image_pixels: PositiveInt = 100_000_000
    # generated house numbers as the data (null = none): written once, reused after
    synth: SynthConfig | None = None
    # DataLoader worker processes (0 = load in the main process)
    workers: int = Field(0, ge=0)
    # repeat-factor sampling (LVIS, Gupta et al. 2019): an image is repeated max(1, sqrt(t / f_c))
    # times an epoch for its rarest class c, f_c the share of training images holding c
    # (detectron2's stochastic rounding); null = plain shuffling. An epoch is round(sum r_i) images:
    # cap it with train.iters_per_epoch to compare at equal iterations
    repeat_factor_threshold: float | None = Field(None, gt=0, le=1)


# ------------------------------------------------------------------------------------ model
ARCHS = (
    "fasterrcnn_resnet50_fpn",
    "fasterrcnn_resnet50_fpn_v2",
    "fasterrcnn_mobilenet_v3_large_fpn",
    "resnet18_fpn",
    "resnet34_fpn",
    "resnet50_fpn",
)
"""The detector architectures `model.arch` takes."""


class ModelConfig(_Section):
    """Detector architecture and its budgets; passed as keyword arguments to build_model."""

    # resnet18_fpn, resnet34_fpn, resnet50_fpn (small-object anchors, no detector weights),
    # fasterrcnn_resnet50_fpn, fasterrcnn_resnet50_fpn_v2, fasterrcnn_mobilenet_v3_large_fpn
    # (torchvision's, with COCO weights as enums)
    arch: Literal[ARCHS] = "resnet18_fpn"
    # detector weights: null, a torchvision enum name (FasterRCNN_ResNet50_FPN_Weights.COCO_V1,
    # DEFAULT) or a local .pt file; the box predictor is always rebuilt for the dataset's classes
    weights: str | None = None
    # the same for the backbone only (ResNet18_Weights.IMAGENET1K_V1, DEFAULT, a file)
    backbone_weights: str | None = None
    # trunk stages trained (null = all without pretrained weights, 3 with)
    trainable_backbone_layers: int | None = Field(None, ge=0, le=5)
    # a residual block (3x3 conv-BN-ReLU-3x3 conv-BN + identity) after every FPN output
    residual_fpn: bool = False
    # the FPN levels kept, by stride (4 = P2 ... 32 = P5, 64 = the max-pool level, which needs 32;
    # null = all five); a trunk stage past the last level is not computed; default anchors are 4x
    # each level's stride (resnet*_fpn archs)
    fpn_strides: list[Literal[4, 8, 16, 32, 64]] | None = Field(None, min_length=1)
    # the FPN's channels, so also the RPN head's and RoIAlign's (resnet*_fpn archs; 128 trains 1.9x
    # faster than 256 on a CPU; null = the arch's own, 256)
    fpn_channels: PositiveInt | None = 256
    # RoIAlign's output grid (n x n) per RoI (5 makes RoIAlign and the box head's first layer ~2x
    # cheaper than 7)
    roi_output_size: PositiveInt = 7
    # RoIAlign's samples per bin side (0 = adaptive)
    roi_sampling_ratio: int = Field(2, ge=0)
    # the box head's fully connected width
    box_head_dim: PositiveInt = 1024
    # given: model.anchor_sizes / aspect_ratios (or the arch's); auto: fit sizes and ratios per
    # level to the training boxes at the training scale (the log shows the share of boxes whose best
    # anchor reaches IoU 0.5 / 0.7 before and after; the fitted values are written into the run's
    # config.yaml)
    anchors: Literal["given", "auto"] = "given"
    # anchor sizes (sqrt of area, px of the network input), one list per FPN level; null = the
    # arch's default
    anchor_sizes: list[list[PositiveInt]] | None = None
    # anchor h/w ratios: one list per level, or one list for every level; null = the arch's default
    aspect_ratios: list[list[PositiveFloat]] | list[PositiveFloat] | None = None
    # short side after resize; with native_size the cap on it (larger images shrink, smaller ones
    # are not enlarged)
    min_size: int = Field(800, ge=32)
    # cap on the long side after resize
    max_size: int = Field(1333, ge=32)
    # never upscale: scale = min(1, min_size / short side, max_size / long side)
    native_size: bool = False
    # RPN proposals kept per level before NMS, training
    rpn_pre_nms_top_n_train: PositiveInt = 2000
    # the same at test time
    rpn_pre_nms_top_n_test: PositiveInt = 1000
    # RPN proposals kept per image after NMS, training
    rpn_post_nms_top_n_train: PositiveInt = 2000
    # the same at test time (what the box head scores; eval.proposals overrides it at inference)
    rpn_post_nms_top_n_test: PositiveInt = 1000
    # anchors sampled per image for the RPN loss
    rpn_batch_size_per_image: PositiveInt = 256
    # RoIs sampled per image for the box head's loss
    box_batch_size_per_image: PositiveInt = 512
    # detections kept per image
    box_detections_per_img: PositiveInt = 100
    # detections below this score are dropped
    box_score_thresh: float = Field(0.05, ge=0, lt=1)
    # the box head's NMS IoU, per class
    box_nms_thresh: float = Field(0.5, gt=0, le=1)


# ------------------------------------------------------------------------------------ augmentation
class AugmentConfig(_Section):
    """Box-aware training augmentation (torchvision transforms v2)."""

    # false switches all augmentation off
    enabled: bool = True
    # probability of ColorJitter (box-aware torchvision transforms v2)
    hsv_prob: float = Field(0.5, ge=0, le=1)
    # ColorJitter's brightness range
    brightness: float = Field(0.3, ge=0, le=1)
    # ColorJitter's contrast range
    contrast: float = Field(0.3, ge=0, le=1)
    # ColorJitter's saturation range
    saturation: float = Field(0.3, ge=0, le=1)
    # ColorJitter's hue range
    hue: float = Field(0.05, ge=0, le=0.5)
    # horizontal flip (a warning on digit datasets: a mirrored digit is no digit)
    flip_prob: float = Field(0.0, ge=0, le=1)
    # probability of a random affine; a box becomes the rectangle around its 4 moved corners, is
    # clipped, and dropped (counted in metrics.csv as boxes_dropped) if it collapses
    affine_prob: float = Field(0.5, ge=0, le=1)
    # the affine's rotation range, +- degrees
    degrees: float = Field(5.0, ge=0, le=180)
    # the affine's translation, share of width / height
    translate: float = Field(0.05, ge=0, le=1)
    # the affine's shear range, +- degrees
    shear: float = Field(2.0, ge=0, lt=90)
    # the affine's scale range
    scale: tuple[float, float] = (0.9, 1.1)
    # AutoAugment's SVHN policy restricted to colour ops (23 sub-policies; boxes never move)
    svhn_policy_prob: float = Field(0.0, ge=0, le=1)
    # multi-scale training: the short side (px) drawn per batch from this list, every image of the
    # batch rescaled to it (long side still capped at model.max_size); evaluation keeps
    # model.native_size / min_size; [] = off
    multiscale_sizes: list[PositiveInt] = []
    # augmentation (multi-scale included) off for the last N epochs; the log says augmentation off
    no_aug_epochs: int = Field(1, ge=0)
    # training window: each training image is cut to a random crop_size x crop_size window at its
    # own scale (shorter sides kept whole; boxes less than half inside dropped, counted); null =
    # whole images. Small objects in large images: more of them a second. It is the training
    # input, not an augmentation: kept in the augmentation-off epochs; evaluation sees whole images
    crop_size: PositiveInt | None = None

    @field_validator("scale")
    @classmethod
    def _scale_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0 < low <= high:
            raise ValueError("the scale range must be 0 < low <= high, e.g. [0.9, 1.1]")
        return value


# ------------------------------------------------------------------------------------ training
# Keys renamed since runs were first saved: old -> new (a saved config is migrated, a user's
# YAML or override gets an error naming the new key).
RENAMED_TRAIN_KEYS = {"objective": "roi_loss", "cls_loss": "roi_loss"}


def _off_is_a_word(value: Any) -> Any:
    """YAML 1.1 reads a bare `off` as false (`train.amp=off`): the mode named off."""
    return "off" if value is False else value


# train.amp / eval.amp: off, auto, bf16 or fp16
AmpMode = Annotated[Literal["off", "auto", "bf16", "fp16"], BeforeValidator(_off_is_a_word)]


class TrainConfig(_Section):
    """Optimisation, schedule, checkpoints and budgets of one run."""

    # passes over the training split (a time budget chooses them instead)
    epochs: PositiveInt = 12
    # images per iteration (per process under torchrun)
    batch_size: PositiveInt = 4
    # cap on the iterations of an epoch (null = a full pass)
    iters_per_epoch: PositiveInt | None = None
    # minutes of wall time for training and validation (Ultralytics' time=): after the first
    # iterations the speed is measured and the epochs, their length (at most a full pass), the LR
    # schedule, its warm-up (at most a tenth of the run) and the augmentation-off tail are fitted to
    # end within the budget; refitted after every epoch; train.epochs is then ignored;
    # time_budget.json and the record say what it chose (at most a year: 525600)
    time_budget: float | None = Field(None, gt=0, le=525_600)
    # adamw or sgd (fused kernels)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    # peak learning rate (the backbone trunk learns at lr x backbone_lr_mult)
    lr: float = Field(1e-3, gt=0)
    # the backbone trunk learns at lr x this (below 1 suits pretrained weights; from scratch 1.0
    # measured better on ORAND)
    backbone_lr_mult: float = Field(0.5, ge=0)
    # weight decay
    weight_decay: float = Field(1e-4, ge=0)
    # SGD momentum (AdamW uses its betas)
    momentum: float = Field(0.9, ge=0, lt=1)
    # per-iteration linear warm-up, then cosine to eta_min x lr, multistep (epochs) or constant
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    # linear warm-up, in iterations
    warmup_iters: int = Field(200, ge=0)
    # learning rate at iteration 0, as a share of lr
    warmup_factor: float = Field(0.001, gt=0, le=1)
    # cosine floor, as a share of lr
    eta_min: float = Field(0.0, ge=0, le=1)
    # multistep: epochs at which the learning rate is multiplied by gamma
    milestones: list[PositiveInt] = [8, 11]
    # multistep: the factor
    gamma: float = Field(0.1, gt=0)
    # max global gradient norm (null = off)
    grad_clip: float | None = Field(10.0, gt=0)
    # moving average of the weights (YOLOX / Ultralytics ModelEMA) for validation, best.pt,
    # prediction and the record (null = off): after each step ema = d x ema + (1 - d) x weights, d =
    # ema_decay x (1 - exp(-step / ema_warmup)); kept in last.pt (resume exact). E.g. 0.9998
    ema_decay: float | None = Field(None, gt=0, lt=1)
    # iterations over which the EMA's decay ramps up (YOLOX's 2000)
    ema_warmup: PositiveInt = 2000
    # convolutions (backbone, FPN, RPN head) in NHWC memory order, which oneDNN and cuDNN prefer
    # (CPU and CUDA); the weights saved are the same numbers, and a checkpoint so trained predicts
    # so
    channels_last: bool = False
    # mixed precision of the training step: bf16 (CPU and CUDA, torch.autocast, no scaling), fp16
    # (CUDA only, with a gradient scaler whose state last.pt keeps), off, or auto = bf16 where the
    # device computes it natively (a CUDA GPU that supports it; a CPU whose /proc/cpuinfo lists
    # avx512_bf16, amx_bf16 or Arm's bf16), else off; the heads hand on float32, so anchors,
    # proposals, box coding, samplers and losses are float32
    amp: AmpMode = "off"
    # under torchrun on GPUs: BatchNorm statistics over all processes (SyncBatchNorm; refused on the
    # CPU); only matters for trainable BatchNorm (no pretrained weights)
    sync_bn: bool = False
    # start from another checkpoint's weights, not its state (the predictor is rebuilt if the
    # classes differ)
    finetune_from: str | None = None
    # seed of the model's initialisation, the shuffling, augmentation and samplers
    seed: int = Field(0, ge=0)
    # auto (CUDA when present), cpu, cuda or cuda:N
    device: str = "auto"
    # torch CPU threads (null = torch's default)
    threads: PositiveInt | None = None
    # validation every N epochs (and always after the last)
    eval_every: PositiveInt = 1
    # a plain-text progress line every N iterations when not on a terminal
    log_every: PositiveInt = 20
    # write the run record (report.md, report.html, figures/) after training
    record: bool = True

    # --- RoI classifier loss (the box loss stays smooth-L1 in every case): ce, focal,
    # weighted_ce, or policy_gradient (Rao et al. 2018's eq. 11, a fine-tuning stage: pair it
    # with finetune_from and a ~10x lower lr)

    # the RoI classifier's loss: ce, focal (softmax focal loss; focal_alpha for foreground, 1 -
    # alpha for background), weighted_ce, or policy_gradient (Rao et al. 2018's global mAP
    # objective, a fine-tuning stage: use with finetune_from and a ~10x lower lr; each candidate
    # RoI's cross-entropy is scaled by (r(b) - r') + gamma, eq. 11); the box loss stays smooth-L1
    roi_loss: Literal["ce", "focal", "weighted_ce", "policy_gradient"] = "ce"
    # focal: the foreground's alpha (null = none)
    focal_alpha: float | None = Field(0.25, ge=0, le=1)
    # focal: the focusing exponent (0 with alpha null is cross-entropy)
    focal_gamma: float = Field(2.0, ge=0)
    # weighted_ce: one weight per class in category-id order, or inverse_frequency (1 / share of
    # training boxes, foreground weights averaging 1); background 1; the loss is divided by the RoI
    # count, so unit weights give cross-entropy
    class_weights: list[Annotated[float, Field(ge=0)]] | Literal["inverse_frequency"] | None = None
    # ce / weighted_ce: label smoothing eps of the RoI classifier (the target is 1 - eps on the true
    # class plus eps / (C + 1) on each class, background included); refused with focal and
    # policy_gradient
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # policy gradient: actions sampled per image (k); r(b) is the image's COCO AP averaged over them
    pg_samples: PositiveInt = 10
    # policy gradient: + gamma x cross-entropy (0 = the policy gradient alone)
    pg_gamma: float = Field(1.0, ge=0)

    # --- multi-scale loss weighting (Luo et al.): weights per FPN level, updated every interval

    # none, avw or rlo (Luo et al.): the loss split by FPN level (RPN anchors by their level, RoIs
    # by the level they are pooled from) and weighted per level; written to scale_weights.csv /
    # .png, TensorBoard and metrics.csv (w_level*)
    scale_weighting: Literal["none", "avw", "rlo"] = "none"
    # AVW / RLO: iterations per interval (alpha); the weights are reset every interval
    scale_interval: PositiveInt = 100

    @model_validator(mode="before")
    @classmethod
    def _renamed_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for old, new in RENAMED_TRAIN_KEYS.items():
                if old in data:
                    raise ValueError(
                        f"train.{old} is now train.{new} (one key for the RoI classifier's "
                        "loss: ce, focal, weighted_ce or policy_gradient). Fix: e.g. "
                        f"train.{new}=policy_gradient instead of train.objective=policy_gradient")
        return data


# ------------------------------------------------------------------------------------ evaluation
class EvalConfig(_Section):
    """COCO evaluation, the confidence-threshold sweep and the inference options.

    The inference options (NMS choice, Soft-NMS, TTA, eval.amp, eval.proposals) apply to the
    per-epoch validation of training, `evaluate`, `tune` and `predict`; the last three also take
    them as `eval.*` overrides of a trained run.
    """

    def inference_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of inference.predictor.Predictor (and of detect_dataset)."""
        return self.model_dump(include={"nms", "nms_iou", "soft_nms_sigma", "tta_scales",
                                        "tta_hflip", "tta_merge", "tta_iou", "amp",
                                        "proposals"})

    def with_overrides(self, overrides: list[str]) -> EvalConfig:
        """A copy with `eval.key=value` overrides applied; any other key is a ConfigError.

        Used on a trained run, whose model and data are fixed: only this section may change.
        """
        for item in overrides:
            key = item.partition("=")[0].strip()
            if "=" in item and not key.startswith("eval."):
                raise ConfigError(
                    f"override {item!r}: only eval.* options apply to a trained run (e.g. "
                    "eval.nms=gaussian eval.tta_scales=[1,1.5]); for model.box_nms_thresh use "
                    "eval.nms_iou. Fix: train a new run to change other sections")
        tree = apply_overrides({"eval": self.model_dump()}, overrides)
        try:
            return EvalConfig.model_validate(tree["eval"])
        except ValidationError as exc:
            raise ConfigError(f"invalid eval override: {problems(exc, 'eval')}") from None

    def sweep_thresholds(self) -> list[float]:
        """The thresholds `tune` sweeps: sweep_min, + sweep_step, ..., sweep_max (inclusive)."""
        n = int(round((self.sweep_max - self.sweep_min) / self.sweep_step)) + 1
        return [round(self.sweep_min + i * self.sweep_step, 4) for i in range(n)]

    @model_validator(mode="after")
    def _check_ranges(self) -> EvalConfig:
        if self.sweep_min > self.sweep_max:
            raise ValueError(f"eval.sweep_min {self.sweep_min} is above eval.sweep_max "
                             f"{self.sweep_max}: give the low end first")
        if any(s <= 0 for s in self.tta_scales):
            raise ValueError(f"tta_scales must all be > 0, got {self.tta_scales}")
        return self

    # faster (faster-coco-eval) or pycocotools; identical stats
    backend: Literal["faster", "pycocotools"] = "faster"
    # the threshold sweep of rcnnlab tune: from
    sweep_min: float = Field(0.45, ge=0, le=1)
    # to (inclusive)
    sweep_max: float = Field(0.90, ge=0, le=1)
    # in steps of
    sweep_step: float = Field(0.01, gt=0)
    # the sequence threshold before rcnnlab tune has run
    default_threshold: float = Field(0.5, ge=0, le=1)
    # reading a number: a digit detection that overlaps a higher-scored one of any class by more
    # than this IoU is left out (the box head's NMS is per class, so one handwritten digit often
    # comes back as two classes); applies to tune, sequence accuracy, pred.csv, Result.number and
    # the record; pred.json keeps every detection; null reads every detection above the threshold
    read_iou: float | None = Field(None, gt=0, le=1)
    # images per inference batch
    batch_size: PositiveInt = 8
    # the box head's per-class suppression at inference: nms (hard), linear or gaussian Soft-NMS
    # (Bodla et al. 2017: scores decay by 1 - IoU above nms_iou, or by exp(-IoU^2 / sigma); decayed
    # below model.box_score_thresh dropped)
    nms: Literal["nms", "linear", "gaussian"] = "nms"
    # its IoU (null = model.box_nms_thresh)
    nms_iou: float | None = Field(None, gt=0, le=1)
    # Gaussian Soft-NMS: score x exp(-IoU^2 / sigma)
    soft_nms_sigma: float = Field(0.5, gt=0)
    # test-time augmentation: one pass per image scale factor (1.0 = as is; bilinear, so native-size
    # models see the rescaled image); boxes mapped back and clipped to the image
    tta_scales: list[float] = Field([1.0], min_length=1)
    # test-time augmentation: also the mirrored image (refused on digit datasets: a mirrored digit
    # is no digit)
    tta_hflip: bool = False
    # how test-time passes merge: nms, or wbf (weighted boxes fusion, Solovyev et al. 2021); capped
    # at model.box_detections_per_img
    tta_merge: Literal["nms", "wbf"] = "nms"
    # the IoU at which test-time passes' boxes merge
    tta_iou: float = Field(0.55, gt=0, le=1)
    # inference with the backbone in bf16 (CPU, CUDA) or fp16 (CUDA only) under autocast, auto as
    # for train.amp; the RPN and box heads, and so the box coordinates, stay float32 (bf16's 8-bit
    # mantissa would round an 800-px coordinate to 4 px)
    amp: AmpMode = "off"
    # RPN proposals per image the box head scores at inference (null =
    # model.rpn_post_nms_top_n_test); its cost grows with them: 30 instead of 100 made ORAND
    # inference 1.7x faster at the same mAP
    proposals: PositiveInt | None = None


# ------------------------------------------------------------------------------------ plan
class PlanRecord(_Section):
    """What the planner chose for this run and why (`rcnnlab plan`, or `rcnnlab train` without a
    recipe). Written by the planner and kept with the run; training reads nothing from it."""

    data: str  # the training split the plan was made from
    device: str  # the device planned for
    machine: str  # that device in words
    budget_minutes: float | None = None  # the time budget planned for
    fingerprint: dict[str, Any]  # the dataset's statistics the rules read
    choices: list[dict[str, Any]]  # per decision: its topic, the values it set, its reason

    def rows(self, cfg: Config | None = None) -> list[tuple[str, str, str]]:
        """(topic, its values as `key=value` text, reason) per choice; with the run's `cfg`, a
        value the run changed reads `key=value (planned: value)`."""
        out = []
        for choice in self.choices:
            cells = []
            for key, planned in choice["values"].items():
                text = f"{key}={value_text(planned)}"
                if cfg is not None and cfg.value(key) != planned:
                    text = f"{key}={value_text(cfg.value(key))} (planned: {value_text(planned)})"
                cells.append(text)
            out.append((choice["topic"], " ".join(cells), choice["reason"]))
        return out

    def table(self, cfg: Config | None = None) -> str:
        """The plan as a text table: each choice, its values (see `rows`) and its reason."""
        budget = (f"{self.budget_minutes:g} minutes" if self.budget_minutes
                  else "no time budget")
        rows = self.rows(cfg)
        width = max(len(topic) for topic, _, _ in rows)
        lines = [f"plan for {self.data} on {self.device} ({self.machine}), {budget}:"]
        for topic, values, reason in rows:
            lines += [f"  {topic:<{width}}  {values}", f"  {'':<{width}}  -> {reason}"]
        return "\n".join(lines)


def value_text(value: Any) -> str:
    """A config value as it is written on the command line (`null`, `true`, `[8, 16]`)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


class Config(_Section):
    """One run: name and output folder, then the sections in pipeline order.

    `Config()` and `load_config(None)` hold the defaults below and plan nothing; the plan for
    the data (what `rcnnlab train` without `-c` trains) comes from `rcnnlab.api.configure`."""

    # the run folder is out_dir/name
    name: str = "run"
    # the folder that holds the run folders
    out_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    # what the planner chose and why (rcnnlab plan, or rcnnlab train without -c); written by the
    # planner, read by nothing in training
    plan: PlanRecord | None = None

    @field_validator("name")
    @classmethod
    def _a_folder_name(cls, name: str) -> str:
        if not name or name in (".", "..") or "/" in name or "\\" in name:
            raise ValueError("give a plain folder name (no '/', not '..'): the run folder is "
                             "out_dir/name")
        return name

    @model_validator(mode="after")
    def _check(self) -> Config:
        t = self.train
        if (t.class_weights is None) == (t.roi_loss == "weighted_ce"):
            raise ValueError("train.class_weights is needed by train.roi_loss=weighted_ce and "
                             "only by it (a list per class, or inverse_frequency)")
        if t.label_smoothing and t.roi_loss not in ("ce", "weighted_ce"):
            raise ValueError(f"train.label_smoothing is for train.roi_loss=ce or weighted_ce, not "
                             f"{t.roi_loss}. Fix: train.label_smoothing=0 or train.roi_loss=ce")
        if self.augment.no_aug_epochs > self.train.epochs:
            self.augment.no_aug_epochs = self.train.epochs
        return self

    def value(self, key: str) -> Any:
        """The value of a dotted key (`train.lr`), lists and tuples as lists."""
        node: Any = self
        for part in key.split("."):
            node = getattr(node, part)
        return list(node) if isinstance(node, tuple) else node

    @property
    def run_dir(self) -> Path:
        """The folder every output of this run is written to."""
        return Path(self.out_dir) / self.name


# ------------------------------------------------------------------------------------ loading
def config_keys(model: type[BaseModel] = None, prefix: str = "") -> list[str]:
    """Every dotted key of the config (of `model`'s section), e.g. ``train.lr``."""
    keys = []
    for name, info in (model or Config).model_fields.items():
        key = f"{prefix}{name}"
        keys.append(key)
        section = info.annotation
        for arg in getattr(section, "__args__", ()):  # SynthConfig | None
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                section = arg
        if isinstance(section, type) and issubclass(section, BaseModel):
            keys += config_keys(section, f"{key}.")
    return keys


def problems(exc: ValidationError, section: str = "") -> str:
    """A validation error in one line: "key.path: what is wrong; ..." (keys under `section`);
    an unknown key gets the closest known one as a "did you mean"."""
    parts = []
    for err in _most_telling(exc.errors()):
        loc = ".".join([*([section] if section else []), *(str(p) for p in err["loc"])])
        message = err["msg"].removeprefix("Value error, ")
        # a check across sections (Config._check) has no key path: its message names the keys
        text = f"{loc}: {message}" if loc else message
        if loc and err["type"] != "extra_forbidden" and "input" in err \
                and not isinstance(err["input"], dict | list):
            text += f" (given: {err['input']!r})"
        if err["type"] == "extra_forbidden":  # the closest key of the same section
            parent, _, leaf = loc.rpartition(".")
            siblings = {k.rpartition(".")[2]: k for k in config_keys()
                        if k.rpartition(".")[0] == parent}
            close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
            text += f" (did you mean {siblings[close[0]]}?)" if close else ""
        parts.append(text)
    return "; ".join(parts)


def _most_telling(errors: list[dict]) -> list[dict]:
    """Pydantic's errors without its union bookkeeping: the member types it tried leave the
    key path ("list[constrained-float]"), and of a key's several errors the ones about a wrong
    value are kept over "should be a valid list" from the members the value was not meant for."""
    for err in errors:
        err["loc"] = tuple(p for p in err["loc"] if not (isinstance(p, str) and (
            "[" in p or p.startswith("constrained-") or p in ("int", "float", "str", "list",
                                                              "bool", "none"))))
    by_key: dict[tuple, list[dict]] = {}
    for err in errors:
        by_key.setdefault(err["loc"][:2], []).append(err)
    kept = []
    for group in by_key.values():
        telling = [e for e in group if not e["type"].endswith("_type")] or group
        # a list checked against a choice of words: the list member's own error says more
        telling = [e for e in telling if not (e["type"] == "literal_error" and isinstance(
            e.get("input"), list | dict))] or telling
        for err in telling:
            if not any(err["loc"] == k["loc"] and err["msg"] == k["msg"] for k in kept):
                kept.append(err)
    return kept


def check_threshold(value: float | None, what: str = "threshold") -> float | None:
    """A score threshold given as an option (None = the tuned one): in 0-1, or a ConfigError
    naming `what` and the value."""
    if value is not None and (isinstance(value, bool) or not 0.0 <= value <= 1.0):
        raise ConfigError(f"{what} {value!r} is out of range: give a score threshold in 0-1 "
                          "(or none for the tuned one)")
    return value


def section_with(section_type: type[S], section: S | None, options: dict[str, Any],
                 key: str) -> S:
    """A config section (`section`, or the defaults) with keyword `options` applied and
    validated, for components built from their section or its fields given in Python; bad
    options are a ConfigError naming `key.<field>`."""
    try:
        return section_type.model_validate({**(section.model_dump() if section else {}),
                                            **options})
    except ValidationError as exc:
        raise ConfigError(f"invalid {key} options: {problems(exc, key)}") from None


def deep_merge(base: dict, override: dict) -> dict:
    """Return `base` updated recursively by `override` (dicts merge, everything else replaces)."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# The recipes shipped in the package: `-c orand` finds configs/orand.yaml here.
BUILTIN_CONFIGS = Path(__file__).resolve().parent / "configs"


def builtin_configs() -> dict[str, tuple[Path, str]]:
    """The built-in recipes: name -> (file, the first line of its leading comment)."""
    out = {}
    for path in sorted(BUILTIN_CONFIGS.glob("*.yaml")):
        first = path.read_text().splitlines()[0]
        out[path.stem] = (path, first.lstrip("#").strip() if first.startswith("#") else "")
    return out


def config_path(name: str | Path) -> Path:
    """A config file: `name` itself when it is a file, else the built-in recipe of that name
    (`orand`, `orand.yaml`); a ConfigError lists the recipes when it is neither."""
    path = Path(name)
    if path.is_file():
        return path
    builtin = BUILTIN_CONFIGS / (path.name if path.suffix in (".yaml", ".yml")
                                 else f"{path.name}.yaml")
    if len(path.parts) <= 1 and builtin.is_file():
        return builtin
    if len(path.parts) > 1 and path.parts[0] == "configs" and builtin.is_file():
        return builtin  # the repo's old configs/ folder: the recipes moved into the package
    raise ConfigError(f"{name}: config file not found. Fix: give a path to a YAML file, or "
                      f"one of the built-in recipes: {', '.join(builtin_configs())} "
                      "(rcnnlab configs lists them)")


# `base: plan` in a recipe: its keys apply on top of the plan for its data
PLAN_BASE = "plan"


def read_recipe(path: str | Path | None) -> tuple[dict, bool]:
    """A recipe's tree (its `base:` chain resolved) and whether the chain starts from the plan
    (`base: plan`); no recipe is the plan with nothing on top."""
    if path is None:
        return {}, True
    planned: list[bool] = []
    tree = read_yaml_tree(config_path(path), _planned=planned)
    return tree, bool(planned)


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (YAML keeps the last
    silently, so one of the two settings would be lost without a word)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "in a mapping", node.start_mark, f"the key {key!r} is given twice",
                    key_node.start_mark)
            seen.add(key)
        return super().construct_mapping(node, deep)


def read_yaml_tree(path: str | Path, _seen: tuple[Path, ...] = (),
                   _planned: list[bool] | None = None) -> dict:
    """Read a YAML config, resolving its `base:` chain (paths relative to the file). A chain
    that ends at `base: plan` appends True to `_planned` (see `read_recipe`)."""
    path = Path(path).resolve()
    if path in _seen:
        chain = " -> ".join(map(str, _seen))
        raise ConfigError(f"{path}: `base:` chain loops back to itself ({chain})")
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found (a `base:` names a file relative to "
                          "the config that names it)")
    try:
        tree = yaml.load(path.read_text(encoding="utf-8-sig"), Loader=_UniqueKeyLoader) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a UTF-8 text file. Fix: save the config as UTF-8 "
                          "text") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(tree, dict):
        raise ConfigError(f"{path}: a config must be a mapping of sections, "
                          f"got {type(tree).__name__}")
    base = tree.pop("base", None)
    if base == PLAN_BASE:
        if _planned is None:
            raise ConfigError(f"{path}: starts from the plan for its data (base: plan). Fix: "
                              "load it with rcnnlab.api.configure (the CLI does), or name a "
                              "recipe file as its base")
        _planned.append(True)
        return tree
    if base is None:
        return tree
    if not isinstance(base, str) or not base:
        raise ConfigError(f"{path}: base: {value_text(base)} is not a file name. Fix: base: "
                          "other.yaml (relative to this file), a recipe name, or plan")
    return deep_merge(read_yaml_tree(path.parent / base, _seen + (path,), _planned), tree)


def set_key(tree: dict, key: str, value: Any) -> None:
    """Set the dotted `key` (`train.lr`) of a config tree to `value`, making sections as
    needed."""
    node = tree
    parts = key.strip().split(".")
    for part in parts[:-1]:
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{key}: {part!r} is a value, not a section")
        node = child
    node[parts[-1]] = value


def apply_overrides(tree: dict, overrides: list[str]) -> dict:
    """Apply `a.b=c` overrides; the value is parsed as YAML (`3`, `true`, `[1, 2]`, `null`)."""
    tree = copy.deepcopy(tree)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key.path=value, e.g. train.epochs=3")
        key, raw = item.split("=", 1)
        if not all(part.strip() for part in key.split(".")):
            raise ConfigError(f"override {item!r}: no key before '=' (or an empty part in it). "
                              "Fix: write key.path=value, e.g. train.epochs=3")
        try:
            value = yaml.safe_load(raw) if raw != "" else None
        except yaml.YAMLError as exc:
            raise ConfigError(f"override {item!r}: value is not valid YAML: {exc}") from None
        try:
            set_key(tree, key, value)
        except ConfigError as exc:
            raise ConfigError(f"override {item!r}: {exc}") from None
    return tree


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Build a validated Config from an optional YAML file (or built-in recipe name: `orand`,
    `demo`, `base`) and dotted overrides. Nothing is planned: without a file the defaults of
    this module apply (`rcnnlab.api.configure` plans)."""
    tree = read_yaml_tree(config_path(path)) if path is not None else {}
    return config_of(tree, overrides, str(path) if path is not None else "config")


def config_of(tree: dict, overrides: list[str] | None = None, where: str = "config") -> Config:
    """A validated Config from a config tree with dotted overrides on top; `where` names the
    source in the error message."""
    tree = apply_overrides(tree, overrides or [])
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"{where}: invalid config: {problems(exc)}") from None


def config_from_dict(tree: dict[str, Any]) -> Config:
    """Rebuild a Config from its saved form (checkpoints, run folders), including forms saved
    before a key was renamed."""
    train = dict(tree.get("train") or {})
    if "objective" in train or "cls_loss" in train:
        objective, cls_loss = train.pop("objective", "standard"), train.pop("cls_loss", "ce")
        train["roi_loss"] = "policy_gradient" if objective == "policy_gradient" else cls_loss
        tree = {**tree, "train": train}
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(f"a saved config (config.yaml or a checkpoint's) is not valid: "
                          f"{problems(exc)}. Fix: train the run again with this version") from None

