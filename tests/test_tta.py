"""Inference options: the head's NMS IoU, Soft-NMS, TTA (scales, flip, merge), eval overrides."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torchvision.ops import box_iou
from typer.testing import CliRunner

from rcnnlab.cli import app
from rcnnlab.config import ConfigError, EvalConfig, load_config
from rcnnlab.evaluation.pipeline import predictor_for
from rcnnlab.inference.detect import detect_dataset, detections_to_coco
from rcnnlab.inference.nms import suppress
from rcnnlab.inference.predictor import _UNCAPPED, Predictor, with_box_settings
from rcnnlab.models.architecture import build_model
from rcnnlab.runs.checkpoint import save_checkpoint
from tests.conftest import write_coco


class StubDetector(nn.Module):
    """A detector in eval mode: `find(image)` gives one image's (boxes, scores, labels).

    Its `roi_heads` carries the box head's settings; every forward records the input sizes and
    the settings it ran with.
    """

    def __init__(self, find):
        super().__init__()
        self.find = find
        self.roi_heads = SimpleNamespace(nms_thresh=0.5, detections_per_img=100, score_thresh=0.05)
        self.calls: list[dict] = []
        self.eval()

    def forward(self, images):
        heads = self.roi_heads
        self.calls.append({"sizes": [tuple(img.shape[-2:]) for img in images],
                           "nms_thresh": heads.nms_thresh,
                           "detections_per_img": heads.detections_per_img})
        return [dict(zip(("boxes", "scores", "labels"), self.find(img), strict=True))
                for img in images]


# Four candidates of one image: B lies inside A (IoU 0.5, same label), C sits on A with another
# label, D is apart and scores just above the head's 0.05.
CANDIDATES = (
    torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 5], [0, 0, 10, 10], [50, 50, 60, 60]]),
    torch.tensor([0.9, 0.8, 0.7, 0.06]),
    torch.tensor([1, 1, 2, 1]),
)


def fixed_candidates(_image):
    return tuple(t.clone() for t in CANDIDATES)


def bright_patch(image):
    """The box around the pixels > 0.5 of channel 0: a detector whose boxes follow the image."""
    ys, xs = torch.nonzero(image[0] > 0.5, as_tuple=True)
    box = torch.stack([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]).float()
    score = 0.9 if image.shape[-1] == 60 else 0.6  # another score at any other width
    return box[None], torch.tensor([score]), torch.tensor([1])


def patch_image(h=40, w=60, x=(10, 20), y=(5, 15)) -> torch.Tensor:
    image = torch.zeros(3, h, w)
    image[:, y[0]:y[1], x[0]:x[1]] = 1.0
    return image


@pytest.fixture(scope="module")
def tiny_model():
    """A real untrained R18-FPN Faster R-CNN (2 classes) with small test budgets."""
    torch.manual_seed(0)
    return build_model(arch="resnet18_fpn", num_classes=3, native_size=True, load_weights=False,
                       min_size=64, max_size=256, rpn_pre_nms_top_n_test=100,
                       rpn_post_nms_top_n_test=50).eval()


# ------------------------------------------------------------------------------ defaults
def test_default_options_are_one_plain_forward():
    model = StubDetector(fixed_candidates)
    images = [torch.zeros(3, 40, 60), torch.zeros(3, 20, 30)]
    predictor = Predictor(model)
    assert predictor.plain
    out = predictor(images)
    assert len(model.calls) == 1 and model.calls[0]["sizes"] == [(40, 60), (20, 30)]
    assert model.calls[0]["nms_thresh"] == 0.5 and model.calls[0]["detections_per_img"] == 100
    for got in out:  # the model's own output, untouched
        assert torch.equal(got["boxes"], CANDIDATES[0])
        assert torch.equal(got["scores"], CANDIDATES[1])


def test_detect_dataset_defaults_match_the_model(tiny_model):
    torch.manual_seed(1)
    images = [torch.rand(3, 40, 60), torch.rand(3, 48, 32)]
    dataset = [(img, {"image_id": i + 1}) for i, img in enumerate(images)]
    with torch.inference_mode():
        plain = tiny_model(images)
    expected = [d for i, out in enumerate(plain) for d in detections_to_coco(out, i + 1, [7, 9])]
    assert expected  # random weights score every class about 1/3: plenty of detections
    assert detect_dataset(Predictor(tiny_model), dataset, [7, 9], batch_size=2) == expected


# ------------------------------------------------------------------------------ NMS / Soft-NMS
def test_nms_iou_is_set_for_the_forward_only():
    model = StubDetector(fixed_candidates)
    Predictor(model, nms_iou=0.3)([torch.zeros(3, 40, 60)])
    assert model.calls[0]["nms_thresh"] == 0.3
    assert model.roi_heads.nms_thresh == 0.5


def test_gaussian_soft_nms_bypasses_the_head_and_restores_it():
    model = StubDetector(fixed_candidates)
    (out,) = Predictor(model, nms="gaussian", soft_nms_sigma=0.5)([torch.zeros(3, 40, 60)])
    assert model.calls[0]["nms_thresh"] == 1.0
    assert model.calls[0]["detections_per_img"] == _UNCAPPED
    assert (model.roi_heads.nms_thresh, model.roi_heads.detections_per_img) == (0.5, 100)
    # B decays by exp(-IoU^2 / sigma) = exp(-0.25 / 0.5); C (other label) and D (apart) keep theirs.
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.8 * math.exp(-0.5), 0.06])
    assert out["labels"].tolist() == [1, 2, 1, 1]
    expected = suppress(*CANDIDATES, method="gaussian", iou_threshold=0.5, sigma=0.5,
                        score_threshold=0.05, max_detections=100)
    for got, want in zip((out["boxes"], out["scores"], out["labels"]), expected, strict=True):
        assert torch.equal(got, want)


def test_linear_soft_nms_uses_nms_iou_and_the_output_cap():
    model = StubDetector(fixed_candidates)
    model.roi_heads.detections_per_img = 3
    (out,) = Predictor(model, nms="linear", nms_iou=0.3)([torch.zeros(3, 40, 60)])
    # IoU(A, B) = 0.5 >= 0.3: B's score becomes 0.8 * (1 - 0.5); D is cut by the cap of 3.
    assert out["scores"].tolist() == pytest.approx([0.9, 0.7, 0.4])
    assert model.calls[0]["detections_per_img"] == _UNCAPPED
    assert model.roi_heads.detections_per_img == 3 and model.roi_heads.nms_thresh == 0.5


def test_box_settings_apply_to_a_view_and_never_to_the_model(tiny_model):
    view = with_box_settings(tiny_model, nms_thresh=1.0, detections_per_img=None)
    assert view.roi_heads.nms_thresh == 1.0 and view.roi_heads.detections_per_img == 100
    assert tiny_model.roi_heads.nms_thresh != 1.0  # the model keeps its own settings
    assert view.roi_heads is not tiny_model.roi_heads
    # the same tensors: the view detects exactly as the model does with those settings
    assert view.roi_heads.box_predictor is tiny_model.roi_heads.box_predictor
    assert with_box_settings(tiny_model) is tiny_model
    torch.manual_seed(2)
    images = [torch.rand(3, 40, 60)]
    with torch.inference_mode():
        loose, plain = view(images)[0], tiny_model(images)[0]
    assert len(loose["boxes"]) >= len(plain["boxes"])


def _same_label_overlap(out, iou: float) -> bool:
    ious = box_iou(out["boxes"], out["boxes"]).fill_diagonal_(0)
    same = out["labels"][:, None] == out["labels"][None, :]
    return bool(((ious > iou) & same).any())


def test_soft_nms_on_a_real_detector_sees_what_its_nms_removed(tiny_model):
    torch.manual_seed(2)
    images = [torch.rand(3, 40, 60)]
    with torch.inference_mode():
        (plain,) = tiny_model(images)
        # Linear Soft-NMS at IoU 1.0 decays nothing: what comes out is the head's raw candidates.
        (soft,) = Predictor(tiny_model, nms="linear", nms_iou=1.0)(images)
    assert not _same_label_overlap(plain, 0.5)  # the head's hard NMS at 0.5
    assert _same_label_overlap(soft, 0.5)  # bypassed: overlapping boxes of a label survive
    assert len(soft["scores"]) == 100 and float(soft["scores"].min()) >= 0.05
    assert tiny_model.roi_heads.nms_thresh == 0.5
    assert tiny_model.roi_heads.detections_per_img == 100


# ------------------------------------------------------------------------------ TTA
def test_scales_map_boxes_back_and_merge():
    model = StubDetector(bright_patch)
    image = patch_image()
    (nms,) = Predictor(model, tta_scales=[1.0, 2.0])([image])
    assert [c["sizes"] for c in model.calls] == [[(40, 60)], [(80, 120)]]
    # The 2x pass finds [20, 10, 40, 30]; mapped back it is the 1x box, so NMS keeps the 0.9.
    assert nms["boxes"].tolist() == [[10.0, 5.0, 20.0, 15.0]]
    assert nms["scores"].tolist() == pytest.approx([0.9])
    (wbf,) = Predictor(model, tta_scales=[1.0, 2.0], tta_merge="wbf")([image])
    assert wbf["boxes"].tolist() == [[10.0, 5.0, 20.0, 15.0]]
    assert wbf["scores"].tolist() == pytest.approx([(0.9 + 0.6) / 2])  # WBF's mean score


def test_a_rounded_scale_maps_back_per_axis():
    # 41 x 61 at 0.5 is 20 x 30 (each side rounded): mapping back by 1/0.5 would be off.
    model = StubDetector(lambda img: (torch.tensor([[6.0, 5, 18, 15]]), torch.tensor([0.9]),
                                      torch.tensor([1])))
    (out,) = Predictor(model, tta_scales=[0.5])([torch.zeros(3, 41, 61)])
    assert model.calls[0]["sizes"] == [(20, 30)]
    assert out["boxes"][0].tolist() == pytest.approx([6 * 61 / 30, 5 * 41 / 20, 18 * 61 / 30,
                                                      15 * 41 / 20])


def test_hflip_maps_boxes_back():
    image = patch_image()
    follows = StubDetector(bright_patch)
    (out,) = Predictor(follows, tta_hflip=True)([image])
    # The flipped pass sees the patch at x 40..50 and maps it back onto x 10..20: one box.
    assert len(follows.calls) == 2
    assert out["boxes"].tolist() == [[10.0, 5.0, 20.0, 15.0]]
    # A box fixed in the seen image is mirrored about the 60-px width when mapped back.
    fixed = StubDetector(lambda img: (torch.tensor([[2.0, 5, 12, 15]]), torch.tensor([0.9]),
                                      torch.tensor([1])))
    (out,) = Predictor(fixed, tta_hflip=True)([image])
    assert sorted(out["boxes"].tolist()) == [[2.0, 5.0, 12.0, 15.0], [48.0, 5.0, 58.0, 15.0]]


def test_hflip_and_scales_on_a_real_detector_stay_in_the_image(tiny_model):
    torch.manual_seed(3)
    images = [torch.rand(3, 40, 60)]
    with torch.inference_mode():
        (out,) = Predictor(tiny_model, tta_scales=[1.0, 1.5], tta_hflip=True,
                           tta_merge="wbf")(images)
    boxes = out["boxes"]
    assert 0 < len(boxes) <= 100
    assert float(boxes[:, [0, 2]].min()) >= 0 and float(boxes[:, [0, 2]].max()) <= 60
    assert float(boxes[:, [1, 3]].min()) >= 0 and float(boxes[:, [1, 3]].max()) <= 40
    assert out["scores"].tolist() == sorted(out["scores"].tolist(), reverse=True)


def test_hflip_is_refused_on_digit_classes():
    model = StubDetector(fixed_candidates)
    with pytest.raises(ValueError, match=r"eval\.tta_hflip=false"):
        Predictor(model, tta_hflip=True, digit_classes=True)
    with pytest.raises(ValueError, match="eval.tta_hflip"):
        predictor_for(model, EvalConfig(tta_hflip=True), [{"id": 1, "name": "1"}])
    assert Predictor(model, tta_hflip=True).tta_hflip  # any other classes may be mirrored


# ------------------------------------------------------------------------------ overrides
def test_eval_overrides_change_only_the_eval_section():
    saved = load_config(None, ["model.box_nms_thresh=0.4"])
    cfg = saved.model_copy(update={"eval": saved.eval.with_overrides(
        ["eval.nms=gaussian", "eval.tta_scales=[1, 1.5]", "eval.tta_merge=wbf"])})
    assert cfg.eval.inference_kwargs() == {
        "nms": "gaussian", "nms_iou": None, "soft_nms_sigma": 0.5, "tta_scales": [1.0, 1.5],
        "tta_hflip": False, "tta_merge": "wbf", "tta_iou": 0.55, "amp": "off",
        "proposals": None}
    assert cfg.model.box_nms_thresh == 0.4 and saved.eval == EvalConfig()


@pytest.mark.parametrize(("override", "message"), [
    ("model.box_nms_thresh=0.3", "only eval.* options apply"),
    ("train.epochs=3", "only eval.* options apply"),
    ("eval.nms=soft", "eval.nms: Input should be"),
    ("eval.tta_iou=1.5", "eval.tta_iou: Input should be less than or equal to 1"),
    ("eval.tta_scales=[1, 0]", "tta_scales must all be > 0"),
    ("eval.tta_scale=[1]", "eval.tta_scale: Extra inputs"),
])
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace(".", r"\.").replace("*", r"\*")):
        EvalConfig().with_overrides([override])


# ------------------------------------------------------------------------------ CLI
@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory, tiny_model) -> tuple[Path, Path]:
    """A run folder whose best.pt holds the untrained tiny model, and a 2-image COCO json."""
    tmp_path = tmp_path_factory.mktemp("untrained")
    data = write_coco(tmp_path / "data")  # categories "0" and "1": a digit dataset
    cfg = load_config(None, ["model.native_size=true", "model.min_size=64",
                             "model.max_size=256", "model.rpn_pre_nms_top_n_test=100",
                             "model.rpn_post_nms_top_n_test=50"])
    categories = [{"id": 0, "name": "0"}, {"id": 1, "name": "1"}]
    run = tmp_path / "run"
    save_checkpoint(run / "checkpoints" / "best.pt", {
        "model": tiny_model.state_dict(), "config": cfg.model_dump(mode="json"),
        "categories": categories})
    return run, data


def test_cli_evaluate_and_predict_take_eval_overrides(untrained_run, tmp_path):
    run, data = untrained_run
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", str(run), "--data", str(data), "--device", "cpu",
                                 "eval.nms=gaussian", "eval.tta_scales=[1, 1.5]"])
    assert result.exit_code == 0, result.output
    assert not (run / "eval_test.json").exists()  # another json never overwrites a split's
    saved = json.loads((run / "eval_data-ann.json").read_text())
    assert saved["inference"]["nms"] == "gaussian"
    assert saved["inference"]["tta_scales"] == [1.0, 1.5]

    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", str(run), str(data), "--out", str(out),
                                 "--device", "cpu", "eval.tta_scales=[1, 0.5]",
                                 "eval.tta_merge=wbf"])
    assert result.exit_code == 0, result.output
    preds = json.loads((out / "pred.json").read_text())
    assert preds and all(b[0] >= 0 and b[0] + b[2] <= 60.01 for b in
                         (p["bbox"] for p in preds))


@pytest.mark.parametrize(("args", "message"), [
    (["model.box_nms_thresh=0.3"], "only eval.* options apply"),
    (["eval.tta_hflip=true"], "eval.tta_hflip=true on a digit dataset"),
])
def test_cli_rejects_with_one_line(untrained_run, args, message):
    run, data = untrained_run
    result = CliRunner().invoke(app, ["evaluate", str(run), "--data", str(data),
                                      "--device", "cpu", *args])
    assert result.exit_code == 2
    assert message in result.output and "Traceback" not in result.output
