"""The `rcnnlab` command line: data, train, tune, evaluate, predict, report, diagnose, compare,
demo.

Every command takes an optional YAML config and dotted overrides (`train.epochs=3`). Errors in
the user's input end in one red line naming the file, the record and the fix (exit code 2).
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.markup import escape
from rich.table import Table

from rcnnlab.errors import ConfigError, UserError
from rcnnlab.files import write_atomic

app = typer.Typer(
    help="Train, tune, evaluate and predict with Faster R-CNN detectors on COCO-format data.\n\n"
    "Start with `rcnnlab demo` (generated house numbers, about 3 minutes on a 2-core CPU).",
    no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False)
data_app = typer.Typer(help="Make and prepare datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


def _version(value: bool) -> None:
    if value:
        from rcnnlab.version import __version__

        print(f"rcnnlab {__version__}")
        raise typer.Exit()


@app.callback()
def _main(version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")]
        = False) -> None:
    """Train, tune, evaluate and predict with Faster R-CNN detectors on COCO-format data."""


@app.command("configs")
def configs_command() -> None:
    """List the built-in recipes that -c NAME finds (a path to a YAML file works too)."""
    from rcnnlab.config import builtin_configs

    table = Table(title="built-in configs (-c NAME)")
    table.add_column("name")
    table.add_column("what it is")
    folder = None
    for name, (path, description) in builtin_configs().items():
        table.add_row(name, description)
        folder = path.parent
    console.print(table)
    console.print(f"in {folder}")
console = Console()
err_console = Console(stderr=True)

OverridesArg = Annotated[list[str] | None, typer.Argument(
    help="Config overrides as dotted key=value, e.g. train.epochs=3 model.arch=resnet34_fpn",
    show_default=False)]
ConfigOpt = Annotated[str | None, typer.Option(
    "--config", "-c", help="YAML config file, or a built-in recipe (orand, demo, base: see "
    "`rcnnlab configs`); overrides apply on top. Without it, the plan for the data "
    "(rcnnlab plan).")]
DeviceOpt = Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")]
NprocOpt = Annotated[int, typer.Option(
    "--nproc-per-node",
    help="Run as N processes on this machine (one per GPU, or CPU processes over gloo), as "
    "torchrun --standalone --nproc_per_node N does.")]
EvalOverridesArg = Annotated[list[str] | None, typer.Argument(
    help="Inference options of this call as eval.key=value, e.g. eval.nms=gaussian "
    "'eval.tta_scales=[1,1.5]' eval.tta_merge=wbf (only eval.* keys)", show_default=False)]


def _setup_logging(verbose: bool = False) -> None:
    level = logging.DEBUG if verbose else logging.INFO
    handler: logging.Handler
    if err_console.is_terminal:
        handler = RichHandler(console=err_console, show_path=False, markup=False)
        fmt = "%(message)s"
    else:
        handler = logging.StreamHandler(sys.stderr)
        fmt = "%(asctime)s %(levelname)s %(message)s"
    logging.basicConfig(level=level, format=fmt, datefmt="%H:%M:%S", handlers=[handler],
                        force=True)


# what to do when the file system refuses a path, by errno
_PATH_FIXES = {
    errno.EACCES: "give a path you may write to (e.g. --out in your home folder), or change "
                  "its permissions",
    errno.EPERM: "give a path you may write to, or change its permissions",
    errno.EROFS: "give a path on a writable file system",
    errno.ENOSPC: "free disk space (or give --out on another disk) and run the command again",
    errno.EDQUOT: "free space in your quota and run the command again",
    errno.ENOTDIR: "a part of the path is a file, not a folder: give a folder path",
    errno.EISDIR: "the path is a folder: give a file path",
    errno.EEXIST: "the path exists and is not a folder: give another one",
    errno.EIO: "the disk reported an error while writing: check the disk and its free space, "
               "then run the command again",
}


def _one_line(message: str) -> None:
    """Print an error as one line (a YAML parser's message spans several), as text, not
    markup: "[x, y, w, h]" must print as written."""
    err_console.print(f"[bold red]error:[/] {escape(' '.join(message.split()))}",
                      highlight=False, soft_wrap=True)


def _in_range(option: str, value: float | None, low: float, high: float | None = None) -> None:
    """Refuse an option value outside low..high as one line naming the option (click's own
    range check would print its usage box)."""
    if value is not None and not (low <= value and (high is None or value <= high)):
        allowed = f"{low:g} or more" if high is None else f"{low:g} to {high:g}"
        raise ConfigError(f"{option} {value:g}: give {allowed}")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _in_processes(nproc: int) -> bool:
    """With `--nproc-per-node N` > 1: run this very command in N processes and wait for them
    (True); the caller then has nothing left to do."""
    from rcnnlab.runs.distributed import launched_by_torchrun
    from rcnnlab.runs.launch import launch_local

    _in_range("--nproc-per-node", nproc, 1)
    if nproc == 1:
        return False
    if launched_by_torchrun():
        raise ConfigError("--nproc-per-node under torchrun: torchrun already started the "
                          "processes. Fix: give either torchrun --nproc_per_node or "
                          "--nproc-per-node, not both")
    launch_local(nproc, _without_nproc(sys.argv[1:]))
    return True


def _without_nproc(argv: list[str]) -> list[str]:
    """The command line less its --nproc-per-node option (each process is one of N)."""
    kept, skip = [], False
    for arg in argv:
        if skip:
            skip = False
        elif arg == "--nproc-per-node":
            skip = True
        elif not arg.startswith("--nproc-per-node="):
            kept.append(arg)
    return kept


def _user_errors(func):
    """Turn the user's input errors into one clear line and exit code 2."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        _setup_logging()
        from rcnnlab.progress import PROGRESS

        token = PROGRESS.set(_phase_bar if err_console.is_terminal else None)
        try:
            return func(*args, **kwargs)
        except UserError as exc:  # anything else is a bug: its traceback is shown
            _one_line(str(exc))
            raise typer.Exit(2) from None
        except RuntimeError as exc:  # another process of a distributed run died
            from rcnnlab.runs.launch import launched_here, peer_died

            if not peer_died(exc):
                raise
            if not launched_here():  # else the launcher reports, once for all processes
                _one_line(f"another process of this run died ({_first_line(exc)}). Fix: "
                          "find why in its output, then run the same command again (with "
                          "--resume for train and predict --out)")
            raise typer.Exit(1) from None
        except OSError as exc:  # the file system said no to a path: the user's to fix
            if exc.errno not in _PATH_FIXES or exc.filename is None:
                raise
            _one_line(f"{exc.filename}: {exc.strerror}. Fix: {_PATH_FIXES[exc.errno]}")
            raise typer.Exit(2) from None
        finally:
            PROGRESS.reset(token)

    return wrapper


def _fmt(value, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _print_eval(result) -> None:
    m = result.metrics
    table = Table(title=f"{result.split} split: {result.n_images} images")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in m.stats().items():
        table.add_row(key, _fmt(value))
    if result.seq_acc is not None:
        table.add_row(f"sequence accuracy @ {result.threshold:.2f}", _fmt(result.seq_acc))
    console.print(table)


# ---------------------------------------------------------------------------------- data
@data_app.command("synth")
@_user_errors
def data_synth(
    out: Annotated[Path, typer.Option(help="Output folder (train/, valid/, test/).")] = Path(
        "data/synth"),
    train: Annotated[int, typer.Option(help="Training images.")] = 4000,
    valid: Annotated[int, typer.Option(help="Validation images.")] = 300,
    test: Annotated[int, typer.Option(help="Test images.")] = 500,
    seed: Annotated[int, typer.Option(help="Seed: same seed, same files.")] = 0,
    workers: Annotated[int, typer.Option(help="Processes.")] = 2,
    grid: Annotated[Path | None, typer.Option(help="Also write a PNG grid of samples.")] = None,
):
    """Generate SVHN-like house-number images with per-digit COCO boxes (categories "0".."9")."""
    from rich.progress import Progress

    from rcnnlab.data.synth import generate_dataset, sample_grid

    for option, value, low in (("--train", train, 0), ("--valid", valid, 0), ("--test", test, 0),
                               ("--seed", seed, 0), ("--workers", workers, 1)):
        _in_range(option, value, low)
    with Progress(console=err_console, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("generating", total=train + valid + test)
        paths = generate_dataset(out, n_train=train, n_valid=valid, n_test=test, seed=seed,
                                 workers=workers, progress=lambda n: bar.advance(task, n))
    for split, path in paths.items():
        console.print(f"{split}: {path}")
    if grid is not None:
        console.print(f"grid: {sample_grid(grid, seed=seed)}")


@data_app.command("split")
@_user_errors
def data_split(
    json_path: Annotated[Path, typer.Argument(help="COCO json to split.")],
    out: Annotated[Path, typer.Option(help="Folder for train.json and valid.json.")],
    fraction: Annotated[float, typer.Option(help="Share of images held out as valid.")] = 0.1,
    seed: Annotated[int, typer.Option(help="Split seed.")] = 0,
    images: Annotated[Path | None, typer.Option(
        help="Image folder (default: beside the json).")] = None,
):
    """Deterministic train/valid split of a COCO json, every class in valid where possible."""
    from rcnnlab.data.coco import holdout_split, load_coco, read_json

    _in_range("--seed", seed, 0)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out}: a file, not a folder. Fix: give the folder that "
                          "train.json and valid.json go into")
    data = load_coco(json_path, images)
    tree = read_json(json_path)
    train, valid = holdout_split(data, fraction, seed)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("valid", valid)):
        ids = {img["id"] for img in part.images}
        doc = {k: v for k, v in tree.items() if k not in ("images", "annotations")}
        doc["images"] = [img for img in tree["images"] if img["id"] in ids]
        doc["annotations"] = [a for a in tree["annotations"] if a["image_id"] in ids]
        write_atomic(out / f"{name}.json", json.dumps(doc))
        console.print(f"{name}: {len(doc['images'])} images, {len(doc['annotations'])} boxes "
                      f"-> {out / f'{name}.json'}")
    root = data.image_root.resolve()
    console.print(f"use: data.train_json={out}/train.json data.train_images={root} "
                  f"data.valid_json={out}/valid.json data.valid_images={root}")


