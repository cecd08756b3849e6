"""The user-level operations behind the CLI, callable from Python: train, tune, evaluate,
predict, report, diagnose.

Each takes a run folder (or a checkpoint) and plain arguments, loads the model once, detects each
split it needs once through the evaluation pipeline (`rcnnlab.evaluation.pipeline`), and writes
its outputs into the run folder or the folder it is given. `evaluate`, `tune`, `predict`,
`report` and `diagnose` use the run's saved config; their `overrides` (dotted `eval.*` items
such as ``"eval.nms=gaussian"``, the CLI's syntax) change its inference options for that call
only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from rcnnlab.config import Config, check_threshold, config_of, deep_merge, read_recipe
from rcnnlab.data.coco import CocoData, load_coco, require_boxes, warn_empty_classes
from rcnnlab.data.splits import SPLITS, ensure_synth, load_splits
from rcnnlab.detector import Detector
from rcnnlab.engine.loop import HookBase
from rcnnlab.engine.progress import ProgressReporter
from rcnnlab.engine.training import FitResult
from rcnnlab.engine.training import train as train_run
from rcnnlab.errors import ConfigError, DatasetError, MissingFileError
from rcnnlab.evaluation.diagnosis import Diagnosis, find_causes, last_training_row, recall_by_size
from rcnnlab.evaluation.pipeline import (
    CocoMetricsEvaluator,
    EvalResult,
    Evaluation,
    Evaluator,
    RPNRecallEvaluator,
    SequenceAccuracy,
    ThresholdSweep,
    TideErrors,
    inference_on_dataset,
    predictor_for,
    score,
    validate,
    validation_row,
)
from rcnnlab.evaluation.threshold import SweepResult
from rcnnlab.jobs.images import job_images
from rcnnlab.jobs.predict import run_predict_job
from rcnnlab.methods.scale_weighting import IntervalRecord
from rcnnlab.models.build import build_model, describe_model
from rcnnlab.planning import Plan, plan_data
from rcnnlab.reporting.plots import plot_scale_weights
from rcnnlab.reporting.record import write_record
from rcnnlab.runs.checkpoint import Checkpoint, load_detector
from rcnnlab.runs.device import resolve_device
from rcnnlab.runs.distributed import barrier, close_distributed, init_distributed, process_group
from rcnnlab.runs.resume import check_resume_config
from rcnnlab.runs.rundir import RunDir, read_csv_rows

__all__ = ["EvalResult", "LoadedRun", "TrainResult", "configure", "data_overrides", "diagnose",
           "evaluate", "load_run", "plan", "predict", "report", "report_loaded", "train", "tune",
           "tune_loaded"]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------ configuration
def data_overrides(data: str | Path) -> list[str]:
    """The override that names a dataset: `data.yolo` for a YOLO data.yaml, `data.train_json`
    for a COCO json or one split of a data.yaml (`data.yaml:val`)."""
    text = str(data)
    if Path(text).suffix.lower() in (".yaml", ".yml"):
        return [f"data.yolo={text}"]
    return [f"data.train_json={text}"]


def plan(data: str | Path | None = None, overrides: Sequence[str] = (), *,
         budget_minutes: float | None = None, device: str | None = None) -> Plan:
    """The training plan for a dataset: its fingerprint and the config values the planner's
    rules choose for it (`rcnnlab.planning.rules`), for a time budget in minutes and a device.

    `data` is a COCO json, a YOLO data.yaml or `data.yaml:KEY`; `overrides` may name the data
    instead (`data.train_json=...`, `data.valid_json=...`) and set the budget
    (`train.time_budget`) and device (`train.device`), which the arguments replace."""
    items = [*(data_overrides(data) if data is not None else []), *overrides]
    draft = config_of({}, items)
    if budget_minutes is None:
        budget_minutes = draft.train.time_budget
    return _plan_for(draft, budget_minutes, device or draft.train.device)


def _plan_for(draft: Config, budget_minutes: float | None, device: str) -> Plan:
    d = draft.data
    if d.yolo is None and d.train_json is None and d.synth is None:
        raise ConfigError(
            "nothing to plan for: without a recipe (-c) rcnnlab plans from the training data. "
            "Fix: name it, e.g. data.yolo=path/to/data.yaml or data.train_json=path/to/ann.json "
            "(or -c demo for generated house numbers, -c orand for ORAND-CAR-A)")
    ensure_synth(d)
    return plan_data(d, device=device, budget_minutes=budget_minutes)


def configure(recipe: str | Path | None = None, overrides: Sequence[str] = (), *,
              resume: bool = False) -> Config:
    """The config of a run, as `rcnnlab train -c RECIPE key=value ...` builds it.

    Without a recipe, or with one whose `base:` chain starts at `base: plan`, the values come
    from the plan for the data the config names (`plan`), and the recipe's keys and the
    overrides apply on top, key by key; the plan's choices and reasons are kept in
    `Config.plan`. With `resume`, a planned run folder that exists keeps the plan it was trained
    with (its config.yaml), rather than planning again on a machine whose free memory may have
    changed. A recipe that does not start from the plan (`-c orand`, `-c base`) is taken as it
    is, like `rcnnlab.config.load_config`."""
    tree, planned = read_recipe(recipe)
    where = str(recipe) if recipe is not None else "config"
    if not planned:
        return config_of(tree, list(overrides), where)
    draft = config_of(tree, list(overrides), where)
    run = RunDir(draft.run_dir)
    if resume and run.config_yaml.is_file():
        saved = run.read_config()
        if saved.plan is not None:
            return config_of(deep_merge(saved.model_dump(mode="json"), tree), list(overrides),
                             where)
    chosen = _plan_for(draft, draft.train.time_budget, draft.train.device)
    return config_of(deep_merge(chosen.tree(), tree), list(overrides), where)


# ------------------------------------------------------------------------------ training
@dataclass
class TrainResult(FitResult):
    """What `train` reports, and best.pt's validation (detections included) when this process
    made it: `tune` can sweep those detections instead of detecting the split again."""

    validation: EvalResult | None = None


def train(cfg: Config, *, resume: bool = False, exist_ok: bool = False,
          reporter: ProgressReporter | None = None,
          extra_hooks: Sequence[HookBase] = ()) -> TrainResult:
    """Train the run described by `cfg` (continuing from its last.pt when `resume`); then draw
    what its training methods logged, and write its run record when `train.record` is on.

    A run folder that holds a run already is refused unless `resume`, or `exist_ok` (the old
    run's outputs are deleted first). `extra_hooks` are training-time features of your own
    (`rcnnlab.engine.loop.HookBase`).

    Under `torchrun` every process calls this: rank 0 prepares the run folder and, after
    training, writes the record; every rank returns the training's figures (`validation` is
    rank 0's).

    `cfg` is trained as it is: a `Config` built in Python (or by `load_config`) plans nothing;
    `configure` gives the plan for the data, which is then logged as a table."""
    here, _ = init_distributed(resolve_device(cfg.train.device))
    if here.is_main:
        log.info("%s", cfg.plan.table(cfg) if cfg.plan is not None else
                 "config as given (no plan; rcnnlab.api.configure plans from the data)")
        run = RunDir(cfg.run_dir)
        run.prepare(resume=resume, exist_ok=exist_ok)
        if resume and run.config_yaml.is_file():
            check_resume_config(run.read_config(), cfg, str(run.config_yaml))
        ensure_synth(cfg.data)
    barrier()
    splits = load_splits(cfg.data, need=("train", "valid"))
    require_boxes(splits["train"], "training")
    require_boxes(splits["valid"], "validation")
    if here.is_main:
        warn_empty_classes(splits["train"], "training")
    best: dict[str, EvalResult] = {}  # the validation of the best mAP: best.pt's, for the record

    def evaluate(model: torch.nn.Module, data: CocoData) -> dict[str, float]:
        result = validate(model, data, cfg.eval, device=next(model.parameters()).device)
        ap = result.metrics.AP
        if ap is not None and ap > (best["valid"].metrics.AP if best else -1.0):
            best["valid"] = result
        return validation_row(result)

    fit = train_run(cfg, splits, evaluate, resume=resume, reporter=reporter,
                    extra_hooks=extra_hooks)
    if here.distributed:  # the rest is rank 0's alone, without the process group
        barrier()
        close_distributed()
        if not here.is_main:
            return TrainResult(**{f.name: getattr(fit, f.name) for f in fields(fit)})
    run = RunDir(fit.run_dir)
    if run.scale_weights_csv.is_file():
        model = build_model(fit.config.model, num_classes=len(splits["train"].categories) + 1,
                            load_weights=False)
        levels = [f"P{round(math.log2(lv['stride']))}" for lv in describe_model(model)["levels"]]
        plot_scale_weights([IntervalRecord.from_row(r) for r in read_csv_rows(
            run.scale_weights_csv)], run.scale_weights_png, levels, last_iteration=fit.iterations)
    if cfg.train.record:  # the threshold is not tuned yet: `tune` then `report` rewrites it
        # this process validated best.pt's weights when they were best (not so when the best
        # epoch came before a resume): the record does not detect on valid again
        report(run.root, device=cfg.train.device, evaluated=best)
    return TrainResult(**{f.name: getattr(fit, f.name) for f in fields(fit)},
                       validation=best.get("valid"))


# ------------------------------------------------------------------------------ a trained run
@dataclass
class LoadedRun:
    """A trained run, loaded once: its model, checkpoint and config with this call's options."""

    path: Path
    model: torch.nn.Module
    ckpt: Checkpoint
    cfg: Config
    device: torch.device
    overrides: list[str]
    loaded_splits: dict[str, CocoData] = field(default_factory=dict, repr=False)

    def config_splits(self, names: Sequence[str]) -> dict[str, CocoData]:
        """The run config's splits among `names` (those it has), each read once per run."""
        missing = [n for n in names if n not in self.loaded_splits]
        if missing:
            self.loaded_splits.update(load_splits(self.cfg.data, need=tuple(missing)))
        return {n: self.loaded_splits[n] for n in names if n in self.loaded_splits}

    @property
    def folder(self) -> RunDir | None:
        """The run folder, when a folder (not a checkpoint file) was given."""
        return RunDir(self.path) if self.path.is_dir() else None

    def threshold(self, given: float | None = None) -> float:
        """`given` (checked to be in 0-1), else the tuned threshold stored in the checkpoint."""
        return check_threshold(given) if given is not None else self.ckpt.threshold

    def split(self, split: str, json_path: str | None = None,
              images: str | None = None) -> CocoData:
        """An annotated split: `json_path` when given, else the run config's split."""
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
        ours = [(c["id"], c["name"]) for c in self.ckpt.categories]
        theirs = [(c["id"], c["name"]) for c in data.categories]
        if theirs != ours:
            raise DatasetError(f"{data.json_path}: categories {theirs} differ from the "
                             f"checkpoint's {ours}. Fix: evaluate on data with the training "
                             "categories")
        return data

    def run(self, data: CocoData, evaluators: list[Evaluator], *,
            description: str = "detecting") -> Evaluation:
        """The evaluation pipeline on one split with this call's inference options."""
        require_boxes(data, "evaluated")
        return inference_on_dataset(predictor_for(self.model, self.cfg.eval, self.ckpt.categories),
                                    data, evaluators, device=self.device,
                                    batch_size=self.cfg.eval.batch_size,
                                    description=description)

    def evaluate(self, split: str, data: CocoData, threshold: float,
                 extra: list[Evaluator] = ()) -> tuple[EvalResult, Evaluation]:
        """COCO metrics and sequence accuracy (plus `extra` evaluators) on one split."""
        evaluation = self.run(data, [CocoMetricsEvaluator(self.cfg.eval.backend),
                                     SequenceAccuracy(threshold, self.cfg.eval.read_iou), *extra],
                              description=f"detecting {split}")
        return EvalResult.of(split, evaluation, threshold, self.cfg.eval.inference_kwargs()), \
            evaluation


def load_run(run: str | Path, *, device: str = "auto",
             overrides: list[str] | None = None) -> LoadedRun:
    """Load a run's best checkpoint (or a checkpoint file) once for the calls below."""
    dev = resolve_device(device)
    model, ckpt = load_detector(run, device=dev)
    cfg = ckpt.config
    if overrides:
        cfg = cfg.model_copy(update={"eval": cfg.eval.with_overrides(overrides)})
    return LoadedRun(Path(run), model, ckpt, cfg, dev, list(overrides or []))


def evaluate(run: str | Path, *, split: str = "test", json_path: str | None = None,
             images: str | None = None, threshold: float | None = None,
             device: str = "auto", overrides: list[str] | None = None,
             save: bool = True) -> EvalResult:
    """COCO metrics and sequence accuracy of a run's best checkpoint on one split.

    The threshold for sequences defaults to the one `tune` stored in the checkpoint.
    `overrides` are `eval.*` items (``["eval.tta_scales=[1,1.5]"]``) for this call only.
    Writes `eval_<split>.json` (with the inference options used) into the run folder when `run`
    is a run folder and `save` is true; with `json_path`, the split is named after that file
    (`eval_data-<file stem>.json`), so the run's own splits are never overwritten.

    Under torchrun the processes share the detection and rank 0 scores and writes; every rank
    returns the scores (the detections only on rank 0).
    """
    with process_group(resolve_device(device), "evaluation") as (here, dev):
        loaded = load_run(run, device=str(dev), overrides=overrides)
        name = split if json_path is None else f"data-{Path(json_path).stem}"
        result, _ = loaded.evaluate(name, loaded.split(split, json_path, images),
                                    loaded.threshold(threshold))
        if save and loaded.folder is not None and here.is_main:
            loaded.folder.write_eval(name, result.as_dict())
    return result


def _sweep(loaded: LoadedRun, data: CocoData,
           detections: list[dict] | None = None) -> tuple[SweepResult, Evaluation]:
    e = loaded.cfg.eval
    evaluators = [ThresholdSweep(e.sweep_thresholds(), e.backend, e.read_iou),
                  CocoMetricsEvaluator(e.backend)]
    evaluation = (loaded.run(data, evaluators, description="sweeping thresholds")
                  if detections is None
                  else score(data, detections, evaluators))
    result: SweepResult = evaluation["sweep"]
    if warning := result.edge_warning():
        log.warning("%s: %s", loaded.path, warning)
    return result, evaluation


def _store_threshold(loaded: LoadedRun, result: SweepResult) -> None:
    """The tuned threshold into the checkpoint read and its run's best.pt and last.pt; the
    sweep table into the run folder."""
    path = loaded.ckpt.path
    for file in {path, path.with_name("best.pt"), path.with_name("last.pt")}:
        if file.is_file():
            ckpt = Checkpoint.load(file)
            ckpt.threshold = result.best
            ckpt.save(file)
    loaded.ckpt.threshold = result.best
    if loaded.folder is not None:
        result.to_csv(loaded.folder.threshold_sweep_csv)
    if loaded.overrides:
        log.info("threshold %.2f tuned with %s: pass the same overrides to evaluate and predict",
                 result.best, " ".join(loaded.overrides))


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
    loaded = load_run(run, device=device, overrides=overrides)
    if not save:  # a what-if sweep (e.g. an ablation of inference options): nothing stored
        return _sweep(loaded, loaded.split("valid", json_path, images))[0]
    return tune_loaded(loaded, loaded.split("valid", json_path, images))[0]


def tune_loaded(loaded: LoadedRun, data: CocoData,
                detections: list[dict] | None = None) -> tuple[SweepResult, EvalResult]:
    """`tune` on a run already loaded: sweep the valid split `data` (its `detections` by this
    run's best checkpoint with its inference options, when the caller has them), store the
    threshold; the sweep and the split's scores at the tuned threshold (same detections)."""
    result, evaluation = _sweep(loaded, data, detections)
    _store_threshold(loaded, result)
    scores = EvalResult("valid", evaluation["coco"], result.best, result.best_row.accuracy,
                        data, evaluation.detections, loaded.cfg.eval.inference_kwargs())
    return result, scores


def predict(run: str | Path, source: str | Path, out_dir: str | Path, *,
            images: str | None = None, threshold: float | None = None,
            batch_size: int | None = None, device: str = "auto",
            overrides: list[str] | None = None, save_images: bool = False,
            backend: str = "auto", resume: bool = False,
            progress: Callable[[int], None] | None = None,
            on_total: Callable[[int], None] | None = None) -> dict[str, Path]:
    """Detect on an image, a folder, a glob, a .txt list of image paths, a video or a COCO
    json; write pred.json and (digit classes) pred.csv into `out_dir`, and with `save_images`
    each image with its boxes and the number read into `out_dir/images/`.

    It runs as a job (`rcnnlab.jobs`): each image is logged to `out_dir/predictions.jsonl` as
    it finishes, a killed job continues with `resume` (the same call with ``resume=True``)
    without detecting finished images again, and under torchrun the processes share the
    images. pred.json and pred.csv are the same whether the job ran in one go or not, on one
    process or several. Images that cannot be read are left out and listed in
    `unreadable.csv`.

    Image ids come from the json, else from numeric file stems, else they are enumerated (a
    video's frames 1..N) and the mapping is written to `image_ids.csv` beside the outputs.
    `overrides` are `eval.*` items (inference options) for this call only. `on_total` is told
    the number of images, `progress` each image done. Under torchrun rank 0 returns the
    paths, the other ranks an empty dict.
    """
    check_threshold(threshold)
    if batch_size is not None and batch_size < 1:
        raise ConfigError(f"batch_size {batch_size}: give 1 or more (or None for "
                          "eval.batch_size)")
    with process_group(resolve_device(device), "prediction") as (_, dev):
        det = Detector.load(run, device=str(dev), overrides=overrides or (), backend=backend)
        todo = job_images(source, images=images, max_pixels=det.cfg.data.max_image_pixels,
                          skip_missing_images=det.cfg.data.skip_missing_images)
        return run_predict_job(det, todo, out_dir,
                               threshold=det.threshold if threshold is None else threshold,
                               batch_size=(det.cfg.eval.batch_size if batch_size is None
                                           else batch_size),
                               resume=resume, save_images=save_images, progress=progress,
                               on_total=on_total)


# ------------------------------------------------------------------------------ records
def report(run: str | Path, *, split: str | None = None, device: str = "auto",
           evaluated: dict[str, EvalResult] | None = None) -> dict[str, Path]:
    """Write the run record (report.md, report.html, figures/) of a run folder.

    `split` is the split the detection figures are drawn on (default: test when the run's
    config has one, else valid); the validation split is always scored. `evaluated` are
    results of this run's best checkpoint the caller already has (by split): they are not
    detected again.
    """
    if not Path(run).is_dir():
        raise MissingFileError(f"{run}: not a run folder. Fix: give the folder rcnnlab train "
                                "wrote (runs/<name>)")
    return report_loaded(load_run(run, device=device), split=split, evaluated=evaluated)


def report_loaded(loaded: LoadedRun, *, split: str | None = None,
                  evaluated: dict[str, EvalResult] | None = None) -> dict[str, Path]:
    """`report` on a run folder already loaded (`load_run`)."""
    run_dir = RunDir(loaded.path)
    present = loaded.config_splits(SPLITS)
    split = split or ("test" if "test" in present else "valid")
    if split not in present:
        raise MissingFileError(f"{run_dir.root}: the run's config has no {split} split "
                                f"(data.{split}_json). Fix: --split valid")
    results = dict(evaluated or {})
    for name in dict.fromkeys(("valid", split)):
        if name not in results:
            results[name], _ = loaded.evaluate(name, present[name], loaded.threshold())
    last = Checkpoint.load(run_dir.last_pt) if run_dir.last_pt.is_file() else None
    return write_record(run_dir.root, best=loaded.ckpt, last=last,
                        model_info=describe_model(loaded.model), splits=present,
                        results=results, split=split)


def diagnose(run: str | Path, split: str = "valid", *, device: str = "cpu",
             json_path: str | None = None, images: str | None = None,
             overrides: list[str] | None = None, save: bool = True) -> Diagnosis:
    """Diagnose a run's best checkpoint on one split (``valid`` or ``test``).

    One pass of the evaluation pipeline gives COCO AP per IoU, the TIDE breakdown at IoU 0.5
    and RPN recall; with recall by size at the tuned threshold they give the ranked findings
    (`rcnnlab.evaluation.diagnosis`). Writes ``diagnosis.md`` and ``diagnosis.json`` into the
    run folder when ``save`` and ``run`` is a folder.
    """
    loaded = load_run(run, device=device, overrides=overrides)
    threshold = loaded.threshold()
    result, evaluation = loaded.evaluate(split, loaded.split(split, json_path, images),
                                         threshold,
                                         [TideErrors(), RPNRecallEvaluator(loaded.model)])
    gt = result.data.to_coco_dict()
    analysis, rpn = evaluation["tide"], evaluation["rpn"]
    sizes = recall_by_size(gt, result.detections, score_threshold=threshold)
    nms_iou = result.inference.get("nms_iou") or loaded.cfg.model.box_nms_thresh
    names = {int(c["id"]): str(c["name"]) for c in gt["categories"]}
    metrics = result.metrics
    findings = find_causes(analysis, metrics.per_iou, size_recall=sizes, rpn=rpn,
                           nms_iou=nms_iou, category_names=names)
    folder = loaded.folder
    diagnosis = Diagnosis(
        run=loaded.path.name,
        split=split,
        n_images=result.n_images,
        threshold=float(threshold),
        metrics={k: getattr(metrics, k) for k in ("AP", "AP50", "AP75", "APs", "APm", "APl")},
        per_iou=dict(metrics.per_iou),
        errors=analysis.breakdown(),
        rpn=rpn,
        size_recall=sizes,
        findings=findings,
        inference=result.inference,
        training=last_training_row(folder.read_metrics()) if folder is not None else {},
    )
    if save and folder is not None:
        diagnosis.save(folder.root)
    return diagnosis
