"""Tests for rcnnlab.models: build_model, weights loading, residual FPN, anchors, native size.

Models are built at full width but run on tiny inputs (2 images of 64x128) with small RPN/RoI
budgets, so the whole file stays fast on a 2-core CPU. Nothing is downloaded: the torchvision
weights paths are exercised with the download function patched.
"""

from __future__ import annotations

import logging
import urllib.error
from collections import OrderedDict

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.detection import (
    FasterRCNN_ResNet50_FPN_Weights,
    fasterrcnn_mobilenet_v3_large_fpn,
    fasterrcnn_resnet50_fpn,
    fasterrcnn_resnet50_fpn_v2,
)
from torchvision.models.detection.backbone_utils import resnet_fpn_backbone
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops.misc import FrozenBatchNorm2d

from rcnnlab.config import ModelConfig
from rcnnlab.errors import ConfigError
from rcnnlab.models.architecture import ARCHS, build_model, level_anchors, level_strides
from rcnnlab.models.description import describe_model
from rcnnlab.models.heads import total_loss
from rcnnlab.models.resfpn import ResidualFPNBackbone
from rcnnlab.models.transform import DetectorTransform
from rcnnlab.models.weights import load_weights_file

LOSS_KEYS = {"loss_classifier", "loss_box_reg", "loss_objectness", "loss_rpn_box_reg"}
PREDICTOR_KEYS = {
    f"roi_heads.box_predictor.{layer}.{kind}"
    for layer in ("cls_score", "bbox_pred")
    for kind in ("weight", "bias")
}
RESNET_LEVELS = ["0", "1", "2", "3", "pool"]
# Small budgets keep the RoI head cheap; 64x128 inputs stay at native size.
SMALL = {
    "min_size": 64,
    "max_size": 128,
    "native_size": True,
    "rpn_pre_nms_top_n_train": 200,
    "rpn_post_nms_top_n_train": 100,
    "rpn_pre_nms_top_n_test": 100,
    "rpn_post_nms_top_n_test": 50,
    "box_batch_size_per_image": 32,
}
MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run this module single-threaded, restoring the setting afterwards.

    Tiny inputs gain nothing from a second intra-op thread, and when another process keeps the
    CPU busy, OpenMP's spin-waiting makes 2 threads on 2 cores far slower than 1 (measured:
    a ResNet-18 forward on 2x64x128 took 0.85 s with 2 threads vs 0.014 s with 1).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def batch(num_classes: int = 4) -> tuple[list[torch.Tensor], list[dict[str, torch.Tensor]]]:
    """Two 64x128 images with two digit-shaped (tall) boxes each."""
    gen = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 64, 128, generator=gen) for _ in range(2)]
    boxes = torch.tensor([[10.0, 8.0, 30.0, 50.0], [40.0, 10.0, 62.0, 52.0]])
    labels = torch.tensor([1, num_classes - 1])
    return images, [{"boxes": boxes.clone(), "labels": labels.clone()} for _ in images]


def train_step_losses(model: nn.Module, num_classes: int = 4) -> dict[str, torch.Tensor]:
    """One training forward + backward; returns the loss dict."""
    model.train()
    images, targets = batch(num_classes)
    outputs = model(images, targets)
    total_loss(outputs).backward()
    return {k: v for k, v in outputs.items() if k.startswith("loss_")}


def saved_state(model: nn.Module, path) -> str:
    torch.save(model.state_dict(), path)
    return str(path)


# --------------------------------------------------------------------------- every arch


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_trains_and_predicts(arch):
    torch.manual_seed(0)
    model = build_model(arch=arch, num_classes=4, **SMALL)
    # No pretrained weights: everything trains and the trunk uses real BatchNorm.
    assert all(p.requires_grad for p in model.parameters())
    assert not any(isinstance(m, FrozenBatchNorm2d) for m in model.modules())

    losses = train_step_losses(model)
    assert set(losses) == LOSS_KEYS
    assert all(torch.isfinite(v) for v in losses.values())
    assert model.roi_heads.box_predictor.cls_score.weight.grad.abs().sum() > 0

    model.eval()
    with torch.no_grad():
        out = model(batch()[0])
    assert len(out) == 2
    for det in out:
        assert set(det) == {"boxes", "labels", "scores"}
        assert det["boxes"].shape[1] == 4
        if len(det["boxes"]):
            assert det["boxes"][:, 2].max() <= 128 and det["boxes"][:, 3].max() <= 64
            assert det["labels"].min() >= 1 and det["labels"].max() <= 3


