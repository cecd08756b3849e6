"""The user-level operations behind the CLI, callable from Python: plan, configure, train,
tune, evaluate, predict, export, report, compare, diagnose, and `finish_run`, the one pipeline
after training (tune, test, record) that `train`, `report` and the demo share.

Each takes a run folder (or a checkpoint) and plain arguments, loads it once as a `Detector`,
detects each split it needs once through the evaluation pipeline
(`rcnnlab.evaluation.pipeline`), and writes its outputs into the run folder or the folder it is
given. `evaluate`, `tune`, `predict`, `export`, `report` and `diagnose` use the run's saved
config; their `overrides` (dotted `eval.*` items such as ``"eval.nms=gaussian"``, the CLI's
syntax) change its inference options for that call only.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch

from rcnnlab.config import Config, check_threshold, config_of, deep_merge, read_recipe
from rcnnlab.data.coco import CocoData, require_boxes, warn_empty_classes
from rcnnlab.data.splits import SPLITS, ensure_synth, load_splits
from rcnnlab.detector import Detector
from rcnnlab.engine.loop import HookBase
from rcnnlab.engine.progress import ProgressReporter
from rcnnlab.engine.training import FitResult, fit_model
from rcnnlab.errors import ConfigError, MissingFileError
from rcnnlab.evaluation.diagnosis import Diagnosis, find_causes, last_training_row, recall_by_size
from rcnnlab.evaluation.pipeline import (
    EvalResult,
    RPNRecallEvaluator,
    TideErrors,
    validate,
    validation_row,
)
from rcnnlab.evaluation.threshold import SweepResult
from rcnnlab.export import check_format
from rcnnlab.jobs.images import job_images
from rcnnlab.jobs.predict import run_predict_job
from rcnnlab.methods.scale_weighting import IntervalRecord
from rcnnlab.models.architecture import level_strides
from rcnnlab.models.description import describe_model
from rcnnlab.planning import Plan, plan_data
from rcnnlab.reporting.compare import Comparison, compare_runs
from rcnnlab.reporting.plots import plot_scale_weights
from rcnnlab.reporting.record import write_record
from rcnnlab.runs.checkpoint import Checkpoint
from rcnnlab.runs.device import resolve_device
from rcnnlab.runs.distributed import barrier, close_distributed, init_distributed, process_group
from rcnnlab.runs.resume import check_resume_config
from rcnnlab.runs.rundir import RunDir, read_csv_rows

__all__ = ["EvalResult", "FinishedRun", "TrainResult", "compare", "configure", "data_overrides",
           "diagnose", "evaluate", "export", "finish_run", "plan", "predict", "report", "train",
           "trained", "tune"]

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
    made it: the pipeline after training scores those detections instead of detecting the
    split again."""

    validation: EvalResult | None = field(default=None, repr=False)