@data_app.command("convert")
@_user_errors
def data_convert(
    source: Annotated[Path, typer.Argument(
        help="yolo: dataset folder (data.yaml) or split folder; svhn: digitStruct.mat; "
        "voc: folder of xml annotations.")],
    out: Annotated[Path, typer.Option(help="COCO json to write.")],
    fmt: Annotated[str, typer.Option("--from", help="yolo | svhn | voc")] = "yolo",
    split: Annotated[str | None, typer.Option(help="yolo: split of a dataset folder.")] = None,
    images: Annotated[Path | None, typer.Option(help="svhn/voc: image folder.")] = None,
):
    """Convert YOLO txt, SVHN digitStruct.mat or Pascal VOC xml into a COCO json."""
    from rcnnlab.data.convert import svhn_to_coco, voc_to_coco, write_coco, yolo_to_coco

    if fmt == "yolo":
        coco, root = yolo_to_coco(source, split)
    elif fmt == "svhn":
        coco, root = svhn_to_coco(source, images)
    elif fmt == "voc":
        coco, root = voc_to_coco(source, images)
    else:
        raise ConfigError(f"--from {fmt!r}: use yolo, svhn or voc")
    path = write_coco(coco, out)
    console.print(f"{len(coco['images'])} images, {len(coco['annotations'])} boxes, "
                  f"{len(coco['categories'])} categories -> {path}")
    console.print(f"image root: {root} (use data.*_images={root})")


