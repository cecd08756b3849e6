"""Tests for rcnnlab.models.anchors and anchor_fit: anchor coverage measures and the auto-anchor
fit."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import box_iou

from rcnnlab.data.coco import load_coco
from rcnnlab.models.anchor_fit import AnchorFit, auto_anchors, fit_anchors
from rcnnlab.models.anchors import (
    RESNET_FPN_STRIDES,
    anchor_shapes,
    best_anchor_iou,
    coverage,
    training_box_sizes,
)
from tests.conftest import shared_path, write_coco

# resnet18_fpn's default anchors (rcnnlab.models.architecture).
R18_SIZES = [[16], [32], [64], [128], [256]]
R18_RATIOS = [0.5, 1.0, 2.0, 3.0]
ROOT_800 = math.sqrt(800)  # the size of a 20x40 anchor at ratio 2


# --------------------------------------------------------------------------- anchor shapes


def test_anchor_shapes_match_torchvision():
    sizes, ratios = [16, 23, ROOT_800], [0.5, 1.0, 2.0, 3.0, 0.677]
    cell = AnchorGenerator().generate_anchors(sizes, ratios)
    expected = torch.stack([cell[:, 2] - cell[:, 0], cell[:, 3] - cell[:, 1]], dim=1)
    np.testing.assert_array_equal(anchor_shapes(sizes, ratios), expected.numpy())
    # Rounded to whole pixels as torchvision does: size 16 at ratio 3 is 10 x 28.
    assert anchor_shapes([16], [3.0]).tolist() == [[10.0, 28.0]]


# --------------------------------------------------------------------------- best IoU, coverage


@pytest.mark.parametrize(
    ("box", "size", "ratio", "iou"),
    [
        ((20, 40), ROOT_800, 2.0, 1.0),  # the box's own shape
        ((20, 40), 20, 1.0, 0.5),  # 20x20 inside 20x40: 400 / 800
        ((20, 40), ROOT_800, 0.5, 1 / 3),  # 40x20 across 20x40: 400 / (800 + 800 - 400)
        ((10, 10), 20, 1.0, 0.25),  # box inside the anchor: 100 / 400
        ((30, 30), 40, 1.0, 900 / 1600),
    ],
)
def test_best_anchor_iou_hand_computed(box, size, ratio, iou):
    result = best_anchor_iou(np.array([box], float), [[size]], [ratio])
    assert result.shape == (1,)
    assert result[0] == pytest.approx(iou, abs=1e-6)


def test_best_anchor_iou_takes_the_best_over_levels_and_ratios():
    wh = np.array([[20, 40], [40, 20], [60, 60]], float)
    # Level 0 has 20x20 and 20x40 (sizes 20 / sqrt(800) do not mix: one size per level).
    iou = best_anchor_iou(wh, [[ROOT_800], [60]], [[0.5, 2.0], [1.0, 2.0]])
    np.testing.assert_allclose(iou, [1.0, 1.0, 1.0], atol=1e-6)
    # The same anchors on one level only: the 60x60 box now finds at best the 40x20 / 20x40.
    iou = best_anchor_iou(wh, [[ROOT_800]], [0.5, 2.0])
    np.testing.assert_allclose(iou, [1.0, 1.0, 800 / 3600], atol=1e-6)


def test_coverage_counts_a_tiny_array():
    wh = np.array([[20, 40], [20, 20], [10, 40]], float)  # IoU with a 20x20 anchor: 1/2, 1, 1/3
    cov = coverage(wh, [[20]], [1.0])
    assert cov["iou>=0.5"] == pytest.approx(2 / 3)
    assert cov["iou>=0.7"] == pytest.approx(1 / 3)
    assert cov["mean_best_iou"] == pytest.approx((0.5 + 1 + 1 / 3) / 3, abs=1e-6)
    assert coverage(np.zeros((0, 2)), [[20]], [1.0])["iou>=0.5"] == 0.0


def test_strides_model_the_grid_offset():
    """A box of the anchor's exact shape, its centre uniform within half a stride of the
    anchor centre in x and y: IoU averaged over those offsets, never above the shape-only bound."""
    wh = np.array([[20.0, 20.0]])
    d = np.linspace(0, 2, 2001)  # |dx| for stride 4 (uniform in [0, 2])
    overlap = 20 - d
    inter = overlap[:, None] * overlap[None, :]
    expected = (inter / (800 - inter)).mean()
    fine = best_anchor_iou(wh, [[20]], [1.0], strides=[4])[0]
    assert fine == pytest.approx(expected, abs=0.005)
    coarse = best_anchor_iou(wh, [[20]], [1.0], strides=[16])[0]
    assert coarse < fine < 1.0 == best_anchor_iou(wh, [[20]], [1.0])[0]


def test_stride_model_agrees_with_torchvision_anchor_grid():
    """Boxes at random positions against the real AnchorGenerator grid (brute force): the
    coverage the model estimates matches, while the shape-only bound is far off at 0.7."""
    rng = np.random.default_rng(0)
    wh = np.exp(rng.uniform(np.log(8), np.log(120), (1000, 2)))
    side = 256
    generator = AnchorGenerator(tuple(map(tuple, R18_SIZES)), (tuple(R18_RATIOS),) * 5)
    features = [torch.zeros(1, 1, side // s, side // s) for s in RESNET_FPN_STRIDES]
    anchors = generator(ImageList(torch.zeros(1, 3, side, side), [(side, side)]), features)[0]
    centres = rng.uniform(96, 160, (len(wh), 2))  # away from the grid's edges
    boxes = torch.tensor(np.c_[centres - wh / 2, centres + wh / 2], dtype=torch.float32)
    best = box_iou(boxes, anchors).max(dim=1).values.numpy()

    model = coverage(wh, R18_SIZES, R18_RATIOS, strides=RESNET_FPN_STRIDES)
    assert model["iou>=0.5"] == pytest.approx((best >= 0.5).mean(), abs=0.03)
    assert model["iou>=0.7"] == pytest.approx((best >= 0.7).mean(), abs=0.03)
    assert model["mean_best_iou"] == pytest.approx(best.mean(), abs=0.01)
    assert coverage(wh, R18_SIZES, R18_RATIOS)["iou>=0.7"] > (best >= 0.7).mean() + 0.08


# --------------------------------------------------------------------------- fitting


def _two_shapes(n: int = 400, seed: int = 0) -> np.ndarray:
    """Boxes of two shapes, 20x40 and 60x30, with +-4% noise."""
    rng = np.random.default_rng(seed)
    shapes = np.array([[20.0, 40.0], [60.0, 30.0]])[rng.integers(0, 2, n)]
    return shapes * rng.uniform(0.96, 1.04, (n, 2))


def test_fit_recovers_two_known_shapes():
    wh = _two_shapes()
    sizes, ratios = fit_anchors(wh, num_levels=2, num_ratios=2)
    assert ratios == [ratios[0]] * 2
    np.testing.assert_allclose(ratios[0], [0.5, 2.0], rtol=0.06)
    np.testing.assert_allclose(sizes, [[ROOT_800], [math.sqrt(1800)]], rtol=0.06)
    assert coverage(wh, sizes, ratios)["iou>=0.7"] > 0.98


def test_fit_with_strides_covers_two_shapes():
    wh = _two_shapes()
    before = coverage(wh, R18_SIZES, R18_RATIOS, strides=RESNET_FPN_STRIDES)
    sizes, ratios = fit_anchors(wh, num_levels=5, num_ratios=2, strides=RESNET_FPN_STRIDES)
    after = coverage(wh, sizes, ratios, strides=RESNET_FPN_STRIDES)
    assert after["iou>=0.7"] > 0.9 > before["iou>=0.7"]
    assert [len(level) for level in sizes] == [1] * 5


def test_fit_extrapolates_unused_levels_and_is_deterministic():
    wh = np.tile([[20.0, 40.0]], (50, 1))  # one shape: the first level serves every box
    sizes, ratios = fit_anchors(wh, num_levels=3, num_ratios=1)
    assert (sizes, ratios) == ([[28], [56], [112]], [[2.0]] * 3)
    # Two exact shapes on five levels: two levels used, the others double level by level.
    wh = np.tile([[20.0, 40.0], [60.0, 30.0]], (20, 1))
    sizes, ratios = fit_anchors(wh, num_levels=5, num_ratios=2)
    assert (sizes, ratios) == ([[28], [42], [84], [168], [336]], [[0.5, 2.0]] * 5)
    assert fit_anchors(wh, num_levels=5, num_ratios=2) == (sizes, ratios)
    # Two sizes per level: they increase within each level; the unused last level doubles.
    sizes, _ = fit_anchors(_two_shapes(), num_levels=3, sizes_per_level=2, num_ratios=2)
    assert all(a < b for a, b in sizes)
    assert sizes[2] == [2 * s for s in sizes[1]]


def test_fit_never_worse_than_the_reference():
    """A few tiny boxes among many larger ones: the fit alone trades some of them away at 0.5
    for coverage of the many at 0.7; with the defaults as reference it may not."""
    rng = np.random.default_rng(1)
    wh = np.concatenate([_two_shapes(300), rng.uniform(10, 14, (20, 2))])
    strides = RESNET_FPN_STRIDES
    before = coverage(wh, R18_SIZES, R18_RATIOS, strides=strides)
    free = coverage(
        wh, *fit_anchors(wh, num_levels=5, num_ratios=4, strides=strides), strides=strides
    )
    assert free["iou>=0.5"] < before["iou>=0.5"]

    sizes, ratios = fit_anchors(
        wh, num_levels=5, num_ratios=4, strides=strides, reference=(R18_SIZES, R18_RATIOS)
    )
    after = coverage(wh, sizes, ratios, strides=strides)
    assert after["iou>=0.5"] >= before["iou>=0.5"]
    assert after["iou>=0.7"] >= before["iou>=0.7"] + 0.2


def test_fit_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one box"):
        fit_anchors(np.zeros((0, 2)), num_levels=5)
    with pytest.raises(ValueError, match="positive"):
        fit_anchors(np.array([[10.0, 0.0]]), num_levels=5)
    with pytest.raises(ValueError, match="3 strides for 5 levels"):
        fit_anchors(np.array([[10.0, 20.0]]), num_levels=5, strides=[4, 8, 16])


# --------------------------------------------------------------------------- from a dataset


def test_training_box_sizes_native_vs_resized(tmp_path):
    images = [{"id": 1, "file_name": "a.png", "width": 155, "height": 53}]
    annotations = [
        {"id": 1, "image_id": 1, "category_id": 1, "bbox": [5, 5, 10, 20]},
        {"id": 2, "image_id": 1, "category_id": 1, "bbox": [30, 5, 20, 20], "iscrowd": 1},
    ]
    data = load_coco(write_coco(tmp_path, images=images, annotations=annotations))

    native = training_box_sizes(data, min_size=800, max_size=1333, native_size=True)
    np.testing.assert_array_equal(native, [[10, 20]])  # the crowd box is left out
    # torchvision's resize: short side 53 -> 800 (x15.1) when the long side may follow...
    resized = training_box_sizes(data, min_size=800, max_size=4000, native_size=False)
    np.testing.assert_allclose(resized / native, 800 / 53, rtol=0.01)
    # ...and the long side 155 capped at max_size 1333 (x8.6) when it may not.
    capped = training_box_sizes(data, min_size=800, max_size=1333, native_size=False)
    np.testing.assert_allclose(capped / native, 1333 / 155, rtol=0.01)
    # Native size only shrinks oversized images.
    shrunk = training_box_sizes(data, min_size=800, max_size=100, native_size=True)
    np.testing.assert_allclose(shrunk / native, 100 / 155, rtol=0.02)


def test_auto_anchors_errors_and_summary(tmp_path):
    negative = load_coco(write_coco(tmp_path, annotations=[]))
    common = {"min_size": 800, "max_size": 1333, "native_size": True}
    defaults = {"default_sizes": R18_SIZES, "default_ratios": R18_RATIOS}
    with pytest.raises(ValueError, match="no \\(non-crowd\\) boxes"):
        auto_anchors(negative, num_levels=5, **common, **defaults)
    data = load_coco(write_coco(tmp_path / "pos"))
    with pytest.raises(ValueError, match="strides"):
        auto_anchors(data, num_levels=3, **common, **defaults)

    fit = auto_anchors(data, num_levels=5, **common, **defaults)
    assert isinstance(fit, AnchorFit) and fit.n_boxes == 2
    assert fit.strides == list(RESNET_FPN_STRIDES)
    assert "IoU>=0.5" in fit.summary() and "IoU>=0.7" in fit.summary()
    json.dumps(fit.as_dict())


def test_auto_anchors_on_orand_car_a_native():
    """Real digits at native size with resnet18_fpn's defaults: fitting gains coverage at 0.7
    without losing any at 0.5 (run with -s to see the numbers)."""
    data = load_coco(shared_path("orand-car-a", "instances_train.json"), check_files=False)
    fit = auto_anchors(
        data,
        num_levels=5,
        min_size=800,
        max_size=1333,
        native_size=True,
        default_sizes=R18_SIZES,
        default_ratios=R18_RATIOS,
    )
    print("\n" + fit.summary())
    before, after = fit.coverage_before, fit.coverage_after
    assert after["iou>=0.5"] >= before["iou>=0.5"]
    assert after["iou>=0.7"] >= before["iou>=0.7"] + 0.1
    assert after["mean_best_iou"] > before["mean_best_iou"]
    assert [len(level) for level in fit.sizes] == [1] * 5
    assert [len(level) for level in fit.ratios] == [4] * 5
