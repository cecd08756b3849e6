"""`rcnnlab report`, `diagnose`, `compare` and `demo`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from rcnnlab.cli.app import app
from rcnnlab.cli.common import (
    ConfigOpt,
    DeviceOpt,
    EvalOverridesArg,
    ImagesOpt,
    OverridesArg,
    RunArg,
    console,
    err_console,
    user_errors,
)
from rcnnlab.evaluation.coco import format_score


# ---------------------------------------------------------------------------------- records
@app.command()
@user_errors
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
@user_errors
def diagnose(
    run: RunArg,
    split: Annotated[str, typer.Option(help="valid | test (from the run's config).")] = "valid",
    data: Annotated[Path | None, typer.Option(help="Diagnose on this COCO json instead.")] = None,
    images: ImagesOpt = None,
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
                  f"{e.pos_thresh:g} (AP50 {e.ap:.4f}, mAP {format_score(result.metrics['AP'])})")
    table.add_column("error")
    for col in ("count", "ΔAP50", "share of lost AP50"):
        table.add_column(col, justify="right")
    shares = e.lost_share()
    for kind in ERROR_TYPES:
        table.add_row(ERROR_NAMES[kind], str(e.counts[kind]), format_score(e.delta_ap[kind]),
                      f"{shares[kind]:.0%}")
    table.add_row("false positives (oracle rescoring)", "", format_score(e.fp_delta_ap), "")
    table.add_row("false negatives (perfect recall)", "", format_score(e.fn_delta_ap), "")
    console.print(table)
    console.print("AP by IoU threshold: " + ", ".join(
        f"{t:.2f} {format_score(v, 3)}" for t, v in result.per_iou.items()), highlight=False)
    console.print("RPN recall: " + ", ".join(f"{format_score(v)} at IoU {t:g}"
                                            for t, v in result.rpn.recall.items()))
    for i, finding in enumerate(result.findings, start=1):
        console.print(f"{i}. {finding.text}", highlight=False)
    console.print(f"Dominant cause: [bold]{result.dominant_cause or 'none'}[/bold]")
    if run.is_dir():
        console.print(f"written: {run / 'diagnosis.md'}, {run / 'diagnosis.json'}")


@app.command()
@user_errors
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
    from rcnnlab import api

    comparison = api.compare(runs, split=split, out=out)
    console.print(comparison.to_rich())
    if out is not None:
        console.print(f"markdown: {out}")


@app.command()
@user_errors
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