@data_app.command("stats")
@_user_errors
def data_stats(
    json_path: Annotated[Path, typer.Argument(help="COCO json.")],
    images: Annotated[Path | None, typer.Option(help="Image folder (default: beside json).")]
    = None,
    png: Annotated[Path | None, typer.Option(help="Also write the histograms as a PNG.")] = None,
):
    """Class distribution, boxes per image, image sizes and COCO small/medium/large boxes."""
    from rcnnlab.data.coco import load_coco
    from rcnnlab.data.stats import compute_stats, format_stats, plot_stats

    stats = compute_stats(load_coco(json_path, images))
    console.print(format_stats(stats), highlight=False)
    if png is not None:
        console.print(f"histograms: {plot_stats(stats, png)}")


@data_app.command("show")
@_user_errors
def data_show(
    json_path: Annotated[Path, typer.Argument(help="COCO json.")],
    out: Annotated[Path, typer.Option(help="PNG to write.")] = Path("augmented.png"),
    images: Annotated[Path | None, typer.Option(help="Image folder (default: beside json).")]
    = None,
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
    n: Annotated[int, typer.Option(help="Samples in the grid.")] = 16,
    seed: Annotated[int, typer.Option(help="Which images and which augmentations.")] = 0,
):
    """Draw N augmented training samples (config's augment section) with their boxes."""
    _in_range("--n", n, 1)
    _in_range("--seed", seed, 0)
    from rcnnlab import api
    from rcnnlab.data.categories import digit_names
    from rcnnlab.data.coco import load_coco
    from rcnnlab.data.show import render_augmented_grid
    from rcnnlab.data.transforms import build_train_transforms

    # as training would: the recipe's augmentation, or without one the plan for this data
    cfg = api.configure(config, [*(api.data_overrides(json_path) if config is None else []),
                                 *(overrides or [])])
    data = load_coco(json_path, images)
    transforms = build_train_transforms(cfg.augment,
                                        digit_classes=digit_names(data.categories) is not None)
    sides = cfg.augment.multiscale_sizes if cfg.augment.enabled else []
    png = render_augmented_grid(data, transforms, out, n=n, seed=seed, short_sides=sides,
                                max_size=cfg.model.max_size)
    console.print(f"grid: {png}")


