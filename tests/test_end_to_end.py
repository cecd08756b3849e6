"""Tiny end-to-end runs on generated house numbers: every output file, resume, the CLI."""

from __future__ import annotations

import csv
import json
import math
import statistics
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from rcnnlab import api
from rcnnlab.cli import app
from rcnnlab.detector import Detector
from rcnnlab.engine.loop import HookBase
from rcnnlab.engine.progress import ProgressReporter
from rcnnlab.models.architecture import build_model
from rcnnlab.runs.checkpoint import load_checkpoint
from tests.tiny import TINY, tiny_config


# A small, fast model: R18-FPN at native size with small budgets.
def test_two_iterations_write_every_output(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=1", "train.iters_per_epoch=2",
                      "train.record=true")
    fit = api.train(cfg, reporter=ProgressReporter(quiet=True))
    run = fit.run_dir
    assert fit.iterations == 2 and fit.epochs == 1
    for name in ("config.yaml", "metrics.csv", "checkpoints/last.pt", "checkpoints/best.pt",
                 "report.md", "report.html", "figures/losses.png"):
        assert (run / name).is_file(), name
    assert list((run / "tb").glob("events.out.tfevents.*"))
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    assert len(rows) == 1
    for key in ("loss", "loss_cls", "loss_bbox", "loss_anchor", "val_AP", "val_AP50",
                "val_seq_acc", "train_img_per_s", "lr"):
        assert rows[0][key] != "", key
    loss = float(rows[0]["loss"])
    parts = sum(float(rows[0][k]) for k in ("loss_cls", "loss_bbox", "loss_anchor"))
    assert loss == pytest.approx(parts, rel=1e-4)
    val_parts = sum(float(rows[0][f"val_{k}"]) for k in ("loss_cls", "loss_bbox", "loss_anchor"))
    assert float(rows[0]["val_loss"]) == pytest.approx(val_parts, rel=1e-4) and val_parts > 0

    ckpt = load_checkpoint(run / "checkpoints" / "best.pt")
    assert [c["name"] for c in ckpt["categories"]] == [str(d) for d in range(10)]
    assert [c["id"] for c in ckpt["categories"]] == list(range(1, 11))
    assert ckpt["epoch"] == 1

    sweep = api.tune(run, device="cpu")
    assert len(sweep.rows) == 46
    assert load_checkpoint(run / "checkpoints" / "best.pt")["threshold"] == sweep.best
    assert (run / "threshold_sweep.csv").is_file()

    result = api.evaluate(run, split="test", device="cpu")
    assert result.threshold == sweep.best and result.n_images == 4
    assert (run / "eval_test.json").is_file()

    out = tmp_path / "pred"
    paths = api.predict(run, synth_dir / "test" / "annotations.json", out, device="cpu")
    preds = json.loads(paths["json"].read_text())
    assert all(set(p) == {"image_id", "category_id", "bbox", "score"} for p in preds)
    assert all(1 <= p["category_id"] <= 10 for p in preds)
    lines = paths["csv"].read_text().splitlines()
    assert lines[0] == "image_id,pred_label" and len(lines) == 5
    gt_ids = [img["id"] for img in json.loads(
        (synth_dir / "test" / "annotations.json").read_text())["images"]]
    assert [int(line.split(",")[0]) for line in lines[1:]] == gt_ids