@pytest.mark.parametrize(
    "arch, constructor",
    [
        ("fasterrcnn_resnet50_fpn", fasterrcnn_resnet50_fpn),
        ("fasterrcnn_resnet50_fpn_v2", fasterrcnn_resnet50_fpn_v2),
        ("fasterrcnn_mobilenet_v3_large_fpn", fasterrcnn_mobilenet_v3_large_fpn),
    ],
)
def test_torchvision_archs_match_torchvision_constructors(arch, constructor):
    """Same names and shapes as torchvision's model, so its COCO checkpoints load completely."""
    ours = build_model(arch=arch, num_classes=91)
    theirs = constructor(weights=None, weights_backbone=None, num_classes=91)
    assert {k: v.shape for k, v in ours.state_dict().items()} == {
        k: v.shape for k, v in theirs.state_dict().items()
    }
    # Default anchors are torchvision's own for these archs.
    assert ours.rpn.anchor_generator.sizes == theirs.rpn.anchor_generator.sizes
    assert ours.rpn.anchor_generator.aspect_ratios == theirs.rpn.anchor_generator.aspect_ratios


def test_describe_model_reports_levels_params_and_budgets():
    model = build_model(
        arch="resnet18_fpn",
        num_classes=11,
        residual_fpn=True,
        native_size=True,
        rpn_pre_nms_top_n_train=300,
        rpn_pre_nms_top_n_test=200,
        rpn_post_nms_top_n_train=150,
        rpn_post_nms_top_n_test=100,
        rpn_batch_size_per_image=64,
        box_batch_size_per_image=128,
        box_detections_per_img=20,
        box_score_thresh=0.1,
        box_nms_thresh=0.4,
    )
    info = describe_model(model)
    assert info["num_classes"] == 11
    assert 0 < info["params_trainable"] <= info["params_total"]
    assert sum(info["params_by_part"].values()) == info["params_total"]
    assert info["residual_fpn"] and info["transform"]["native_size"]
    assert info["num_levels"] == 5
    assert [lv["name"] for lv in info["levels"]] == RESNET_LEVELS
    assert [lv["stride"] for lv in info["levels"]] == [4, 8, 16, 32, 64]
    assert [lv["anchor_sizes"] for lv in info["levels"]] == [[16], [32], [64], [128], [256]]
    assert {lv["anchors_per_location"] for lv in info["levels"]} == {4}
    assert info["rpn"]["pre_nms_top_n"] == {"training": 300, "testing": 200}
    assert info["rpn"]["post_nms_top_n"] == {"training": 150, "testing": 100}
    assert info["rpn"]["batch_size_per_image"] == 64
    assert info["roi_heads"] == {
        "batch_size_per_image": 128,
        "detections_per_img": 20,
        "score_thresh": 0.1,
        "nms_thresh": 0.4,
    }


def test_build_model_rejects_bad_arch_and_class_count():
    with pytest.raises(ValueError, match="unknown arch 'resnet101_fpn'"):
        build_model(arch="resnet101_fpn", num_classes=3)
    with pytest.raises(ValueError, match="background"):
        build_model(arch="resnet18_fpn", num_classes=1)


# --------------------------------------------------------------------------- residual FPN


