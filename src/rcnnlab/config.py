"""Typed run configuration: YAML files with `base:` inheritance plus dotted CLI overrides.

A config is a tree of pydantic models, one section per stage of the pipeline
(data -> model -> train -> evaluation/predict). Each stage reads only its own section.
Unknown keys are errors, so a typo in a YAML file or an override never passes silently.
"""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveInt,
    ValidationError,
    model_validator,
)

from rcnnlab.errors import ConfigError

S = TypeVar("S", bound=BaseModel)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# ------------------------------------------------------------------------------------ data
class SynthConfig(_Section):
    """The embedded default dataset: generated house numbers (written once, reused after)."""

    out_dir: str = "data/synth"  # where train/, valid/, test/ are written
    n_train: int = 4000  # training images
    n_valid: int = 300  # validation images (threshold tuning, best checkpoint)
    n_test: int = 500  # held-out test images
    seed: int = 0  # generator seed: the same seed gives byte-identical files


class DataConfig(_Section):
    """Where the COCO splits live; a split's image root defaults to its json's folder."""

    # a YOLO dataset's data.yaml: its train / val / test folders fill the unset *_json below
    yolo: str | None = None
    train_json: str | None = None  # COCO json of the training split (or a YOLO data.yaml)
    train_images: str | None = None  # image folder (default: the json's folder, or its images/)
    valid_json: str | None = None  # COCO json of the validation split
    valid_images: str | None = None
    test_json: str | None = None  # COCO json of the test split (optional)
    test_images: str | None = None
    val_fraction: float = Field(0.0, ge=0.0, lt=1.0)  # hold out this share of train as valid
    split_seed: int = 0  # seed of that hold-out split
    skip_missing_images: bool = False  # drop records whose image file is missing (counted)
    # images with more pixels are refused before decoding (a decompression bomb never loads)
    max_image_pixels: PositiveInt = 100_000_000
    synth: SynthConfig | None = None  # generate the default data when its jsons are absent
    workers: int = Field(0, ge=0)  # DataLoader worker processes (0 = load in the main process)
    # Repeat-factor sampling (LVIS): images of classes in fewer than this share of the training
    # images are repeated, r = max(1, sqrt(t / f)); None = plain shuffling.
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

    arch: Literal[ARCHS] = "resnet18_fpn"  # see rcnnlab.models.build for each
    weights: str | None = None  # None | torchvision weights enum name | local .pt file
    backbone_weights: str | None = None  # the same, for the backbone only
    trainable_backbone_layers: int | None = None  # None = all without weights, 3 with
    residual_fpn: bool = False  # residual block after every FPN output
    # resnet*_fpn archs: the FPN's levels by stride (4 = P2 .. 32 = P5, 64 = the max-pool P6;
    # None = all five) and its channels. A trunk stage past the last level is not built.
    fpn_strides: list[Literal[4, 8, 16, 32, 64]] | None = None
    fpn_channels: PositiveInt = 256
    roi_output_size: PositiveInt = 7  # RoIAlign's output grid (n x n) per RoI
    roi_sampling_ratio: int = Field(2, ge=0)  # RoIAlign's samples per bin side (0 = adaptive)
    box_head_dim: PositiveInt = 1024  # the box head's fully connected width (representation)
    anchors: Literal["given", "auto"] = "given"  # auto: fit sizes/ratios to the training boxes
    anchor_sizes: list[list[int]] | None = None  # one list per FPN level; None = arch default
    # h/w ratios: one list per level, or one list for every level
    aspect_ratios: list[list[float]] | list[float] | None = None
    min_size: int = 800  # short side after resize (or the cap in native mode)
    max_size: int = 1333  # long side cap
    native_size: bool = False  # never upscale: keep small images at their own size
    rpn_pre_nms_top_n_train: int = 2000  # proposals kept before NMS, per level, training
    rpn_pre_nms_top_n_test: int = 1000  # the same at test time
    rpn_post_nms_top_n_train: int = 2000  # proposals kept after NMS, training
    rpn_post_nms_top_n_test: int = 1000  # the same at test time
    rpn_batch_size_per_image: int = 256  # anchors sampled per image for the RPN loss
    box_batch_size_per_image: int = 512  # RoIs sampled per image for the head's loss
    box_detections_per_img: int = 100  # detections kept per image
    box_score_thresh: float = 0.05  # detections below this score are dropped
    box_nms_thresh: float = 0.5  # NMS IoU of the box head, per class