def test_predict_on_a_folder_enumerates_non_numeric_names(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=1", "train.iters_per_epoch=1")
    run = api.train(cfg, reporter=ProgressReporter(quiet=True)).run_dir
    folder = tmp_path / "imgs"
    folder.mkdir()
    src = sorted((synth_dir / "test").glob("*.*g"))[:2]
    for name, path in zip(("b_house.png", "a_house.png"), src, strict=True):
        (folder / name).write_bytes(path.read_bytes())
    paths = api.predict(run, folder, tmp_path / "out", threshold=0.5, device="cpu")
    mapping = paths["ids"].read_text().splitlines()
    assert mapping == ["image_id,file_name", "1,a_house.png", "2,b_house.png"]
    assert paths["csv"].read_text().splitlines()[0] == "image_id,pred_label"


def test_resume_reaches_the_same_weights(synth_dir, tmp_path):
    # Multi-scale, repeat-factor sampling, policy gradient, RLO and the weight average on:
    # their draws and state must resume exactly too.
    common = ["train.epochs=2", "train.iters_per_epoch=2", "augment.no_aug_epochs=0",
              "augment.multiscale_sizes=[48,96]", "data.repeat_factor_threshold=0.5",
              "train.roi_loss=policy_gradient", "train.scale_weighting=rlo",
              "train.scale_interval=1", "train.ema_decay=0.9", "train.ema_warmup=2"]
    whole = tiny_config(synth_dir, tmp_path / "a", *common)
    api.train(whole, reporter=ProgressReporter(quiet=True))
    # The same run interrupted after epoch 1: a 1-epoch schedule would differ, so stop it by
    # keeping the 2-epoch config and raising out of the second epoch.
    broken = tiny_config(synth_dir, tmp_path / "b", *common)

    class Interrupt(ProgressReporter):
        def start_epoch(self, epoch, *args):
            if epoch == 2:
                raise KeyboardInterrupt
            super().start_epoch(epoch, *args)

    with pytest.raises(KeyboardInterrupt):
        api.train(broken, reporter=Interrupt(quiet=True))
    assert load_checkpoint(broken.run_dir / "checkpoints" / "last.pt")["epoch"] == 1
    api.train(broken, resume=True, reporter=ProgressReporter(quiet=True))
    a = load_checkpoint(whole.run_dir / "checkpoints" / "last.pt")
    b = load_checkpoint(broken.run_dir / "checkpoints" / "last.pt")
    assert a["epoch"] == b["epoch"] == 2 and a["iteration"] == b["iteration"] == 4
    for key, tensor in a["model"].items():
        assert torch.equal(tensor, b["model"][key]), key
    ema_a, ema_b = a["resume"]["hooks"]["ema"], b["resume"]["hooks"]["ema"]
    assert ema_a["updates"] == ema_b["updates"] == 4
    for key, tensor in ema_a["weights"].items():
        assert torch.equal(tensor, ema_b["weights"][key]), key
    # best.pt holds the average (what validation scored), not the last step's weights
    best_weights = load_checkpoint(whole.run_dir / "checkpoints" / "best.pt")["model"]
    assert not torch.equal(best_weights["roi_heads.box_predictor.cls_score.weight"],
                           a["model"]["roi_heads.box_predictor.cls_score.weight"])
    rows = list(csv.DictReader((broken.run_dir / "metrics.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    # best.pt keeps the weights and what inference needs, not AdamW's two moments per weight;
    # resuming from it says which file to use instead.
    best_path = whole.run_dir / "checkpoints" / "best.pt"
    best = load_checkpoint(best_path)
    assert {"model", "config", "categories", "threshold", "epoch"} <= best.keys()
    assert not {"optimizer", "scheduler", "rng"} & best.keys()
    last_path = whole.run_dir / "checkpoints" / "last.pt"
    assert best_path.stat().st_size < 0.5 * last_path.stat().st_size
    last_path.write_bytes(best_path.read_bytes())  # a last.pt that holds the weights only
    with pytest.raises(ValueError, match="last.pt: holds the weights only.*Fix: resume from"):
        api.train(whole, resume=True, reporter=ProgressReporter(quiet=True))


def test_cli_help_and_user_errors(tmp_path):
    runner = CliRunner()
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("data", "train", "tune", "evaluate", "predict", "demo"):
        assert command in result.output
        assert runner.invoke(app, [command, "--help"]).exit_code == 0
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    result = runner.invoke(app, ["train", f"data.train_json={bad}", "data.val_fraction=0.1"])
    assert result.exit_code == 2
    assert "malformed JSON" in result.output and "Traceback" not in result.output


def test_finetune_starts_from_the_other_runs_weights(synth_dir, tmp_path):
    from rcnnlab.data.splits import load_splits
    from rcnnlab.engine.training import build_detector

    first = tiny_config(synth_dir, tmp_path / "a", "train.epochs=1", "train.iters_per_epoch=1")
    api.train(first, reporter=ProgressReporter(quiet=True))
    best = first.run_dir / "checkpoints" / "best.pt"
    second = tiny_config(synth_dir, tmp_path / "b", "train.seed=5", f"train.finetune_from={best}")
    _, model = build_detector(second, load_splits(second.data, need=("train",))["train"],
                              torch.Generator())
    loaded = load_checkpoint(best)["model"]
    for key, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded[key]), key


def test_data_split_command_writes_both_halves(tmp_path):
    from .conftest import write_coco

    images = [{"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in range(10)]
    anns = [{"id": i, "image_id": i, "category_id": i % 2, "bbox": [5, 5, 10, 20]}
            for i in range(10)]
    src = write_coco(tmp_path / "d", images=images, annotations=anns)
    result = CliRunner().invoke(app, ["data", "split", str(src), "--out", str(tmp_path / "s"),
                                      "--fraction", "0.2"])
    assert result.exit_code == 0, result.output
    train = json.loads((tmp_path / "s" / "train.json").read_text())
    valid = json.loads((tmp_path / "s" / "valid.json").read_text())
    assert len(train["images"]) == 8 and len(valid["images"]) == 2
    assert {a["category_id"] for a in valid["annotations"]} == {0, 1}
    assert "data.train_images=" in result.output


def test_demo_writes_summary_figures_and_outputs(synth_dir, tmp_path):
    from rcnnlab.demo import run_demo

    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=1", "train.iters_per_epoch=2",
                      "train.record=true")
    figures = run_demo(cfg, reporter=ProgressReporter(quiet=True), n_samples=4)
    run = cfg.run_dir
    for name in ("summary.md", "curves.png", "samples.png", "pred.json", "pred.csv",
                 "threshold_sweep.csv", "eval_test.json", "report.md", "report.html"):
        assert (run / name).is_file(), name
    # the record is written once, after tuning: it has the tuned threshold and the test split
    record = (run / "report.md").read_text()
    assert "test" in record and "not tuned" not in record
    summary = (run / "summary.md").read_text()
    assert "![curves](curves.png)" in summary and "![samples](samples.png)" in summary
    evaluation = json.loads((run / "eval_test.json").read_text())
    assert figures["test mAP@[.5:.95]"] == f"{evaluation['AP']:.4f}"
    assert figures["test sequence accuracy"] == f"{evaluation['seq_acc']:.4f}"


def test_data_commands_on_real_sets(tmp_path):
    from .conftest import shared_path

    runner = CliRunner()
    yolo = shared_path("number-extraction-yolo")
    out = tmp_path / "valid.json"
    result = runner.invoke(app, ["data", "convert", str(yolo), "--from", "yolo", "--split",
                                 "valid", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "63 images, 624 boxes, 10 categories" in result.output
    result = runner.invoke(app, ["data", "stats", str(out), "--images", str(yolo / "valid" /
                                                                          "images"),
                                 "--png", str(tmp_path / "stats.png")])
    assert result.exit_code == 0, result.output
    assert "total" in result.output and (tmp_path / "stats.png").stat().st_size > 0
    orand = shared_path("orand-car-a", "instances_train.json")
    result = runner.invoke(app, ["data", "show", str(orand), "--out", str(tmp_path / "g.png"),
                                 "--n", "4"])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "g.png").stat().st_size > 0
    result = runner.invoke(app, ["data", "convert", str(yolo), "--from", "coco", "--out",
                                 str(out)])
    assert result.exit_code == 2 and "use yolo, svhn or voc" in result.output


def test_auto_anchors_are_fitted_logged_and_saved(synth_dir, tmp_path, caplog, monkeypatch):
    import logging

    import yaml

    from rcnnlab.engine import training

    caplog.set_level(logging.INFO)
    built = []  # the fit reads the levels from the config: one model is built, to train
    monkeypatch.setattr(training, "build_model",
                        lambda *a, **k: built.append(1) or build_model(*a, **k))
    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=1", "train.iters_per_epoch=1",
                      "model.anchors=auto")
    run = api.train(cfg, reporter=ProgressReporter(quiet=True)).run_dir
    assert built == [1]
    assert "auto anchors:" in caplog.text and "0.7" in caplog.text
    saved = yaml.safe_load((run / "config.yaml").read_text())["model"]
    assert saved["anchors"] == "given" and len(saved["anchor_sizes"]) == 5
    model = Detector.load(run, device="cpu").model
    assert [list(s) for s in model.rpn.anchor_generator.sizes] == saved["anchor_sizes"]


def test_multiscale_is_on_while_augmenting_and_off_for_the_last_epochs(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=2", "train.iters_per_epoch=3",
                      "augment.no_aug_epochs=1", "augment.multiscale_sizes=[40,96]")
    seen = []  # (training, drawn short side, padded batch height) per forward of the transform

    class Watch(HookBase):
        def before_train(self):
            self.loop.model.transform.register_forward_hook(
                lambda mod, args, out: seen.append((mod.training, mod.batch_short_side,
                                                    out[0].image_sizes)))

    api.train(cfg, reporter=ProgressReporter(quiet=True), extra_hooks=[Watch()])
    train = [s for s in seen if s[0]]
    assert len(train) == 6
    # Epoch 1 (augmenting): every image of a batch has the drawn short side.
    for _, side, sizes in train[:3]:
        assert side in (40, 96) and all(min(hw) == side for hw in sizes)
    # Epoch 2 (no_aug_epochs): native size, the synthetic images' own heights.
    assert all(side is None for _, side, _ in train[3:])
    assert all(side is None for training, side, _ in seen if not training)


def test_ablation_script_runs_each_variant_per_seed_and_resumes(synth_dir, tmp_path,
                                                                monkeypatch):
    import importlib.util
    import sys

    benchmarks = Path(__file__).resolve().parents[1] / "benchmarks"
    monkeypatch.syspath_prepend(str(benchmarks))  # as when run: its siblings import
    spec = importlib.util.spec_from_file_location("ablation", benchmarks / "ablation.py")
    ablation = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "ablation", ablation)  # dataclasses look their module up
    spec.loader.exec_module(ablation)
    data = [f"data.{s}_json={synth_dir / s / 'annotations.json'}" for s in ("valid", "test")]
    data.append(f"data.train_json={synth_dir / 'train' / 'annotations.json'}")
    args = ["--study", "objectives", "--only", "baseline", "soft-NMS gaussian",
            "repeat-factor sampling", "baseline + policy gradient", "--seeds", "0", "1",
            "--epochs", "1",
            "--extra-epochs", "1", "--split", "test", "--out", str(tmp_path), "--config", "",
            *TINY, *data, "train.iters_per_epoch=1", "augment.no_aug_epochs=0"]
    md = ablation.main(args)
    rows = list(csv.DictReader((tmp_path / "objectives.csv").open()))
    names = ["baseline", "repeat-factor sampling", "soft-NMS gaussian",
             "baseline + policy gradient"]
    assert [(r["variant"], r["seed"]) for r in rows] == [(n, s) for s in "01" for n in names]
    # Two seeds: mean +- std; the first row is the reference of the delta column.
    assert "| baseline | 2 |" in md and "±" in md and "| +0.000 ± 0.000 |" in md
    # Δ is paired by seed: the mean and sample std of each seed's difference to the baseline
    csv_rows = {(r["variant"], r["seed"]): float(r["AP"]) for r in rows}
    deltas = [csv_rows[("repeat-factor sampling", s)] - csv_rows[("baseline", s)] for s in "01"]
    assert (f"| {statistics.mean(deltas):+.3f} ± {statistics.stdev(deltas):.3f} |"
            in next(line for line in md.splitlines() if line.startswith("| repeat-factor")))
    assert "| soft-NMS gaussian | 2 |" in md and "0 (inference only)" in md
    # The reused run is scored with soft-NMS but left as it was.
    base = tmp_path / "objectives" / "baseline_s1"
    assert json.loads((base / "eval_test.json").read_text())["inference"]["nms"] == "nms"
    # The policy-gradient stage starts from the baseline of its own seed, at 0.1 x lr.
    saved = yaml_load(tmp_path / "objectives" / "baseline___policy_gradient_s1" / "config.yaml")
    assert saved["train"]["roi_loss"] == "policy_gradient" and saved["train"]["seed"] == 1
    assert saved["train"]["finetune_from"] == str(base / "checkpoints" / "best.pt")
    assert saved["train"]["lr"] == pytest.approx(1e-4)
    # Repeat-factor sampling gets the baseline's iterations per epoch, not sum(r_i) images.
    saved = yaml_load(tmp_path / "objectives" / "repeat_factor_sampling_s1" / "config.yaml")
    assert saved["data"]["repeat_factor_threshold"] == 0.5
    baseline_iterations = json.loads((base / "result.json").read_text())["iterations"]
    assert saved["train"]["iters_per_epoch"] == baseline_iterations
    # A second call finds every result.json and trains nothing; report-only agrees.
    before = (base / "result.json").stat().st_mtime_ns
    assert ablation.main(args) == md
    assert ablation.main([*args, "--report-only"]) == md
    assert (base / "result.json").stat().st_mtime_ns == before
    assert json.loads((base / "result.json").read_text())["sweep"] == [0.05, 0.95]
    # --rescore tunes every finished run again over a new range, training nothing; the reused
    # run still keeps its own inference options
    iterations = json.loads((base / "result.json").read_text())["iterations"]
    md = ablation.main([*args, "--sweep", "0.3", "0.6", "--rescore"])
    assert "threshold tuned over 0.3-0.6" in md and "--rescore." not in md
    for name in ("baseline_s1", "soft_nms_gaussian_s0", "repeat_factor_sampling_s1",
                 "baseline___policy_gradient_s0"):
        row = json.loads((tmp_path / "objectives" / name / "result.json").read_text())
        assert row["sweep"] == [0.3, 0.6] and 0.3 <= row["threshold"] <= 0.6, name
    assert json.loads((base / "result.json").read_text())["iterations"] == iterations
    assert json.loads((base / "eval_test.json").read_text())["inference"]["nms"] == "nms"
    assert "8 of 8 runs were tuned over another threshold range" in ablation.main(
        [*args, "--report-only"])


def yaml_load(path: Path) -> dict:
    import yaml

    return yaml.safe_load(path.read_text())


def test_training_methods_log_their_figures(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=2", "train.iters_per_epoch=2",
                      "train.scale_weighting=avw", "train.scale_interval=1",
                      "train.roi_loss=policy_gradient", "train.pg_gamma=0")
    run = api.train(cfg, reporter=ProgressReporter(quiet=True)).run_dir
    rows = list(csv.DictReader((run / "metrics.csv").open()))
    for key in ("pg_baseline_ap", "pg_mean_reward", "pg_mean_advantage", "w_level0",
                "w_level4"):
        assert all(r[key] != "" for r in rows), key
    assert all(0 <= float(r["pg_baseline_ap"]) <= 1 for r in rows)
    intervals = list(csv.DictReader((run / "scale_weights.csv").open()))
    assert [int(r["iteration"]) for r in intervals] == [1, 2, 3, 4]
    # AVW boosts exactly two levels (1 + lambda * share), the rest stay at 1
    last = [float(intervals[-1][f"w_level{i}"]) for i in range(5)]
    assert sum(w > 1 for w in last) == 2 and sum(w == 1 for w in last) == 3
    assert rows[-1]["w_level0"] == intervals[-1]["w_level0"]
    assert (run / "scale_weights.png").stat().st_size > 10_000


def test_class_weights_must_match_the_classes(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, tmp_path, "train.roi_loss=weighted_ce",
                      "train.class_weights=[1,2,3]")
    with pytest.raises(ValueError, match="has 3 values but the data has 10 classes"):
        api.train(cfg, reporter=ProgressReporter(quiet=True))


def test_validating_does_not_change_the_training_run(synth_dir, tmp_path):
    common = ["train.epochs=2", "train.iters_per_epoch=2", "augment.no_aug_epochs=0"]
    every = tiny_config(synth_dir, tmp_path / "a", *common, "train.eval_every=1")
    last_only = tiny_config(synth_dir, tmp_path / "b", *common, "train.eval_every=2")
    for cfg in (every, last_only):
        api.train(cfg, reporter=ProgressReporter(quiet=True))
    a = load_checkpoint(every.run_dir / "checkpoints" / "last.pt")["model"]
    b = load_checkpoint(last_only.run_dir / "checkpoints" / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    rows = list(csv.DictReader((every.run_dir / "metrics.csv").open()))
    assert rows[0]["val_loss"] != "" and rows[1]["val_loss"] != ""


def test_each_command_loads_the_model_once_and_detects_each_split_at_most_once(
        synth_dir, tmp_path, monkeypatch):
    from rcnnlab.demo import run_demo
    from rcnnlab.detector import core
    from rcnnlab.evaluation import pipeline

    detected, loads = [], []  # the split of every detection pass; every model built
    real_detect, real_load = pipeline.detect_dataset, core.detector_from_checkpoint

    def counting_detect(predictor, dataset, *args, **kwargs):
        detected.append(dataset.data.json_path.parent.name)
        return real_detect(predictor, dataset, *args, **kwargs)

    def counting_load(*args, **kwargs):
        loads.append(args[0])
        return real_load(*args, **kwargs)

    monkeypatch.setattr(pipeline, "detect_dataset", counting_detect)
    monkeypatch.setattr(core, "detector_from_checkpoint", counting_load)

    def calls(action) -> tuple[list[str], int]:
        detected.clear()
        loads.clear()
        action()
        return sorted(detected), len(loads)

    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=1", "train.iters_per_epoch=1",
                      "train.record=true")
    # validation during training; the record reuses it and detects test once
    assert calls(lambda: api.train(cfg, reporter=ProgressReporter(quiet=True))) == (
        ["test", "valid"], 1)
    run = cfg.run_dir
    assert calls(lambda: api.report(run, device="cpu")) == (["test", "valid"], 1)
    assert calls(lambda: api.diagnose(run, device="cpu")) == (["valid"], 1)
    assert calls(lambda: api.tune(run, device="cpu")) == (["valid"], 1)
    # the demo tunes on the detections of training's validation: valid and test once each
    demo = tiny_config(synth_dir, tmp_path / "demo", "train.epochs=1",
                       "train.iters_per_epoch=1", "train.record=true")
    assert calls(lambda: run_demo(demo, reporter=ProgressReporter(quiet=True),
                                  n_samples=2)) == (["test", "valid"], 1)


def test_a_run_folder_is_never_mixed_with_another_run(synth_dir, tmp_path):
    from rcnnlab.errors import RunError

    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=1", "train.iters_per_epoch=1")
    quiet = ProgressReporter(quiet=True)
    with pytest.raises(RunError, match="nothing to resume.*Fix: start it again"):
        api.train(cfg, resume=True, reporter=quiet)
    run = api.train(cfg, reporter=quiet).run_dir
    before = (run / "metrics.csv").read_bytes()
    (run / "eval_test.json").write_text("{}")
    with pytest.raises(RunError, match=r"holds a run already.*--resume.*--exist-ok.*name=tiny2"):
        api.train(cfg, reporter=quiet)
    assert (run / "metrics.csv").read_bytes() == before  # nothing appended, nothing lost
    # starting over deletes the old run's outputs first; a write cut short leaves no .tmp
    (run / "checkpoints" / "last.pt.tmp").write_bytes(b"half a checkpoint")
    api.train(cfg, exist_ok=True, reporter=quiet)
    assert [r["epoch"] for r in csv.DictReader((run / "metrics.csv").open())] == ["1"]
    assert not (run / "eval_test.json").exists()
    assert not list(run.rglob("*.tmp"))


def test_channels_last_trains_and_its_checkpoint_predicts(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=1", "train.iters_per_epoch=2",
                      "train.channels_last=true")
    layouts = []

    class Layout(HookBase):
        def before_train(self):
            model = self.loop.model
            rpn_conv = next(m for m in model.rpn.head.modules()
                            if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3))
            for weight in (model.backbone.body.conv1.weight, rpn_conv.weight):
                layouts.append(weight.is_contiguous(memory_format=torch.channels_last)
                               and not weight.is_contiguous())

    run = api.train(cfg, reporter=ProgressReporter(quiet=True), extra_hooks=[Layout()]).run_dir
    assert layouts == [True, True]  # the backbone and the RPN head trained in NHWC
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert all(math.isfinite(float(row[k])) for k in ("loss", "loss_cls", "loss_anchor"))
    model = Detector.load(run, device="cpu").model  # predicts in the layout it trained in
    weight = model.backbone.body.conv1.weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    paths = api.predict(run, synth_dir / "test" / "annotations.json", tmp_path / "pred",
                        device="cpu")
    assert isinstance(json.loads(paths["json"].read_text()), list)


def test_bf16_autocast_trains_with_finite_losses_and_its_checkpoint_predicts(synth_dir, tmp_path):
    cfg = tiny_config(synth_dir, tmp_path, "train.epochs=1", "train.iters_per_epoch=2",
                      "train.amp=bf16")
    run = api.train(cfg, reporter=ProgressReporter(quiet=True)).run_dir
    row = next(csv.DictReader((run / "metrics.csv").open()))
    assert all(math.isfinite(float(row[k])) for k in ("loss", "loss_cls", "loss_bbox",
                                                       "loss_anchor"))
    assert load_checkpoint(run / "checkpoints" / "last.pt")["resume"]["precision"] == {}
    paths = api.predict(run, synth_dir / "test" / "annotations.json", tmp_path / "pred",
                        device="cpu")
    assert isinstance(json.loads(paths["json"].read_text()), list)