def test_residual_fpn_block_is_relu_of_input_plus_branch():
    torch.manual_seed(0)
    base = resnet_fpn_backbone(
        backbone_name="resnet18", weights=None, norm_layer=nn.BatchNorm2d, trainable_layers=5
    )
    wrapped = ResidualFPNBackbone(base, RESNET_LEVELS)
    assert wrapped.out_channels == base.out_channels == 256
    x = torch.rand(2, 3, 64, 96)
    for train in (False, True):
        wrapped.train(train)
        with torch.no_grad():
            expected, got = base(x), wrapped(x)
        assert list(got) == list(expected) == RESNET_LEVELS
        for name in RESNET_LEVELS:
            # Zero-gamma: the branch is 0 at start, so each block is ReLU(x).
            assert got[name].shape == expected[name].shape
            assert torch.equal(got[name], torch.relu(expected[name]))
    # With a non-zero branch the block computes ReLU(x + BN(conv(ReLU(BN(conv(x)))))).
    block = wrapped.blocks["0"].eval()
    nn.init.normal_(block.bn2.weight)
    feat = torch.randn(1, 256, 8, 8)
    with torch.no_grad():
        branch = block.bn2(block.conv2(torch.relu(block.bn1(block.conv1(feat)))))
        assert torch.allclose(block(feat.clone()), torch.relu(feat + branch))
        assert branch.abs().sum() > 0


def test_residual_fpn_blocks_receive_gradients():
    torch.manual_seed(0)
    # Sample every anchor for the RPN loss so every level (pool included) gets a gradient.
    model = build_model(
        arch="resnet18_fpn",
        num_classes=4,
        residual_fpn=True,
        rpn_batch_size_per_image=100_000,
        **SMALL,
    )
    assert isinstance(model.backbone, ResidualFPNBackbone)
    assert list(model.backbone.blocks) == RESNET_LEVELS
    train_step_losses(model)
    for block in model.backbone.blocks.values():
        # Zero-gamma: at step 0 only the last BN learns; the branch's convs see no gradient yet.
        assert block.bn2.weight.grad.abs().sum() > 0
        assert block.conv1.weight.grad.abs().sum() == 0
    torch.optim.SGD(model.parameters(), lr=0.1).step()
    model.zero_grad()
    train_step_losses(model)
    for block in model.backbone.blocks.values():
        assert block.conv1.weight.grad.abs().sum() > 0
        assert block.conv2.weight.grad.abs().sum() > 0


# --------------------------------------------------------------------------- anchors


def test_anchor_level_count_must_match_the_arch():
    with pytest.raises(ValueError, match="'resnet18_fpn' has 5 feature maps"):
        build_model(arch="resnet18_fpn", num_classes=3, anchor_sizes=[[16], [32], [64]])
    with pytest.raises(ValueError, match="has 3 feature maps"):
        build_model(
            arch="fasterrcnn_mobilenet_v3_large_fpn",
            num_classes=3,
            anchor_sizes=[[16], [32], [64], [128], [256]],
        )
    with pytest.raises(ValueError, match="aspect_ratios has 2 levels"):
        build_model(arch="resnet18_fpn", num_classes=3, aspect_ratios=[[1.0], [2.0]])


def test_anchor_count_must_agree_across_levels():
    with pytest.raises(ValueError, match="same number of anchors"):
        build_model(
            arch="resnet18_fpn", num_classes=3, anchor_sizes=[[16, 24], [32], [64], [128], [256]]
        )


def test_custom_anchors_rebuild_the_rpn_head():
    sizes = [[8, 12], [16, 24], [32, 48], [64, 96], [128, 192]]
    model = build_model(
        arch="resnet18_fpn",
        num_classes=4,
        anchor_sizes=sizes,
        aspect_ratios=[1.0, 2.0, 3.0],
        **SMALL,
    )
    assert model.rpn.anchor_generator.num_anchors_per_location() == [6] * 5
    assert model.rpn.head.cls_logits.out_channels == 6
    assert model.rpn.head.bbox_pred.out_channels == 24
    assert set(train_step_losses(model)) == LOSS_KEYS

    # v2 has a 2-conv RPN head; a single inner ratio list is broadcast to every level.
    v2 = build_model(arch="fasterrcnn_resnet50_fpn_v2", num_classes=4, aspect_ratios=[[1.0, 2.0]])
    assert v2.rpn.anchor_generator.aspect_ratios == ((1.0, 2.0),) * 5
    assert v2.rpn.head.cls_logits.out_channels == 2
    assert len(v2.rpn.head.conv) == 2


# --------------------------------------------------------------------------- local weights files