# ------------------------------------------------------------------------------------ augmentation
class AugmentConfig(_Section):
    """Box-aware training augmentation (torchvision transforms v2)."""

    enabled: bool = True  # False = no augmentation at all
    hsv_prob: float = Field(0.5, ge=0, le=1)  # probability of ColorJitter
    brightness: float = 0.3  # ColorJitter ranges
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05
    flip_prob: float = Field(0.0, ge=0, le=1)  # horizontal flip (a mirrored digit is no digit)
    affine_prob: float = Field(0.5, ge=0, le=1)  # probability of the affine below
    degrees: float = 5.0  # rotation range, +-degrees
    translate: float = 0.05  # translation, share of width/height
    shear: float = 2.0  # shear range, +-degrees
    scale: tuple[float, float] = (0.9, 1.1)  # scale range
    svhn_policy_prob: float = Field(0.0, ge=0, le=1)  # AutoAugment SVHN colour sub-policies
    # Multi-scale training: the short side (px) drawn per batch from this list; [] = off.
    multiscale_sizes: list[PositiveInt] = []
    no_aug_epochs: int = 1  # augmentation switched off for the last N epochs


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

    epochs: PositiveInt = 12  # passes over the training split
    batch_size: PositiveInt = 4  # images per iteration (per process under torchrun)
    iters_per_epoch: PositiveInt | None = None  # cap iterations per epoch (smoke tests, budgets)
    # minutes of wall time for training and validation: the epochs, their length and the LR
    # schedule are fitted to the speed measured over the first iterations (epochs is ignored)
    time_budget: float | None = Field(None, gt=0)
    optimizer: Literal["adamw", "sgd"] = "adamw"
    lr: float = Field(1e-3, gt=0)  # peak LR of the head (backbone: lr * backbone_lr_mult)
    backbone_lr_mult: float = 0.5  # layer-wise LR: the backbone learns at this share of lr
    weight_decay: float = 1e-4
    momentum: float = 0.9  # SGD momentum (AdamW uses its betas)
    schedule: Literal["cosine", "multistep", "constant"] = "cosine"
    warmup_iters: int = Field(200, ge=0)  # linear warm-up, in iterations
    warmup_factor: float = 0.001  # LR at iteration 0, as a share of lr
    eta_min: float = 0.0  # cosine floor, as a share of lr
    milestones: list[int] = [8, 11]  # multistep: epochs at which LR is multiplied by gamma
    gamma: float = 0.1
    grad_clip: float | None = 10.0  # max global grad norm (None = off)
    # moving average of the weights for validation, best.pt and prediction (None = off):
    # ema = d * ema + (1 - d) * weights after each step, d = ema_decay * (1 - exp(-step / warmup))
    ema_decay: float | None = Field(None, gt=0, lt=1)
    ema_warmup: PositiveInt = 2000  # iterations over which d ramps up (YOLOX's 2000)
    channels_last: bool = False  # convolution weights in NHWC memory order (CPU and CUDA)
    # mixed precision of the training step; auto = bf16 where the device computes bf16
    # natively (CUDA, CPUs with AVX512-BF16 / AMX / Arm BF16), else off
    amp: AmpMode = "off"
    sync_bn: bool = False  # torchrun: BatchNorm statistics over all processes (SyncBatchNorm)
    finetune_from: str | None = None  # start from another checkpoint's weights (not its state)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    threads: int | None = None  # torch CPU threads (None = torch's default)
    eval_every: PositiveInt = 1  # validation mAP every N epochs (and always after the last)
    log_every: PositiveInt = 20  # plain-text progress line every N iterations (non-TTY)
    record: bool = True  # write the run record (report.md, report.html, figures/) after training

    # --- RoI classifier loss (the box loss stays smooth-L1 in every case): ce, focal,
    # weighted_ce, or policy_gradient (Rao et al. 2018's eq. 11, a fine-tuning stage: pair it
    # with finetune_from and a ~10x lower lr)
    roi_loss: Literal["ce", "focal", "weighted_ce", "policy_gradient"] = "ce"
    focal_alpha: float | None = Field(0.25, ge=0, le=1)  # focal: foreground alpha (None = off)
    focal_gamma: float = Field(2.0, ge=0)  # focal: focusing exponent (0 = cross-entropy)
    # weighted_ce: one weight per class in category-id order, or inverse_frequency (from the
    # training boxes, foreground weights averaging 1); background keeps weight 1
    class_weights: list[float] | Literal["inverse_frequency"] | None = None
    # ce / weighted_ce: the target is 1 - eps on the true class plus eps / (C + 1) on each class
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    pg_samples: PositiveInt = 10  # policy gradient: actions sampled per image (k)
    pg_gamma: float = Field(1.0, ge=0)  # policy gradient: + gamma x cross-entropy (0 = PG alone)

    # --- multi-scale loss weighting (Luo et al.): weights per FPN level, updated every interval
    scale_weighting: Literal["none", "avw", "rlo"] = "none"
    scale_interval: PositiveInt = 100  # alpha, iterations per interval

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

    The inference options (NMS choice, Soft-NMS, TTA) apply to `evaluate`, `tune` and
    `predict`, which also take them as `eval.*` overrides of a trained run; the per-epoch
    validation of training uses the model as is.
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

    backend: Literal["faster", "pycocotools"] = "faster"
    sweep_min: float = Field(0.45, ge=0, le=1)  # threshold sweep range (inclusive) and step
    sweep_max: float = Field(0.90, ge=0, le=1)
    sweep_step: float = Field(0.01, gt=0)
    default_threshold: float = 0.5  # used for sequences until `rcnnlab tune` stores the best
    # reading a number: a digit detection overlapping a higher-scored one (any class) by more
    # than this IoU is dropped (two digits do not sit on one another; NMS is per class)
    read_iou: float | None = Field(None, gt=0, le=1)
    batch_size: PositiveInt = 8  # images per inference batch
    # Inference options: the box head's suppression and test-time augmentation.
    nms: Literal["nms", "linear", "gaussian"] = "nms"  # box head: hard NMS or Soft-NMS decay
    nms_iou: float | None = Field(None, gt=0, le=1)  # its IoU (None = model.box_nms_thresh)
    soft_nms_sigma: float = Field(0.5, gt=0)  # Gaussian Soft-NMS: score *= exp(-IoU^2/sigma)
    tta_scales: list[float] = Field([1.0], min_length=1)  # TTA image scales (1.0 = as is)
    tta_hflip: bool = False  # TTA: also the mirrored image (refused on digit classes)
    tta_merge: Literal["nms", "wbf"] = "nms"  # TTA passes merged by NMS or weighted box fusion
    tta_iou: float = Field(0.55, gt=0, le=1)  # IoU at which TTA boxes merge
    # the backbone in bf16 (CPU, CUDA) or fp16 (CUDA) during inference; the heads stay float32;
    # auto = bf16 where the device computes bf16 natively, else off
    amp: AmpMode = "off"
    # RPN proposals per image the box head scores (None = model.rpn_post_nms_top_n_test): the
    # box head's cost grows with them; a few digits an image need far fewer than 100
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


