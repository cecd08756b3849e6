"""Bad inputs through the CLI: each gives one clear error line (exit code 2, no traceback)
naming the file or key and the fix, or is handled as stated.

Table-driven: a case writes its own small files, runs one command, and states the outcome.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from rcnnlab.cli import app
from rcnnlab.data.coco import load_coco

from .conftest import write_coco

# A small, fast model and one training step (the run would start here if nothing stopped it).
TINY = ["model.native_size=true", "model.min_size=64", "model.max_size=256",
        "model.rpn_pre_nms_top_n_train=100", "model.rpn_post_nms_top_n_train=50",
        "model.rpn_pre_nms_top_n_test=50", "model.rpn_post_nms_top_n_test=20",
        "model.box_batch_size_per_image=16", "train.batch_size=2", "train.epochs=1",
        "train.iters_per_epoch=1", "train.record=false", "train.threads=2"]


@dataclass
class Case:
    """One bad input: `args(tmp)` writes the files and returns the command line.

    outcome "error": exit code 2 and one error line holding every word; "warning": the command
    succeeds and its log holds every word (a counted, named repair); "handled": it succeeds and
    `check(tmp)` holds.
    """

    name: str
    args: Callable[[Path], list[str]]
    words: tuple[str, ...] = ()
    outcome: str = "error"
    check: Callable[[Path], bool] | None = None


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
    Case("train: fp16 mixed precision on the CPU", lambda t: _train(t, "train.amp=fp16"),
         ("train.amp=fp16 on cpu: fp16 autocast needs CUDA", "Fix: train.amp=bf16")),
    Case("train: synchronised BatchNorm on the CPU", lambda t: _train(t, "train.sync_bn=true"),
         ("train.sync_bn=true on cpu: torch's SyncBatchNorm runs on GPUs only",
          "Fix: train.sync_bn=false")),
    Case("train: a time budget of no time", lambda t: _train(t, "train.time_budget=0"),
         ("train.time_budget", "greater than 0")),
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


# ---------------------------------------------------------------------- COCO json and images
def _stats(ann: Path, *extra: str) -> list[str]:
    return ["data", "stats", str(ann), *extra]


def _raw_json(tmp: Path, text: str | bytes) -> Path:
    path = tmp / "raw.json"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def _text_file(tmp: Path) -> Path:
    path = tmp / "notes.txt"
    path.write_text("not an image")
    return path


def _ann(bbox, **extra) -> list[dict]:
    return [{"id": 1, "image_id": 1, "category_id": 0, "bbox": bbox, **extra}]


def _image_file(tmp: Path, writer: Callable[[Path], None]) -> Path:
    """A one-image COCO json whose image file `writer` makes (60 x 40 unless it says)."""
    images = [{"id": 1, "file_name": "a.png", "width": 60, "height": 40}]
    ann = write_coco(tmp / "img", images=images, make_files=False,
                     annotations=_ann([5, 5, 10, 20]))
    writer(tmp / "img" / "a.png")
    return ann


def _png16(path: Path) -> None:
    Image.fromarray((np.arange(2400).reshape(40, 60) * 27).astype(np.uint16)).save(path)


def _truncated(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 60, 3), dtype=np.uint8)
                    ).save(path)
    path.write_bytes(path.read_bytes()[:200])


CASES += [
    Case("stats: malformed JSON", lambda t: _stats(_raw_json(t, '{"images": [')),
         ("raw.json: malformed JSON at line 1", "Fix:")),
    Case("stats: a json that is a list", lambda t: _stats(_raw_json(t, "[]")),
         ("top level is not an object",)),
    Case("stats: no images list", lambda t: _stats(_raw_json(t, '{"categories": []}')),
         ("no 'images' list", "Fix:")),
    Case("stats: a binary file given as the json",
         lambda t: _stats(_raw_json(t, b"\x89PNG\xff\xfe")),
         ("not a UTF-8 text file", "Fix:")),
    Case("stats: an empty file", lambda t: _stats(_raw_json(t, "")),
         ("malformed JSON",)),
    Case("stats: duplicate image ids", lambda t: _stats(_coco(t, images=[
        {"id": 1, "file_name": "a.png", "width": 60, "height": 40},
        {"id": 1, "file_name": "b.png", "width": 60, "height": 40}])),
         ("duplicate image id 1",)),
    Case("stats: an image id that is a string", lambda t: _stats(_coco(t, images=[
        {"id": "one", "file_name": "a.png", "width": 60, "height": 40}], annotations=[])),
         ("image record #0 has id 'one'", "Fix:")),
    Case("stats: image records that are not objects", lambda t: _stats(_raw_json(
        t, '{"images": [1, 2], "categories": []}')), ("images record #0 is 1, not an object",)),
    Case("stats: annotations that are a string", lambda t: _stats(_raw_json(
        t, '{"images": [], "annotations": "none", "categories": []}')),
         ("'annotations' is a str, not a list",)),
    Case("stats: iscrowd that is not 0 or 1", lambda t: _stats(_coco(t, annotations=_ann(
        [5, 5, 10, 20], iscrowd="yes"))), ("annotation id 1 has iscrowd 'yes'", "Fix:")),
    Case("stats: an annotation of an unknown image", lambda t: _stats(_coco(t, annotations=[
        {"id": 1, "image_id": 9, "category_id": 0, "bbox": [5, 5, 10, 20]}])),
         ("annotation id 1 refers to unknown image id 9", "Fix:")),
    Case("stats: an unknown category id", lambda t: _stats(_coco(t, annotations=[
        {"id": 1, "image_id": 1, "category_id": 5, "bbox": [5, 5, 10, 20]}])),
         ("unknown category id 5", "Fix:")),
    Case("stats: a bbox of strings", lambda t: _stats(_coco(t, annotations=_ann(
        ["5", "5", "10", "20"]))), ("bbox is ['5', '5', '10', '20']", "[x, y, width, height]")),
    Case("stats: a bbox of 3 numbers", lambda t: _stats(_coco(t, annotations=_ann([5, 5, 10]))),
         ("bbox is [5, 5, 10]",)),
    Case("stats: a bbox of booleans", lambda t: _stats(_coco(t, annotations=_ann(
        [True, 5, 10, 20]))), ("bbox is [True, 5, 10, 20]",)),
    Case("stats: a box partly outside its image", lambda t: _stats(_coco(t, annotations=_ann(
        [-5, 30, 20, 20]))), ("1 boxes clipped to the image",), "warning"),
    Case("stats: a negative width", lambda t: _stats(_coco(t, annotations=_ann([20, 5, -10, 20]))),
         ("1 boxes dropped: degenerate",), "warning"),
    Case("stats: a zero-area box", lambda t: _stats(_coco(t, annotations=_ann([5, 5, 0, 0]))),
         ("1 boxes dropped: degenerate",), "warning"),
    Case("stats: a box wholly outside its image", lambda t: _stats(_coco(t, annotations=_ann(
        [500, 500, 10, 10]))), ("1 boxes dropped: degenerate",), "warning"),
    Case("stats: a NaN coordinate", lambda t: _stats(_coco(t, annotations=_ann(
        [float("nan"), 5, 10, 20]))), ("annotation ids 1 have a NaN or infinite",), "warning"),
    Case("stats: an infinite width", lambda t: _stats(_coco(t, annotations=_ann(
        [5, 5, float("inf"), 20]))), ("1 boxes dropped: NaN or infinite coordinates",),
         "warning"),
    Case("stats: boxes written as xyxy", lambda t: _stats(_coco(t, images=[
        {"id": i, "file_name": f"{i}.png", "width": 60, "height": 40} for i in range(5)],
        annotations=[{"id": i, "image_id": i, "category_id": 0, "bbox": [30, 10, 55, 35]}
                     for i in range(5)])), ("look like [x1, y1, x2, y2]", "Fix: convert")),
    Case("stats: a file_name escaping the folder", lambda t: _stats(_coco(t, images=[
        {"id": 1, "file_name": "../a.png", "width": 60, "height": 40}], annotations=[],
        make_files=False)), ("file_name '../a.png' escapes the image root", "Fix:")),
    Case("stats: an absolute file_name", lambda t: _stats(_coco(t, images=[
        {"id": 1, "file_name": "/etc/passwd", "width": 60, "height": 40}], annotations=[],
        make_files=False)), ("escapes the image root",)),
    Case("stats: no file_name", lambda t: _stats(_coco(t, images=[
        {"id": 1, "width": 60, "height": 40}], annotations=[], make_files=False)),
         ("image id 1 has no file_name", "Fix:")),
    Case("stats: a missing image file", lambda t: _stats(_coco(t, make_files=False)),
         ("image id 1: file", "does not exist", "data.skip_missing_images=true")),
    Case("stats: an image file that is no image",
         lambda t: _stats(_image_file(t, lambda p: p.write_bytes(b"GIF89a garbage"))),
         ("image id 1 (a.png)", "a.png: cannot be read as an image", "Fix:")),
    Case("stats: an empty image file",
         lambda t: _stats(_image_file(t, lambda p: p.write_bytes(b""))),
         ("cannot be read as an image",)),
    Case("stats: a json size that differs from the file", lambda t: _stats(_image_file(
        t, lambda p: Image.new("RGB", (90, 50)).save(p))),
         ("width/height differ from the image file for image ids 1 (60x40 -> 90x50)",),
         "warning"),
    Case("train: more pixels than data.max_image_pixels (a decompression bomb)", lambda t: [
        "train", *_train(t, "data.max_image_pixels=1000")[1:]],
         ("60 x 40 = 2,400 pixels, more than data.max_image_pixels = 1,000", "Fix:")),
    Case("train: a float image", lambda t: _train(t, ann=_image_file(t, lambda p: Image.fromarray(
        np.zeros((40, 60), dtype=np.float32), mode="F").save(p.with_suffix(".tif")) or
        p.with_suffix(".tif").rename(p))), ("32-bit floating point image", "Fix:")),
    Case("train: a truncated image", lambda t: _train(t, ann=_image_file(t, _truncated)),
         ("image id 1", "cannot be read as an image", "Fix:")),
    Case("train: a 16-bit image trains (scaled, not white)",
         lambda t: _train(t, ann=_image_file(t, _png16)), outcome="handled",
         check=lambda t: (t / "runs" / "run" / "checkpoints" / "last.pt").is_file()),
    # ------------------------------------------------------------------ configs
    Case("train: a typo'd key", lambda t: _train(t, "train.batchsize=2"),
         ("train.batchsize: Extra inputs are not permitted", "did you mean train.batch_size?")),
    Case("train: a typo'd section", lambda t: _train(t, "trian.lr=0.1"),
         ("did you mean train?",)),
    Case("train: a wrong type", lambda t: _train(t, "train.epochs=many"),
         ("train.epochs: Input should be a valid integer",)),
    Case("train: a probability above 1", lambda t: _train(t, "augment.hsv_prob=2"),
         ("augment.hsv_prob: Input should be less than or equal to 1",)),
    Case("train: a negative learning rate", lambda t: _train(t, "train.lr=-0.1"),
         ("train.lr: Input should be greater than 0",)),
    Case("train: an override without '='", lambda t: _train(t, "train.epochs"),
         ("expected key.path=value",)),
    Case("train: a config file that does not exist", lambda t: ["train", "-c",
                                                                str(t / "nope.yaml")],
         ("nope.yaml: config file not found",)),
    Case("train: a config that is not YAML", lambda t: ["train", "-c", str(_raw_json(
        t, "train: [1, 2"))], ("not valid YAML",)),
    Case("train: a config that is a list", lambda t: ["train", "-c", str(_raw_json(t, "- 1"))],
         ("a config must be a mapping of sections",)),
    Case("train: a base: chain that loops", lambda t: ["train", "-c", str(_raw_json(
        t, "base: raw.json"))], ("chain loops back to itself",)),
    Case("train: weights that do not exist", lambda t: _train(t, "model.weights=/no/such.pt"),
         ("weights file not found: /no/such.pt",)),
    Case("train: weights that are no weights", lambda t: _train(
        t, f"model.weights={_raw_json(t, 'not a torch file')}"),
         ("cannot be read with torch.load",)),
    Case("train: class weights for another class count", lambda t: _train(
        t, "train.roi_loss=weighted_ce", "train.class_weights=[1,2,3]"),
         ("train.class_weights has 3 values but the data has 2 classes",)),
    Case("train: torchvision weights of another arch", lambda t: _train(
        t, "model.weights=FasterRCNN_ResNet50_FPN_Weights.COCO_V1"),
         ("torchvision has no detector weights for arch 'resnet18_fpn'",)),
    # ------------------------------------------------------------------ converters
    Case("convert: YOLO lines merged by a missing line break", lambda t: _yolo(
        t, "0 0.5 0.5 0.1 0.2\n1 0.3 0.3 0.1 0.11 0.6 0.5 0.1 0.1\n"),
         ("line 2", "two lines merged", "Fix: put each object on its own line")),
    Case("convert: a YOLO file whose only line is three merged boxes", lambda t: _yolo(
        t, "0 0.5 0.5 0.1 0.2 1 0.3 0.3 0.1 0.1 0 0.7 0.6 0.1 0.1\n"),
         ("line 1", "15 columns read as 3 box lines merged", "Fix: put each object on its own")),
    Case("convert: a YOLO label that is not numbers", lambda t: _yolo(t, "zero 0.5 0.5 0.1 0.2\n"),
         ("line 1 'zero 0.5 0.5 0.1 0.2': not all numbers",)),
    Case("convert: a YOLO class out of range", lambda t: _yolo(t, "7 0.5 0.5 0.1 0.2\n"),
         ("class 7 is not a class index (0..1)",)),
    Case("convert: YOLO boxes in pixels", lambda t: _yolo(t, "0 30 20 10 20\n"),
         ("box values outside [0, 1]", "normalise")),
    Case("convert: a YOLO label with a NaN", lambda t: _yolo(t, "0 nan 0.5 0.1 0.2\n"),
         ("NaN or infinite value",)),
    Case("convert: a truncated SVHN .mat", lambda t: _svhn(t, truncate=True),
         ("digitStruct.mat: cannot be read", "truncated or damaged")),
    Case("convert: an SVHN .mat that is no HDF5", lambda t: _svhn(t, text=b"MATLAB 5.0"),
         ("not a MATLAB v7.3 (HDF5) file",)),
    # ------------------------------------------------------------------ a trained run
    Case("train: a class with no training box", lambda t: _train(t, ann=_coco(t, categories=[
        {"id": 0, "name": "0"}, {"id": 1, "name": "1"}, {"id": 2, "name": "two"}])),
         ("1 of 3 classes have no training box (two)", "add examples"), outcome="warning"),
    Case("train: --resume with a changed learning rate", lambda t: [
        *_train(t, "name=done", "train.lr=0.05"), "--resume"] if _trained(t) else [],
         ("--resume continues the saved optimizer", "train.lr", "0.05 given",
          "Fix: resume without them")),
    Case("evaluate: a split the run's config lacks", lambda t: [
        "evaluate", str(_trained(t)), "--split", "test", "--device", "cpu"],
         ("the run's config has no test split", "Fix: pass --data")),
    Case("evaluate: data with other categories", lambda t: [
        "evaluate", str(_trained(t)), "--device", "cpu", "--data", str(write_coco(
            t / "other", categories=[{"id": 0, "name": "cat"}, {"id": 1, "name": "dog"}]))],
         ("categories", "differ from the model's", "Fix:")),
    Case("tune: a sweep range upside down", lambda t: [
        "tune", str(_trained(t)), "--device", "cpu", "eval.sweep_min=0.8", "eval.sweep_max=0.2"],
         ("eval.sweep_min 0.8 is above eval.sweep_max 0.2",)),
    Case("tune: a typo'd eval key", lambda t: [
        "tune", str(_trained(t)), "--device", "cpu", "eval.sweep_mn=0.2"],
         ("eval.sweep_mn: Extra inputs", "did you mean eval.sweep_min?")),
    Case("predict: a folder without images", lambda t: [
        "predict", str(_trained(t)), str(_folder(t)), "--out", str(t / "o"), "--device", "cpu"],
         ("no image files",)),
    Case("predict: a source that does not exist", lambda t: [
        "predict", str(_trained(t)), str(t / "nowhere"), "--out", str(t / "o"),
        "--device", "cpu"],
         ("nowhere: no such file, folder or pattern", "Fix: give an image, a folder, a glob")),
    Case("predict: a text file that lists no image", lambda t: [
        "predict", str(_trained(t)), str(_text_file(t)), "--out",
        str(t / "o"), "--device", "cpu"],
         ("notes.txt, line 1: 'not an image' is not an image file", "Fix: list one image")),
    Case("predict: a glob that matches no image", lambda t: [
        "predict", str(_trained(t)), str(t / "*.jpg"), "--out", str(t / "o"), "--device",
        "cpu"], ("*.jpg: the pattern matches no image files", "Fix:")),
    Case("predict: a corrupt image among the files", lambda t: [
        "predict", str(_trained(t)), str(_folder(t, b"garbage")), "--out", str(t / "o"),
        "--device", "cpu"], ("1 of 2 images could not be read: listed in", "unreadable.csv"),
         outcome="warning"),
    Case("predict: a file name that is not UTF-8", lambda t: [
        "predict", str(_trained(t)), str(_folder(t, name=b"caf\xe9.png")), "--out",
        str(t / "o"), "--device", "cpu"], outcome="handled",
         check=lambda t: (t / "o" / "image_ids.csv").read_bytes().splitlines()[1]
         == b"1,caf\xe9.png"),
    Case("predict: --out under a file", lambda t: [
        "predict", str(_trained(t)), str(_folder(t, name=b"x.png")), "--out",
        str(_text_file(t) / "out"), "--device", "cpu"],
         ("notes.txt/out", "Not a directory", "Fix: a part of the path is a file")),
    Case("export: --out where a file is", lambda t: [
        "export", str(_trained(t)), "--out", str(_text_file(t) / "model.onnx")],
         ("notes.txt", "Fix:")),
    Case("predict: a checkpoint file that is not one", lambda t: [
        "predict", str(_raw_json(t, "nonsense")), str(t), "--out", str(t / "o"),
        "--device", "cpu"], ("raw.json: not a readable rcnnlab checkpoint",)),
    Case("predict: a plain state_dict given as the run", lambda t: [
        "predict", str(_state_dict(t)), str(t), "--out", str(t / "o"), "--device", "cpu"],
         ("no 'model' entry", "Fix: pass a foreign weights file as model.weights")),
]

CASES += [
    Case("convert: a VOC xml that is not XML", lambda t: _voc(t, "<annotation><object>"),
         ("a.xml", "Fix:")),
    Case("convert: a VOC object without a bndbox", lambda t: _voc(
        t, "<annotation><filename>a.png</filename><size><width>60</width><height>40</height>"
           "</size><object><name>0</name></object></annotation>"), ("a.xml", "Fix:")),
    Case("convert: a VOC box with text for a number", lambda t: _voc(
        t, "<annotation><filename>a.png</filename><size><width>60</width><height>40</height>"
           "</size><object><name>0</name><bndbox><xmin>five</xmin><ymin>5</ymin><xmax>20</xmax>"
           "<ymax>30</ymax></bndbox></object></annotation>"), ("a.xml", "Fix:")),
    Case("convert: a data.yaml that is not YAML", lambda t: _yolo(
        t, "0 0.5 0.5 0.1 0.2\n", data_yaml="names: [0, 1"), ("data.yaml", "Fix:")),
    Case("convert: a data.yaml without names", lambda t: _yolo(
        t, "0 0.5 0.5 0.1 0.2\n", data_yaml="nc: 2\n"), ("data.yaml", "names", "Fix:")),
    Case("convert: a data.yaml kpt_shape that is not two numbers", lambda t: _yolo(
        t, "0 0.5 0.5 0.1 0.2\n", data_yaml="names: ['0']\nkpt_shape: [x, 3]\n"),
         ("kpt_shape is ['x', 3]", "Fix:")),
    Case("split: --out is a file", lambda t: ["data", "split", str(_coco(t)), "--out",
                                              str(_coco(t))], ("a file, not a folder", "Fix:")),
    Case("show: a json that does not exist", lambda t: ["data", "show", str(t / "no.json"),
                                                         "--out", str(t / "g.png")],
         ("no.json: file not found", "Fix:")),
    Case("split: a fraction above 1", lambda t: ["data", "split", str(_coco(t)), "--out",
                                                  str(t / "s"), "--fraction", "1.5"],
         ("fraction 1.5 (--fraction, data.val_fraction) must lie between 0 and 1", "Fix:")),
    Case("train: resuming with data whose classes changed", lambda t: [
        *_train(t, "name=done", ann=_three_classes(t, _trained(t))), "--resume"],
         ("--resume continues the saved optimizer", "data.train_json", "Fix: resume without")),
    Case("train: resuming with a config whose model changed", lambda t: [
        *(_train(t, "name=done", "model.residual_fpn=true") if _trained(t) else []), "--resume"],
         ("model.residual_fpn False in the run, True given", "Fix: resume without them")),
    Case("report: a metrics.csv that is no text", lambda t: [
        "report", str(_damaged_metrics(t, b"\x89\xff\x00\x13 binary")), "--device", "cpu"],
         ("metrics.csv: damaged, not the CSV rcnnlab writes", "Fix: restore it")),
    Case("report: a metrics.csv whose rows lost their epoch", lambda t: [
        "report", str(_damaged_metrics(t, b"epoch,loss\n1,0.5\nx,0.4\n")), "--device", "cpu"],
         ("metrics.csv, line 3: no epoch number", "Fix: restore it")),
    Case("evaluate: a checkpoint whose weights were edited", lambda t: [
        "evaluate", str(_edited(_trained(t))), "--split", "valid", "--device", "cpu"],
         ("best.pt: its weights do not fit the model", "Fix:")),
]


def _voc(tmp: Path, xml: str) -> list[str]:
    folder = tmp / "voc"
    folder.mkdir()
    Image.new("RGB", (60, 40)).save(folder / "a.png")
    (folder / "a.xml").write_text(xml)
    return ["data", "convert", str(folder), "--from", "voc", "--out", str(tmp / "o.json")]


def _three_classes(tmp: Path, run: Path) -> Path:
    """The run's data with a third class: the model it builds has another box predictor."""
    return write_coco(tmp / "three", categories=[{"id": 0, "name": "0"}, {"id": 1, "name": "1"},
                                                  {"id": 2, "name": "2"}])


