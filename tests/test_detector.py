"""The in-memory API (`from rcnnlab import Detector`) and `rcnnlab predict` on any source."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from rcnnlab import Detector, Result
from rcnnlab.cli import app
from rcnnlab.errors import ConfigError, MissingFileError
from rcnnlab.evaluation.sequence import read_number

ROOT = Path(__file__).resolve().parents[1]
# the Detector examples of the front page and of the Python API page, run as written
EXAMPLES = [ROOT / "README.md", ROOT / "docs" / "python-api.md"]


@pytest.fixture(scope="module")
def run(tiny_run) -> Path:
    return tiny_run


@pytest.fixture(scope="module")
def det(run) -> Detector:
    return Detector.load(run, device="cpu")


def _same(a: Result, b: Result) -> bool:
    return (torch.allclose(a.boxes, b.boxes, atol=1e-3) and torch.equal(a.class_ids, b.class_ids)
            and torch.allclose(a.scores, b.scores, atol=1e-5))


def test_load_knows_classes_and_threshold(det):
    assert det.names == [str(d) for d in range(10)]
    assert det.threshold == 0.5 and len(det.categories) == 10


def test_every_kind_of_input_gives_the_same_detections(det, synth_dir):
    path = sorted((synth_dir / "test").glob("*.jpg"))[0]
    by_path = det.predict(path)[0]
    assert len(by_path) > 0 and by_path.source == path.name
    pil = Image.open(path).convert("RGB")
    rgb = np.array(pil)
    tensor = torch.from_numpy(rgb).permute(2, 0, 1)
    same = [det.predict(pil)[0], det.predict(rgb)[0], det.predict(rgb[..., ::-1], bgr=True)[0],
            det.predict(tensor)[0], det.predict(tensor.float() / 255)[0],
            det(tensor[None])[0], det.predict([str(path)])[0]]
    for result in same:
        assert _same(result, by_path), result.source
    assert [r.source for r in det.predict([pil, rgb])] == ["image 1", "image 2"]


def test_result_reads_the_number_and_converts_to_coco(det, synth_dir):
    result = det.predict(sorted((synth_dir / "test").glob("*.jpg"))[0], threshold=0.0)[0]
    assert result.boxes.shape == (len(result), 4) and len(result.names) == len(result)
    digits = {c["id"]: c["name"] for c in det.categories}
    assert result.number == read_number(result.boxes, result.class_ids, result.scores, digits,
                                        0.0) and result.number != "-1"
    coco = result.to_coco(image_id=7)
    assert len(coco) == len(result) and coco[0]["image_id"] == 7
    x1, y1, x2, y2 = result.boxes[0].tolist()
    assert coco[0]["bbox"] == [round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2)]


def test_plot_draws_boxes_labels_and_the_number(det, synth_dir, tmp_path):
    path = sorted((synth_dir / "test").glob("*.jpg"))[0]
    result = det.predict(path)[0]
    picture = result.plot(threshold=0.0)
    h, w = result.image.shape[-2:]
    # scaled up to be readable, with a banner for the number above the image
    assert picture.height > max(360, h) and picture.width >= w
    plain = Image.fromarray(np.full((picture.height, picture.width, 3), 255, np.uint8))
    assert np.asarray(picture).astype(int).sum() != np.asarray(plain).astype(int).sum()
    red = (np.asarray(picture)[..., 0] > 200) & (np.asarray(picture)[..., 1] < 80)
    assert red.sum() > 100  # the boxes are drawn
    with pytest.raises(ValueError, match="keeps no image"):
        det.predict(path, keep_images=False)[0].plot()


def test_the_banner_fits_a_narrow_image(det):
    narrow = det.predict(torch.rand(3, 40, 24))[0].plot(threshold=0.99)
    banner = np.asarray(narrow)[: narrow.height - 360]
    dark = (banner < 128).all(axis=2)
    assert dark.any() and not dark[:, -4:].any()  # the text ends inside the picture


def test_bad_inputs_are_one_clear_error(det, tmp_path):
    with pytest.raises(ConfigError, match=r"values in \[-1, 2\]: give float in \[0, 1\]"):
        det.predict(torch.tensor([-1.0, 2.0]).repeat(3, 4, 1)[:, :, :2])
    with pytest.raises(ConfigError, match="cannot predict on a dict"):
        det.predict({"a": 1})
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(MissingFileError, match="not an image"):
        det.predict(tmp_path / "notes.txt")
    with pytest.raises(MissingFileError, match="matches no image files"):
        det.predict(str(tmp_path / "*.jpg"))
    with pytest.raises(ConfigError, match="threshold 7.0 is out of range"):
        det.predict(torch.rand(3, 40, 24), threshold=7.0)


def test_predict_a_video_frame_by_frame(det, synth_dir, tmp_path):
    av = pytest.importorskip("av", reason="PyAV (the video extra) is not installed")
    frames = [np.asarray(Image.open(p).convert("RGB").resize((128, 64)))
              for p in sorted((synth_dir / "test").glob("*.jpg"))[:3]]
    video = tmp_path / "clip.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=5)
        stream.width, stream.height, stream.pix_fmt = 128, 64, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    results = det.predict(video)
    assert [r.source for r in results] == ["clip.mp4#0", "clip.mp4#1", "clip.mp4#2"]
    assert [r.image_id for r in results] == [1, 2, 3]
    assert all(r.image.shape == (3, 64, 128) for r in results)


def test_cli_predict_an_image_a_glob_and_saves_drawings(run, synth_dir, tmp_path):
    files = sorted((synth_dir / "test").glob("*.jpg"))
    out = tmp_path / "one"
    result = CliRunner().invoke(app, ["predict", str(run), str(files[0]), "--out", str(out),
                                      "--save-images", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    drawn = list((out / "images").glob("*.png"))
    assert [p.name for p in drawn] == [files[0].stem + ".png"]
    assert Image.open(drawn[0]).height > 300
    rows = (out / "pred.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[0] == "image_id,pred_label"
    # a glob: every match, pred.json like the Python API's results
    out = tmp_path / "glob"
    result = CliRunner().invoke(app, ["predict", str(run), str(synth_dir / "test" / "*.jpg"),
                                      "--out", str(out), "--device", "cpu"])
    assert result.exit_code == 0, result.output
    dets = json.loads((out / "pred.json").read_text())
    by_api = [d for r in Detector.load(run, device="cpu").predict(files) for d in r.to_coco()]
    assert dets == by_api
    assert len((out / "pred.csv").read_text().splitlines()) == len(files) + 1


@pytest.mark.parametrize("page", EXAMPLES, ids=lambda p: p.name)
def test_the_python_example_runs_as_written(page, run, synth_dir, tmp_path, monkeypatch):
    text = page.read_text()
    block = re.search(r"```python\n(from rcnnlab import Detector\n.*?)```", text, re.S)
    assert block, f"the Detector example of {page.name} is missing"
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "demo").symlink_to(run)
    image = sorted((synth_dir / "test").glob("*.jpg"))[0]
    Image.open(image).save(tmp_path / "house.png")
    exec(compile(block.group(1), str(page), "exec"), {})  # noqa: S102
    assert (tmp_path / "house_boxes.png").is_file()


def test_in_memory_images_read_as_their_files_do(det, tmp_path):
    """A 16-bit PIL image is scaled as its PNG is read, a float one refused, NaN refused, and
    ids never repeat in a mixed list."""
    grey = np.linspace(0, 65535, 40 * 60).reshape(40, 60).astype(np.uint16)
    image16 = Image.fromarray(grey)
    image16.save(tmp_path / "2.png")
    from_file = det.predict(tmp_path / "2.png")[0]
    from_memory = det.predict(image16)[0]
    assert _same(from_file, from_memory)
    with pytest.raises(ConfigError, match="a PIL image: a 32-bit floating point image"):
        det.predict(Image.fromarray(grey.astype(np.float32)))
    with pytest.raises(ConfigError, match="NaN or infinite"):
        det.predict(np.full((20, 30, 3), np.nan, dtype=np.float32))
    arr = np.zeros((20, 30, 3), dtype=np.uint8)
    assert [r.image_id for r in det.predict([tmp_path / "2.png", arr, arr])] == [1, 2, 3]
    # ids are kept where none collide (a file's stem, an array's place), else 1..N
    assert [r.image_id for r in det.predict([tmp_path / "2.png"])] == [2]
    assert [r.image_id for r in det.predict([arr, arr, tmp_path / "2.png"])] == [1, 2, 3]
    assert [r.image_id for r in det.predict([arr, tmp_path / "2.png"])] == [1, 2]


def test_an_audio_only_file_is_no_video(det, tmp_path):
    av = pytest.importorskip("av", reason="PyAV (the video extra) is not installed")
    sound = tmp_path / "voice.mp4"
    with av.open(str(sound), "w") as container:
        stream = container.add_stream("aac", rate=8000)
        samples = np.zeros((1, 1024), dtype=np.float32)
        for _ in range(4):
            frame = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
            frame.sample_rate = 8000
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    with pytest.raises(MissingFileError, match="voice.mp4: holds no video stream"):
        det.predict(sound)


def test_the_detector_evaluates_tunes_and_exports_the_run(run, tmp_path):
    from rcnnlab import api
    from rcnnlab.runs.checkpoint import load_checkpoint

    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    det = Detector.load(copy, device="cpu", overrides=["eval.sweep_min=0.3"])
    scores = det.evaluate("test")
    assert scores.as_dict() == api.evaluate(copy, device="cpu", save=False).as_dict()
    assert scores.threshold == det.threshold and scores.n_images == 4
    # another json with the same categories is scored under its own name
    other = det.evaluate("mine", json_path=det.cfg.data.valid_json)
    assert other.split == "mine" and other.n_images == 4
    sweep, valid = det.tune()
    assert sweep.rows[0].threshold == pytest.approx(0.3)  # the detector's own options
    assert det.threshold == valid.threshold == sweep.best
    assert valid.detections and valid.seq_acc == sweep.best_row.accuracy
    for name in ("best.pt", "last.pt"):
        assert load_checkpoint(copy / "checkpoints" / name)["threshold"] == sweep.best
    assert (copy / "threshold_sweep.csv").is_file()
    # one model in memory behind every set of options
    soft = det.with_overrides(["eval.nms=gaussian"])
    assert soft.model is det.model and soft.cfg.eval.nms == "gaussian"
    assert soft.cfg.eval.sweep_min == 0.3 and det.cfg.eval.nms == "nms"
    with pytest.raises(ConfigError, match="only eval.proposals is held"):
        soft.export("onnx")
    pytest.importorskip("onnxruntime", reason="the onnx extra is not installed")
    path = det.export("onnx")
    assert path == copy / "export" / "model.onnx" and path.with_suffix(".json").is_file()
    exported = Detector.load(path)
    assert exported.threshold == sweep.best and exported.checkpoint is None
    assert exported.evaluate("test").n_images == 4
    with pytest.raises(ConfigError, match="tune the run folder"):
        exported.tune()


def test_options_stack_and_an_in_memory_detector_exports_to_out(det, tmp_path):
    first = det.with_overrides(["eval.nms=gaussian"])
    both = first.with_overrides(["eval.soft_nms_sigma=0.3"])
    assert both.overrides == ["eval.nms=gaussian", "eval.soft_nms_sigma=0.3"]
    assert (both.cfg.eval.nms, both.cfg.eval.soft_nms_sigma) == ("gaussian", 0.3)
    assert both.model_id == det.model_id and both.model is det.model
    memory = Detector.from_checkpoint(det.checkpoint, device="cpu")
    memory.path = None  # as a checkpoint built in Python, with no run folder
    with pytest.raises(ConfigError, match="give `out`"):
        memory.export("torchscript")
    out = memory.export("torchscript", tmp_path / "m")
    assert out == tmp_path / "m.torchscript" and out.with_suffix(".json").is_file()