# ---------------------------------------------------------------------------------- plan
def _print_fingerprint(source: str, rows) -> None:
    table = Table(title=f"fingerprint of {source}", title_justify="left")
    table.add_column("what")
    table.add_column("value")
    for what, value in rows:
        table.add_row(what, escape(value))
    console.print(table)


@app.command()
@_user_errors
def plan(
    data: Annotated[str, typer.Argument(
        help="A COCO json, a YOLO data.yaml, or one split of it (data.yaml:val).")],
    overrides: OverridesArg = None,
    budget: Annotated[float | None, typer.Option(
        help="Minutes of training (and validation) to plan for; default: a number of epochs.")]
    = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda | cuda:N")] = "auto",
    out: Annotated[Path | None, typer.Option(
        help="Write the plan as a recipe: rcnnlab train -c PLAN.yaml trains it.")] = None,
):
    """Read a dataset once and print its fingerprint and the training plan derived from it.

    `rcnnlab train` without -c trains this plan (its key=value overrides win key by key)."""
    from rcnnlab import api
    from rcnnlab.config import apply_overrides, config_of

    if budget is not None and not budget > 0:
        raise ConfigError(f"--budget {budget:g}: give minutes > 0 (or leave it out to plan "
                          "a number of epochs)")
    chosen = api.plan(data, overrides or [], budget_minutes=budget, device=device)
    _print_fingerprint(chosen.fingerprint.source, chosen.fingerprint.rows())
    given = [*api.data_overrides(data), *(overrides or [])]
    console.print(chosen.record().table(config_of(chosen.tree(), given)), highlight=False,
                  soft_wrap=True)
    if out is not None:
        # the data and the overrides go in too: -c PLAN.yaml needs nothing else
        write_atomic(out, chosen.to_yaml(apply_overrides({}, given)))
        console.print(f"plan written to {out}: rcnnlab train -c {out}", soft_wrap=True)
    else:
        budget_key = [f"train.time_budget={budget:g}"] if budget else []
        console.print(f"train it: {shlex.join(['rcnnlab', 'train', *given, *budget_key])}",
                      highlight=False, soft_wrap=True)