def value_text(value: Any) -> str:
    """A config value as it is written on the command line (`null`, `true`, `[8, 16]`)."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("\n...").strip()


class Config(_Section):
    """One run: name and output folder, then the sections in pipeline order.

    `Config()` and `load_config(None)` hold the defaults below and plan nothing; the plan for
    the data (what `rcnnlab train` without `-c` trains) comes from `rcnnlab.api.configure`."""

    name: str = "run"  # run folder name under out_dir
    out_dir: str = "runs"
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    plan: PlanRecord | None = None  # set when the run's values came from a plan

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
    for err in exc.errors():
        loc = ".".join([*([section] if section else []), *(str(p) for p in err["loc"])])
        message = err["msg"].removeprefix("Value error, ")
        # a check across sections (Config._check) has no key path: its message names the keys
        text = f"{loc}: {message}" if loc else message
        if err["type"] == "extra_forbidden":  # the closest key of the same section
            parent, _, leaf = loc.rpartition(".")
            siblings = {k.rpartition(".")[2]: k for k in config_keys()
                        if k.rpartition(".")[0] == parent}
            close = difflib.get_close_matches(leaf, list(siblings), n=1, cutoff=0.6)
            text += f" (did you mean {siblings[close[0]]}?)" if close else ""
        parts.append(text)
    return "; ".join(parts)


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
        tree = yaml.safe_load(path.read_text()) or {}
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