@pytest.fixture(scope="module")
def r18_detector(tmp_path_factory):
    """A resnet18_fpn detector for 11 classes (10 digits + background) and its saved file."""
    torch.manual_seed(1)
    model = build_model(arch="resnet18_fpn", num_classes=11)
    path = tmp_path_factory.mktemp("weights") / "r18_11cls.pt"
    return model.state_dict(), saved_state(model, path)


def test_weights_file_with_another_class_count(r18_detector, caplog):
    state, path = r18_detector
    with caplog.at_level(logging.INFO, logger="rcnnlab.models"):
        model = build_model(arch="resnet18_fpn", num_classes=5, weights=path)
    assert "skipped 4 with another shape, 0 missing, 0 unexpected" in caplog.text
    assert model.roi_heads.box_predictor.cls_score.out_features == 5
    ours = model.state_dict()
    for key, value in state.items():
        if key not in PREDICTOR_KEYS and not key.endswith("num_batches_tracked"):
            assert torch.equal(ours[key], value), key
    # Pretrained: FrozenBatchNorm in the trunk, 3 trainable stages (conv1 and layer1 frozen).
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert not model.backbone.body.layer1[0].conv1.weight.requires_grad
    assert model.backbone.body.layer2[0].conv1.weight.requires_grad


def test_load_weights_file_reports_and_strict_head(r18_detector, tmp_path):
    state, _ = r18_detector
    ckpt = tmp_path / "last.pt"
    torch.save({"model": state, "epoch": 3, "categories": [1, 2, 3]}, ckpt)
    model = build_model(arch="resnet18_fpn", num_classes=5)
    report = load_weights_file(model, ckpt)
    assert set(report.skipped_shape) == PREDICTOR_KEYS
    assert report.skipped_shape["roi_heads.box_predictor.cls_score.weight"] == (
        (11, 1024),
        (5, 1024),
    )
    assert report.missing == [] and report.unexpected == []
    counts = report.as_dict()["counts"]
    assert counts["loaded"] == len(report.loaded) > 100
    assert str(report) == report.summary() and str(ckpt) in report.summary()
    with pytest.raises(ValueError, match=r"11 classes in the file, 5 in the model"):
        load_weights_file(model, ckpt, strict_head=True)
    # Same class count: the strict load goes through and nothing is skipped.
    same = build_model(arch="resnet18_fpn", num_classes=11)
    assert load_weights_file(same, ckpt, strict_head=True).skipped_shape == {}


def test_plain_and_residual_checkpoints_load_into_each_other(r18_detector, tmp_path):
    state, path = r18_detector
    residual = build_model(arch="resnet18_fpn", num_classes=11, residual_fpn=True)
    report = load_weights_file(residual, path)
    assert report.skipped_shape == {} and report.unexpected == []
    assert report.missing and all(k.startswith("backbone.blocks.") for k in report.missing)
    assert torch.equal(
        residual.backbone.base.body.conv1.weight, state["backbone.body.conv1.weight"]
    )
    plain = build_model(arch="resnet18_fpn", num_classes=11)
    back = load_weights_file(plain, saved_state(residual, tmp_path / "res.pt"))
    assert back.missing == [] and back.skipped_shape == {}
    assert back.unexpected and all(k.startswith("backbone.blocks.") for k in back.unexpected)


def test_backbone_only_files(tmp_path):
    torch.manual_seed(2)
    trunk = torchvision.models.resnet18()  # an ImageNet-style classification state_dict
    path = tmp_path / "resnet18_imagenet.pth"
    torch.save(trunk.state_dict(), path)
    model = build_model(arch="resnet18_fpn", num_classes=3, backbone_weights=str(path))
    assert torch.equal(model.backbone.body.layer4[1].conv2.weight, trunk.layer4[1].conv2.weight)
    assert torch.equal(model.backbone.body.bn1.running_var, trunk.bn1.running_var)
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)

    # A backbone's own state_dict (body.* + fpn.*) loads into the detector's backbone.
    bb_path = tmp_path / "backbone.pt"
    torch.save(model.backbone.state_dict(), bb_path)
    other = build_model(arch="resnet18_fpn", num_classes=3)
    report = load_weights_file(other, bb_path)
    assert report.unexpected == [] and report.skipped_shape == {}
    backbone_keys = [k for k in model.backbone.state_dict() if not k.endswith("_tracked")]
    assert sorted(report.loaded) == sorted("backbone." + k for k in backbone_keys)
    assert report.missing and not any(k.startswith("backbone.") for k in report.missing)
    assert torch.equal(
        other.backbone.fpn.inner_blocks[0][0].weight, model.backbone.fpn.inner_blocks[0][0].weight
    )