# ---------------------------------------------------------------------------------- train
@app.command()
@_user_errors
def train(
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
    resume: Annotated[bool, typer.Option(help="Continue from runs/<name>/checkpoints/last.pt.")]
    = False,
    exist_ok: Annotated[bool, typer.Option(
        help="Start over in a run folder that holds a run (its outputs are deleted first).")]
    = False,
    nproc_per_node: NprocOpt = 1,
):
    """Train a detector; writes runs/<name>/ (config, metrics.csv, TensorBoard, checkpoints).

    Without -c it trains the plan for the data (rcnnlab plan DATA shows it): name the data
    with data.yolo=data.yaml or data.train_json=ann.json. On several GPUs of one machine:
    --nproc-per-node N; on several machines: torchrun --nnodes M --nproc_per_node N -m rcnnlab
    train ..."""
    from rcnnlab import api
    from rcnnlab.runs.distributed import env_rank
    from rcnnlab.runs.launch import ProcessDied, launched_here, peer_died

    cfg = api.configure(config, overrides or [], resume=resume)
    try:
        if _in_processes(nproc_per_node):
            return
        result = api.train(cfg, resume=resume, exist_ok=exist_ok)
    except KeyboardInterrupt:
        if env_rank() == 0:
            err_console.print(f"interrupted: {_where_the_run_stands(cfg.run_dir)}",
                              highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except ProcessDied as exc:
        _one_line(f"{exc}: {_where_the_run_stands(cfg.run_dir)}")
        raise typer.Exit(1) from None
    except RuntimeError as exc:
        if not peer_died(exc) or launched_here():
            raise  # a bug keeps its traceback; under our launcher, the launcher speaks
        if env_rank() == 0:
            _one_line(f"another process of this run died ({_first_line(exc)}): "
                      f"{_where_the_run_stands(cfg.run_dir)}")
        raise typer.Exit(1) from None
    if env_rank() != 0:  # under torchrun rank 0 reports for all
        return
    console.print(f"[bold]done[/]: {result.epochs} epochs, {result.iterations} iterations, "
                  f"{result.train_images_per_s:.2f} img/s, best val mAP {result.best_map:.4f} "
                  f"(epoch {result.best_epoch}) -> {result.run_dir}")


@app.command()
@_user_errors
def tune(
    run: Annotated[Path, typer.Argument(help="Run folder (or checkpoint).")],
    data: Annotated[Path | None, typer.Option(help="Validation COCO json (default: the run's).")]
    = None,
    images: Annotated[Path | None, typer.Option(help="Its image folder.")] = None,
    device: DeviceOpt = "auto",
    overrides: EvalOverridesArg = None,
):
    """Sweep the confidence threshold on valid (0.45..0.90) and store the best in the checkpoint."""
    from rcnnlab import api

    result = api.tune(run, json_path=data and str(data), images=images and str(images),
                      device=device, overrides=overrides)
    table = Table(title="threshold sweep (validation)")
    for col in ("threshold", "mAP", "AP50", "seq acc"):
        table.add_column(col, justify="right")
    for row in result.rows:
        mark = " *" if row.threshold == result.best else ""
        table.add_row(f"{row.threshold:.2f}{mark}", _fmt(row.mAP), _fmt(row.AP50),
                      _fmt(row.accuracy))
    console.print(table)
    console.print(f"best threshold {result.best:.2f} stored in {run}")


def _where_the_run_stands(run_dir: Path) -> str:
    """After Ctrl-C or a dead process: the last epoch saved and the command that continues
    the run."""
    from rcnnlab.errors import UserError
    from rcnnlab.runs.checkpoint import load_checkpoint
    from rcnnlab.runs.rundir import RunDir

    run = RunDir(run_dir)
    command = shlex.join(["rcnnlab", *sys.argv[1:]])
    if "--resume" not in sys.argv[1:]:
        command += " --resume"
    try:
        epoch = load_checkpoint(run.last_pt)["epoch"] if run.last_pt.is_file() else None
    except UserError:
        epoch = None
    if epoch is None:
        return (f"{run.root} holds no saved epoch yet, so the run starts over when run again "
                "(with --exist-ok)")
    return f"{run.last_pt} holds epoch {epoch}; the epoch under way is lost. Continue with: " \
           f"{command}"


@app.command()
@_user_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="Run folder (or checkpoint).")],
    split: Annotated[str, typer.Option(help="valid | test (from the run's config).")] = "test",
    data: Annotated[Path | None, typer.Option(help="Evaluate on this COCO json instead.")] = None,
    images: Annotated[Path | None, typer.Option(help="Its image folder.")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Sequence threshold (default: the tuned one).")] = None,
    device: DeviceOpt = "auto",
    nproc_per_node: NprocOpt = 1,
    overrides: EvalOverridesArg = None,
):
    """The 12 COCO stats, per-class AP and sequence accuracy on an annotated split.

    With --nproc-per-node N (or under torchrun) the processes share the detection; the first
    scores, writes and reports."""
    from rcnnlab import api
    from rcnnlab.runs.distributed import env_rank

    if _in_processes(nproc_per_node):
        return

    result = api.evaluate(run, split=split, json_path=data and str(data),
                          images=images and str(images), threshold=threshold, device=device,
                          overrides=overrides)
    if env_rank() == 0:  # under torchrun rank 0 reports
        _print_eval(result)
        names = {c["id"]: c["name"] for c in result.data.categories}
        console.print(result.metrics.format_table(names))


