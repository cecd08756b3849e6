"""Export: the exported graph, run by ONNX Runtime, TorchScript or OpenVINO behind `Detector`,
finds what the eager model finds, on real ORAND images and on images the resize rule shrinks."""

from __future__ import annotations

import json
import shutil

import pytest
from PIL import Image
from typer.testing import CliRunner

from rcnnlab import Detector, api
from rcnnlab.cli import app
from rcnnlab.data.coco import load_coco
from rcnnlab.engine.progress import ProgressReporter
from rcnnlab.errors import ConfigError, MissingFileError
from rcnnlab.evaluation.coco import evaluate_detections
from rcnnlab.export import parity
from tests.conftest import shared_path
from tests.tiny import tiny_config

ort = pytest.importorskip("onnxruntime", reason="the onnx extra (onnxruntime) is not installed")
pytest.importorskip("onnx", reason="the onnx extra (onnx) is not installed")


@pytest.fixture(scope="module")
def exported(synth_dir, tmp_path_factory):
    """A tiny run that reports every box, and its export; with the CPU recipe's FPN width and
    RoIAlign size, so the export holds the heads built for them."""
    cfg = tiny_config(synth_dir, tmp_path_factory.mktemp("exp"), "train.epochs=1",
                      "train.iters_per_epoch=2", "model.box_score_thresh=0.0",
                      "model.fpn_channels=128", "model.roi_output_size=5")
    run = api.train(cfg, reporter=ProgressReporter(quiet=True)).run_dir
    result = CliRunner().invoke(app, ["export", str(run), "--format", "onnx"])
    assert result.exit_code == 0, result.output
    return run, run / "export" / "model.onnx"


@pytest.fixture(scope="module")
def eager_orand(exported):
    """The eager detections of 12 real ORAND images and one the resize rule shrinks."""
    run, _ = exported
    data = load_coco(shared_path("orand-car-a", "instances_train.json"))
    files = [data.image_root / img["file_name"] for img in data.images[:12]]
    # images wider than the tiny model's max_size (256) go through the resize in Python
    images = [*files, Image.open(files[0]).resize((520, 140))]
    eager = Detector.load(run, device="cpu")
    return eager, images, eager.predict(images, batch_size=1, keep_images=False)


def _exported_file(run, fmt, tmp_path):
    if fmt == "onnx":
        return run / "export" / "model.onnx"
    result = CliRunner().invoke(app, ["export", str(run), "--format", fmt, "--out",
                                      str(tmp_path / "m")])
    assert result.exit_code == 0, result.output
    return tmp_path / ("m.torchscript" if fmt == "torchscript" else "m.xml")


@pytest.mark.parametrize("fmt,backend", [("onnx", "onnxruntime"), ("onnx", "openvino"),
                                         ("torchscript", "torchscript"),
                                         ("openvino", "openvino")])
def test_exported_model_matches_eager_on_real_orand_images(exported, eager_orand, fmt, backend,
                                                           tmp_path):
    if backend == "openvino":
        pytest.importorskip("openvino", reason="the openvino extra is not installed")
    run, _ = exported
    eager, images, a = eager_orand
    det = Detector.load(_exported_file(run, fmt, tmp_path), backend=backend)
    assert det.backend == backend and det.names == eager.names
    assert det.threshold == eager.threshold
    b = det.predict(images, batch_size=1, keep_images=False)
    matched, total = parity(a, b)
    assert total > 1000 and matched >= 0.99 * total, (matched, total)
    assert len(b[-1]) and b[-1].boxes[:, 2].max() <= 520  # boxes on the given image
    assert [r.number for r in a] == [r.number for r in b]


def test_a_runtime_that_cannot_run_the_file_is_refused(exported, tmp_path):
    run, onnx = exported
    with pytest.raises(ConfigError, match="runtime 'torchscript' does not run .onnx files. "
                                          "Fix: use onnxruntime or openvino"):
        Detector.load(onnx, backend="torchscript")
    with pytest.raises(ConfigError, match="backend 'openvino' runs exported models"):
        Detector.load(run, backend="openvino")
    ts = _exported_file(run, "torchscript", tmp_path)
    ts.with_suffix(".json").unlink()
    with pytest.raises(MissingFileError, match="m.json: the sidecar of m.torchscript is "
                                               "missing"):
        Detector.load(ts)


def test_onnx_map_equals_eager_map_on_a_split(exported, synth_dir):
    run, onnx = exported
    data = load_coco(synth_dir / "test" / "annotations.json")
    gt = data.to_coco_dict()
    maps = []
    for det in (Detector.load(run, device="cpu"), Detector.load(onnx)):
        results = det.predict([data.image_root / img["file_name"] for img in data.images],
                              batch_size=1, keep_images=False)
        dets = [d for r, img in zip(results, data.images, strict=True)
                for d in r.to_coco(img["id"])]
        maps.append(evaluate_detections(gt, dets).AP)
    assert round(maps[0], 3) == round(maps[1], 3), maps