def test_legacy_rpn_head_keys_still_load(r18_detector, tmp_path):
    """torchvision's pre-0.9 checkpoints name the RPN conv 'rpn.head.conv.weight'."""
    state, _ = r18_detector
    legacy = OrderedDict(state)
    legacy._metadata = dict(state._metadata)
    for kind in ("weight", "bias"):
        legacy[f"rpn.head.conv.{kind}"] = legacy.pop(f"rpn.head.conv.0.0.{kind}")
    legacy._metadata["rpn.head"] = {"version": 1}
    torch.save(legacy, tmp_path / "legacy.pth")
    model = build_model(arch="resnet18_fpn", num_classes=11)
    report = load_weights_file(model, tmp_path / "legacy.pth")
    assert report.missing == [] and report.unexpected == []
    assert torch.equal(model.rpn.head.conv[0][0].weight, state["rpn.head.conv.0.0.weight"])


def test_weights_file_errors(tmp_path):
    missing = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match="nope.pt. Pass an existing"):
        build_model(arch="resnet18_fpn", num_classes=3, weights=str(missing))
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_weights_file(build_model(arch="resnet18_fpn", num_classes=3), missing)
    unrelated = tmp_path / "unrelated.pt"
    torch.save({"encoder.weight": torch.zeros(3, 3)}, unrelated)
    with pytest.raises(ValueError, match="unrelated.pt: none of its 1 tensors fit"):
        build_model(arch="resnet18_fpn", num_classes=3, weights=str(unrelated))
    not_weights = tmp_path / "list.pt"
    torch.save([1, 2, 3], not_weights)
    with pytest.raises(ValueError, match="list.pt: holds no state_dict"):
        build_model(arch="resnet18_fpn", num_classes=3, weights=str(not_weights))


# --------------------------------------------------------------------------- torchvision enums


def test_bad_weights_names_are_clear_errors():
    with pytest.raises(ValueError, match="FasterRCNN_ResNet50_FPN_Weights.COCO_V1"):
        build_model(
            arch="fasterrcnn_resnet50_fpn",
            num_classes=3,
            weights="FasterRCNN_ResNet50_FPN_Weights.COCO_V9",
        )
    with pytest.raises(ValueError, match="not a torchvision weights name"):
        build_model(arch="fasterrcnn_resnet50_fpn", num_classes=3, weights="NoSuchWeights.V1")
    with pytest.raises(ValueError, match="takes FasterRCNN_ResNet50_FPN_Weights"):
        build_model(
            arch="fasterrcnn_resnet50_fpn", num_classes=3, weights="ResNet50_Weights.IMAGENET1K_V1"
        )
    with pytest.raises(ValueError, match="takes ResNet18_Weights"):
        build_model(
            arch="resnet18_fpn", num_classes=3, backbone_weights="ResNet50_Weights.IMAGENET1K_V1"
        )
    with pytest.raises(ValueError, match="no detector weights for arch 'resnet18_fpn'"):
        build_model(arch="resnet18_fpn", num_classes=3, weights="DEFAULT")


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    """Empty torch hub cache in tmp_path, and a download function that fails like no network."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    calls = []

    def fail(url, dst, *args, **kwargs):
        calls.append(url)
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", fail)
    yield calls
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []  # nothing was downloaded


@pytest.mark.parametrize(
    "arch, param, value, name",
    [
        (
            "fasterrcnn_mobilenet_v3_large_fpn",
            "weights",
            "DEFAULT",
            "FasterRCNN_MobileNet_V3_Large_FPN_Weights.COCO_V1",
        ),
        (
            "resnet18_fpn",
            "backbone_weights",
            "ResNet18_Weights.IMAGENET1K_V1",
            "ResNet18_Weights.IMAGENET1K_V1",
        ),
    ],
)
def test_valid_enum_without_network_gives_one_clear_error(no_network, arch, param, value, name):
    with pytest.raises(RuntimeError) as info:
        build_model(arch=arch, num_classes=3, **{param: value})
    message = str(info.value)
    assert f"{param}={name}" in message
    assert "no network access" in message
    assert f"{param}='/path/to/" in message
    assert len(no_network) == 1 and no_network[0] in message


def test_enum_weights_load_through_torchvision_loader(monkeypatch, caplog):
    """The COCO enum path, with torchvision's URL loader patched to serve a local state_dict."""
    torch.manual_seed(3)
    coco = fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, num_classes=91)
    urls = []

    def serve(url, *args, **kwargs):
        urls.append(url)
        return coco.state_dict()

    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", serve)
    with caplog.at_level(logging.INFO, logger="rcnnlab.models"):
        model = build_model(arch="fasterrcnn_resnet50_fpn", num_classes=11, weights="DEFAULT")
    assert urls == [FasterRCNN_ResNet50_FPN_Weights.COCO_V1.url]
    assert "skipped 4 with another shape, 0 missing, 0 unexpected" in caplog.text
    assert model.roi_heads.box_predictor.cls_score.out_features == 11
    assert torch.equal(model.rpn.head.cls_logits.weight, coco.rpn.head.cls_logits.weight)
    assert torch.equal(
        model.backbone.fpn.layer_blocks[0][0].weight, coco.backbone.fpn.layer_blocks[0][0].weight
    )
    # Pretrained trunk: FrozenBatchNorm, with eps=0 as torchvision sets for these weights.
    assert isinstance(model.backbone.body.bn1, FrozenBatchNorm2d)
    assert model.backbone.body.bn1.eps == 0.0