@app.command()
@_user_errors
def predict(
    run: Annotated[Path, typer.Argument(help="Run folder (or checkpoint).")],
    source: Annotated[str, typer.Argument(
        help="An image, a folder, a glob ('photos/*.jpg', quoted), a .txt file listing image "
        "paths (one per line, relative to the list's folder), a video (each frame an image) "
        "or a COCO json.")],
    out: Annotated[Path, typer.Option(
        help="Folder for pred.json, pred.csv, predictions.jsonl (each image as it finishes), "
        "predict_job.json, images/.")] = Path("."),
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the job a kill or crash stopped in OUT: finished images "
        "are not detected again.")] = False,
    save_images: Annotated[bool, typer.Option(
        "--save-images", help="Also write each image with its boxes, classes, scores and the "
        "number read to OUT/images/.")] = False,
    images: Annotated[Path | None, typer.Option(help="Image folder of a json source.")] = None,
    threshold: Annotated[float | None, typer.Option(
        help="Threshold of pred.csv and the drawings (default: the tuned one).")] = None,
    batch_size: Annotated[int | None, typer.Option(help="Images per batch.")] = None,
    device: DeviceOpt = "auto",
    backend: Annotated[str, typer.Option(
        help="For an exported RUN: onnxruntime (auto) or openvino for .onnx; openvino for "
        ".xml; torchscript for .torchscript.")] = "auto",
    nproc_per_node: NprocOpt = 1,
    overrides: EvalOverridesArg = None,
):
    """Write pred.json (COCO results) and pred.csv (image_id,pred_label) for new images.

    Each image is logged to OUT/predictions.jsonl as it finishes: a stopped job continues with
    --resume. With --nproc-per-node N (or under torchrun) the processes share the images and
    the first writes; the files are those of one process."""
    from rcnnlab import api

    _in_range("--batch-size", batch_size, 1)
    if _in_processes(nproc_per_node):
        return
    with _progress("predicting") as (advance, set_total):
        paths = api.predict(run, source, out, images=images and str(images),
                            threshold=threshold, batch_size=batch_size, device=device,
                            overrides=overrides, save_images=save_images, progress=advance,
                            on_total=set_total, backend=backend, resume=resume)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


@contextlib.contextmanager
def _phase_bar(description: str, total: int):
    """A detection pass's bar (validation, tune, evaluate, report, diagnose) on a terminal;
    when another live display holds the terminal, the pass runs without one."""
    with _progress(description) as (advance, set_total):
        set_total(total)
        yield advance


@contextlib.contextmanager
def _progress(description: str):
    """A progress bar with ETA on a terminal (silent elsewhere): yields (advance(n),
    set_total(n))."""
    from rich.errors import LiveError

    from rcnnlab.engine.progress import eta_progress

    bar = eta_progress(err_console, transient=True, disable=not err_console.is_terminal)
    try:
        bar.start()
    except LiveError:  # another bar is showing (training's): this phase runs without one
        yield (lambda n=1: None), (lambda n: None)
        return
    try:
        task = bar.add_task(description, total=None)
        yield (lambda n=1: bar.advance(task, n)), (lambda n: bar.update(task, total=n))
    finally:
        bar.stop()