def _edited(run: Path) -> Path:
    """The run with a best.pt whose box predictor was cut to another class count."""
    import torch

    path = run / "checkpoints" / "best.pt"
    state = torch.load(path, weights_only=True)
    for key in ("roi_heads.box_predictor.cls_score.weight",
                "roi_heads.box_predictor.cls_score.bias"):
        state["model"][key] = state["model"][key][:2]
    torch.save(state, path)
    return run


def _yolo(tmp: Path, label: str, data_yaml: str = "names: ['0', '1']\nnc: 2\n") -> list[str]:
    """A one-image YOLO dataset (data.yaml, images/, labels/) with the given label file."""
    root = tmp / "yolo"
    (root / "images").mkdir(parents=True)
    (root / "labels").mkdir()
    Image.new("RGB", (60, 40)).save(root / "images" / "a.png")
    (root / "labels" / "a.txt").write_text(label)
    (root / "data.yaml").write_text(data_yaml)
    return ["data", "convert", str(root), "--from", "yolo", "--out", str(tmp / "o.json")]


def _svhn(tmp: Path, *, truncate: bool = False, text: bytes = b"") -> list[str]:
    """An SVHN digitStruct.mat: truncated from a real-shaped HDF5 file, or given bytes."""
    import h5py

    mat = tmp / "digitStruct.mat"
    if truncate:
        with h5py.File(mat, "w") as f:
            f.create_dataset("digitStruct/name", data=np.zeros((1, 1000)))
        mat.write_bytes(mat.read_bytes()[:3000])
    else:
        mat.write_bytes(text)
    return ["data", "convert", str(mat), "--from", "svhn", "--out", str(tmp / "o.json")]