# --------------------------------------------------------------------------- image size


def test_native_size_transform_keeps_small_images_and_shrinks_big_ones():
    image = torch.rand(3, 40, 100)
    box = torch.tensor([[10.0, 5.0, 30.0, 35.0]])
    native = DetectorTransform(800, 1333, MEAN, STD, native=True)
    ours = DetectorTransform(800, 2000, MEAN, STD)
    default = GeneralizedRCNNTransform(800, 2000, MEAN, STD)
    for train in (True, False):
        for t in (native, ours, default):
            t.train(train)
        images, targets = native([image], [{"boxes": box.clone(), "labels": torch.tensor([1])}])
        assert images.image_sizes == [(40, 100)]
        assert images.tensors.shape == (1, 3, 64, 128)  # padded to a multiple of 32
        assert torch.equal(targets[0]["boxes"], box)
        # Without native mode it resizes exactly as torchvision does.
        for t in (ours, default):
            images, targets = t([image], [{"boxes": box.clone(), "labels": torch.tensor([1])}])
            assert images.image_sizes == [(800, 2000)]
            assert torch.allclose(targets[0]["boxes"], box * 20)
        torch.manual_seed(0)
        a = ours([image])[0].tensors
        b = default([image])[0].tensors
        assert torch.allclose(a, b)
    # An image past a limit is downscaled as torchvision would, never upscaled.
    images, _ = native([torch.rand(3, 900, 1000)])
    assert images.image_sizes == [(800, 888)]
    with pytest.raises(ValueError, match="one min_size"):
        DetectorTransform((600, 800), 1333, MEAN, STD)


