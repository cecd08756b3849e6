"""Bad inputs through the CLI: each gives one clear error line (exit code 2, no traceback)
naming the file or key and the fix, or is handled as stated.

Table-driven: a case writes its own small files, runs one command, and states the outcome.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

from rcnnlab.cli import app

from .conftest import write_coco

# A small, fast model and one training step (the run would start here if nothing stopped it).
TINY = ["model.native_size=true", "model.min_size=64", "model.max_size=256",
        "model.rpn_pre_nms_top_n_train=100", "model.rpn_post_nms_top_n_train=50",
        "model.rpn_pre_nms_top_n_test=50", "model.rpn_post_nms_top_n_test=20",
        "model.box_batch_size_per_image=16", "train.batch_size=2", "train.epochs=1",
        "train.iters_per_epoch=1", "train.record=false", "train.threads=2"]


@dataclass
class Case:
    """One bad input: `args(tmp)` writes the files and returns the command line."""

    name: str
    args: Callable[[Path], list[str]]
    words: tuple[str, ...]  # each must appear in the one error line


def _train(tmp: Path, *extra: str, ann: Path | None = None) -> list[str]:
    ann = ann or write_coco(tmp / "data")
    return ["train", f"data.train_json={ann}", f"data.valid_json={ann}", f"out_dir={tmp / 'runs'}",
            *TINY, *extra]


def _coco(tmp: Path, **kwargs) -> Path:
    return write_coco(tmp / "data", **kwargs)


def _trained(tmp: Path) -> Path:
    """A finished one-step run folder (trained once per test that needs it)."""
    result = CliRunner().invoke(app, _train(tmp, "name=done"))
    assert result.exit_code == 0, result.output
    return tmp / "runs" / "done"


CASES = [
    Case("train: a json without annotations",
         lambda t: _train(t, ann=_coco(t, annotations=[])),
         ("ann.json", "training split has no boxes", "2 images", "Fix:")),
    Case("train: every box a crowd box",
         lambda t: _train(t, ann=_coco(t, annotations=[
             {"id": 1, "image_id": 1, "category_id": 0, "bbox": [5, 5, 10, 20], "iscrowd": 1}])),
         ("training split has no boxes", "1 crowd boxes")),
    Case("train: an empty categories list",
         lambda t: _train(t, ann=_coco(t, annotations=[], categories=[])),
         ("ann.json", "'categories' list is empty", "Fix:")),
    Case("train: a bbox that is not 4 numbers, message with brackets",
         lambda t: _train(t, ann=_coco(t, annotations=[
             {"id": 1, "image_id": 1, "category_id": 0, "bbox": "5,5,10,20"}])),
         ("annotation id 1 bbox is", "give bbox as [x, y, width, height] in pixels")),
    Case("train: train.batch_size=0",
         lambda t: _train(t, "train.batch_size=0"),
         ("train.batch_size", "greater than 0")),
    Case("train: eval.sweep_step=0",
         lambda t: _train(t, "eval.sweep_step=0"),
         ("eval.sweep_step", "greater than 0")),
    Case("train: sweep range upside down",
         lambda t: _train(t, "eval.sweep_min=0.9", "eval.sweep_max=0.5"),
         ("eval.sweep_min 0.9 is above eval.sweep_max 0.5",)),
    Case("train: a device name torch does not know",
         lambda t: _train(t, "train.device=gpu0"),
         ("'gpu0' is not a device name", "Fix: use auto, cpu, cuda or cuda:N")),
    Case("train: a renamed key",
         lambda t: _train(t, "train.objective=policy_gradient"),
         ("train.objective is now train.roi_loss", "Fix:")),
    Case("train: --resume with nothing to resume",
         lambda t: [*_train(t), "--resume"],
         ("nothing to resume", "no checkpoints/last.pt", "Fix:")),
    Case("train: a run folder that holds a run",
         lambda t: _train(t, "name=done") if _trained(t) else [],
         ("runs/done: holds a run already", "--resume", "--exist-ok", "name=done2")),
    Case("evaluate: a split without boxes",
         lambda t: ["evaluate", str(_trained(t)), "--data",
                    str(write_coco(t / "empty", annotations=[])), "--device", "cpu"],
         ("evaluated split has no boxes", "Fix:")),
    Case("evaluate: a folder that is no run",
         lambda t: ["evaluate", str(t), "--device", "cpu"],
         ("no checkpoints/best.pt or last.pt", "Fix:")),
    Case("evaluate: --device that is not there",
         lambda t: ["evaluate", str(t), "--device", "cuda:7"],
         ("CUDA is not available", "Fix: use --device cpu")),
    Case("data convert: an unknown format",
         lambda t: ["data", "convert", str(t), "--from", "coco", "--out", str(t / "o.json")],
         ("--from 'coco': use yolo, svhn or voc",)),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input_gives_one_clear_error(case, tmp_path):
    result = CliRunner().invoke(app, case.args(tmp_path))
    output = result.output
    assert result.exit_code == 2, output
    assert "Traceback" not in output and result.exception is None or isinstance(
        result.exception, SystemExit), output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, output  # one line, whatever its length
    for word in case.words:
        assert word in errors[0], (word, errors[0])


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only input errors become one line: anything else is a bug and is not hidden."""
    from rcnnlab import api

    def broken(*args, **kwargs):
        raise ValueError("a bug deep inside")

    monkeypatch.setattr(api, "evaluate", broken)
    result = CliRunner().invoke(app, ["evaluate", str(tmp_path)])
    assert result.exit_code != 2 and isinstance(result.exception, ValueError)


def test_cases_write_nothing_into_a_run_they_refuse(tmp_path):
    run = _trained(tmp_path)
    before = (run / "metrics.csv").read_bytes()
    result = CliRunner().invoke(app, _train(tmp_path, "name=done"))
    assert result.exit_code == 2 and (run / "metrics.csv").read_bytes() == before
    assert json.loads((run / "environment.json").read_text())  # the first run's, untouched