def _damaged_metrics(tmp: Path, content: bytes) -> Path:
    """The trained run with its metrics.csv replaced by `content`."""
    run = _trained(tmp)
    (run / "metrics.csv").write_bytes(content)
    return run


def _folder(tmp: Path, content: bytes | None = None, name: bytes = b"bad.png") -> Path:
    """A folder of images to predict on: empty, or one good image and one `name`."""
    folder = tmp / "photos"
    folder.mkdir()
    if content is not None or name != b"bad.png":
        Image.new("RGB", (60, 40), (90, 90, 90)).save(folder / "good.png")
        target = os.path.join(os.fsencode(folder), name)
        if content is not None:
            with open(target, "wb") as fh:
                fh.write(content)
        else:
            with open(target, "wb") as fh:
                fh.write((folder / "good.png").read_bytes())
            (folder / "good.png").unlink()
    return folder


def _state_dict(tmp: Path) -> Path:
    import torch

    path = tmp / "weights.pt"
    torch.save({"w": torch.ones(2)}, path)
    return path


# ---------------------------------------------------------------------- more hostile inputs
def _config(tmp: Path, text: str | bytes, *extra: str) -> list[str]:
    """`train -c c.yaml` with `text` as the file and the tiny data (no train.* override, so
    that what the file says is what is checked)."""
    path = tmp / "c.yaml"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    ann = _coco(tmp)
    return ["train", "-c", str(path), f"data.train_json={ann}", f"data.valid_json={ann}",
            f"out_dir={tmp / 'runs'}", *extra]