def test_multiscale_draws_one_short_side_per_batch_in_training_only():
    t = DetectorTransform(800, 1333, MEAN, STD, native=True, train_short_sides=(20, 80))
    small, wide = torch.rand(3, 40, 100), torch.rand(3, 50, 60)
    box = torch.tensor([[10.0, 5.0, 30.0, 35.0]])
    seen = set()
    torch.manual_seed(0)
    for _ in range(20):
        images, targets = t([small, wide], [{"boxes": box.clone()}, {"boxes": box.clone()}])
        side = t.batch_short_side
        seen.add(side)
        # Every image of the batch gets the same short side; boxes scale with the pixels.
        assert images.image_sizes == [(side, round(100 * side / 40)), (side, round(60 * side / 50))]
        assert torch.allclose(targets[0]["boxes"], box * side / 40)
        assert torch.allclose(targets[1]["boxes"], box * side / 50)
    assert seen == {20, 80}
    # The draw follows torch's seed, so a seeded or resumed run repeats it.
    torch.manual_seed(1)
    first = [(t([small]), t.batch_short_side)[1] for _ in range(8)]
    torch.manual_seed(1)
    assert [(t([small]), t.batch_short_side)[1] for _ in range(8)] == first
    # The long-side cap still holds.
    capped = DetectorTransform(800, 150, MEAN, STD, native=True, train_short_sides=(80,))
    assert capped([small])[0].image_sizes == [(60, 150)]
    # Evaluation ignores multi-scale: native size.
    t.eval()
    assert t([small])[0].image_sizes == [(40, 100)]
    assert t.batch_short_side is None


@pytest.mark.parametrize("native, resized", [(True, (40, 100)), (False, (800, 2000))])
def test_boxes_map_back_to_the_original_size(native, resized):
    model = build_model(arch="resnet18_fpn", num_classes=3, native_size=native, max_size=2000)
    assert isinstance(model.transform, DetectorTransform)
    assert model.transform.native == native
    model.eval()
    images, _ = model.transform([torch.rand(3, 40, 100)])
    assert images.image_sizes == [resized]
    scale = resized[0] / 40
    on_input = torch.tensor([[10.0, 5.0, 30.0, 35.0]])
    result = model.transform.postprocess(
        [{"boxes": on_input * scale}], images.image_sizes, [(40, 100)]
    )
    assert torch.allclose(result[0]["boxes"], on_input)


@pytest.mark.parametrize(("arch", "expected"), [
    ("resnet18_fpn", [1 / 4, 1 / 8, 1 / 16, 1 / 32]),
    ("fasterrcnn_mobilenet_v3_large_fpn", [1 / 32, 1 / 32]),
])
def test_roi_pooler_scales_are_the_backbone_strides(arch, expected):
    # torchvision would infer the scales from the first batch: a 33-px-high image padded to 64
    # has a 16-high P2 map, and 16/33 rounds to 1/2 instead of 1/4.
    model = build_model(arch=arch, num_classes=3, **SMALL).eval()
    pooler = model.roi_heads.box_roi_pool
    assert pooler.scales == expected
    with torch.no_grad():
        model([torch.rand(3, 33, 40)])
    assert pooler.scales == expected


# --------------------------------------------------------------------------- head and FPN sizes


def test_fpn_levels_follow_the_strides_and_the_trunk_ends_at_the_last():
    model = build_model(arch="resnet18_fpn", num_classes=4, fpn_strides=[8, 16, 32], **SMALL)
    levels = describe_model(model)["levels"]
    assert [lv["stride"] for lv in levels] == [8, 16, 32]
    assert [lv["anchor_sizes"] for lv in levels] == [[32], [64], [128]]  # 4x the stride
    assert model.backbone.fpn.extra_blocks is None  # no max-pool level
    assert model.roi_heads.box_roi_pool.scales == [1 / 8, 1 / 16, 1 / 32]
    assert "layer4" in dict(model.backbone.body.named_children())
    assert all(torch.isfinite(v) for v in train_step_losses(model).values())
    outputs = model(*batch())
    assert outputs["rpn_level_losses"].shape == (3,) and outputs["roi_level_losses"].shape == (3,)
    up_to_16 = build_model(arch="resnet18_fpn", num_classes=4, fpn_strides=[4, 8, 16], **SMALL)
    assert "layer4" not in dict(up_to_16.backbone.body.named_children())  # never computed
    pooled = build_model(arch="resnet18_fpn", num_classes=4, fpn_strides=[8, 16, 32, 64],
                         **SMALL)
    assert [lv["stride"] for lv in describe_model(pooled)["levels"]] == [8, 16, 32, 64]


