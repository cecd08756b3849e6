"""The config sections of the pipeline's stages: data (with the generated data set), model,
augmentation and training, each a pydantic model with every key's type, range, default and
meaning (the comments above a key are its documentation: the configuration reference is
generated from them), on a strict base: unknown keys, infinite numbers and true / false for a
number are errors.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, get_args

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = ["ARCHS", "AmpMode", "AugmentConfig", "DataConfig", "ModelConfig", "RENAMED_TRAIN_KEYS",
           "Section", "SynthConfig", "TrainConfig"]


def _takes_bool(annotation: Any) -> bool:
    """Whether a field's type admits true / false (bool, or Any, among its arguments; or a
    validator of its own that reads them, as `off` for the amp modes)."""
    if annotation is bool or annotation is Any or isinstance(annotation, BeforeValidator):
        return True
    return any(_takes_bool(arg) for arg in get_args(annotation))


class Section(BaseModel):
    """The base of every config section: an unknown key, an infinite number or true / false
    for a number is an error, and so is an assignment of an ill-typed value."""

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
class SynthConfig(Section):
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


class DataConfig(Section):
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


class ModelConfig(Section):
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
class AugmentConfig(Section):
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


class TrainConfig(Section):
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