def _sized(tmp: Path, **record) -> Path:
    """A one-image COCO json whose image record has `record` in it; the file is 60 x 40."""
    ann = write_coco(tmp / "img", images=[{"id": 1, "file_name": "a.png", "width": 60,
                                           "height": 40, **record}],
                     make_files=False, annotations=_ann([5, 5, 10, 20]))
    Image.new("RGB", (60, 40)).save(tmp / "img" / "a.png")
    return ann


def _voc_box(x1=5, x2=20, size="<size><width>60</width><height>40</height></size>") -> str:
    return (f"<annotation><filename>a.png</filename>{size}<object><name>0</name><bndbox>"
            f"<xmin>{x1}</xmin><ymin>5</ymin><xmax>{x2}</xmax><ymax>30</ymax></bndbox>"
            "</object></annotation>")


def _fake_run(tmp: Path, name: str = "best.pt", content: bytes = b"") -> Path:
    """A run folder whose only checkpoint is `content` (no training)."""
    (tmp / "fake" / "checkpoints").mkdir(parents=True)
    (tmp / "fake" / "checkpoints" / name).write_bytes(content)
    return tmp / "fake"


def _photo(tmp: Path) -> Path:
    path = tmp / "photo.png"
    Image.new("RGB", (60, 40), (90, 90, 90)).save(path)
    return path


def _texts(tmp: Path) -> Path:
    folder = tmp / "texts"
    folder.mkdir()
    (folder / "a.txt").write_text("hello")
    (folder / "b.md").write_text("# notes")
    return folder


def _video(tmp: Path) -> Path:
    path = tmp / "clip.mp4"
    path.write_bytes(b"\x00\x00\x00\x18ftypmp42 not a video")
    return path


def _without_best(run: Path) -> Path:
    (run / "checkpoints" / "best.pt").unlink()
    return run


def _run_predict(tmp: Path, source: Path | str, *extra: str) -> list[str]:
    """predict with a trained run (trains once) on `source`."""
    return ["predict", str(_trained(tmp)), str(source), "--out", str(tmp / "o"), "--device",
            "cpu", *extra]


def _binary_label(tmp: Path) -> list[str]:
    args = _yolo(tmp, "")
    (tmp / "yolo" / "labels" / "a.txt").write_bytes(b"\x00\xff\xfe\x89")
    return args


def _converted(tmp: Path) -> dict:
    return json.loads((tmp / "o.json").read_text())