def test_fpn_channels_roi_size_and_head_width_shape_the_heads():
    model = build_model(arch="resnet18_fpn", num_classes=4, fpn_channels=128,
                        roi_output_size=5, roi_sampling_ratio=1, box_head_dim=256, **SMALL)
    assert model.backbone.out_channels == 128
    assert model.rpn.head.conv[0][0].in_channels == 128
    assert model.roi_heads.box_roi_pool.output_size == (5, 5)
    assert model.roi_heads.box_roi_pool.sampling_ratio == 1
    assert model.roi_heads.box_head.fc6.in_features == 128 * 5 * 5
    assert model.roi_heads.box_head.fc7.out_features == 256
    assert model.roi_heads.box_predictor.cls_score.in_features == 256
    assert model.roi_heads.box_predictor.cls_score.out_features == 4
    assert all(torch.isfinite(v).all() for v in train_step_losses(model).values())


def test_default_sizes_build_the_layout_of_earlier_runs():
    # torchvision's own FPN and box head when nothing is changed: old checkpoints load, and
    # the parameters are drawn in the same order (tests/test_equivalence.py checks the values)
    model = build_model(arch="resnet18_fpn", num_classes=4, **SMALL)
    torch.manual_seed(0)
    ours = build_model(arch="resnet18_fpn", num_classes=4, **SMALL).state_dict()
    torch.manual_seed(0)
    reference = resnet_fpn_backbone(backbone_name="resnet18", weights=None,
                                    norm_layer=nn.BatchNorm2d, trainable_layers=5).state_dict()
    assert all(torch.equal(ours[f"backbone.{k}"], v) for k, v in reference.items())
    assert model.roi_heads.box_head.fc6.in_features == 256 * 7 * 7
    assert model.roi_heads.box_predictor.cls_score.in_features == 1024


def test_fpn_options_are_refused_where_they_do_not_apply():
    with pytest.raises(ConfigError, match="apply to the resnet.*_fpn archs"):
        build_model(arch="fasterrcnn_mobilenet_v3_large_fpn", num_classes=3, fpn_channels=128)
    with pytest.raises(ConfigError, match="the stride-64 level pools the stride-32 one"):
        build_model(arch="resnet18_fpn", num_classes=3, fpn_strides=[8, 64])


# The torchvision archs take only their own FPN; the resnet*_fpn archs any of these.
STRIDE_SETTINGS = [
    {},
    {"fpn_strides": [8, 16, 32]},
    {"fpn_strides": [4, 8, 16]},
    {"fpn_strides": [8, 16, 32, 64]},
    {"fpn_strides": [32, 16, 16, 4]},  # unsorted, a stride twice
    {"fpn_channels": 128},  # rcnnlab's own FPN at the default strides
    {"anchor_sizes": [[8], [16], [32], [64], [128]], "aspect_ratios": [0.5, 1.0]},
    {"fpn_strides": [16, 32, 64], "residual_fpn": True},
]


@pytest.mark.parametrize("arch", ARCHS)
def test_level_strides_and_anchors_are_those_of_the_built_model(arch):
    settings = STRIDE_SETTINGS if arch.startswith("resnet") else [{}, {"residual_fpn": True}]
    for options in settings:
        cfg = ModelConfig(arch=arch, **options, **SMALL)
        model = build_model(cfg, num_classes=3, load_weights=False)
        levels = describe_model(model)["levels"]
        assert level_strides(cfg) == [lv["stride"] for lv in levels], options
        sizes, ratios = level_anchors(cfg)
        assert [list(s) for s in sizes] == [lv["anchor_sizes"] for lv in levels], options
        assert [list(r) for r in ratios] == [lv["aspect_ratios"] for lv in levels], options


def test_level_strides_refuse_what_build_model_refuses():
    for options in ({"arch": "fasterrcnn_mobilenet_v3_large_fpn", "fpn_channels": 128},
                    {"arch": "fasterrcnn_resnet50_fpn", "fpn_strides": [8, 16, 32]},
                    {"arch": "resnet18_fpn", "fpn_strides": [8, 64]},
                    {"arch": "resnet18_fpn", "fpn_strides": [64]}):
        cfg = ModelConfig(**options)
        with pytest.raises(ConfigError) as built:
            build_model(cfg, num_classes=3, load_weights=False)
        with pytest.raises(ConfigError) as derived:
            level_strides(cfg)
        assert str(derived.value) == str(built.value)
