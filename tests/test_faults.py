"""kill -9 at the worst moments: a real `rcnnlab` process is killed mid-epoch and in the middle
of a checkpoint write, resumed, and must end with the same weights as an unbroken run; `tune`
and `predict` killed while writing leave no half-written output and complete when run again.

The faults are injected in the child process itself (SIGKILL, which no handler can catch), at
a chosen step or file write, so the test does not depend on timing.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from rcnnlab.data.synth import generate_dataset
from rcnnlab.runs.checkpoint import Checkpoint, load_checkpoint

pytestmark = pytest.mark.slow

TINY = ["model.native_size=true", "model.min_size=64", "model.max_size=256",
        "model.rpn_pre_nms_top_n_train=200", "model.rpn_post_nms_top_n_train=100",
        "model.rpn_pre_nms_top_n_test=100", "model.rpn_post_nms_top_n_test=50",
        "model.box_batch_size_per_image=32", "model.rpn_batch_size_per_image=64",
        "train.batch_size=2", "train.warmup_iters=2", "train.threads=2", "eval.batch_size=4",
        "train.record=false", "train.epochs=3", "train.iters_per_epoch=2",
        "augment.no_aug_epochs=0", "augment.multiscale_sizes=[48,96]",
        "train.scale_weighting=rlo", "train.scale_interval=1"]

# Prepended to the child: kills the process with SIGKILL when FAULT (an env variable) says so.
PRELUDE = """
import os, signal, sys
fault = os.environ.get("FAULT", "")
def die():
    os.kill(os.getpid(), signal.SIGKILL)
if fault.startswith("step:"):
    from rcnnlab.engine.loop import TrainLoop
    run_step, at = TrainLoop.run_step, int(fault.split(":")[1])
    def killing_step(self, *args):
        if self.iteration == at:
            die()
        return run_step(self, *args)
    TrainLoop.run_step = killing_step