def test_sidecar_and_cli_predict_with_the_exported_file(exported, synth_dir, tmp_path):
    run, onnx = exported
    info = json.loads(onnx.with_suffix(".json").read_text())
    assert info["format"] == "onnx" and len(info["categories"]) == 10
    assert info["threshold"] == 0.5 and info["config"]["model"]["native_size"] is True
    out = tmp_path / "p"
    result = CliRunner().invoke(app, ["predict", str(onnx), str(synth_dir / "test"), "--out",
                                      str(out), "--save-images"])
    assert result.exit_code == 0, result.output
    assert (out / "pred.csv").is_file() and list((out / "images").glob("*.png"))
    with pytest.raises(ConfigError, match="Soft-NMS, another NMS IoU, TTA and eval.amp run on "
                                          "the PyTorch model only"):
        Detector.load(onnx, overrides=["eval.nms=gaussian"])
    bad = CliRunner().invoke(app, ["export", str(run), "--format", "tflite"])
    assert bad.exit_code == 2 and "--format tflite: use one of onnx, torchscript, openvino" in (
        bad.output)


def test_proposals_are_an_inference_option_and_held_by_the_export(exported, tmp_path):
    run, _ = exported
    eager = Detector.load(run, device="cpu", overrides=["eval.proposals=10"])
    assert eager.model.rpn._post_nms_top_n["testing"] == 50  # the model itself is unchanged
    assert eager.predictor.model.rpn._post_nms_top_n["testing"] == 10
    assert eager.predictor.model.rpn.head is eager.model.rpn.head  # a view: same weights
    result = CliRunner().invoke(app, ["export", str(run), "--out", str(tmp_path / "p10.onnx"),
                                      "eval.proposals=10"])
    assert result.exit_code == 0, result.output
    onnx = Detector.load(tmp_path / "p10.onnx")
    assert json.loads((tmp_path / "p10.json").read_text())["proposals"] == 10
    data = load_coco(shared_path("orand-car-a", "instances_train.json"))
    files = [data.image_root / img["file_name"] for img in data.images[:6]]
    a = eager.predict(files, batch_size=1, keep_images=False)
    b = onnx.predict(files, batch_size=1, keep_images=False)
    matched, total = parity(a, b)
    assert total > 0 and matched >= 0.99 * total
    full = Detector.load(run, device="cpu").predict(files, batch_size=1, keep_images=False)
    assert sum(map(len, a)) < sum(map(len, full))  # fewer proposals, fewer boxes scored


def test_serve_answers_from_an_exported_model(exported, eager_orand):
    """`rcnnlab serve model.onnx`: the same detections as the exported model in Python."""
    pytest.importorskip("fastapi", reason="rcnnlab serve needs the serve extra")
    pytest.importorskip("httpx", reason="the test client needs httpx")
    from fastapi.testclient import TestClient

    from rcnnlab.serve import ServeOptions, create_app

    _, onnx_file = exported
    _, images, _ = eager_orand
    det = Detector.load(onnx_file, backend="onnxruntime")
    with TestClient(create_app(onnx_file, ServeOptions(backend="onnxruntime"),
                               preload=True)) as client:
        info = client.get("/info").json()
        assert info["backend"] == "onnxruntime" and info["model"].startswith("model.onnx@")
        answer = client.post("/predict?threshold=0.0", content=images[0].read_bytes(),
                             headers={"content-type": "image/jpeg"})
    assert answer.status_code == 200, answer.text
    (result,) = answer.json()["results"]
    expected = det.predict(images[0], threshold=0.0, keep_images=False)[0]
    assert result["number"] == expected.number and result["detections"] == len(expected)


def test_damaged_exported_files_are_one_error_each(exported, tmp_path):
    pytest.importorskip("onnxruntime", reason="onnxruntime (the onnx extra) is not installed")
    run, onnx = exported
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(onnx.read_bytes()[:5000])
    shutil.copy(onnx.with_suffix(".json"), cut.with_suffix(".json"))
    with pytest.raises(ConfigError, match=r"cut.onnx: onnxruntime cannot load it \(.*Fix: "
                                          r"export it again"):
        Detector.load(cut)
    ts = _exported_file(run, "torchscript", tmp_path)
    ts.write_bytes(ts.read_bytes()[:3000])
    with pytest.raises(ConfigError, match="torchscript cannot load it"):
        Detector.load(ts)
    for text, words in (('{"config": ', "not the JSON rcnnlab export writes"),
                        ('{"threshold": 0.5}', "lacks config, categories"),
                        ('{"config": {"model": {"arch": 7}}, "categories": [], '
                         '"threshold": 0.5}', "its config cannot be read")):
        cut.with_suffix(".json").write_text(text)
        with pytest.raises(ConfigError, match=words):
            Detector.load(cut)