CASES += [
    # ------------------------------------------------------------------ config keys: ranges
    Case("train: train.lr=0", lambda t: _train(t, "train.lr=0"),
         ("train.lr: Input should be greater than 0 (given: 0)",)),
    Case("train: SGD momentum of 1.5", lambda t: _train(t, "train.momentum=1.5"),
         ("train.momentum: Input should be less than 1 (given: 1.5)",)),
    Case("train: a negative weight decay", lambda t: _train(t, "train.weight_decay=-1"),
         ("train.weight_decay: Input should be greater than or equal to 0 (given: -1)",)),
    Case("train: a warm-up factor of 0", lambda t: _train(t, "train.warmup_factor=0"),
         ("train.warmup_factor: Input should be greater than 0 (given: 0)",)),
    Case("train: a warm-up factor above 1", lambda t: _train(t, "train.warmup_factor=2"),
         ("train.warmup_factor: Input should be less than or equal to 1 (given: 2)",)),
    Case("train: a multistep gamma of 0", lambda t: _train(t, "train.gamma=0"),
         ("train.gamma: Input should be greater than 0 (given: 0)",)),
    Case("train: a gradient clip of 0", lambda t: _train(t, "train.grad_clip=0"),
         ("train.grad_clip: Input should be greater than 0 (given: 0)",)),
    Case("train: a milestone at epoch 0", lambda t: _train(t, "train.milestones=[0,5]"),
         ("train.milestones.0: Input should be greater than 0 (given: 0)",)),
    Case("train: milestones given as one number", lambda t: _train(t, "train.milestones=8"),
         ("train.milestones: Input should be a valid list (given: 8)",)),
    Case("train: a score threshold of 1 keeps nothing",
         lambda t: _train(t, "model.box_score_thresh=1.0"),
         ("model.box_score_thresh: Input should be less than 1 (given: 1.0)",)),
    Case("train: an NMS IoU of 0", lambda t: _train(t, "model.box_nms_thresh=0"),
         ("model.box_nms_thresh: Input should be greater than 0 (given: 0)",)),
    Case("train: an NMS IoU above 1", lambda t: _train(t, "model.box_nms_thresh=1.5"),
         ("model.box_nms_thresh: Input should be less than or equal to 1 (given: 1.5)",)),
    Case("train: no RPN proposals before NMS",
         lambda t: _train(t, "model.rpn_pre_nms_top_n_train=0"),
         ("model.rpn_pre_nms_top_n_train: Input should be greater than 0 (given: 0)",)),
    Case("train: no detections per image", lambda t: _train(t, "model.box_detections_per_img=0"),
         ("model.box_detections_per_img: Input should be greater than 0 (given: 0)",)),
    Case("train: a short side below 32 px", lambda t: _train(t, "model.min_size=16"),
         ("model.min_size: Input should be greater than or equal to 32 (given: 16)",)),
    Case("train: -1 DataLoader workers", lambda t: _train(t, "data.workers=-1"),
         ("data.workers: Input should be greater than or equal to 0 (given: -1)",)),
    Case("train: a negative seed", lambda t: _train(t, "train.seed=-1"),
         ("train.seed: Input should be greater than or equal to 0 (given: -1)",)),
    Case("train: a default threshold above 1", lambda t: _train(t, "eval.default_threshold=1.5"),
         ("eval.default_threshold: Input should be less than or equal to 1 (given: 1.5)",)),
    Case("train: a time budget past a year", lambda t: _train(t, "train.time_budget=1e12"),
         ("train.time_budget: Input should be less than or equal to 525600", "(given: '1e12')")),
    Case("train: an infinite time budget", lambda t: _train(t, "train.time_budget=.inf"),
         ("train.time_budget: Input should be a finite number (given: inf)",)),
    Case("train: true as the learning rate", lambda t: _train(t, "train.lr=true"),
         ("train.lr: true / false where a value of another type is expected (given: True)",)),
    Case("train: text as the batch size", lambda t: _train(t, "train.batch_size=abc"),
         ("train.batch_size: Input should be a valid integer", "(given: 'abc')")),
    Case("train: a fractional batch size", lambda t: _train(t, "train.batch_size=1.5"),
         ("train.batch_size:", "a fractional part (given: 1.5)")),
    Case("train: a NaN learning rate", lambda t: _train(t, "train.lr=nan"),
         ("train.lr: Input should be a finite number (given: 'nan')",)),
    Case("train: an optimizer that is not offered", lambda t: _train(t, "train.optimizer=adam"),
         ("train.optimizer: Input should be 'adamw' or 'sgd' (given: 'adam')",)),
    Case("train: an arch that is not offered", lambda t: _train(t, "model.arch=resnet101_fpn"),
         ("model.arch: Input should be", "'resnet18_fpn'", "(given: 'resnet101_fpn')")),
    Case("train: an EMA decay of 1 never learns", lambda t: _train(t, "train.ema_decay=1"),
         ("train.ema_decay: Input should be less than 1 (given: 1)",)),
    Case("train: a hue jitter above 0.5", lambda t: _train(t, "augment.hue=0.7"),
         ("augment.hue: Input should be less than or equal to 0.5 (given: 0.7)",)),
    Case("train: a test-time scale of 0", lambda t: _train(t, "eval.tta_scales=[1,0]"),
         ("tta_scales must all be > 0, got [1.0, 0.0]",)),
    Case("train: an FPN stride that does not exist", lambda t: _train(
        t, "model.fpn_strides=[4,12]"),
         ("model.fpn_strides.1: Input should be 4, 8, 16, 32 or 64 (given: 12)",)),
    Case("train: two bad keys are both named", lambda t: _train(
        t, "train.lr=0", "train.momentum=2"),
         ("train.lr: Input should be greater than 0 (given: 0)",
          "; train.momentum: Input should be less than 1 (given: 2)")),
    Case("train: a device index below 0", lambda t: _train(t, "train.device=cuda:-1"),
         ("'cuda:-1' is not a device name", "Fix: use auto, cpu, cuda or cuda:N")),
    Case("train: label smoothing with the focal loss", lambda t: _train(
        t, "train.roi_loss=focal", "train.label_smoothing=0.1"),
         ("train.label_smoothing is for train.roi_loss=ce or weighted_ce, not focal",
          "Fix: train.label_smoothing=0 or train.roi_loss=ce")),
    Case("train: class weights without weighted_ce", lambda t: _train(
        t, "train.class_weights=[1,1]"),
         ("train.class_weights is needed by train.roi_loss=weighted_ce and only by it",)),
    Case("train: an override value that is not YAML", lambda t: _train(
        t, "train.milestones=[1,2"),
         ("override 'train.milestones=[1,2': value is not valid YAML",)),
    Case("train: a section overridden by a number", lambda t: _train(t, "train=3"),
         ("train: Input should be a valid dictionary or instance of TrainConfig (given: 3)",)),
    Case("train: anchor sizes for one level of five", lambda t: _train(
        t, "model.anchor_sizes=[[32]]"),
         ("anchor_sizes has 1 levels but arch 'resnet18_fpn' has 5 feature maps",
          "give exactly 5 lists")),
    Case("train: the stride-64 level without stride 32", lambda t: _train(
        t, "model.fpn_strides=[64]"),
         ("model.fpn_strides [64]: the stride-64 level pools the stride-32 one", "Fix: add 32")),
    Case("train: torchvision backbone weights with a typo", lambda t: _train(
        t, "model.backbone_weights=ResNet18_Weights.IMAGENET9"),
         ("'ResNet18_Weights.IMAGENET9' is not a torchvision weights name",
          "ResNet18_Weights.IMAGENET1K_V1")),
    # ------------------------------------------------------------------ CLI options
    Case("predict: --threshold 2", lambda t: [
        "predict", str(t), str(_photo(t)), "--threshold", "2", "--out", str(t / "o")],
         ("threshold 2.0 is out of range: give a score threshold in 0-1",)),
    Case("predict: a negative --threshold", lambda t: [
        "predict", str(t), str(_photo(t)), "--threshold", "-0.5", "--out", str(t / "o")],
         ("threshold -0.5 is out of range", "(or none for the tuned one)")),
    Case("predict: --threshold nan", lambda t: [
        "predict", str(t), str(_photo(t)), "--threshold", "nan", "--out", str(t / "o")],
         ("threshold nan is out of range",)),
    Case("evaluate: --threshold -0.1", lambda t: [
        "evaluate", str(_trained(t)), "--split", "valid", "--threshold", "-0.1",
        "--device", "cpu"], ("threshold -0.1 is out of range: give a score threshold in 0-1",)),
    Case("serve: --max-batch 0", lambda t: ["serve", str(t), "--max-batch", "0"],
         ("--max-batch 0: Input should be greater than or equal to 1",)),
    Case("serve: a negative --max-wait-ms", lambda t: ["serve", str(t), "--max-wait-ms", "-1"],
         ("--max-wait-ms -1.0: Input should be greater than or equal to 0",)),
    Case("serve: --max-upload-mb 0", lambda t: ["serve", str(t), "--max-upload-mb", "0"],
         ("--max-upload-mb 0.0: Input should be greater than 0",)),
    Case("serve: --max-images 0", lambda t: ["serve", str(t), "--max-images", "0"],
         ("--max-images 0: Input should be greater than or equal to 1",)),
    Case("serve: --device gpu", lambda t: ["serve", str(t), "--device", "gpu"],
         ("device 'gpu' is not a device name", "Fix: use auto, cpu, cuda or cuda:N")),
    Case("export: an unknown --format", lambda t: ["export", str(t), "--format", "tflite"],
         ("--format tflite: use one of onnx, torchscript, openvino",)),
    Case("split: a fraction of 0", lambda t: ["data", "split", str(_coco(t)), "--out",
                                              str(t / "s"), "--fraction", "0"],
         ("held-out fraction 0 (--fraction, data.val_fraction) must lie between 0 and 1",
          "Fix:")),
    # ------------------------------------------------------------------ config files
    Case("train -c: a typo'd key in the file", lambda t: _config(
        t, "model:\n  box_score_tresh: 0.1\n"),
         ("c.yaml: invalid config", "model.box_score_tresh: Extra inputs are not permitted",
          "did you mean model.box_score_thresh?")),
    Case("train -c: a typo'd data key in the file", lambda t: _config(
        t, "data:\n  train_jsn: a.json\n"), ("c.yaml", "did you mean data.train_json?")),
    Case("train -c: a section that does not exist", lambda t: _config(t, "optimizer:\n  lr: 1\n"),
         ("c.yaml: invalid config: optimizer: Extra inputs are not permitted",)),
    Case("train -c: a file that is one string", lambda t: _config(t, "just some text\n"),
         ("c.yaml: a config must be a mapping of sections, got str",)),
    Case("train -c: a tab in the indentation", lambda t: _config(t, "train:\n\tlr: 0.1\n"),
         ("c.yaml: not valid YAML", "cannot start any token", "line 2, column 1")),
    Case("train -c: a key indented too deep", lambda t: _config(
        t, "train:\n  lr: 0.1\n   epochs: 2\n"),
         ("c.yaml: not valid YAML", "mapping values are not allowed here", "line 3")),
    Case("train -c: a section that is a word", lambda t: _config(t, "train: fast\n"),
         ("c.yaml: invalid config: train: Input should be a valid dictionary", "(given: 'fast')")),
    Case("train -c: a negative batch size in the file", lambda t: _config(
        t, "train:\n  batch_size: -4\n"),
         ("c.yaml: invalid config: train.batch_size: Input should be greater than 0 (given: -4)",)),
    Case("train -c: a python tag in the file is not run", lambda t: _config(
        t, "train:\n  lr: !!python/object/apply:os.system ['echo hi']\n"),
         ("c.yaml: not valid YAML", "could not determine a constructor for the tag")),
    Case("train -c: a base: that does not exist", lambda t: _config(t, "base: nothere.yaml\n"),
         ("nothere.yaml: config file not found", "a `base:` names a file relative to the config")),
    Case("train -c: a folder", lambda t: ["train", "-c", str(t), *_train(t)[1:]],
         ("config file not found", "Fix: give a path to a YAML file", "rcnnlab configs")),
    Case("train -c: a built-in recipe name with a typo", lambda t: [
        "train", "-c", "orandd", *_train(t)[1:]],
         ("orandd: config file not found", "base, demo, orand")),
    # ------------------------------------------------------------------ COCO json
    Case("stats: a bbox holding the string NaN", lambda t: _stats(_coco(t, annotations=_ann(
        ["NaN", 5, 10, 20]))), ("annotation id 1 bbox is ['NaN', 5, 10, 20]",
                                "Fix: give bbox as [x, y, width, height]")),
    Case("stats: an annotation without a bbox", lambda t: _stats(_coco(t, annotations=[
        {"id": 1, "image_id": 1, "category_id": 0}])), ("annotation id 1 bbox is None", "Fix:")),
    Case("stats: a category id written as a string", lambda t: _stats(_coco(t, annotations=[
        {"id": 1, "image_id": 1, "category_id": "0", "bbox": [5, 5, 10, 20]}])),
         ("annotation id 1 has unknown category id '0' (known: [0, 1])", "Fix:")),
    Case("stats: category records with string ids", lambda t: _stats(_coco(t, categories=[
        {"id": "0", "name": "0"}, {"id": "1", "name": "1"}])),
         ("category record #0 has id '0'", "Fix: give every category an integer id")),
    Case("stats: a category id listed twice", lambda t: _stats(_coco(t, annotations=[],
                                                                    categories=[
        {"id": 0, "name": "a"}, {"id": 0, "name": "b"}])),
         ("duplicate category id 0 (record #1)", "Fix: make category ids unique")),
    Case("stats: an annotation id used twice", lambda t: _stats(_coco(t, annotations=[
        {"id": 1, "image_id": 1, "category_id": 0, "bbox": [5, 5, 10, 20]},
        {"id": 1, "image_id": 2, "category_id": 1, "bbox": [5, 5, 10, 20]}])),
         ("duplicate annotation id 1 (record #1)", "Fix: make annotation ids unique")),
    Case("stats: an annotation without image_id", lambda t: _stats(_coco(t, annotations=[
        {"id": 1, "category_id": 0, "bbox": [5, 5, 10, 20]}])),
         ("annotation id 1 refers to unknown image id None", "Fix:")),
    Case("stats: an image id with a fraction", lambda t: _stats(_coco(t, images=[
        {"id": 1.5, "file_name": "a.png", "width": 60, "height": 40}], annotations=[])),
         ("image record #0 has id 1.5", "Fix: give every image an integer id")),
    Case("stats: width and height of 0 (the file's size is used)",
         lambda t: _stats(_sized(t, width=0, height=0)),
         ("width/height differ from the image file for image ids 1 (0x0 -> 60x40)",),
         "warning"),
    Case("stats: a UTF-16 json", lambda t: _stats(_raw_json(t, json.dumps(
        {"images": [], "annotations": [], "categories": []}).encode("utf-16"))),
         ("raw.json: not a UTF-8 text file", "Fix:")),
    Case("stats: a trailing comma", lambda t: _stats(_raw_json(
        t, '{"images": [], "annotations": [], "categories": [],}')),
         ("raw.json: malformed JSON at line 1, column 52", "python -m json.tool")),
    Case("stats: no categories list", lambda t: _stats(_raw_json(
        t, '{"images": [], "annotations": []}')), ("no 'categories' list", "Fix:")),
    Case("stats: category records that are strings", lambda t: _stats(_raw_json(
        t, '{"images": [], "annotations": [], "categories": ["cat"]}')),
         ("categories record #0 is 'cat', not an object", "Fix:")),
    Case("stats: a json that does not exist", lambda t: _stats(t / "no.json"),
         ("no.json: file not found", "Fix: check the path")),
    Case("stats: a YOLO data.yaml given as the json", lambda t: _stats(_raw_json(
        t, "names: [a]\n").rename(t / "d.yaml")),
         ("d.yaml: a YAML file where a COCO json is read", "Fix: give d.yaml:val")),
    Case("split: a source that does not exist", lambda t: [
        "data", "split", str(t / "no.json"), "--out", str(t / "s")],
         ("no.json: file not found", "Fix:")),
    # ------------------------------------------------------------------ YOLO, VOC, SVHN sources
    Case("convert: a YOLO box with a negative centre", lambda t: _yolo(t, "0 -0.2 0.5 0.1 0.2\n"),
         ("line 1 '0 -0.2 0.5 0.1 0.2': box values outside [0, 1]", "Fix: normalise")),
    Case("convert: a YOLO label of 4 columns", lambda t: _yolo(t, "0 0.5 0.5 0.1\n"),
         ("line 1 '0 0.5 0.5 0.1': 4 columns; expected 5 columns (class cx cy w h)",
          "Fix: re-export")),
    Case("convert: a YOLO class of -1", lambda t: _yolo(t, "-1 0.5 0.5 0.1 0.2\n"),
         ("class -1 is not a class index (0..1)", "Fix:")),
    Case("convert: a YOLO label with commas", lambda t: _yolo(t, "0,0.5,0.5,0.1,0.2\n"),
         ("line 1 '0,0.5,0.5,0.1,0.2': not all numbers",)),
    Case("convert: a YOLO label file that is binary", _binary_label,
         ("a.txt: not a UTF-8 text file", "Fix:")),
    Case("convert: a YOLO box of size 0", lambda t: _yolo(t, "0 0.5 0.5 0 0\n"),
         ("1 boxes dropped: under 1 px after clipping",), "warning"),
    Case("convert: a data.yaml whose nc differs from its names", lambda t: _yolo(
        t, "0 0.5 0.5 0.1 0.2\n", data_yaml="names: ['a', 'b']\nnc: 3\n"),
         ("data.yaml: nc is 3 but names lists 2 classes", "Fix: make nc equal")),
    Case("convert: a data.yaml that is a list", lambda t: _yolo(
        t, "0 0.5 0.5 0.1 0.2\n", data_yaml="- a\n- b\n"), ("data.yaml: not a YAML mapping",)),
    Case("convert: a YOLO split that is not there", lambda t: [
        *_yolo(t, "0 0.5 0.5 0.1 0.2\n"), "--split", "test"],
         ("no split folder 'test'", "Fix:")),
    Case("convert: a YOLO source that does not exist", lambda t: [
        "data", "convert", str(t / "nowhere"), "--out", str(t / "o.json")],
         ("nowhere: no images/ folder with images", "Fix: point at a YOLO dataset folder")),
    Case("convert: a VOC box with xmin above xmax", lambda t: _voc(t, _voc_box(x1=40, x2=10)),
         ("a.xml: object 1 (0): xmax < xmin or ymax < ymin", "Fix: swap")),
    Case("convert: a VOC size that is not numbers", lambda t: _voc(t, _voc_box(
        size="<size><width>wide</width><height>40</height></size>")),
         ("a.xml: <size> width/height are not numbers", "Fix:")),
    Case("convert: a VOC xml without <size> reads the image", lambda t: _voc(t, _voc_box(size="")),
         outcome="handled", check=lambda t: _converted(t)["images"][0]["width"] == 60),
    Case("convert: a VOC box past the image", lambda t: _voc(t, _voc_box(x2=500)),
         ("1 boxes clipped to their image",), "warning"),
    Case("convert: a VOC xml without <filename>", lambda t: _voc(
        t, _voc_box().replace("<filename>a.png</filename>", "")),
         ("a.xml: no <filename>", "Fix:")),
    Case("convert: an HTML file as VOC xml", lambda t: _voc(t, "<html><body/></html>"),
         ("a.xml: root element is <html>, not <annotation>", "Fix:")),
    Case("convert: an empty VOC xml", lambda t: _voc(t, ""),
         ("a.xml: malformed XML (no element found", "Fix:")),
    Case("convert: a VOC folder that does not exist", lambda t: [
        "data", "convert", str(t / "nowhere"), "--from", "voc", "--out", str(t / "o.json")],
         ("nowhere: no .xml files", "Fix: point at VOC's Annotations/ folder")),
    Case("convert: an SVHN .mat that does not exist", lambda t: [
        "data", "convert", str(t / "no.mat"), "--from", "svhn", "--out", str(t / "o.json")],
         ("no.mat: file not found", "Fix: give SVHN's format-1 digitStruct.mat")),
    # ------------------------------------------------------------------ runs and checkpoints
    Case("report: a folder that is no run", lambda t: ["report", str(t), "--device", "cpu"],
         ("no checkpoints/best.pt or last.pt", "Fix: train the run first")),
    Case("report: a run folder that does not exist", lambda t: [
        "report", str(t / "nope"), "--device", "cpu"],
         ("nope: not a run folder", "Fix: give the folder rcnnlab train wrote")),
    Case("export: a folder that is no run", lambda t: ["export", str(t)],
         ("no checkpoints/best.pt or last.pt", "Fix:")),
    Case("diagnose: a folder that is no run", lambda t: ["diagnose", str(t), "--device", "cpu"],
         ("no checkpoints/best.pt or last.pt", "Fix:")),
    Case("compare: one run only", lambda t: ["compare", str(t)],
         ("compare needs at least 2 run folders, got 1", "Fix: give two or more")),
    Case("compare: folders that are no runs", lambda t: ["compare", str(t / "a"), str(t / "b")],
         ("a: not a run folder (no config.yaml or metrics.csv)", "Fix:")),
    Case("evaluate: an empty best.pt", lambda t: [
        "evaluate", str(_fake_run(t)), "--device", "cpu"],
         ("best.pt: is empty (0 bytes), not a checkpoint", "Fix:")),
    Case("predict: a last.pt that is text", lambda t: [
        "predict", str(_fake_run(t, "last.pt", b"hello")), str(_photo(t)), "--out",
        str(t / "o"), "--device", "cpu"],
         ("last.pt: not a readable rcnnlab checkpoint", "Fix:")),
    Case("evaluate: a run without best.pt scores last.pt", lambda t: [
        "evaluate", str(_without_best(_trained(t))), "--split", "valid", "--device", "cpu"],
         outcome="handled",
         check=lambda t: (t / "runs" / "done" / "eval_valid.json").is_file()),
    Case("evaluate: an eval override with a value not offered", lambda t: [
        "evaluate", str(_trained(t)), "--split", "valid", "--device", "cpu", "eval.nms=soft"],
         ("eval.nms: Input should be 'nms', 'linear' or 'gaussian' (given: 'soft')",)),
    Case("predict: a model override on a trained run", lambda t: _run_predict(
        t, _photo(t), "model.min_size=100"),
         ("override 'model.min_size=100': only eval.* options apply to a trained run",)),
    Case("predict: a folder of text files", lambda t: _run_predict(t, _texts(t)),
         ("texts: no image files (.bmp", ".png")),
    Case("predict: --out that is a file", lambda t: [
        *_run_predict(t, _photo(t))[:3], "--out", str(_text_file(t)), "--device", "cpu"],
         ("notes.txt/predictions.jsonl: Not a directory", "Fix:")),
    Case("predict: a video that is not one", lambda t: _run_predict(t, _video(t)),
         ("clip.mp4: not a video FFmpeg can read", "Fix: give a video file")),
    # ------------------------------------------------------------------ other
    Case("train: no data at all", lambda t: ["train", f"out_dir={t / 'runs'}", *TINY],
         ("nothing to plan for", "Fix: name it, e.g. data.yolo=")),
    Case("train: data.yolo that names no file", lambda t: [
        "train", f"data.yolo={t / 'data.yaml'}", f"out_dir={t / 'runs'}", *TINY],
         ("data.yaml: data.yolo names no file", "Fix:")),
    Case("train: out_dir is a file", lambda t: _train(t, f"out_dir={_text_file(t)}"),
         ("notes.txt/run: Not a directory", "Fix: a part of the path is a file")),
    Case("plan: a data.yaml split that is not there", lambda t: [
        "plan", _yolo(t, "0 0.5 0.5 0.1 0.2\n")[2] + "/data.yaml:bogus", "--device", "cpu"],
         ("data.yaml: no bogus: entry", "Fix: add `bogus: <images folder>`")),
]