def train(cfg: Config, *, resume: bool = False, exist_ok: bool = False,
          reporter: ProgressReporter | None = None,
          extra_hooks: Sequence[HookBase] = ()) -> TrainResult:
    """Train the run described by `cfg` (continuing from its last.pt when `resume`); then draw
    what its training methods logged, and write its run record when `train.record` is on
    (`finish_run` without tuning: `tune` then `report` rewrite it at the tuned threshold).

    A run folder that holds a run already is refused unless `resume`, or `exist_ok` (the old
    run's outputs are deleted first). `extra_hooks` are training-time features of your own
    (`rcnnlab.engine.loop.HookBase`).

    Under `torchrun` every process calls this: rank 0 prepares the run folder and, after
    training, writes the record; every rank returns the training's figures (`validation` and
    `best` are rank 0's).

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
    best: list[EvalResult] = []  # the validation of the best mAP so far in this process

    def evaluate(model: torch.nn.Module, data: CocoData) -> dict[str, float]:
        result = validate(model, data, cfg.eval, device=next(model.parameters()).device)
        ap = result.metrics.AP
        if ap is not None and ap > (best[0].metrics.AP if best else -1.0):
            best[:] = [result]
        return validation_row(result)

    fit = fit_model(cfg, splits, evaluate, resume=resume, reporter=reporter,
                    extra_hooks=extra_hooks)
    result = TrainResult(**{f.name: getattr(fit, f.name) for f in fields(fit)})
    if here.distributed:  # the rest is rank 0's alone, without the process group
        barrier()
        close_distributed()
        if not here.is_main:
            return result
    # best.pt's validation, when this process made both (not so when the best epoch came
    # before a resume: then best.pt is read back and valid detected again)
    if best and fit.best is not None and best[0].metrics.AP == fit.best.best_map:
        result.validation = best[0]
    run = RunDir(fit.run_dir)
    if run.scale_weights_csv.is_file():
        levels = [f"P{round(math.log2(stride))}" for stride in level_strides(fit.config.model)]
        plot_scale_weights([IntervalRecord.from_row(r) for r in read_csv_rows(
            run.scale_weights_csv)], run.scale_weights_png, levels, last_iteration=fit.iterations)
    if cfg.train.record:  # at the default threshold: `tune` then `report` rewrite it
        finish_run(trained(result), tune=False, validation=result.validation)
    return result


def trained(fit: FitResult, *, device: str | None = None,
            overrides: Sequence[str] = ()) -> Detector:
    """The detector of a finished training run: its best weights as training holds them, or
    best.pt when training does not (a run resumed after its best epoch)."""
    device = device or fit.config.train.device
    if fit.best is None:
        return Detector.load(fit.run_dir, device=device, overrides=overrides)
    return Detector.from_checkpoint(fit.best, device=device, overrides=overrides,
                                    path=fit.run_dir)


# ------------------------------------------------------------------------------ after training
@dataclass
class FinishedRun:
    """What the pipeline after training made: the scores by split, the sweep (when it tuned)
    and the files of the run record (when it wrote one)."""

    results: dict[str, EvalResult]
    sweep: SweepResult | None = None
    record: dict[str, Path] = field(default_factory=dict)


def finish_run(detector: Detector, *, tune: bool = True, validation: EvalResult | None = None,
               split: str | None = None, record: bool = True) -> FinishedRun:
    """The one pipeline after training, on the detector of a run folder: tune the threshold
    on valid (`tune`), score valid and `split` (default: test when the run's config has one,
    else valid) and write the run record (`record`: report.md, report.html, figures/).

    `validation` is this detector's validation (training's, at best.pt's epoch): its
    detections are swept or scored rather than detected again. `train`, `report` and the demo
    run this; each split is detected at most once."""
    run = detector.folder
    if run is None:
        raise MissingFileError(f"{detector.source}: not a run folder. Fix: give the folder "
                               "rcnnlab train wrote (runs/<name>)")
    present = detector.config_splits(SPLITS)
    split = split or ("test" if "test" in present else "valid")
    if split not in present:
        raise MissingFileError(f"{run.root}: the run's config has no {split} split "
                               f"(data.{split}_json). Fix: --split valid")
    results: dict[str, EvalResult] = {}
    sweep = None
    if tune:
        sweep, results["valid"] = detector.tune(
            data=present["valid"],
            detections=validation.detections if validation is not None else None)
    elif validation is not None:
        results["valid"] = validation
    for name in dict.fromkeys(("valid", split)):
        if name not in results:
            results[name] = detector.evaluate(name, data=present[name])
    written = {}
    if record:
        last = Checkpoint.load(run.last_pt) if run.last_pt.is_file() else None
        written = write_record(run.root, best=detector.checkpoint, last=last,
                               model_info=describe_model(detector.model), splits=present,
                               results=results, split=split)
    return FinishedRun(results, sweep, written)


# ------------------------------------------------------------------------------ a trained run
def evaluate(run: str | Path, *, split: str = "test", json_path: str | None = None,
             images: str | None = None, threshold: float | None = None,
             device: str = "auto", overrides: list[str] | None = None,
             save: bool = True) -> EvalResult:
    """COCO metrics and sequence accuracy of a run's best checkpoint (or a checkpoint file,
    or an exported model) on one split.

    The threshold for sequences defaults to the one `tune` stored in the checkpoint.
    `overrides` are `eval.*` items (``["eval.tta_scales=[1,1.5]"]``) for this call only.
    Writes `eval_<split>.json` (with the inference options used) into the run folder when `run`
    is a run folder and `save` is true; with `json_path`, the split is named after that file
    (`eval_data-<file stem>.json`), so the run's own splits are never overwritten.

    Under torchrun the processes share the detection and rank 0 scores and writes; every rank
    returns the scores (the detections only on rank 0).
    """
    with process_group(resolve_device(device), "evaluation") as (here, dev):
        det = Detector.load(run, device=str(dev), overrides=overrides or ())
        name = split if json_path is None else f"data-{Path(json_path).stem}"
        result = det.evaluate(name, data=det.split(split, json_path, images),
                              threshold=threshold)
        if save and det.folder is not None and here.is_main:
            det.folder.write_eval(name, result.as_dict())
    return result


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
    det = Detector.load(run, device=device, overrides=overrides or ())
    data = det.split("valid", json_path, images)
    return (det.tune(data=data) if save else det.sweep(data=data))[0]


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


def export(run: str | Path, out: str | Path | None = None, *, format: str = "onnx",
           overrides: list[str] | None = None) -> Path:
    """Export a run's best model (or a checkpoint file's) as `format` (onnx, torchscript,
    openvino) with its sidecar json; the model file's path (default:
    `<run>/export/model.<suffix>`). `overrides` may set `eval.proposals=N`, the RPN
    proposals the exported box head scores."""
    check_format(format)  # before loading: a typo costs no model build
    return Detector.load(run, device="cpu", overrides=overrides or ()).export(format, out)


# ------------------------------------------------------------------------------ records
def report(run: str | Path, *, split: str | None = None, device: str = "auto") -> dict[str, Path]:
    """Write the run record (report.md, report.html, figures/) of a run folder, at its
    stored threshold: `finish_run` without tuning.

    `split` is the split the detection figures are drawn on (default: test when the run's
    config has one, else valid); the validation split is always scored.
    """
    if not Path(run).is_dir():
        raise MissingFileError(f"{run}: not a run folder. Fix: give the folder rcnnlab train "
                               "wrote (runs/<name>)")
    return finish_run(Detector.load(run, device=device), tune=False, split=split).record


def compare(runs: Sequence[str | Path], *, split: str | None = None,
            out: str | Path | None = None) -> Comparison:
    """Compare runs against the first (metrics, per-class AP, config differences); with
    `out`, also write the comparison there as Markdown."""
    comparison = compare_runs(runs, split=split)
    if out is not None:
        comparison.write(out)
    return comparison


def diagnose(run: str | Path, split: str = "valid", *, device: str = "auto",
             json_path: str | None = None, images: str | None = None,
             overrides: list[str] | None = None, save: bool = True) -> Diagnosis:
    """Diagnose a run's best checkpoint on one split (``valid`` or ``test``).

    One pass of the evaluation pipeline gives COCO AP per IoU, the TIDE breakdown at IoU 0.5
    and RPN recall; with recall by size at the tuned threshold they give the ranked findings
    (`rcnnlab.evaluation.diagnosis`). Writes ``diagnosis.md`` and ``diagnosis.json`` into the
    run folder when ``save`` and ``run`` is a folder.
    """
    det = Detector.load(run, device=device, overrides=overrides or ())
    if det.checkpoint is None:
        raise ConfigError(f"{det.source}: the RPN recall needs the PyTorch model. Fix: "
                          "diagnose the run folder or its checkpoint")
    result, evaluation = det.scores(split, det.split(split, json_path, images),
                                    extra=[TideErrors(), RPNRecallEvaluator(det.model)])
    threshold = result.threshold
    gt = result.data.to_coco_dict()
    analysis, rpn = evaluation["tide"], evaluation["rpn"]
    sizes = recall_by_size(gt, result.detections, score_threshold=threshold)
    nms_iou = result.inference.get("nms_iou") or det.cfg.model.box_nms_thresh
    names = {int(c["id"]): str(c["name"]) for c in gt["categories"]}
    metrics = result.metrics
    findings = find_causes(analysis, metrics.per_iou, size_recall=sizes, rpn=rpn,
                           nms_iou=nms_iou, category_names=names)
    folder = det.folder
    diagnosis = Diagnosis(
        run=det.path.name,
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
