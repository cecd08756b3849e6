"""`rcnnlab plan`, `train`, `tune`, `evaluate` and `predict`."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from rcnnlab.cli.app import app
from rcnnlab.cli.common import (
    ConfigOpt,
    DeviceOpt,
    EvalOverridesArg,
    ImagesOpt,
    ModelArg,
    NprocOpt,
    OverridesArg,
    RunArg,
    console,
    err_console,
    first_line,
    in_processes,
    in_range,
    one_line,
    print_eval,
    progress_bar,
    user_errors,
)
from rcnnlab.errors import ConfigError, UserError
from rcnnlab.evaluation.coco import format_score
from rcnnlab.files import write_atomic


# ---------------------------------------------------------------------------------- plan
def _print_fingerprint(source: str, rows) -> None:
    table = Table(title=f"fingerprint of {source}", title_justify="left")
    table.add_column("what")
    table.add_column("value")
    for what, value in rows:
        table.add_row(what, escape(value))
    console.print(table)


@app.command()
@user_errors
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
@user_errors
def train(
    config: ConfigOpt = None,
    overrides: OverridesArg = None,
    resume: Annotated[bool, typer.Option(help="Continue from runs/NAME/checkpoints/last.pt.")]
    = False,
    exist_ok: Annotated[bool, typer.Option(
        help="Start over in a run folder that holds a run (its outputs are deleted first).")]
    = False,
    nproc_per_node: NprocOpt = 1,
):
    """Train a detector; writes runs/NAME/ (config, metrics.csv, TensorBoard, checkpoints).

    Without -c it trains the plan for the data (rcnnlab plan DATA shows it): name the data
    with data.yolo=data.yaml or data.train_json=ann.json. On several GPUs of one machine:
    --nproc-per-node N; on several machines: torchrun --nnodes M --nproc_per_node N -m rcnnlab
    train ..."""
    from rcnnlab import api
    from rcnnlab.runs.distributed import env_rank
    from rcnnlab.runs.launch import ProcessDied, launched_here, peer_died

    cfg = api.configure(config, overrides or [], resume=resume)
    try:
        if in_processes(nproc_per_node):
            return
        result = api.train(cfg, resume=resume, exist_ok=exist_ok)
    except KeyboardInterrupt:
        if env_rank() == 0:
            err_console.print(f"interrupted: {_where_the_run_stands(cfg.run_dir)}",
                              highlight=False, soft_wrap=True)
        raise typer.Exit(130) from None
    except ProcessDied as exc:
        one_line(f"{exc}: {_where_the_run_stands(cfg.run_dir)}")
        raise typer.Exit(1) from None
    except RuntimeError as exc:
        if not peer_died(exc) or launched_here():
            raise  # a bug keeps its traceback; under our launcher, the launcher speaks
        if env_rank() == 0:
            one_line(f"another process of this run died ({first_line(exc)}): "
                      f"{_where_the_run_stands(cfg.run_dir)}")
        raise typer.Exit(1) from None
    if env_rank() != 0:  # under torchrun rank 0 reports for all
        return
    console.print(f"[bold]done[/]: {result.epochs} epochs, {result.iterations} iterations, "
                  f"{result.train_images_per_s:.2f} img/s, best val mAP {result.best_map:.4f} "
                  f"(epoch {result.best_epoch}) -> {result.run_dir}")


@app.command()
@user_errors
def tune(
    run: RunArg,
    data: Annotated[Path | None, typer.Option(help="Validation COCO json (default: the run's).")]
    = None,
    images: ImagesOpt = None,
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
        table.add_row(f"{row.threshold:.2f}{mark}", format_score(row.mAP), format_score(row.AP50),
                      format_score(row.accuracy))
    console.print(table)
    console.print(f"best threshold {result.best:.2f} stored in {run}")


def _where_the_run_stands(run_dir: Path) -> str:
    """After Ctrl-C or a dead process: the last epoch saved and the command that continues
    the run."""
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
@user_errors
def evaluate(
    run: ModelArg,
    split: Annotated[str, typer.Option(help="valid | test (from the run's config).")] = "test",
    data: Annotated[Path | None, typer.Option(help="Evaluate on this COCO json instead.")] = None,
    images: ImagesOpt = None,
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

    if in_processes(nproc_per_node):
        return

    result = api.evaluate(run, split=split, json_path=data and str(data),
                          images=images and str(images), threshold=threshold, device=device,
                          overrides=overrides)
    if env_rank() == 0:  # under torchrun rank 0 reports
        print_eval(result)
        names = {c["id"]: c["name"] for c in result.data.categories}
        console.print(result.metrics.format_table(names))


@app.command()
@user_errors
def predict(
    run: ModelArg,
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

    in_range("--batch-size", batch_size, 1)
    if in_processes(nproc_per_node):
        return
    with progress_bar("predicting") as (advance, set_total):
        paths = api.predict(run, source, out, images=images and str(images),
                            threshold=threshold, batch_size=batch_size, device=device,
                            overrides=overrides, save_images=save_images, progress=advance,
                            on_total=set_total, backend=backend, resume=resume)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