def _linked_images(tmp: Path) -> list[str]:
    """A COCO json whose image sits in a folder linked into the image root."""
    elsewhere = tmp / "elsewhere"
    elsewhere.mkdir()
    Image.new("RGB", (60, 40)).save(elsewhere / "a.png")
    root = tmp / "root"
    root.mkdir()
    (root / "linked").symlink_to(elsewhere, target_is_directory=True)
    ann = write_coco(root, images=[{"id": 1, "file_name": "linked/a.png", "width": 60,
                                    "height": 40}], annotations=_ann([5, 5, 10, 20]),
                     make_files=False)
    return ["data", "stats", str(ann)]


def _xyxy_that_fits(tmp: Path) -> list[str]:
    images = [{"id": i, "file_name": f"{i}.png", "width": 200, "height": 100}
              for i in range(1, 21)]
    anns = [{"id": i, "image_id": i, "category_id": 0, "bbox": [20 + i, 10, 40 + i, 40]}
            for i in range(1, 21)]
    return ["data", "stats", str(write_coco(tmp / "d", images=images, annotations=anns))]


def _shared(tmp: Path) -> list[str]:
    """Two image records of one file, two categories of one name."""
    images = [{"id": i, "file_name": "a.png", "width": 60, "height": 40} for i in (1, 2)]
    ann = write_coco(tmp / "d", images=images, annotations=_ann([5, 5, 10, 20]),
                     categories=[{"id": 0, "name": "a"}, {"id": 1, "name": "a"}])
    return ["data", "stats", str(ann)]


