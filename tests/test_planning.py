"""The planner: a dataset's fingerprint and the machine -> config values, each with a reason.

Fingerprints are made by hand (COCO records without image files: sizes from the json) for the
shapes a plan must handle: tiny images, huge images, dense images, images without objects, one
class, strong imbalance; then the real shared sets, and how a plan becomes a run's config.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from PIL import Image

from rcnnlab import api
from rcnnlab.config import Config, config_of, load_config
from rcnnlab.data.coco import load_coco
from rcnnlab.data.fingerprint import fingerprint, is_text
from rcnnlab.errors import ConfigError, DatasetError
from rcnnlab.planning import Hardware, make_plan, rules

from .conftest import shared_path

CPU = Hardware("cpu", "a test CPU", "CPU flags amx_bf16", 16 * 2**30)
CPU_NO_BF16 = Hardware("cpu", "an old CPU", None, 16 * 2**30)
GPU = Hardware("cuda:0", "a test GPU", "a test GPU", 40 * 2**30)


def dataset(tmp_path: Path, *, images: int, size: tuple[int, int], boxes_per_image,
            box: tuple[float, float], names=("0", "1"), class_of=None, name="ann.json") -> Path:
    """A COCO json (no image files) of `images` images of `size`, `boxes_per_image(i)` boxes of
    `box` (w, h) in image i, class `class_of(i, k)` (default: alternating)."""
    records, anns = [], []
    per = boxes_per_image if callable(boxes_per_image) else (lambda i: boxes_per_image)
    for i in range(images):
        records.append({"id": i + 1, "file_name": f"{i}.png", "width": size[0],
                        "height": size[1]})
        for k in range(per(i)):
            cols = max(1, int(size[0] // (box[0] + 1)))
            x, y = (k % cols) * (box[0] + 1), (k // cols) * (box[1] + 1) % (size[1] - box[1])
            cls = class_of(i, k) if class_of else k % len(names)
            anns.append({"id": len(anns) + 1, "image_id": i + 1, "category_id": cls,
                         "bbox": [x, y, box[0], box[1]]})
    tmp_path.mkdir(parents=True, exist_ok=True)
    path = tmp_path / name
    path.write_text(json.dumps({"images": records, "annotations": anns, "categories": [
        {"id": k, "name": n} for k, n in enumerate(names)]}))
    return path


def plan_of(path: Path, hardware: Hardware = CPU, **kwargs):
    return make_plan(fingerprint(load_coco(path, check_files=False)), hardware, **kwargs)


# ------------------------------------------------------------------ the fingerprint
def test_fingerprint_of_a_hand_made_set(tmp_path):
    path = dataset(tmp_path, images=10, size=(200, 100), box=(10, 40),
                   boxes_per_image=lambda i: 0 if i < 2 else 4)
    fp = fingerprint(load_coco(path, check_files=False))
    assert (fp.images, fp.boxes, fp.negatives) == (10, 32, 2)
    assert fp.image_long.p50 == 200 and fp.image_short.p50 == 100
    assert fp.object_size.p50 == pytest.approx(20.0)  # sqrt(10 * 40)
    assert fp.object_relative.p50 == pytest.approx(20 / math.sqrt(200 * 100))
    assert fp.box_aspect.p50 == pytest.approx(4.0)
    assert fp.objects_per_image.max == 4 and fp.objects_per_image.min == 0
    assert fp.class_counts == (16, 16) and fp.imbalance == 1.0
    assert fp.class_image_share == (0.8, 0.8)
    assert fp.digits and fp.text and fp.negative_share == 0.2
    assert fp.box_wh.shape == (32, 2) and fp.box_image_wh.shape == (32, 2)
    summary = fp.as_dict()  # plain values only: it goes into config.yaml
    assert "box_wh" not in summary and yaml.safe_load(yaml.safe_dump(summary)) == summary
    assert dict(fp.rows())["images"].startswith("10, of which 2 without objects")


@pytest.mark.parametrize(("names", "text"), [
    (["0", "1", "9"], True), (["A", "b"], True), (["character"], True), (["licence plate"], True),
    (["cat", "dog"], False), (["person"], False), ([], False)])
def test_which_classes_are_writing(names, text):
    assert is_text(names) is text


# ------------------------------------------------------------------ shapes of data
def test_tiny_images_stay_native_with_every_level(tmp_path):
    # 60 x 24 px cheque-like strips, 8 x 14 px digits: nothing may be shrunk or enlarged
    plan = plan_of(dataset(tmp_path, images=30, size=(60, 24), box=(8, 14), boxes_per_image=4,
                           names=[str(d) for d in range(10)]))
    v = plan.values
    assert v["model.native_size"] is True and v["model.min_size"] >= 24
    assert v["model.fpn_strides"] is None  # P2 kept for 11-px objects
    assert v["augment.flip_prob"] == 0.0 and v["eval.read_iou"] == 0.4
    assert v["train.label_smoothing"] == 0.1 and v["augment.crop_size"] is None
    assert "need every pixel" in plan.choice("input scale").reason


def test_huge_images_are_shrunk_to_what_their_objects_need(tmp_path):
    # 4000 x 3000 photos with 400-px objects: shrunk so that the smallest are ~32 px, without P2
    plan = plan_of(dataset(tmp_path, images=20, size=(4000, 3000), box=(400, 400),
                           boxes_per_image=2, names=["cat", "dog"]))
    v = plan.values
    scale = min(v["model.min_size"] / 3000, v["model.max_size"] / 4000)  # native_scale
    assert 32 <= 400 * scale <= 40  # the sides rounded up to multiples of 32 px
    assert v["model.max_size"] == math.ceil(32 / 400 * 4000 / 32) * 32
    assert v["model.fpn_strides"] == [8, 16, 32, 64]
    assert v["augment.flip_prob"] == 0.5 and v["eval.read_iou"] is None
    reason = plan.choice("input scale").reason
    assert "stay >= 32 px" in reason and "4000 px x 3000 px image is trained at" in reason


def test_large_objects_never_shrink_images_below_the_minimum_side(tmp_path):
    plan = plan_of(dataset(tmp_path, images=20, size=(640, 640), box=(400, 500),
                           boxes_per_image=1, names=["character"]))
    v = plan.values
    assert v["model.min_size"] == v["model.max_size"] == rules.MIN_IMAGE_SIDE
    assert "short side kept >= 128 px" in plan.choice("input scale").reason


def test_images_over_the_long_side_cap_are_capped(tmp_path):
    # tiny objects in 5000-px panoramas: native size would be 5000 px; the cap wins
    plan = plan_of(dataset(tmp_path, images=10, size=(5000, 1000), box=(10, 10),
                           boxes_per_image=3, names=["a", "b"]))
    v = plan.values
    assert v["model.max_size"] <= rules.MAX_LONG_SIDE + 32
    assert "capped at 1333 px" in plan.choice("input scale").reason


def test_dense_images_get_proposals_rois_and_detections_for_their_objects(tmp_path):
    plan = plan_of(dataset(tmp_path, images=8, size=(640, 640), box=(8, 16),
                           boxes_per_image=300, names=[str(d) for d in range(10)]))
    v = plan.values
    assert v["model.rpn_post_nms_top_n_test"] == rules.MAX_TEST_PROPOSALS
    assert v["model.rpn_post_nms_top_n_train"] == 2 * rules.MAX_TEST_PROPOSALS
    assert v["model.box_batch_size_per_image"] == 512
    assert v["model.box_detections_per_img"] == 600  # twice the most objects an image
    assert v["model.fpn_strides"] is None
    # many small objects in 640-px images: trained on 320-px windows at native scale
    assert v["augment.crop_size"] == rules.WINDOW
    assert "320-px windows" in plan.choice("training window").reason


def test_a_few_objects_an_image_keep_the_small_budgets(tmp_path):
    v = plan_of(dataset(tmp_path, images=20, size=(150, 50), box=(12, 30),
                        boxes_per_image=5)).values
    assert (v["model.rpn_post_nms_top_n_test"], v["model.rpn_pre_nms_top_n_test"]) == (100, 500)
    assert (v["model.rpn_post_nms_top_n_train"], v["model.box_batch_size_per_image"],
            v["model.box_detections_per_img"]) == (500, 64, 100)


def test_images_without_objects_are_counted_and_planned_around(tmp_path):
    path = dataset(tmp_path, images=20, size=(1024, 1024), box=(120, 70),
                   boxes_per_image=lambda i: 0 if i % 4 == 0 else 2, names=["plate"])
    plan = plan_of(path)
    assert plan.fingerprint.negatives == 5
    assert plan.values["model.min_size"] < 1024  # 92-px plates: shrunk
    assert plan.values["augment.crop_size"] is None  # 2 plates an image: whole images
    negatives = dataset(tmp_path / "none", images=3, size=(100, 100), box=(5, 5),
                        boxes_per_image=0)
    for i in range(3):
        Image.new("RGB", (100, 100)).save(tmp_path / "none" / f"{i}.png")
    with pytest.raises(DatasetError, match="the training split has no boxes"):
        api.plan(None, [f"data.train_json={negatives}"], device="cpu")


def test_one_class_needs_no_smoothing_and_no_sampler(tmp_path):
    plan = plan_of(dataset(tmp_path, images=10, size=(320, 320), box=(50, 80),
                           boxes_per_image=3, names=["character"]))
    v = plan.values
    assert v["train.label_smoothing"] == 0.0 and v["data.repeat_factor_threshold"] is None
    assert "one class" in plan.choice("sampler").reason


def test_strong_imbalance_repeats_the_rare_classes(tmp_path):
    # class 2 in 1 image of 40, classes 0 and 1 in every image
    path = dataset(tmp_path, images=40, size=(200, 200), box=(20, 20), boxes_per_image=4,
                   names=["a", "b", "rare"],
                   class_of=lambda i, k: 2 if (i == 0 and k == 0) else k % 2)
    plan = plan_of(path)
    threshold = plan.values["data.repeat_factor_threshold"]
    assert threshold == 1.0  # the median class is in every image
    # the rare class's images are repeated sqrt(1 / (1/40)) = 6.3 times
    reason = plan.choice("sampler").reason
    assert "repeat-factor sampling" in reason and "'rare'" in reason
    # 140 / 20 = 7x: under the limit of 10, plain shuffling
    mild = plan_of(dataset(tmp_path, images=40, size=(200, 200), box=(20, 20), boxes_per_image=4,
                           names=["a", "b"], class_of=lambda i, k: 1 if k == 0 and i < 20 else 0,
                           name="mild.json"))
    assert mild.fingerprint.imbalance == 7.0
    assert mild.values["data.repeat_factor_threshold"] is None


def test_anchors_are_fitted_only_where_the_defaults_miss(tmp_path):
    covered = plan_of(dataset(tmp_path, images=10, size=(160, 60), box=(14, 28),
                              boxes_per_image=4))
    assert covered.values["model.anchor_sizes"] is None  # 20-px digits: the defaults fit
    assert "default anchors" in covered.choice("anchors").reason
    tiny = plan_of(dataset(tmp_path, images=10, size=(640, 640), box=(4, 9),
                           boxes_per_image=20, name="tiny.json"))
    sizes = tiny.values["model.anchor_sizes"]
    assert sizes is not None and len(sizes) == 5 and min(min(s) for s in sizes) < 16
    assert "fitted to them" in tiny.choice("anchors").reason


def test_the_machine_sets_width_precision_and_batch(tmp_path):
    path = dataset(tmp_path, images=10, size=(1024, 1024), box=(8, 8), boxes_per_image=3)
    cpu, gpu = plan_of(path).values, plan_of(path, GPU).values
    assert (cpu["model.fpn_channels"], cpu["model.roi_output_size"]) == (128, 5)
    assert (gpu["model.fpn_channels"], gpu["model.roi_output_size"]) == (256, 7)
    assert cpu["train.batch_size"] == 8 and gpu["train.batch_size"] == 16
    assert gpu["train.lr"] == pytest.approx(2 * cpu["train.lr"])
    assert "bf16 here" in plan_of(path).choice("precision").reason
    assert "float32 here" in plan_of(path, CPU_NO_BF16).choice("precision").reason
    small = Hardware("cpu", "a small CPU", None, 2 * 2**30)  # 1 GiB for a batch
    v = plan_of(path, small).values
    per_image = rules.TRAIN_BYTES_PER_PIXEL * 1024 * 1024
    assert v["train.batch_size"] == max(1, int(2**30 // per_image)) < 8
    assert v["train.lr"] == pytest.approx(0.002 * v["train.batch_size"] / 8)


def test_the_schedule_follows_the_budget(tmp_path):
    path = dataset(tmp_path, images=80, size=(100, 50), box=(10, 20), boxes_per_image=3)
    budgeted = plan_of(path, budget_minutes=10).values
    assert budgeted["train.time_budget"] == 10
    fixed = plan_of(path).values  # 10 iterations an epoch: 300 epochs for ~3000 iterations
    assert fixed["train.time_budget"] is None and fixed["train.epochs"] == 300
    assert fixed["train.warmup_iters"] == 200
    short = plan_of(dataset(tmp_path, images=800, size=(100, 50), box=(10, 20),
                            boxes_per_image=3, name="big.json")).values
    assert short["train.epochs"] == 30  # 100 iterations an epoch


def test_no_validation_split_holds_a_tenth_out(tmp_path):
    path = dataset(tmp_path, images=20, size=(100, 50), box=(10, 20), boxes_per_image=3)
    fp = fingerprint(load_coco(path, check_files=False))
    assert make_plan(fp, CPU, has_valid=False).values["data.val_fraction"] == 0.1
    assert "data.val_fraction" not in make_plan(fp, CPU, has_valid=True).values


# ------------------------------------------------------------------ a plan as a config
def test_every_planned_key_is_a_config_key_and_the_plan_validates(tmp_path):
    plan = plan_of(dataset(tmp_path, images=10, size=(640, 480), box=(40, 60),
                           boxes_per_image=3))
    cfg = config_of(plan.tree())
    assert set(plan.values) <= rules.PLANNED_KEYS
    for key, value in plan.values.items():
        assert cfg.value(key) == value, key
    assert cfg.plan is not None and len(cfg.plan.choices) == len(rules.RULES)
    assert {c["topic"] for c in cfg.plan.choices} >= {"input scale", "anchors", "schedule"}
    assert all(topic and values and reason for topic, values, reason in cfg.plan.rows())


def test_configure_plans_and_overrides_win_key_by_key(tmp_path):
    path = dataset(tmp_path, images=10, size=(640, 640), box=(300, 400), boxes_per_image=2,
                   names=["character"])
    for i in range(10):
        Image.new("RGB", (640, 640)).save(tmp_path / f"{i}.png")
    cfg = api.configure(None, [f"data.train_json={path}", "model.min_size=256",
                               "train.time_budget=5", "name=planned"])
    assert cfg.plan is not None and cfg.name == "planned"
    assert cfg.model.min_size == 256 and cfg.model.max_size == rules.MIN_IMAGE_SIDE
    assert cfg.train.time_budget == 5 and cfg.plan.budget_minutes == 5
    rows = dict((topic, values) for topic, values, _ in cfg.plan.rows(cfg))
    assert "model.min_size=256 (planned: 128)" in rows["input scale"]
    # a recipe starting from the plan: its keys on top of the plan, the overrides on top of it
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"base: plan\ndata:\n  train_json: {path}\ntrain:\n  lr: 0.01\n")
    mine = api.configure(recipe, ["train.epochs=3"])
    assert mine.plan is not None and mine.train.lr == 0.01 and mine.train.epochs == 3
    assert mine.model.fpn_strides == [8, 16, 32, 64]
    with pytest.raises(ConfigError, match="base: plan"):
        load_config(recipe)
    # a recipe that does not start from the plan is taken as it is
    base = api.configure("base", [f"data.train_json={path}"])
    assert base.plan is None and base.model == load_config("base").model


def test_configure_without_data_says_how_to_name_it():
    with pytest.raises(ConfigError, match="data.yolo=path/to/data.yaml"):
        api.configure(None, ["train.epochs=1"])
    assert Config().plan is None  # the defaults plan nothing


# ------------------------------------------------------------------ the shared real sets
def test_plans_for_the_shared_sets():
    orand = api.plan(shared_path("orand-car-a", "instances_train.json"), budget_minutes=10,
                     device="cpu")
    recipe = load_config("orand")
    v = orand.values
    assert set(v) == rules.PLANNED_KEYS  # every rule's keys, the held-out share included
    # the tuned ORAND recipe, rediscovered from the data
    for key in ("model.native_size", "model.fpn_strides", "model.fpn_channels",
                "model.roi_output_size", "model.anchor_sizes", "model.aspect_ratios",
                "model.rpn_post_nms_top_n_test", "model.rpn_pre_nms_top_n_test",
                "model.rpn_post_nms_top_n_train", "model.box_batch_size_per_image",
                "train.lr", "train.backbone_lr_mult", "train.label_smoothing",
                "train.batch_size", "train.time_budget", "data.val_fraction", "eval.read_iou",
                "augment.flip_prob", "augment.hsv_prob", "augment.affine_prob"):
        assert v[key] == recipe.value(key), key
    building = api.plan(shared_path("building-characters-yolo", "data.yaml"), device="cpu")
    b = building.values
    assert b["model.min_size"] == 128 and b["model.fpn_strides"] == [8, 16, 32, 64]
    assert b["augment.flip_prob"] == 0.0 and b["train.label_smoothing"] == 0.0
    assert "data.val_fraction" not in b  # the data.yaml has a val split
    dense = api.plan(f"{shared_path('number-extraction-yolo', 'data.yaml')}:val", device="cpu")
    d = dense.values
    assert d["model.native_size"] and d["model.fpn_strides"] is None
    assert d["model.rpn_post_nms_top_n_test"] == 300 and d["model.anchor_sizes"] is not None
    assert d["augment.crop_size"] == 320 and b["augment.crop_size"] is None


def test_cli_plan_writes_a_recipe_that_train_reads(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rcnnlab.cli import app

    data = shared_path("building-characters-yolo", "data.yaml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["plan", str(data), "--budget", "7", "--device", "cpu",
                                      "--out", "plan.yaml", "name=mine"])
    assert result.exit_code == 0, result.output
    assert "fingerprint of" in result.output and "input scale" in result.output
    text = (tmp_path / "plan.yaml").read_text()
    assert text.startswith("# rcnnlab plan for") and "# input scale:" in text
    cfg = load_config(tmp_path / "plan.yaml")  # a complete recipe: no planning needed
    assert cfg.data.yolo == str(data) and cfg.name == "mine"
    assert cfg.model.min_size == 128 and cfg.train.time_budget == 7 and cfg.plan is not None


def test_cli_plan_prints_the_train_command_with_the_overrides_given(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from rcnnlab.cli import app

    data = shared_path("building-characters-yolo", "data.yaml")
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, ["plan", str(data), "--budget", "7", "--device", "cpu",
                                      "train.batch_size=4"], terminal_width=60)
    assert result.exit_code == 0, result.output
    # one line, whatever the terminal's width, to copy as it is
    assert (f"train it: rcnnlab train data.yolo={data} train.batch_size=4 "
            "train.time_budget=7\n") in result.output


def test_a_resumed_run_keeps_the_plan_it_was_trained_with(tmp_path):
    from rcnnlab.runs.rundir import RunDir

    path = dataset(tmp_path, images=4, size=(64, 32), box=(8, 14), boxes_per_image=2)
    for i in range(4):
        Image.new("RGB", (64, 32)).save(tmp_path / f"{i}.png")
    items = [f"data.train_json={path}", f"out_dir={tmp_path / 'runs'}", "name=r"]
    first = api.configure(None, items)
    # the run as it was planned then (say, on a machine with less free memory: batch 3)
    saved = first.model_copy(update={"train": first.train.model_copy(update={"batch_size": 3})})
    run = RunDir(saved.run_dir)
    run.root.mkdir(parents=True)
    run.write_config(saved)
    resumed = api.configure(None, [*items, "train.epochs=20"], resume=True)
    assert resumed.train.batch_size == 3 and resumed.train.epochs == 20  # overrides still win
    assert resumed.plan == first.plan
    assert api.configure(None, items).train.batch_size == first.train.batch_size  # a new run


def test_a_planned_run_logs_and_records_its_plan(synth_dir, tmp_path, caplog):
    import logging

    from rcnnlab.engine.progress import ProgressReporter
    from rcnnlab.runs.rundir import RunDir

    data = [f"data.{s}_json={synth_dir / s / 'annotations.json'}" for s in ("train", "valid")]
    cfg = api.configure(None, [*data, "train.epochs=1", "train.iters_per_epoch=2",
                               "train.batch_size=2", f"out_dir={tmp_path}", "name=planned"])
    with caplog.at_level(logging.INFO, logger="rcnnlab.api"):
        fit = api.train(cfg, reporter=ProgressReporter(quiet=True))
    assert "plan for" in caplog.text and "-> the smallest objects" in caplog.text
    assert "train.batch_size=2 (planned: 8)" in caplog.text  # the override, marked
    saved = RunDir(fit.run_dir).read_config()
    assert saved.plan == cfg.plan and saved.train.batch_size == 2
    report = (fit.run_dir / "report.md").read_text()
    assert "## Plan" in report and "| input scale |" in report
    assert "train.batch_size=2 (planned: 8)" in report
