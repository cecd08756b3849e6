"""The whole config of one run: :class:`Config` (name, output folder and the sections in
pipeline order) with the sections that need it (the evaluation section, whose overrides are
validated as part of it, and the planner's record); :func:`config_keys` lists its dotted keys,
:func:`problems` turns a validation error into one line, and :func:`section_with` validates a
section given as keyword options.
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import (
    BaseModel,
    Field,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from rcnnlab.config.sections import (
    AmpMode,
    AugmentConfig,
    DataConfig,
    ModelConfig,
    Section,
    TrainConfig,
)
from rcnnlab.config.tree import apply_overrides, value_text
from rcnnlab.errors import ConfigError

__all__ = ["Config", "EvalConfig", "PlanRecord", "check_threshold", "config_keys", "problems",
           "section_with"]

S = TypeVar("S", bound=BaseModel)


# ------------------------------------------------------------------------------------ evaluation
class EvalConfig(Section):
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
class PlanRecord(Section):
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

class Config(Section):
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


# ------------------------------------------------------------------------------------ validation
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