def _bom_label(tmp: Path) -> list[str]:
    args = _yolo(tmp, "")
    (tmp / "yolo" / "labels" / "a.txt").write_bytes(b"\xef\xbb\xbf1 0.5 0.5 0.2 0.2\n")
    return args


def _a_folder(tmp: Path) -> Path:
    (tmp / "figs").mkdir()
    return tmp / "figs"


CASES += [
    Case("config: base: that is a number", lambda t: _config(t, "base: 3\n"),
         ("c.yaml: base: 3 is not a file name", "Fix: base: other.yaml")),
    Case("config: a UTF-16 file", lambda t: _config(t, "train:\n  lr: 0.1\n".encode("utf-16")),
         ("c.yaml: not a UTF-8 text file", "Fix: save the config as UTF-8")),
    Case("config: a key given twice", lambda t: _config(t, "train:\n  lr: 0.1\n  lr: 0.2\n"),
         ("c.yaml", "the key 'lr' is given twice")),
    Case("train: train.lr=inf", lambda t: _train(t, "train.lr=inf"),
         ("train.lr: Input should be a finite number", "(given: 'inf')")),
    Case("train: train.weight_decay=.inf (YAML's infinity)",
         lambda t: _train(t, "train.weight_decay=.inf"),
         ("train.weight_decay: Input should be a finite number",)),
    Case("train: a run name that leaves out_dir", lambda t: _train(t, "name=../../escape"),
         ("name: give a plain folder name", "(given: '../../escape')")),
    Case("train: an override without a key", lambda t: _train(t, "=3"),
         ("override '=3': no key before '='", "Fix: write key.path=value")),
    Case("train: model.fpn_strides=[]", lambda t: _train(t, "model.fpn_strides=[]"),
         ("model.fpn_strides", "at least 1 item")),
    Case("train: an aspect ratio of 0", lambda t: _train(t, "model.aspect_ratios=[0,1]"),
         ("model.aspect_ratios.0: Input should be greater than 0 (given: 0)",)),
    Case("train: a negative class weight",
         lambda t: _train(t, "train.roi_loss=weighted_ce", "train.class_weights=[1,-1]"),
         ("train.class_weights.1: Input should be greater than or equal to 0 (given: -1)",)),
    Case("train: mobilenet with base's FPN channels",
         lambda t: _train(t, "-c", "base", "model.arch=fasterrcnn_mobilenet_v3_large_fpn"),
         ("(given: model.fpn_channels=128)", "Fix: add model.fpn_channels=null")),
    Case("train: --nproc-per-node 0", lambda t: [*_train(t), "--nproc-per-node", "0"],
         ("--nproc-per-node 0: give 1 or more",)),
    Case("predict: --batch-size 0", lambda t: ["predict", str(t), str(t), "--batch-size", "0"],
         ("--batch-size 0: give 1 or more",)),
    Case("predict: --batch-size -2", lambda t: ["predict", str(t), str(t), "--batch-size", "-2"],
         ("--batch-size -2: give 1 or more",)),
    Case("data show: --n 0", lambda t: ["data", "show", str(_coco(t)), "--n", "0"],
         ("--n 0: give 1 or more",)),
    Case("data synth: --train -1", lambda t: ["data", "synth", "--out", str(t), "--train", "-1"],
         ("--train -1: give 0 or more",)),
    Case("data synth: --workers 0", lambda t: ["data", "synth", "--out", str(t), "--workers",
                                               "0"],
         ("--workers 0: give 1 or more",)),
    Case("data split: --seed -1", lambda t: ["data", "split", str(_coco(t)), "--out",
                                             str(t / "s"), "--seed", "-1"],
         ("--seed -1: give 0 or more",)),
    Case("plan: --budget 0", lambda t: ["plan", str(_coco(t)), "--budget", "0"],
         ("--budget 0: give minutes > 0",)),
    Case("data stats: a folder where the json goes", lambda t: ["data", "stats", str(t)],
         ("a folder, not a COCO json", "Fix: give the json file in it")),
    Case("train: train.finetune_from a folder",
         lambda t: _train(t, f"train.finetune_from={t}"),
         ("is a folder", "Fix: give the .pt/.pth file in it")),
    Case("convert: a VOC xml naming an image that is not there",
         lambda t: _voc(t, _voc_box().replace("a.png", "gone.png")),
         ("1 entries skipped: image file missing", "the missing image files include gone.png"),
         outcome="warning"),
    Case("serve: --port 0", lambda t: ["serve", str(t), "--port", "0"],
         ("--port 0: give 1 to 65535",)),
    Case("data stats: --png that is a folder",
         lambda t: ["data", "stats", str(_coco(t)), "--png", str(_a_folder(t))],
         ("figs: Is a directory", "Fix: the path is a folder: give a file path")),
    Case("data stats: image records sharing a file, categories sharing a name", _shared,
         ("2 image records share their file_name ('a.png': ids 1, 2)",
          "2 categories share their name ('a': ids 0, 1)"), outcome="warning"),
    Case("data stats: xyxy boxes that still fit as xywh", _xyxy_that_fits,
         ("all 20 boxes are wider than their x", "[x1, y1, x2 - x1, y2 - y1]"),
         outcome="warning"),
    Case("data stats: an image folder linked into the image root", _linked_images,
         ("images 1, of which negatives (no box) 0",), outcome="handled",
         check=lambda t: load_coco(t / "root" / "ann.json").num_boxes == 1),
    Case("data convert: a YOLO label file with a byte-order mark", _bom_label,
         outcome="handled",
         check=lambda t: [a["category_id"] for a in _converted(t)["annotations"]] == [1]),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
def test_bad_input(case, tmp_path):
    result = CliRunner().invoke(app, case.args(tmp_path))
    output = result.output
    # never a traceback: the command ended by its own exit code
    assert result.exception is None or isinstance(result.exception, SystemExit), output
    assert "Traceback" not in output
    errors = [line for line in output.splitlines() if line.startswith("error:")]
    if case.outcome == "error":
        assert result.exit_code == 2, output
        assert len(errors) == 1, output  # one line, whatever its length
        text = errors[0]
    else:
        assert result.exit_code == 0 and not errors, output
        text = output
    for word in case.words:
        assert word in text, (word, text)
    if case.outcome == "handled":
        assert case.check(tmp_path), output


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


def test_a_full_disk_is_one_line_naming_the_path(tmp_path, monkeypatch):
    """ENOSPC (not reproducible on a test machine) as the file system reports it."""
    import errno

    from rcnnlab import api

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "o" / "pred.json"))

    monkeypatch.setattr(api, "predict", full)
    result = CliRunner().invoke(app, ["predict", str(tmp_path), str(tmp_path)])
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "pred.json: No space left on device. Fix: free disk space" \
        in errors[0]


def test_ctrl_c_says_where_the_run_stands(tmp_path, monkeypatch):
    from rcnnlab import api
    from rcnnlab.runs.checkpoint import save_checkpoint

    def interrupted(cfg, **kwargs):
        save_checkpoint(cfg.run_dir / "checkpoints" / "last.pt", {"epoch": 3})
        raise KeyboardInterrupt

    monkeypatch.setattr(api, "train", interrupted)
    result = CliRunner().invoke(app, _train(tmp_path, "name=stopped"))
    assert result.exit_code == 130
    assert "last.pt holds epoch 3; the epoch under way is lost. Continue with: rcnnlab" \
        in result.output and result.output.rstrip().endswith("--resume")
