"""The run record: everything a reader needs to judge a run, on one page.

`write_record` writes `report.md` (figures linked from `figures/`) and `report.html` (one
self-contained file: figures embedded as base64 data URIs, inline CSS, no external reference)
into the run folder, in three steps, one module each:

- `data`: what the record shows, gathered from the run folder (through `RunDir`) and from what
  the caller evaluated with the best checkpoint (`rcnnlab.api.finish_run` runs the evaluation
  pipeline once per split: the validation split and the report split);
- `figures` and `sections`: the figures with their captions, and the text of each section, as
  blocks;
- `render`: the blocks as Markdown and as HTML (a Jinja2 template), so the two never disagree.

It detects nothing itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from rcnnlab.data.coco import CocoData
from rcnnlab.errors import MissingFileError
from rcnnlab.evaluation.pipeline import EvalResult
from rcnnlab.files import write_atomic
from rcnnlab.reporting.record.data import gather
from rcnnlab.reporting.record.figures import draw_figures
from rcnnlab.reporting.record.render import render_html, render_markdown
from rcnnlab.reporting.record.sections import record_blocks
from rcnnlab.runs.checkpoint import Checkpoint
from rcnnlab.runs.rundir import RunDir

__all__ = ["write_record"]


def write_record(run_dir: str | Path, *, best: Checkpoint, model_info: dict,
                 splits: Mapping[str, CocoData], results: Mapping[str, EvalResult], split: str,
                 last: Checkpoint | None = None, grid_images: int = 12) -> dict[str, Path]:
    """Write `report.md`, `report.html` and the figures (`figures/*.png`) of a run folder.

    `best` is the run's best checkpoint and `model_info` its `describe_model`; `splits` are
    the splits of its config (their statistics are reported); `results` holds its evaluation
    of the valid split and of `split`, the split the precision-recall curves,
    confusion matrix and detection grid are drawn on; `last` (the training totals) defaults
    to `best`. Returns the paths written: "markdown", "html" and one per figure (by file stem).
    """
    run = RunDir(run_dir)
    if not run.root.is_dir():
        raise MissingFileError(f"{run.root}: not a run folder. Fix: give the folder rcnnlab "
                                "train wrote (runs/<name>)")
    rec = gather(run, best=best, last=last, model_info=model_info, splits=splits,
                 results=results, split=split)
    figures = draw_figures(rec, run.figures_dir, grid_images)
    blocks = record_blocks(rec, figures)
    write_atomic(run.report_md, render_markdown(blocks, run.root))
    write_atomic(run.report_html, render_html(blocks, f"rcnnlab run record: {rec.cfg.name}"))
    return {"markdown": run.report_md, "html": run.report_html,
            **{f.path.stem: f.path for f in figures.values()}}