@app.command()
@_user_errors
def export(
    run: Annotated[Path, typer.Argument(help="Run folder (or checkpoint).")],
    format: Annotated[str, typer.Option(
        "--format", help="onnx, torchscript or openvino.")] = "onnx",
    out: Annotated[Path | None, typer.Option(
        help="The model file to write (default: RUN/export/model.onnx, .torchscript or "
        ".xml).")] = None,
    overrides: EvalOverridesArg = None,
):
    """Export the run's best model to ONNX, TorchScript or OpenVINO IR, with a sidecar json
    (categories, threshold, config); `Detector.load(file)` and `rcnnlab predict FILE ...`
    run it (ONNX Runtime, torch, OpenVINO). eval.proposals=N sets the proposals the graph's
    box head scores."""
    from rcnnlab.export import export_model

    path = export_model(run, out, format=format, overrides=overrides or [])
    console.print(f"model: {path}\nsidecar: {path.with_suffix('.json')}")


@app.command()
@_user_errors
def serve(
    model: Annotated[Path, typer.Argument(
        help="Run folder, checkpoint, or exported model (.onnx, .xml, .torchscript).")],
    host: Annotated[str, typer.Option(help="Address to listen on (0.0.0.0: every "
                                      "interface).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    max_batch: Annotated[int, typer.Option(help="Images run as one batch at most.")] = 8,
    max_wait_ms: Annotated[float, typer.Option(
        help="How long a batch's first image waits for others to join it.")] = 10.0,
    max_upload_mb: Annotated[float, typer.Option(help="Largest request body (MiB).")] = 20.0,
    max_pixels: Annotated[int, typer.Option(
        help="Largest image (width x height), checked before decoding.")] = 40_000_000,
    max_images: Annotated[int, typer.Option(help="Images in one request at most.")] = 16,
    device: DeviceOpt = "auto",
    backend: Annotated[str, typer.Option(
        help="For an exported model: onnxruntime (auto) or openvino for .onnx; openvino for "
        ".xml; torchscript for .torchscript.")] = "auto",
    overrides: EvalOverridesArg = None,
):
    """Serve the model over HTTP: POST /predict, GET /healthz, /readyz, /info, /metrics, and a
    page at / to try it in a browser (needs the serve extra)."""
    try:
        import uvicorn

        from rcnnlab.serve.app import create_app
    except ImportError as exc:
        raise ConfigError(f"rcnnlab serve needs the serve extra ({exc.name} is missing). Fix: "
                          "pip install 'rcnnlab[serve]'") from None
    from pydantic import ValidationError

    from rcnnlab.serve.options import ServeOptions

    _in_range("--port", port, 1, 65535)
    try:
        options = ServeOptions(max_batch=max_batch, max_wait_ms=max_wait_ms,
                               max_upload_mb=max_upload_mb, max_pixels=max_pixels,
                               max_images=max_images, device=device, backend=backend)
    except ValidationError as exc:  # one line naming the flag and its range
        first = exc.errors()[0]
        flag = "--" + str(first["loc"][0]).replace("_", "-")
        raise ConfigError(f"{flag} {first['input']!r}: {first['msg']}") from None
    app_ = create_app(model, options, overrides=overrides or [], preload=True)
    service = app_.state.service
    console.print(f"serving {service.model_id} at http://{host}:{port}/ (POST /predict; "
                  "Ctrl+C stops)", highlight=False, soft_wrap=True)
    uvicorn.run(app_, host=host, port=port, log_level="warning")


# ---------------------------------------------------------------------------------- records
@app.command()
@_user_errors
def report(
    run: Annotated[Path, typer.Argument(help="Run folder.")],
    split: Annotated[str | None, typer.Option(
        help="Split of the precision-recall curves, confusion matrix and detection grid "
        "(default: test when the run's config has one, else valid).")] = None,
    device: DeviceOpt = "auto",
):
    """Write the run record: report.md, a self-contained report.html and figures/*.png."""
    from rcnnlab import api

    paths = api.report(run, split=split, device=device)
    console.print(f"record: {paths['markdown']}, {paths['html']} "
                  f"({len(paths) - 2} figures in {paths['html'].parent / 'figures'})")


@app.command()
@_user_errors
def diagnose(
    run: Annotated[Path, typer.Argument(help="Run folder (or checkpoint).")],
    split: Annotated[str, typer.Option(help="valid | test (from the run's config).")] = "valid",
    data: Annotated[Path | None, typer.Option(help="Diagnose on this COCO json instead.")] = None,
    images: Annotated[Path | None, typer.Option(help="Its image folder.")] = None,
    device: DeviceOpt = "auto",
    overrides: EvalOverridesArg = None,
):
    """Why mAP is low: TIDE error breakdown, AP per IoU, RPN recall and ranked findings.

    Writes diagnosis.md and diagnosis.json into the run folder.
    """
    from rcnnlab import api
    from rcnnlab.evaluation.errors import ERROR_NAMES, ERROR_TYPES

    with err_console.status(f"detecting on {split} and diagnosing"):
        result = api.diagnose(run, split=split, device=device, json_path=data and str(data),
                              images=images and str(images), overrides=overrides)
    e = result.errors
    table = Table(title=f"{result.split} split, {result.n_images} images: TIDE errors at IoU "
                  f"{e.pos_thresh:g} (AP50 {e.ap:.4f}, mAP {_fmt(result.metrics['AP'])})")
    table.add_column("error")
    for col in ("count", "ΔAP50", "share of lost AP50"):
        table.add_column(col, justify="right")
    shares = e.lost_share()
    for kind in ERROR_TYPES:
        table.add_row(ERROR_NAMES[kind], str(e.counts[kind]), _fmt(e.delta_ap[kind]),
                      f"{shares[kind]:.0%}")
    table.add_row("false positives (oracle rescoring)", "", _fmt(e.fp_delta_ap), "")
    table.add_row("false negatives (perfect recall)", "", _fmt(e.fn_delta_ap), "")
    console.print(table)
    console.print("AP by IoU threshold: " + ", ".join(
        f"{t:.2f} {_fmt(v, 3)}" for t, v in result.per_iou.items()), highlight=False)
    console.print("RPN recall: " + ", ".join(f"{_fmt(v)} at IoU {t:g}"
                                            for t, v in result.rpn.recall.items()))
    for i, finding in enumerate(result.findings, start=1):
        console.print(f"{i}. {finding.text}", highlight=False)
    console.print(f"Dominant cause: [bold]{result.dominant_cause or 'none'}[/bold]")
    if run.is_dir():
        console.print(f"written: {run / 'diagnosis.md'}, {run / 'diagnosis.json'}")


@app.command()
@_user_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(
        help="Run folders; the first is the baseline the others are compared against.")],
    split: Annotated[str | None, typer.Option(
        help="test | valid | metrics: which numbers to compare (default: test when every run "
        "has eval_test.json, else valid, else metrics.csv's validation at the best epoch).")]
    = None,
    out: Annotated[Path | None, typer.Option(help="Also write the comparison as Markdown.")]
    = None,
):
    """Compare runs against the first: metrics, per-class AP, config differences."""
    from rcnnlab.reporting.compare import compare_runs

    comparison = compare_runs(runs, split=split)
    console.print(comparison.to_rich())
    if out is not None:
        console.print(f"markdown: {comparison.write(out)}")


@app.command()
@_user_errors
def demo(
    config: ConfigOpt = "demo",
    overrides: OverridesArg = None,
):
    """Generate house numbers, train the CPU default, tune, evaluate on test, write outputs."""
    from rich.progress import Progress

    from rcnnlab import api
    from rcnnlab.data.splits import ensure_synth
    from rcnnlab.demo import run_demo

    cfg = api.configure(config, overrides or [])
    with Progress(console=err_console, disable=not err_console.is_terminal) as bar:
        task = bar.add_task("generating data", total=None)
        ensure_synth(cfg.data, progress=lambda n: bar.advance(task, n))
    figures = run_demo(cfg)
    table = Table(title=f"rcnnlab demo: {cfg.run_dir}")
    table.add_column("")
    table.add_column("", justify="right")
    for key, value in figures.items():
        table.add_row(key, value)
    console.print(table)
    console.print(f"summary: {cfg.run_dir / 'summary.md'}")


if __name__ == "__main__":
    app()