elif fault.startswith("save:"):  # die half-way through writing the named checkpoint
    import torch
    from rcnnlab.runs import checkpoint
    _, name, epoch = fault.split(":")
    real_save = torch.save
    def half_save(state, fh, *args, **kwargs):
        if fh.name.endswith(name + ".tmp") and epoch in ("*", str(state.get("epoch"))):
            real_save(state, fh, *args, **kwargs)
            fh.flush()
            fh.truncate(fh.tell() // 2)
            die()
        return real_save(state, fh, *args, **kwargs)
    checkpoint.torch.save = half_save
elif fault.startswith("replace:"):  # die after writing a file's temporary copy, before rename
    from rcnnlab import files
    name = fault.split(":")[1]
    real_replace = os.replace
    def killing_replace(src, dst):
        if str(dst).endswith(name):
            die()
        return real_replace(src, dst)
    files.os.replace = killing_replace
from rcnnlab.cli import app
sys.argv[0] = "rcnnlab"
app()
"""


@pytest.fixture(scope="module")
def synth(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("synth")
    generate_dataset(out, n_train=8, n_valid=4, n_test=4, seed=3)
    return out


def rcnnlab(*args: str, fault: str = "") -> subprocess.CompletedProcess:
    """Run `rcnnlab ARGS` in a child process, with a fault to inject."""
    env = {**os.environ, "FAULT": fault}
    return subprocess.run([sys.executable, "-c", PRELUDE, *args], env=env, capture_output=True,
                          text=True, timeout=600)


def train_args(synth: Path, root: Path, name: str) -> list[str]:
    data = [f"data.{s}_json={synth / s / 'annotations.json'}" for s in ("train", "valid", "test")]
    return ["train", *TINY, *data, f"out_dir={root}", f"name={name}"]


def killed(result: subprocess.CompletedProcess) -> bool:
    return result.returncode == -signal.SIGKILL


def test_training_killed_mid_epoch_and_mid_checkpoint_resumes_bit_identical(synth, tmp_path):
    whole = rcnnlab(*train_args(synth, tmp_path, "whole"))
    assert whole.returncode == 0, whole.stderr
    reference = load_checkpoint(tmp_path / "whole" / "checkpoints" / "last.pt")

    # killed in the middle of epoch 2 (iteration 3 of 6): resumes from epoch 1
    assert killed(rcnnlab(*train_args(synth, tmp_path, "mid_epoch"), fault="step:3"))
    assert load_checkpoint(tmp_path / "mid_epoch" / "checkpoints" / "last.pt")["epoch"] == 1
    # killed while writing epoch 2's last.pt: epoch 1's stays whole, the half file is a .tmp
    assert killed(rcnnlab(*train_args(synth, tmp_path, "mid_save"), fault="save:last.pt:2"))
    ckpt_dir = tmp_path / "mid_save" / "checkpoints"
    assert (ckpt_dir / "last.pt.tmp").is_file()
    assert Checkpoint.load(ckpt_dir / "last.pt").epoch == 1
    # metrics.csv already has epoch 2's row: resuming redoes the epoch and rewrites it
    rows = list(csv.DictReader((tmp_path / "mid_save" / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]

    for name in ("mid_epoch", "mid_save"):
        # without --resume the folder is refused, never appended to
        refused = rcnnlab(*train_args(synth, tmp_path, name))
        assert refused.returncode == 2 and "holds a run already" in refused.stderr
        resumed = rcnnlab(*train_args(synth, tmp_path, name), "--resume")
        assert resumed.returncode == 0, resumed.stderr
        final = load_checkpoint(tmp_path / name / "checkpoints" / "last.pt")
        assert final["epoch"] == reference["epoch"] == 3 and final["iteration"] == 6
        for key, tensor in reference["model"].items():
            assert torch.equal(tensor, final["model"][key]), (name, key)
        rows = list(csv.DictReader((tmp_path / name / "metrics.csv").open()))
        assert [r["epoch"] for r in rows] == ["1", "2", "3"], name
        assert not list((tmp_path / name).rglob("*.tmp")), name


def test_tune_and_predict_killed_while_writing_leave_no_half_output(synth, tmp_path):
    assert rcnnlab(*train_args(synth, tmp_path, "run")).returncode == 0
    run = tmp_path / "run"
    best_before = (run / "checkpoints" / "best.pt").read_bytes()

    # tune killed half-way through writing best.pt: the old best.pt is intact and loads
    assert killed(rcnnlab("tune", str(run), "--device", "cpu", fault="save:best.pt:*"))
    assert (run / "checkpoints" / "best.pt").read_bytes() == best_before
    assert rcnnlab("tune", str(run), "--device", "cpu").returncode == 0
    tuned = Checkpoint.load(run / "checkpoints" / "best.pt")
    rows = list(csv.DictReader((run / "threshold_sweep.csv").open()))
    assert len(rows) == 46 and tuned.threshold in {float(r["threshold"]) for r in rows}

    # predict killed before pred.json is in place: no pred.json at all, never half of one
    out = tmp_path / "pred"
    test_json = synth / "test" / "annotations.json"
    assert killed(rcnnlab("predict", str(run), str(test_json), "--out", str(out),
                          "--device", "cpu", fault="replace:pred.json"))
    assert not (out / "pred.json").exists()
    # the job logged every image before the kill: --resume detects none again
    assert rcnnlab("predict", str(run), str(test_json), "--out", str(out),
                   "--device", "cpu", "--resume").returncode == 0
    assert json.loads((out / "predict_job.json").read_text())["detected_now"] == 0
    predictions = json.loads((out / "pred.json").read_text())
    assert all(set(p) == {"image_id", "category_id", "bbox", "score"} for p in predictions)
    lines = (out / "pred.csv").read_text().splitlines()
    assert lines[0] == "image_id,pred_label" and len(lines) == 5

    # predict killed while writing its first drawing: no half PNG; --resume leaves none behind
    drawn = tmp_path / "drawn"
    assert killed(rcnnlab("predict", str(run), str(test_json), "--out", str(drawn),
                          "--device", "cpu", "--save-images", fault="replace:.png"))
    assert not list((drawn / "images").glob("*.png"))
    assert rcnnlab("predict", str(run), str(test_json), "--out", str(drawn), "--device", "cpu",
                   "--save-images", "--resume").returncode == 0
    pngs = sorted((drawn / "images").iterdir())
    assert len(pngs) == 4 and all(p.suffix == ".png" for p in pngs)
    for png in pngs:
        with Image.open(png) as image:
            image.load()  # every drawing decodes whole
